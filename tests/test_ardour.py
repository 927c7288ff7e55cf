"""Backline inside Ardour, against the real thing: headless Ardour 7 (`ardour7-lua`, the
Debian package `ardour`, on luasession's own dummy audio backend), a real `backline
serve` with the fixed model (tests/fake_models.py) and the action script exactly as
`backline ardour install` writes it into a temporary HOME.

A session is made with a MIDI track "Melody" holding one region; the installed script's
core (the function the editor action runs on the selected region) is run on it, calling
`backline send-notes` through the installed absolute path with a PATH that lacks the
virtual environment; the session is saved, and what Ardour wrote (the .ardour XML and the
regions' .mid files, read with mido) is compared with what `backline send-notes` prints
for the same melody, and with the fixed model's known pattern. A missing ardour7-lua is a
failure that names the package, never a skip.

The first half needs no Ardour: send-notes' line format and bad input, and the installer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import mido
import pytest

from backline.bridge.daw import ardour, lines
from backline.models.notes import Note
from backline.models.spec import TrackSpec

from .conftest import run_backline
from .test_bridge_osc import Server, free_port

ARDOUR_LUA = "ardour7-lua"
TICKS_PER_BEAT = 1920  # Ardour 7's Temporal::ticks_per_beat ('b' times in the XML)

# --------------------------------------------------------------------------- send-notes without Ardour


def parse_notes_output(text: str) -> tuple[list[dict], int]:
    """A reader of format 1 written from docs/DAW.md, not from the writer's code."""
    rows = text.splitlines()
    assert rows[0] == "backline-notes 1", text
    assert rows[-1].startswith("end "), text
    tracks: list[dict] = []
    count = 0
    for row in rows[1:-1]:
        word, rest = row.split(" ", 1)
        if word == "track":
            index, program, channel, drum, name = rest.split(" ", 4)
            assert int(index) == len(tracks)
            tracks.append(dict(name=name, program=int(program), channel=int(channel), drum=drum == "1", notes=[]))
        elif word == "note":
            index, pitch, start, length, velocity = rest.split(" ")
            assert "e" not in start + length, row  # plain decimals
            tracks[int(index)]["notes"].append((int(pitch), float(start), float(length), int(velocity)))
            count += 1
    assert int(rows[-1].split()[1]) == count, text
    return tracks, count


def test_the_line_format_puts_the_name_last_and_counts_the_notes():
    text = lines.format_reply([
        (TrackSpec("Violin II", 40, 1), [Note(67, 2.0, 0.25, 80), Note(64, 0.0, 1.5, 90)]),
        (TrackSpec("Drums", 0, 3, is_drum=True), [Note(36, 0.0, 0.125, 100)]),
        (TrackSpec("Silent\nCello", 42, 4), []),
        (TrackSpec("", 0, 5), []),
    ])
    assert text == (
        "backline-notes 1\n"
        "track 0 40 1 0 Violin II\n"
        "note 0 64 0 1.5 90\n"
        "note 0 67 2 0.25 80\n"
        "track 1 0 9 1 Drums\n"  # a drum track is on channel 10 (9), whatever the spec says
        "note 1 36 0 0.125 100\n"
        "track 2 42 4 0 Silent Cello\n"  # one line, always
        "track 3 0 5 0 Track 4\n"
        "end 3\n"
    )
    tracks, count = parse_notes_output(text)
    assert [t["name"] for t in tracks] == ["Violin II", "Drums", "Silent Cello", "Track 4"] and count == 3


def test_beats_are_plain_decimals():
    assert [lines._beats(x) for x in (0.0, 1.0, 0.25, 15.5, 1e-7, 1 / 3, 2.0000004)] == \
        ["0", "1", "0.25", "15.5", "0", "0.333333", "2"]


def test_melody_lines_are_read_with_comments_and_blank_lines():
    notes = lines.parse_melody(["# pitch start length velocity", "", "60 0 1 100", "  62\t1.5  0.5 90  "], "x")
    assert notes == [Note(60, 0.0, 1.0, 100), Note(62, 1.5, 0.5, 90)]


BAD_MELODY_LINES = {
    "garbage": ("garbage", "line 2 of stdin ('garbage') has 1 field, not 4"),
    "five fields": ("60 0 1 100 0", "has 5 fields, not 4"),
    "pitch": ("128 0 1 100", "pitch '128' is not a whole number from 0 to 127"),
    "float pitch": ("60.5 0 1 100", "pitch '60.5'"),
    "start": ("60 -1 1 100", "start '-1' is not a number of beats >= 0"),
    "nan": ("60 nan 1 100", "start 'nan'"),
    "length": ("60 0 0 100", "length '0' is not a number of beats > 0"),
    "velocity": ("60 0 1 0", "velocity '0' is not a whole number from 1 to 127"),
}


@pytest.mark.parametrize("case", list(BAD_MELODY_LINES))
def test_send_notes_refuses_a_bad_line_in_one_line_before_asking_the_bridge(case):
    line, wanted = BAD_MELODY_LINES[case]
    port = free_port()  # nothing listens: a bad line must be refused before the bridge is asked
    result = subprocess.run(
        [*backline_argv(), "send-notes", "--port", str(port), "-"], input=f"60 0 1 100\n{line}\n",
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("backline: error: "), result.stderr
    assert wanted in result.stderr, result.stderr
    assert "e.g. 60 0 1 100" in result.stderr


def test_send_notes_without_notes_or_file_is_one_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    result = run_backline("send-notes", empty)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (f"backline: error: no notes in {empty}; give one line per note: pitch start_beats "
                             "length_beats velocity, e.g. 60 0 1 100\n")
    result = run_backline("send-notes", tmp_path / "missing.txt")
    assert result.returncode == 1
    assert result.stderr.startswith(f"backline: error: cannot read {tmp_path / 'missing.txt'} (No such file")


def test_send_notes_without_a_bridge_says_how_to_start_one(tmp_path):
    port = free_port()
    (tmp_path / "melody.txt").write_text("60 0 1 100\n")
    started = time.monotonic()
    result = run_backline("send-notes", tmp_path / "melody.txt", "--port", port)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (f"backline: error: no Backline bridge answered at 127.0.0.1:{port} within 2 s; "
                             "start one with: backline serve\n")
    assert time.monotonic() - started < 15


def backline_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "backline.bridge.cli"]


# --------------------------------------------------------------------------- the installer


def test_install_goes_into_ardour7_when_no_ardour_folder_exists(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "XDG_CONFIG_HOME": None}
    printed = run_backline("ardour", "install", "--print", env=env)
    assert printed.returncode == 0, printed.stderr
    target = home / ".config" / "ardour7" / "scripts" / "backline_accompany.lua"
    assert printed.stdout.splitlines()[0].startswith(f"{target} (Ardour's folder")
    assert not (home / ".config").exists()  # --print writes nothing

    first = run_backline("ardour", "install", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == f"installed: {target}"
    assert "Edit > Lua Scripts > Script Manager" in first.stdout and "backline serve" in first.stdout
    text = target.read_text()
    command = ardour.backline_command()
    assert Path(command).is_absolute() and os.access(command, os.X_OK)
    assert f'default = "{command}" --[[backline-path]]' in text
    assert text.replace(f'"{command}" --[[backline-path]]', ardour.PLACEHOLDER) == ardour.packaged_script()

    again = run_backline("ardour", "install", env=env)
    assert again.returncode == 0 and again.stdout.splitlines()[0] == f"up to date: {target}"
    assert sorted(p.name for p in target.parent.iterdir()) == ["backline_accompany.lua"]


def test_install_goes_into_every_ardour_folder_that_exists(tmp_path):
    config = tmp_path / "xdg"
    (config / "ardour8").mkdir(parents=True)
    result = run_backline("ardour", "install", "--backline", "/bin/sh", env={"XDG_CONFIG_HOME": str(config)})
    assert result.returncode == 0, result.stderr
    assert (config / "ardour8" / "scripts" / "backline_accompany.lua").is_file()
    assert not (config / "ardour7").exists()
    assert '"/bin/sh" --[[backline-path]]' in (config / "ardour8" / "scripts" / "backline_accompany.lua").read_text()
    (config / "ardour7").mkdir()
    result = run_backline("ardour", "install", "--backline", "/bin/sh", env={"XDG_CONFIG_HOME": str(config)})
    assert result.stdout.splitlines()[:2] == [f"installed: {config / 'ardour7' / 'scripts' / 'backline_accompany.lua'}",
                                              f"up to date: {config / 'ardour8' / 'scripts' / 'backline_accompany.lua'}"]


def test_install_errors_are_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    result = run_backline("ardour", "install", env={"XDG_CONFIG_HOME": str(tmp_path / "file")})
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"backline: error: cannot write {tmp_path / 'file' / 'ardour7' / 'scripts'}")
    result = run_backline("ardour", "install", "--backline", tmp_path / "nosuch", env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "no such file" in result.stderr and not (tmp_path / "ardour7").exists()


def test_ardour_config_folders_per_platform(tmp_path):
    home = tmp_path
    assert ardour.config_folders("linux", {}, home) == [home / ".config" / "ardour7", home / ".config" / "ardour8"]
    assert ardour.config_folders("linux", {"XDG_CONFIG_HOME": "/x"}, home) == [Path("/x/ardour7"), Path("/x/ardour8")]
    assert ardour.config_folders("darwin", {}, home) == [home / "Library" / "Preferences" / "Ardour7",
                                                         home / "Library" / "Preferences" / "Ardour8"]
    assert ardour.config_folders("win32", {"LOCALAPPDATA": "/L"}, home) == [Path("/L/Ardour7"), Path("/L/Ardour8")]
    assert ardour.lua_string('C:\\Program Files\\"b"') == '"C:\\\\Program Files\\\\\\"b\\""'


# --------------------------------------------------------------------------- in Ardour

# Makes BL_DIR/BL_NAME.ardour: a MIDI track "Melody" whose one region plays the notes of
# BL_MELODY (lines `pitch start length velocity`, beats into the region's source). The
# source is BL_SRC_BEATS long and starts at beat BL_POS_BEATS; the region is then trimmed
# by BL_TRIM_BEATS at its front, so that it starts inside its source.
MAKE_SESSION = r"""
local dir, name = os.getenv ("BL_DIR"), os.getenv ("BL_NAME")
local pos_beats, src_beats = tonumber (os.getenv ("BL_POS_BEATS")), tonumber (os.getenv ("BL_SRC_BEATS"))
local trim_beats = tonumber (os.getenv ("BL_TRIM_BEATS"))
assert (create_session (dir, name, 48000), "create_session failed")
local track = Session:new_midi_track (
  ARDOUR.ChanCount (ARDOUR.DataType ("midi"), 1), ARDOUR.ChanCount (ARDOUR.DataType ("audio"), 2),
  true, ARDOUR.PluginInfo (), nil, nil, 1, "Melody",
  ARDOUR.PresentationInfo.max_order, ARDOUR.TrackMode.Normal, true):front ()
-- Ardour 7.3's Lua cannot make a MIDI source; bouncing the empty track gives one
local tm = Temporal.TempoMap.read ()
local function at (beats) return tm:sample_at_beats (Temporal.Beats (beats, 0)) end
local bounced = track:bounce_range (at (pos_beats), at (pos_beats + src_beats), ARDOUR.InterThreadInfo (),
  track:main_outs (), false, "Melody")
assert (not bounced:isnil (), "bounce failed")
local model = bounced:to_midiregion ():model ()
local cmd = model:new_note_diff_command ("melody")
for line in io.lines (os.getenv ("BL_MELODY")) do
  local p, s, l, v = line:match ("^(%d+) (%S+) (%S+) (%d+)$")
  cmd:add (ARDOUR.LuaAPI.new_noteptr (0, Temporal.Beats (0, math.floor (tonumber (s) * 1920 + 0.5)),
    Temporal.Beats (0, math.floor (tonumber (l) * 1920 + 0.5)), tonumber (p), tonumber (v)))
end
model:apply_command (Session, cmd)
local playlist = track:playlist ()
playlist:add_region (bounced, Temporal.timepos_t (at (pos_beats)), 1, false)
local region
for r in playlist:region_list ():iter () do region = r end -- (add_region put a copy there)
region:set_start (Temporal.timepos_t.from_ticks (trim_beats * 1920))
region:set_position (Temporal.timepos_t (at (pos_beats + trim_beats)))
region:set_length (Temporal.timecnt_t (at (pos_beats + src_beats) - at (pos_beats + trim_beats)))
Session:save_state ("", false, false, false, false, false)
print ("SAVED")
"""

# Loads the session and runs the installed script's core on the Melody track's region,
# with the parameters Ardour would give it (action_params' defaults), BL_PARAM_<KEY>
# overriding; saves whatever happened. (No os.exit: luasession's own exit path closes the
# session cleanly, os.exit crashed it now and then.)
RUN_ACTION = r"""
assert (load_session (os.getenv ("BL_DIR"), os.getenv ("BL_NAME")), "load_session failed")
function ardour (info) end -- the script's header, as Ardour's script scanner reads it
local core
BACKLINE_EXPORT_CORE = function (f) core = f end
dofile (os.getenv ("BL_SCRIPT"))
local params = {}
for key, spec in pairs (action_params ()) do params[key] = os.getenv ("BL_PARAM_" .. key:upper ()) or spec.default end
factory (params)
assert (core, "the script did not hand over its core")
local region
for r in Session:route_by_name ("Melody"):to_track ():playlist ():region_list ():iter () do region = r end
local result, err = core (Session, region, function (s) print ("LOG " .. s) end)
if result then
  for _, line in ipairs (result) do print ("DONE " .. line) end
else
  print ("ERROR-BEGIN\n" .. err .. "\nERROR-END")
end
Session:save_state ("", false, false, false, false, false)
print ("SAVED")
"""

# Beats into the melody region's source; the region starts at beat 1 of its source (the
# first note begins before the region and is cut), is 11 beats long, and the last note
# runs past its end (cut too).
POS_BEATS, SRC_BEATS, TRIM_BEATS = 4, 12, 1
MELODY_SOURCE = [(72, 0, 1.5, 100), (74, 2, 1, 90), (76, 3, 1, 80), (77, 4, 2, 100), (79, 6, 1, 100),
                 (77, 7, 1, 70), (76, 8, 0.5, 100), (74, 8.5, 0.5, 100), (72, 10, 3, 100)]
REGION_BEATS = SRC_BEATS - TRIM_BEATS


def melody_as_sent() -> list[tuple]:
    """What the region plays, in beats from its start: what the script must send."""
    out = []
    for pitch, start, length, velocity in MELODY_SOURCE:
        t0, t1 = start - TRIM_BEATS, min(start - TRIM_BEATS + length, REGION_BEATS)
        t0 = max(t0, 0)
        if t1 > t0:
            out.append((pitch, t0, t1 - t0, velocity))
    return out


def require_ardour() -> str:
    path = shutil.which(ARDOUR_LUA)
    if path is None:
        pytest.fail(f"{ARDOUR_LUA} not found: install the Debian package ardour (apt-get install ardour), "
                    "which brings Ardour 7's headless Lua session tool")
    return path


@dataclass
class Lua:
    """ardour7-lua runs, each timed, against one installed script and one bridge."""

    home: Path
    script: Path
    port: int
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, code: str, label: str, **env: str) -> list[str]:
        require_ardour()
        lua = self.home / f"{label}.lua"
        lua.write_text(code)
        full_env = {
            "HOME": str(self.home),  # Ardour's own config goes here too
            "PATH": "/usr/bin:/bin",  # no virtual environment: the script must name backline itself
            "LANG": "C.UTF-8",
            "JACK_NO_START_SERVER": "1",
            "BL_SCRIPT": str(self.script),
            "BL_PARAM_PORT": str(self.port),
            **env,
        }
        started = time.monotonic()
        try:
            result = subprocess.run([ARDOUR_LUA, str(lua)], stdin=subprocess.DEVNULL, capture_output=True,
                                    text=True, env=full_env, timeout=120)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{ARDOUR_LUA} {label} hung for 120 s; its output: {exc.stdout!r} {exc.stderr!r}")
        self.timings[label] = time.monotonic() - started
        out = result.stdout.splitlines()
        assert result.returncode == 0 and "SAVED" in out, \
            f"{ARDOUR_LUA} {label}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        return out


@dataclass
class Saved:
    """What Ardour wrote: MIDI tracks (route id, program controls), their regions, notes."""

    routes: dict[str, dict]
    history: list[str]
    n_sources: int

    def regions(self, track: str) -> list[dict]:
        return self.routes[track]["regions"]


def read_session(folder: Path, name: str) -> Saved:
    root = ET.parse(folder / f"{name}.ardour").getroot()
    sources = {s.get("id"): s.get("name") for s in root.find("Sources")}
    midifiles = {p.name: p for p in folder.glob("interchange/*/midifiles/*.mid")}
    playlists = {p.get("id"): p for p in root.find("Playlists")}
    routes = {}
    for route in root.find("Routes"):
        playlist = playlists.get(route.get("midi-playlist"))
        if playlist is None:
            continue
        programs = {c.get("name"): int(float(c.get("value"))) for c in route.iter("Controllable")
                    if c.get("name", "").startswith("midi-pgm-change")}
        regions = []
        for region in playlist.findall("Region"):
            start = region.get("start")
            assert start.startswith("b"), start  # a MIDI region's offset into its source, in ticks
            regions.append(dict(name=region.get("name"), length=region.get("length"), start=start,
                                notes=read_notes(midifiles[sources[region.get("source-0")]],
                                                 int(start[1:]) / TICKS_PER_BEAT)))
        assert route.get("name") not in routes, f"two tracks named {route.get('name')}"
        routes[route.get("name")] = dict(id=route.get("id"), programs=programs, regions=regions)
    history_file = folder / f"{name}.history"
    history = []
    if history_file.exists():
        history = [t.get("name") for t in ET.parse(history_file).getroot().iter("UndoTransaction")]
    return Saved(routes, history, len(root.find("Sources")))


def read_notes(path: Path, offset_beats: float) -> list[tuple]:
    """(channel, pitch, start, length, velocity) in beats from the region's start."""
    midi = mido.MidiFile(path)
    notes, sounding, ticks = [], {}, 0
    for message in mido.merge_tracks(midi.tracks):
        ticks += message.time
        if message.type == "note_on" and message.velocity > 0:
            sounding[(message.channel, message.note)] = (ticks, message.velocity)
        elif message.type in ("note_on", "note_off") and (message.channel, message.note) in sounding:
            t0, velocity = sounding.pop((message.channel, message.note))
            notes.append((message.channel, message.note, round(t0 / midi.ticks_per_beat - offset_beats, 6),
                          round((ticks - t0) / midi.ticks_per_beat, 6), velocity))
    return sorted(notes, key=lambda n: (n[2], n[1]))


@pytest.fixture(scope="module")
def bridge(fixed_model, tmp_path_factory):
    server = Server(fixed_model, tmp_path_factory.mktemp("serve") / "serve.log", "--midi-api", "none")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The script as `backline ardour install` writes it, into a temporary HOME."""
    home = tmp_path_factory.mktemp("ardour-home")
    result = run_backline("ardour", "install", env={"HOME": str(home), "XDG_CONFIG_HOME": None})
    assert result.returncode == 0, result.stderr
    script = home / ".config" / "ardour7" / "scripts" / "backline_accompany.lua"
    assert script.is_file(), result.stdout
    return script


@pytest.fixture(scope="module")
def expected(bridge) -> list[dict]:
    """What `backline send-notes` prints for the region's melody, run directly."""
    melody = "".join(f"{p} {lines._beats(s)} {lines._beats(d)} {v}\n" for p, s, d, v in melody_as_sent())
    result = subprocess.run([*backline_argv(), "send-notes", "--port", str(bridge.port), "--length",
                             str(REGION_BEATS)], input=melody, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return parse_notes_output(result.stdout)[0]


@pytest.fixture(scope="module")
def first_run(bridge, installed, tmp_path_factory):
    """A fresh session, before and after one run of the action."""
    require_ardour()
    work = tmp_path_factory.mktemp("ardour")
    lua = Lua(installed.parents[3], installed, bridge.port)
    (work / "melody.txt").write_text("".join(f"{p} {s} {d} {v}\n" for p, s, d, v in MELODY_SOURCE))
    folder = work / "first" / "bl"  # (Ardour names its media folder after the session's folder)
    lua.run(MAKE_SESSION, "make-session", BL_DIR=str(folder), BL_NAME="bl", BL_MELODY=str(work / "melody.txt"),
            BL_POS_BEATS=str(POS_BEATS), BL_SRC_BEATS=str(SRC_BEATS), BL_TRIM_BEATS=str(TRIM_BEATS))
    before = read_session(folder, "bl")
    out = lua.run(RUN_ACTION, "accompany", BL_DIR=str(folder), BL_NAME="bl")
    kept = work / "after-first-run" / "bl"
    shutil.copytree(folder, kept)  # for the tests that run again on it
    return dict(lua=lua, folder=kept, before=before, out=out, after=read_session(folder, "bl"), work=work)


def copy_of(first_run, label: str) -> Path:
    folder = first_run["work"] / label / "bl"
    shutil.copytree(first_run["folder"], folder)
    return folder


def test_the_session_holds_the_melody_region_as_made(first_run):
    melody = first_run["before"].regions("Melody")
    assert len(melody) == 1 and melody[0]["start"] == f"b{TRIM_BEATS * TICKS_PER_BEAT}"
    assert set(first_run["before"].routes) == {"Melody"}


def test_the_action_adds_one_track_and_region_per_instrument_as_the_bridge_sends(first_run, expected):
    before, after = first_run["before"], first_run["after"]
    melody = after.regions("Melody")
    assert melody == before.regions("Melody")  # the melody is left as it was
    assert list(after.routes) == ["Melody", "Held", "Restruck", "Silent"]  # in the model's order
    assert [t["name"] for t in expected] == ["Held", "Restruck", "Silent"]
    for track in expected:
        route = after.routes[track["name"]]
        assert route["programs"] == {f"midi-pgm-change-{track['channel']}": track["program"]}, track["name"]
        [region] = route["regions"]
        assert region["name"] == f"Backline {track['name']}"
        assert (region["length"], region["start"]) == (melody[0]["length"], melody[0]["start"])  # same place
        assert region["notes"] == [(track["channel"], *n) for n in track["notes"]], track["name"]
    assert [f"DONE {t['name']}: {len(t['notes'])} notes, program {t['program']}, channel {t['channel'] + 1}"
            for t in expected] == [line for line in first_run["out"] if line.startswith("DONE")]


def test_the_notes_are_the_fixed_models_known_pattern(first_run):
    """Independently of send-notes: the fixed model holds 48 over the whole clip (the
    region's 11 beats), restrikes 55 at each 8-beat window, and leaves Silent silent."""
    after = first_run["after"]

    def shape(track):
        return [(channel, pitch, start, length) for channel, pitch, start, length, _ in after.regions(track)[0]["notes"]]

    assert shape("Held") == [(1, 48, 0.0, REGION_BEATS)]
    assert shape("Restruck") == [(2, 55, 0.0, 8.0), (2, 55, 8.0, REGION_BEATS - 8.0)]
    assert shape("Silent") == []
    assert after.routes["Held"]["programs"] == {"midi-pgm-change-1": 32}
    assert after.routes["Restruck"]["programs"] == {"midi-pgm-change-2": 48}


def test_the_script_sends_what_the_region_plays(first_run):
    """The melody the script exported (cut to the region, from its start) is the one the
    expected answer was computed from: send-notes' run: line names its file's notes."""
    logged = [line for line in first_run["out"] if line.startswith("LOG run: ")]
    assert len(logged) == 1
    command = logged[0]
    assert f"send-notes --port '{first_run['lua'].port}' --seed '0' --length 11.000000 -- " in command
    assert command.startswith(f"LOG run: '{ardour.backline_command()}' ")  # the installed absolute path


def test_the_user_sees_one_undo_step(first_run):
    # Note edits are undo transactions of their own in Ardour 7 and cannot be nested, so
    # they come first; the regions' placing is the one step on top of the undo stack.
    assert first_run["after"].history == ["Backline Held notes", "Backline Restruck notes", "Backline Silent notes",
                                          "Backline: accompany"]


def test_running_it_again_reuses_the_tracks_and_replaces_its_regions(first_run, expected):
    folder = copy_of(first_run, "second")
    out = first_run["lua"].run(RUN_ACTION, "accompany-again", BL_DIR=str(folder), BL_NAME="bl")
    first, again = first_run["after"], read_session(folder, "bl")
    assert [line for line in out if line.startswith("LOG reuse track")] == \
        ["LOG reuse track Held", "LOG reuse track Restruck", "LOG reuse track Silent"]
    assert {name: r["id"] for name, r in again.routes.items()} == {name: r["id"] for name, r in first.routes.items()}
    for track in expected:
        [region] = again.regions(track["name"])  # the earlier one replaced, not stacked under it
        assert region["notes"] == [(track["channel"], *n) for n in track["notes"]]
        assert again.routes[track["name"]]["programs"] == first.routes[track["name"]]["programs"]
    assert all(line.endswith("(replaced the earlier one)") for line in out if line.startswith("DONE"))
    assert again.history[-1] == "Backline: accompany"


def test_a_stopped_bridge_is_a_clear_error_and_changes_nothing(first_run, fixed_model, tmp_path):
    stopped = Server(fixed_model, tmp_path / "serve.log", "--midi-api", "none")
    stopped.stop()
    folder = copy_of(first_run, "stopped")
    out = first_run["lua"].run(RUN_ACTION, "accompany-stopped", BL_DIR=str(folder), BL_NAME="bl",
                               BL_PARAM_PORT=str(stopped.port))
    error = "\n".join(out[out.index("ERROR-BEGIN") + 1:out.index("ERROR-END")])
    assert error == (
        "backline send-notes failed (exit 1):\n\n"
        f"backline: error: no Backline bridge answered at 127.0.0.1:{stopped.port} within 2 s; "
        "start one with: backline serve")
    assert not [line for line in out if line.startswith(("LOG new", "LOG reuse", "DONE"))]
    after = read_session(folder, "bl")
    assert (after.routes, after.n_sources) == (first_run["after"].routes, first_run["after"].n_sources)
    # no undo step either (luasession starts a loaded session with an empty undo history,
    # and a session saved without one keeps none)
    assert after.history in ([], first_run["after"].history)


def test_ardour_timings_are_reported(first_run):
    timings = first_run["lua"].timings
    print("ardour7-lua seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    assert all(v < 60 for v in timings.values()), timings
