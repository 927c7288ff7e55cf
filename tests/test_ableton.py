"""`backline ableton` against a STAND-IN for AbletonOSC (tests/abletonosc_standin.py: an
in-memory Live set behind a real UDP OSC server that answers AbletonOSC's addresses,
argument orders and reply port as AbletonOSC's source has them), not Live, which cannot
run here; and a REAL `backline serve` subprocess with the fixed model
(tests/fake_models.py). The companion runs as its own process through the real command
line. A relay in front of the bridge keeps a copy of what the companion sends it.

Ports are free ones, never 11000/11001/11010."""

from __future__ import annotations

import copy
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from pythonosc.osc_message import OscMessage

from backline.bridge.osc import protocol
from backline.bridge.clip.send import BridgeClient
from backline.models.notes import Note

from .abletonosc_standin import AbletonOSCStandIn, Clip, LiveSet
from .conftest import run_backline
from .test_bridge_osc import Server, free_port

# One note a beat at velocity 100, inside the fixed model's melody range (60..80).
def melody(start: float, end: float, pitch0: int = 68) -> list[tuple]:
    return [(pitch0 + (i % 5), float(b), 1.0, 100.0, False) for i, b in enumerate(range(int(start), int(end)))]


# 'Verse' loops over beats 4..12 (length 8), but has notes from 0 to 16: four before the
# loop and four after it.
VERSE = melody(0, 16)
VERSE_CLIP = dict(length=12.0, loop_start=4.0, start_marker=4.0)
INSTRUMENTS = ["Held", "Restruck", "Silent"]  # the fixed model's tracks


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def bridge(fixed_model, tmp_path_factory):
    srv = Server(fixed_model, tmp_path_factory.mktemp("serve") / "serve.log", "--midi-api", "none")
    yield srv
    srv.stop()


class Relay:
    """UDP relay in front of the bridge that keeps every message the companion sends."""

    def __init__(self, bridge_port: int) -> None:
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.port = self.front.getsockname()[1]
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.bind(("127.0.0.1", 0))
        self.bridge = ("127.0.0.1", bridge_port)
        self.client = None
        self.sent: list[OscMessage] = []
        self.running = True
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while self.running:
            ready, _, _ = select.select([self.front, self.back], [], [], 0.1)
            for sock in ready:
                try:
                    data, addr = sock.recvfrom(65535)
                except OSError:
                    continue
                if sock is self.front:
                    self.client = addr
                    self.sent += protocol.read_datagram(data)  # a short clip comes as one bundle
                    self.back.sendto(data, self.bridge)
                elif self.client:
                    self.front.sendto(data, self.client)

    def melody(self) -> tuple[float, list[Note]]:
        """The last clip's length and notes, as the bridge got them."""
        begin = [m for m in self.sent if m.address == "/backline/clip/begin"][-1]
        clip_id = begin.params[0]
        notes = []
        for m in self.sent:
            if m.address == "/backline/clip/notes" and m.params[0] == clip_id:
                v = m.params[1:]
                notes += [Note(v[i], v[i + 1], v[i + 2], v[i + 3], bool(v[i + 4])) for i in range(0, len(v), 5)]
        return begin.params[1], notes

    def close(self) -> None:
        self.running = False
        time.sleep(0.15)
        self.front.close()
        self.back.close()


@pytest.fixture
def relay(bridge):
    r = Relay(bridge.port)
    yield r
    r.close()


def a_set() -> LiveSet:
    """Track 1 'Lead' holds 'Verse' in slot 2 and 'Chorus' in slot 3; track 2 'Keys' is
    the user's, with a clip in slot 2 (the Verse's scene); 'Verse' is selected."""
    live = LiveSet(n_scenes=4)
    lead = live.add_track("Lead")
    lead.slots[1] = Clip.midi("Verse", notes=VERSE, **VERSE_CLIP)
    lead.slots[2] = Clip.midi("Chorus", 8.0, melody(0, 8, 70))
    keys = live.add_track("Keys")
    keys.slots[1] = Clip.midi("my chords", 4.0, [(60, 0.0, 4.0, 90.0, False)])
    live.selected_track, live.selected_scene = 0, 1
    return live


@pytest.fixture
def live():
    standins = []

    def start(live_set: LiveSet | None = None, **kwargs) -> AbletonOSCStandIn:
        standin = AbletonOSCStandIn(live_set or a_set(), **kwargs)
        standins.append(standin)
        return standin

    yield start
    for s in standins:
        s.close()


def ableton_args(standin_port: int, reply_port: int, bridge_port: int, *extra) -> list[str]:
    return ["ableton", "--live-port", str(standin_port), "--live-reply-port", str(reply_port),
            "--bridge-port", str(bridge_port), "--live-timeout", "1", *map(str, extra)]


def once(standin: AbletonOSCStandIn, bridge_port: int, *extra) -> subprocess.CompletedProcess:
    return run_backline(*ableton_args(standin.port, standin.reply_port, bridge_port, "--once", *extra))


def expected_parts(bridge_port: int, notes: list[tuple], length: float) -> dict[str, list[Note]]:
    """What the bridge answers a direct client for the same melody."""
    client = BridgeClient("127.0.0.1", bridge_port)
    try:
        client.ping()
        reply = client.accompany([Note(p, s, d, int(v), m) for p, s, d, v, m in notes], length, None, 0, 120.0, 20)
    finally:
        client.close()
    return {spec.name: sorted(reply.notes.get(i, []), key=lambda n: (n.start, n.pitch))
            for i, spec in enumerate(reply.tracks)}


def clip_notes(clip: Clip) -> list[Note]:
    return sorted((Note(p, s, d, int(v), m) for p, s, d, v, m in clip.notes), key=lambda n: (n.start, n.pitch))


def track(live_set: LiveSet, name: str):
    found = [t for t in live_set.tracks if t.name == name and t.midi]
    assert len(found) == 1, [t.name for t in live_set.tracks]
    return found[0]


class Companion:
    """`backline ableton` resident, in its own process; its output line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "backline.bridge.cli", *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(l.rstrip("\n")) for l in self.proc.stdout], daemon=True).start()

    def wait_for(self, piece: str, timeout: float = 30) -> list[str]:
        """Every line up to and including the first that holds `piece`."""
        got = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                assert self.proc.poll() is None, f"the companion exited: {self.seen + got}"
                continue
            got.append(line)
            if piece in line:
                self.seen += got
                return got
        raise AssertionError(f"no line with {piece!r}; got {self.seen + got}")

    def quiet_for(self, seconds: float) -> list[str]:
        got = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.lines.get(timeout=left))
            except queue.Empty:
                pass
        self.seen += got
        return got

    def press_enter(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        status = self.proc.wait(timeout=15)
        self.seen += self.quiet_for(0.3)
        return status


@pytest.fixture
def companions():
    running = []

    def start(*args) -> Companion:
        c = Companion(*args)
        running.append(c)
        return c

    yield start
    for c in running:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait()


def one_error_line(lines: list[str], piece: str) -> None:
    errors = [l for l in lines if "error:" in l]
    assert len(errors) == 1 and piece in errors[0], lines
    assert not any("Traceback" in l for l in lines), lines


# --------------------------------------------------------------------------- one accompaniment


def test_the_selected_clip_is_accompanied_with_all_its_notes(live, bridge, relay):
    standin = live(reply_port=free_port())
    before = copy.deepcopy(standin.set.tracks)
    result = once(standin, relay.port)
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.splitlines() == [
        "backline ableton: accompanied 'Verse' (track 1 'Lead', slot 2; 16 notes over 16 beats): "
        "Held 1, Restruck 2, Silent 0 notes in slot 2 (model fixed, seed 0); new tracks: Held, Restruck, Silent"]

    # All 16 notes reached the bridge, the eight outside the loop too, over beats 0..16.
    length, sent = relay.melody()
    assert length == 16.0
    assert sorted(sent) == sorted(Note(p, s, d, int(v), m) for p, s, d, v, m in VERSE)
    # ... asked of Live with an explicit range: every pitch (127 too), beats -8192..8192.
    asked = [p for a, p in standin.received if a == "/live/clip/get/notes"]
    assert asked == [[0, 1, 0, 128, -8192.0, 16384.0]]

    # One new MIDI track per instrument, named after it, after the user's tracks.
    live_set = standin.set
    assert [t.name for t in live_set.tracks] == ["Lead", "Keys", *INSTRUMENTS]
    expected = expected_parts(bridge.port, VERSE, 16.0)
    assert expected["Held"] == [Note(48, 0.0, 16.0, expected["Held"][0].velocity)]  # the fixed model
    source = live_set.tracks[0].slots[1]
    for name in INSTRUMENTS:
        t = track(live_set, name)
        assert [c is not None for c in t.slots] == [False, True, False, False]  # the Verse's scene only
        clip = t.slots[1]
        assert clip.name == f"{name} (backline)"
        assert clip.is_midi and clip.length == source.length == 8.0
        assert (clip.loop_start, clip.loop_end, clip.start_marker, clip.end_marker, clip.looping) == (
            source.loop_start, source.loop_end, source.start_marker, source.end_marker, source.looping)
        assert clip_notes(clip) == expected[name]  # the bridge's notes, exactly

    # The user's clips, the melody among them, are as they were.
    assert live_set.tracks[:2] == before
    # Notes went to Live in messages that fit macOS's datagrams.
    assert all(len(p) <= 2 + 5 * 200 for a, p in standin.received if a == "/live/clip/add/notes")


def test_the_songs_meter_goes_to_the_bridge_and_one_it_cannot_follow_is_one_line(live, bridge, relay):
    standin = live(reply_port=free_port())
    standin.set.signature = (6, 8)
    result = once(standin, relay.port)
    assert result.returncode == 0, result.stderr + result.stdout
    begin = [m for m in relay.sent if m.address == "/backline/clip/begin"][-1]
    assert begin.params[-1] == "6/8"
    standin.set.signature = (7, 8)
    before = copy.deepcopy(standin.set.tracks)
    result = once(standin, relay.port)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("backline: error:") and "the melody is in 7/8" in line, line
    assert standin.set.tracks == before  # nothing written


def test_a_second_run_replaces_only_backlines_clips(live, bridge, relay):
    standin = live(reply_port=free_port())
    assert once(standin, relay.port).returncode == 0
    live_set = standin.set
    with standin.lock:
        # The user keeps Restruck's take (renamed, it is theirs), puts a clip of their own
        # on Backline's Held track, and makes the Verse longer.
        track(live_set, "Restruck").slots[1].name = "my restruck"
        kept = copy.deepcopy(track(live_set, "Restruck").slots[1])
        track(live_set, "Held").slots[0] = Clip.midi("held idea", 4.0, [(50, 0.0, 1.0, 80.0, False)])
        verse = live_set.tracks[0].slots[1]
        verse.notes += melody(16, 24)
        verse.loop_end = verse.end_marker = 24.0
        users = copy.deepcopy([live_set.tracks[0], live_set.tracks[1], track(live_set, "Held").slots[0]])

    result = once(standin, relay.port)
    assert result.returncode == 0, result.stderr + result.stdout
    lines = result.stdout.splitlines()
    assert lines == [
        "backline ableton: accompanied 'Verse' (track 1 'Lead', slot 2; 24 notes over 24 beats): "
        "Held 1, Silent 0 notes in slot 2 (model fixed, seed 0)",
        "backline ableton: left your clip 'my restruck' on track 4 'Restruck', slot 2 alone, so Restruck's part "
        "was not written there (move or rename that clip to let Backline write)"]
    assert [t.name for t in live_set.tracks] == ["Lead", "Keys", *INSTRUMENTS]  # no new tracks
    expected = expected_parts(bridge.port, VERSE + melody(16, 24), 24.0)
    held = track(live_set, "Held").slots[1]
    assert held.name == "Held (backline)" and held.length == 20.0 and clip_notes(held) == expected["Held"]
    assert track(live_set, "Restruck").slots[1] == kept
    assert [live_set.tracks[0], live_set.tracks[1], track(live_set, "Held").slots[0]] == users


def test_a_clip_named_by_track_and_slot_or_by_name(live, bridge, relay):
    standin = live(reply_port=free_port())
    standin.set.selected_track = "master"  # the selection plays no part
    chorus = standin.set.tracks[0].slots[2]
    chorus.looping, chorus.loop_start, chorus.loop_end = False, 2.0, 6.0  # plays 0..8 once
    result = once(standin, relay.port, "--track", "Lead", "--slot", "3", "--seed", "5", "--threshold", "0.4")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "accompanied 'Chorus' (track 1 'Lead', slot 3; 8 notes over 8 beats)" in result.stdout
    assert "(model fixed, seed 5)" in result.stdout
    held = track(standin.set, "Held").slots[2]
    assert held.name == "Held (backline)"
    assert (held.looping, held.length, held.loop_start, held.loop_end) == (False, 8.0, 2.0, 6.0)
    # The seed went with the clip, the threshold as a setting.
    begin = [m for m in relay.sent if m.address == "/backline/clip/begin"][-1]
    assert begin.params[3] == 5
    assert any(m.address == "/backline/set" and m.params == ["threshold", pytest.approx(0.4)] for m in relay.sent)

    result = once(standin, relay.port, "--clip", "verse", "--track", "1")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "accompanied 'Verse' (track 1 'Lead', slot 2;" in result.stdout


def test_an_audio_track_named_like_an_instrument_is_left_alone(live, bridge, relay):
    live_set = a_set()
    audio = live_set.add_track("Held", midi=False)
    standin = live(live_set, reply_port=free_port())
    assert once(standin, relay.port).returncode == 0
    assert [t.name for t in live_set.tracks] == ["Lead", "Keys", "Held", *INSTRUMENTS]
    assert audio.slots == [None] * 4 and not audio.midi
    assert track(live_set, "Held").slots[1].name == "Held (backline)"


def test_a_long_clip_with_notes_before_its_start_is_read_whole_through_small_datagrams(live, bridge, relay):
    """macOS sends at most 9216 bytes a datagram: Live's answer for 1,200 notes is refused
    ('Message too long') and the companion asks again by ranges of pitches."""
    notes = [(60 + i % 20, i * 0.125, 0.125, 100.0, False) for i in range(1200)]  # beats 0..150
    notes += [(64, -2.0, 1.0, 90.0, False)]  # a pickup, before the clip's beat 0
    live_set = LiveSet(n_scenes=2)
    live_set.add_track("Lead").slots[0] = Clip.midi("Long", 150.0, notes)
    live_set.selected_track, live_set.selected_scene = 0, 0
    standin = live(live_set, reply_port=free_port(), max_datagram=9216)
    result = once(standin, relay.port)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "accompanied 'Long' (track 1 'Lead', slot 1; 1201 notes over 154 beats)" in result.stdout
    asked = [p for a, p in standin.received if a == "/live/clip/get/notes"]
    assert len(asked) > 1 and asked[0] == [0, 0, 0, 128, -8192.0, 16384.0]  # refused whole, then split
    # The bridge got every note, moved one bar later (its clips start at beat 0).
    length, sent = relay.melody()
    assert length == 154.0
    shifted = [(p, s + 4.0, d, v, m) for p, s, d, v, m in notes]
    assert sorted(sent) == sorted(Note(p, s, d, int(v), m) for p, s, d, v, m in shifted)
    # ... and the parts are moved back by that bar.
    expected = expected_parts(bridge.port, shifted, 154.0)
    for name in INSTRUMENTS:
        assert clip_notes(track(live_set, name).slots[0]) == [
            Note(n.pitch, n.start - 4.0, n.duration, n.velocity, n.mute) for n in expected[name]]
    assert sum(map(len, expected.values())) > 0  # (there are parts to compare)
    assert all(len(p) <= 2 + 5 * 200 for a, p in standin.received if a == "/live/clip/add/notes")


def test_the_highest_pitch_is_read_too(live, bridge, relay):
    """Without a range AbletonOSC asks Live for pitches 0..126 (its issue #190)."""
    high = [(120 + i % 8, float(i), 1.0, 100.0, False) for i in range(8)]
    live_set = LiveSet(n_scenes=1)
    live_set.add_track("Piccolo").slots[0] = Clip.midi("High", 8.0, high)
    live_set.selected_track = 0
    result = once(live(live_set, reply_port=free_port()), relay.port)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "accompanied 'High' (track 1 'Piccolo', slot 1; 8 notes over 8 beats)" in result.stdout
    assert sorted(relay.melody()[1]) == sorted(Note(p, s, d, int(v), m) for p, s, d, v, m in high)


# --------------------------------------------------------------------------- one line per error


def test_once_errors_are_one_line(live, bridge, relay, tmp_path):
    reply_port = free_port()
    nobody = free_port()
    result = run_backline(*ableton_args(nobody, reply_port, relay.port, "--once"))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"backline: error: AbletonOSC does not answer at 127.0.0.1:{nobody}: start Live with AbletonOSC chosen "
        "as a Control Surface (Settings > Link, Tempo & MIDI; Live 11 or later; install it from "
        "https://github.com/ideoforms/AbletonOSC)"]

    standin = live(reply_port=reply_port)
    result = once(standin, nobody)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"backline: error: no Backline bridge answered at 127.0.0.1:{nobody} within 2 s; "
        "start one with: backline serve"]
    assert [t.name for t in standin.set.tracks] == ["Lead", "Keys"]  # nothing written

    # The reply port held by someone else (AbletonOSC always answers there).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("0.0.0.0", 0))
        result = run_backline(*ableton_args(standin.port, holder.getsockname()[1], relay.port, "--once"))
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and "cannot listen on UDP port" in result.stderr

    result = run_backline(*ableton_args(standin.port, reply_port, relay.port, "--once", "--track", "1"))
    assert result.returncode == 1 and result.stderr.splitlines() == [
        "backline: error: --track and --slot go together (or name the clip with --clip, or select it in Live)"]


def test_the_resident_companion_survives_every_error(live, bridge, relay, companions):
    reply_port, live_port = free_port(), free_port()
    companion = companions(*ableton_args(live_port, reply_port, relay.port, "--poll", "0.2"))
    # Live is not there yet: said once, not once per poll.
    first = companion.wait_for("ready:")
    one_error_line(first, f"AbletonOSC does not answer at 127.0.0.1:{live_port}")
    assert any("the bridge answers at" in l for l in first)
    assert not any("error" in l for l in companion.quiet_for(1.0))

    live_set = a_set()
    live_set.add_track("Beat", midi=False).slots[0] = Clip("loop.wav", is_midi=False)
    live_set.tracks[0].slots[3] = Clip.midi("Sketch", 4.0, [])
    live(live_set, port=live_port, reply_port=reply_port)
    companion.wait_for("AbletonOSC answers again")

    cases = [
        ((0, 0), "no clip selected: the slot at track 1 'Lead', slot 1 is empty"),
        ((2, 0), "'loop.wav' at track 3 'Beat', slot 1 is an audio clip; Backline accompanies MIDI clips"),
        ((0, 3), "'Sketch' at track 1 'Lead', slot 4 has no notes; nothing to accompany"),
        (("master", 0), "no clip selected: the selected track is a return or the master track"),
    ]
    for (t, s), message in cases:
        live_set.selected_track, live_set.selected_scene = t, s
        companion.press_enter()
        one_error_line(companion.wait_for("error:"), message)
    assert [t.name for t in live_set.tracks] == ["Lead", "Keys", "Beat"]

    live_set.selected_track, live_set.selected_scene = 0, 1
    companion.press_enter()
    companion.wait_for("accompanied 'Verse'")
    assert track(live_set, "Held").slots[1].name == "Held (backline)"
    assert companion.stop() == 0
    assert companion.seen[-1] == "backline ableton: stopped"


def test_no_bridge_is_one_line_and_the_companion_goes_on(live, companions):
    standin = live(reply_port=free_port())
    nobody = free_port()
    companion = companions(*ableton_args(standin.port, standin.reply_port, nobody, "--poll", "0"))
    first = companion.wait_for("ready:")
    one_error_line(first, f"no Backline bridge answered at 127.0.0.1:{nobody} within 2 s; "
                          "start one with: backline serve")
    assert any("AbletonOSC answers at" in l and "(Live 12.1)" in l for l in first)
    for _ in range(2):
        companion.press_enter()
        one_error_line(companion.wait_for("error:"), "start one with: backline serve")
    assert [t.name for t in standin.set.tracks] == ["Lead", "Keys"]
    companion.proc.stdin.write("q\n")
    companion.proc.stdin.flush()
    assert companion.proc.wait(timeout=15) == 0
    assert companion.quiet_for(0.3)[-1] == "backline ableton: stopped"


# --------------------------------------------------------------------------- the triggers


def test_a_clip_renamed_to_end_with_plus_band_is_accompanied_and_renamed_back(live, bridge, relay, companions):
    standin = live(reply_port=free_port())
    live_set = standin.set
    live_set.selected_track, live_set.selected_scene = 1, 0  # an empty slot: the selection plays no part
    companion = companions(*ableton_args(standin.port, standin.reply_port, relay.port, "--poll", "0.1"))
    companion.wait_for("ready:")
    with standin.lock:
        live_set.tracks[0].slots[2].name = "Chorus +band"
    lines = companion.wait_for("accompanied")
    assert lines[-1].startswith("backline ableton: accompanied 'Chorus' (track 1 'Lead', slot 3; 8 notes over 8 beats)")
    assert live_set.tracks[0].slots[2].name == "Chorus"  # renamed back: it fires once
    assert track(live_set, "Held").slots[2].name == "Held (backline)"
    assert not any("accompanied" in l for l in companion.quiet_for(0.6))

    # Enter accompanies the selected clip.
    live_set.selected_track, live_set.selected_scene = 0, 1
    companion.press_enter()
    assert "accompanied 'Verse'" in companion.wait_for("accompanied")[-1]
    assert [t.name for t in live_set.tracks] == ["Lead", "Keys", *INSTRUMENTS]
    assert track(live_set, "Restruck").slots[1].name == "Restruck (backline)"

    # A trigger on a clip that cannot be accompanied: one line, renamed back all the same.
    with standin.lock:
        live_set.tracks[1].slots[1].notes.clear()
        live_set.tracks[1].slots[1].name = "my chords+BAND"
    one_error_line(companion.wait_for("error:"), "'my chords' at track 2 'Keys', slot 2 has no notes")
    assert live_set.tracks[1].slots[1].name == "my chords"
    assert companion.stop() == 0
