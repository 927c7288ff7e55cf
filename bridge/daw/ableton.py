"""`backline ableton`: the Ableton Live companion, through AbletonOSC.

AbletonOSC (https://github.com/ideoforms/AbletonOSC, a Live remote script) listens for
OSC on UDP 11000 and answers every query to the *sender's IP, port 11001*, whatever port
the query came from; its answers repeat the query's address with the track and clip
indices first. Writes (create a track or clip, set a name, add notes) have no answer, and
a query or write that fails in Live comes back as `/live/error <text>`, with no ids.
What this module relies on was read in AbletonOSC's source (commit 0ca6821, 2025-11-19):

    /live/application/get/version               -> major minor
    /live/view/get/selected_clip                -> track scene (the selected track x scene)
    /live/song/get/num_tracks                   -> n
    /live/song/get/track_names                  -> name*
    /live/song/get/tempo                        -> bpm
    /live/song/get/signature_numerator          -> numerator    (the song's time signature)
    /live/song/get/signature_denominator        -> denominator
    /live/song/create_midi_track index          (-1: at the end)
    /live/track/get/clips/name t                -> t (name | nil)*   one per scene
    /live/track/get/has_midi_input t            -> t flag
    /live/track/set/name t name
    /live/clip_slot/get/has_clip t s            -> t s flag
    /live/clip_slot/create_clip t s length
    /live/clip_slot/delete_clip t s
    /live/clip/get/<p> t s                      -> t s value   (name is_midi_clip length
                                                   loop_start loop_end start_marker
                                                   end_marker looping)
    /live/clip/set/<p> t s value
    /live/clip/get/notes t s p0 pspan t0 tspan  -> t s (pitch start duration velocity mute)*
    /live/clip/add/notes t s (pitch start duration velocity mute)*

ALL notes of a clip: without a range AbletonOSC asks Live for pitches [0, 127) and beats
[-8192, 8192), so a note at pitch 127 is missed (AbletonOSC issue #190); before Nov 2023
it asked for [0, clip.length) only, which missed every note outside the loop (issue
#86). So the range is always given: pitches 0..127, beats -8192..8192. A clip of many
notes can make Live's answer too long for one datagram (macOS allows 9216 bytes;
issue #88): Live answers `/live/error ... Message too long`, and the range is split.

The trigger, and why: the companion runs resident beside Live and accompanies when the
musician (a) presses Enter in its terminal (the clip selected in Session View), or (b)
renames a clip so that it ends with "+band" (checked once a second: the track count and
each track's clip names, small queries that Live answers within a tick or two). (b)
works from inside Live with the mouse or keyboard, even when the terminal is hidden,
needs nothing but AbletonOSC, and says *which* clip; the companion renames the clip
back first, so it fires once. A MIDI-mapped trigger would
need a virtual MIDI port (none on Windows) and a mapping made by hand in Live, and would
still only mean "the selected clip". `--once` does one accompaniment and exits.

Ownership: Backline's clips are named "<instrument> (backline)" and sit on MIDI tracks
named after the instrument. Only such a clip is ever replaced; a slot holding any other
clip is left alone and reported (renaming one of Backline's clips makes it the user's).
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from backline.models.errors import BacklineError

from backline.bridge import cli_types

LIVE_PORT = 11000  # AbletonOSC's constants.OSC_LISTEN_PORT
LIVE_REPLY_PORT = 11001  # AbletonOSC's constants.OSC_RESPONSE_PORT: replies go here, always
BRIDGE_PORT = 11010
TRIGGER_SUFFIX = "+band"
MARK = " (backline)"
ABLETONOSC_URL = "https://github.com/ideoforms/AbletonOSC"

# get/notes ranges: (start_pitch, pitch_span, start_time, time_span), as AbletonOSC passes
# them to Clip.get_notes_extended. AbletonOSC's own default time range, all 128 pitches.
ALL_NOTES = (0, 128, -8192.0, 16384.0)
NOTES_PER_WRITE = 200  # about 5 KB per /live/clip/add/notes: under macOS's 9216-byte datagrams
BAR = 4.0  # notes before a clip's beat 0 are moved by whole 4/4 bars for the bridge

# AbletonOSC addresses.
VERSION = "/live/application/get/version"
SELECTED_CLIP = "/live/view/get/selected_clip"
NUM_TRACKS = "/live/song/get/num_tracks"
TRACK_NAMES = "/live/song/get/track_names"
TEMPO = "/live/song/get/tempo"
SIGNATURE = ("/live/song/get/signature_numerator", "/live/song/get/signature_denominator")
CREATE_MIDI_TRACK = "/live/song/create_midi_track"
CLIP_NAMES = "/live/track/get/clips/name"
HAS_MIDI_INPUT = "/live/track/get/has_midi_input"
SET_TRACK_NAME = "/live/track/set/name"
HAS_CLIP = "/live/clip_slot/get/has_clip"
CREATE_CLIP = "/live/clip_slot/create_clip"
DELETE_CLIP = "/live/clip_slot/delete_clip"
GET_NOTES = "/live/clip/get/notes"
ADD_NOTES = "/live/clip/add/notes"
LIVE_ERROR = "/live/error"
CLIP_PROPERTIES = ("name", "is_midi_clip", "length", "loop_start", "loop_end", "start_marker", "end_marker",
                   "looping")


def clip_get(prop: str) -> str:
    return f"/live/clip/get/{prop}"


def clip_set(prop: str) -> str:
    return f"/live/clip/set/{prop}"


class LiveError(BacklineError):
    """Something went wrong between Backline and Live."""


class LiveUnavailable(LiveError):
    """AbletonOSC does not answer at all."""


class LiveRefused(LiveError):
    """Live answered /live/error (a failed query or change)."""

    def __init__(self, text: str) -> None:
        self.text = " ".join(text.split())  # AbletonOSC sends tracebacks with newlines
        super().__init__(f"Live refused: {self.text[:300]}")


def unavailable_message(label: str) -> str:
    return (f"AbletonOSC does not answer at {label}: start Live with AbletonOSC chosen as a Control Surface "
            f"(Settings > Link, Tempo & MIDI; Live 11 or later; install it from {ABLETONOSC_URL})")


# --------------------------------------------------------------------------- AbletonOSC client


@dataclass(frozen=True)
class Query:
    """One query and the head its answer starts with (AbletonOSC echoes the indices)."""

    address: str
    args: tuple = ()
    key: tuple = ()


class LiveClient:
    """Queries to AbletonOSC from a socket bound to its reply port (11001).

    AbletonOSC answers to the sender's IP at a fixed port, so this socket must own that
    port. Queries are sent in batches and their answers collected by address and head."""

    def __init__(self, host: str, port: int, reply_port: int, timeout: float) -> None:
        self.label = f"{host}:{port}"
        self.timeout = timeout
        try:
            infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise BacklineError(f"cannot find host {host!r} ({exc.strerror}); use --live-host 127.0.0.1") from None
        self.live = infos[0][4]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        try:
            self.sock.bind(("0.0.0.0", reply_port))
        except OSError as exc:
            self.sock.close()
            raise BacklineError(
                f"cannot listen on UDP port {reply_port} for Live's replies ({exc.strerror or exc}): AbletonOSC "
                "always answers there, so close the other program that holds it (another backline ableton, "
                "AbletonOSC's run-console.py ...)"
            ) from None
        self.reply_port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()

    def send(self, address: str, *args: Any) -> None:
        from pythonosc.osc_message_builder import OscMessageBuilder

        builder = OscMessageBuilder(address)
        for arg in args:
            builder.add_arg(arg)
        self.sock.sendto(builder.build().dgram, self.live)

    def drain(self) -> None:
        """Drop whatever arrived since the last query (late answers, stray errors)."""
        from backline.bridge.clip.send import drain

        drain(self.sock)

    def _receive(self, deadline: float):
        from backline.bridge.clip.send import receive_message

        return receive_message(self.sock, deadline)

    def ask(self, queries: Sequence[Query], timeout: float | None = None) -> list[list[Any]]:
        """Send every query at once; the answers' values after the head, in query order.

        LiveRefused as soon as /live/error arrives; LiveUnavailable if nothing answers."""
        for q in queries:
            self.send(q.address, *q.args)
        answers: list[list[Any] | None] = [None] * len(queries)
        waiting = len(queries)
        heard = False
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while waiting:
            msg = self._receive(deadline)
            if msg is None:
                break
            heard = True
            if msg.address == LIVE_ERROR:
                raise LiveRefused(str(msg.params[0]) if msg.params else "(no message)")
            params = list(msg.params)
            for i, q in enumerate(queries):
                if answers[i] is None and msg.address == q.address and params[:len(q.key)] == list(q.key):
                    answers[i] = params[len(q.key):]
                    waiting -= 1
                    break
        if waiting:
            if not heard:
                raise LiveUnavailable(unavailable_message(self.label))
            missing = next(q for q, a in zip(queries, answers) if a is None)
            raise LiveError(f"AbletonOSC did not answer {missing.address} within {self.timeout:g} s; try again")
        return answers  # type: ignore[return-value]

    def one(self, address: str, *args: Any, key: tuple = ()) -> list[Any]:
        return self.ask([Query(address, args, key)])[0]


# --------------------------------------------------------------------------- the Live set


@dataclass
class SourceClip:
    track: int  # AbletonOSC's 0-based indices
    slot: int
    track_name: str
    name: str
    notes: list  # backline.models.notes.Note, times in the clip's beats
    loop_start: float
    loop_end: float
    start_marker: float
    end_marker: float
    looping: bool
    length: float

    @property
    def where(self) -> str:
        return f"track {self.track + 1} '{self.track_name}', slot {self.slot + 1}"

    @property
    def end(self) -> float:
        """Where a new clip made with create_clip must end to hold both markers."""
        return max(self.loop_end, self.end_marker)


@dataclass
class Part:
    instrument: str
    notes: list
    track: int = -1
    new_track: bool = False
    replaced: bool = False


@dataclass
class Outcome:
    source: SourceClip
    span: float  # beats sent to the bridge
    written: list[Part] = field(default_factory=list)
    left_alone: list[tuple[Part, str, str]] = field(default_factory=list)  # part, track name, clip name
    model: str = ""
    provider: str = ""

    def lines(self, seed: int) -> list[str]:
        src = self.source
        if self.written:
            parts = ", ".join(f"{p.instrument} {len(p.notes)}" for p in self.written)
            result = f"{parts} notes in slot {src.slot + 1}"
        else:
            result = "no part written"
        line = (f"accompanied '{src.name}' ({src.where}; {len(src.notes)} notes over {self.span:g} beats): "
                f"{result} (model {self.model}, seed {seed})")
        new = [p.instrument for p in self.written if p.new_track]
        if new:
            line += f"; new tracks: {', '.join(new)}"
        out = [line]
        for part, track_name, clip_name in self.left_alone:
            out.append(f"left your clip '{clip_name}' on track {part.track + 1} '{track_name}', slot {src.slot + 1} "
                       f"alone, so {part.instrument}'s part was not written there (move or rename that clip to "
                       "let Backline write)")
        return out


def backline_clip_name(instrument: str) -> str:
    return f"{instrument}{MARK}"


def _same_name(a: str | None, b: str) -> bool:
    return isinstance(a, str) and a.strip().casefold() == b.strip().casefold()


@dataclass
class Settings:
    model: str | None = None
    seed: int = 0
    threshold: float | None = None
    bridge_timeout: float = 20.0


class Companion:
    """One Live set behind AbletonOSC, one bridge: read a clip, accompany it, write the parts."""

    def __init__(self, live: LiveClient, bridge, settings: Settings) -> None:
        self.live = live
        self.bridge = bridge  # backline.bridge.clip.send.BridgeClient
        self.settings = settings

    # ---- reading

    def version(self) -> str:
        major, minor = self.live.one(VERSION)[:2]
        return f"{major}.{minor}"

    def track_names(self) -> list[str]:
        return [str(n) for n in self.live.one(TRACK_NAMES)]

    def clip_names(self) -> list[list[str | None]]:
        """Every track's clip names, one per scene (None: an empty slot)."""
        n = int(self.live.one(NUM_TRACKS)[0])
        if n == 0:
            return []
        return self.live.ask([Query(CLIP_NAMES, (t,), (t,)) for t in range(n)])

    def selected(self) -> tuple[int, int]:
        try:
            track, scene = self.live.one(SELECTED_CLIP)[:2]
        except LiveRefused:
            # AbletonOSC looks the selected track up among the song's tracks: a return or
            # the master track is not there.
            raise LiveError("no clip selected: the selected track is a return or the master track; "
                            "click your melody clip in Session View") from None
        return int(track), int(scene)

    def track_index(self, spec: str, names: Sequence[str]) -> int:
        """--track: a number as Live shows it (1 = the first track) or a track's name."""
        if spec.strip().isdigit():
            index = int(spec) - 1
            if not 0 <= index < len(names):
                raise LiveError(f"there is no track {spec}: the set has {len(names)} tracks (1 = the first)")
            return index
        matches = [i for i, n in enumerate(names) if _same_name(n, spec)]
        if not matches:
            raise LiveError(f"no track is named '{spec}' (tracks: {', '.join(names) or 'none'})")
        return matches[0]

    def find_clip(self, name: str, track: int | None = None) -> tuple[int, int]:
        """The clip called `name` (exactly, else ignoring case), on `track` if given."""
        names = self.clip_names()
        found = []
        for exact in (True, False):
            for t, slots in enumerate(names):
                if track is not None and t != track:
                    continue
                for s, clip_name in enumerate(slots):
                    if isinstance(clip_name, str) and (clip_name.strip() == name.strip() if exact
                                                       else _same_name(clip_name, name)):
                        found.append((t, s))
            if found:
                break
        if not found:
            raise LiveError(f"no clip in Session View is named '{name}'")
        if len(found) > 1:
            places = ", ".join(f"track {t + 1} slot {s + 1}" for t, s in found[:5])
            raise LiveError(f"{len(found)} clips are named '{name}' ({places}); pick one with --track and --slot")
        return found[0]

    def read_clip(self, track: int, slot: int) -> SourceClip:
        names = self.track_names()
        if not 0 <= track < len(names):
            raise LiveError(f"there is no track {track + 1}: the set has {len(names)} tracks")
        track_name = names[track]
        where = f"track {track + 1} '{track_name}', slot {slot + 1}"
        try:
            has_clip = self.live.one(HAS_CLIP, track, slot, key=(track, slot))[0]
        except LiveRefused:
            raise LiveError(f"there is no slot {slot + 1} on track {track + 1} '{track_name}'") from None
        if not has_clip:
            raise LiveError(f"no clip selected: the slot at {where} is empty; click your melody clip in Session View")
        values = self.live.ask([Query(clip_get(p), (track, slot), (track, slot)) for p in CLIP_PROPERTIES])
        props = dict(zip(CLIP_PROPERTIES, (v[0] for v in values)))
        name = str(props["name"] or "")
        if not props["is_midi_clip"]:
            raise LiveError(f"'{name}' at {where} is an audio clip; Backline accompanies MIDI clips")
        if name.strip().endswith(MARK.strip()):
            raise LiveError(f"'{name}' at {where} is Backline's own accompaniment; select your melody clip")
        notes = self.read_notes(track, slot)
        if not any(not n.mute for n in notes):
            raise LiveError(f"'{name}' at {where} has no notes{' (only muted ones)' if notes else ''}; "
                            "nothing to accompany")
        return SourceClip(track, slot, track_name, name, notes, float(props["loop_start"]), float(props["loop_end"]),
                          float(props["start_marker"]), float(props["end_marker"]), bool(props["looping"]),
                          float(props["length"]))

    def read_notes(self, track: int, slot: int) -> list:
        """Every note of the clip, inside the loop or not; ranges split when Live's
        answer would not fit a datagram."""
        from backline.models.notes import Note

        found: set[tuple] = set()

        def fetch(p0: int, pspan: int, t0: float, tspan: float) -> None:
            try:
                values = self.live.one(GET_NOTES, track, slot, p0, pspan, t0, tspan, key=(track, slot))
            except LiveRefused as exc:
                if not _too_long(exc.text):
                    raise
                if pspan > 1:
                    half = pspan // 2
                    fetch(p0, half, t0, tspan)
                    fetch(p0 + half, pspan - half, t0, tspan)
                elif tspan > 1 / 64:
                    fetch(p0, 1, t0, tspan / 2)
                    fetch(p0, 1, t0 + tspan / 2, tspan / 2)
                else:
                    raise
                return
            for i in range(0, len(values) - 4, 5):
                pitch, start, duration, velocity, mute = values[i:i + 5]
                found.add((int(pitch), float(start), float(duration), float(velocity), bool(mute)))

        self.live.drain()
        fetch(*ALL_NOTES)
        ordered = sorted(found, key=lambda n: (n[1], n[0]))
        return [Note(p, s, d, max(1, min(127, round(v))), m) for p, s, d, v, m in ordered]

    # ---- the action

    def accompany(self, track: int, slot: int) -> Outcome:
        from backline.models.notes import Note

        from backline.bridge.osc import protocol
        self.live.drain()
        source = self.read_clip(track, slot)
        tempo = float(self.live.one(TEMPO)[0])
        # The song's meter, so the band accents its bars (and refuses one it cannot follow).
        numerator, denominator = (int(self.live.one(address)[0]) for address in SIGNATURE)
        # The bridge takes beats >= 0: a clip with notes before its beat 0 is moved by whole bars.
        first = min(n.start for n in source.notes)
        offset = math.ceil(-first / BAR) * BAR if first < 0 else 0.0
        span = max(source.end, max(n.end for n in source.notes)) + offset
        melody = [Note(n.pitch, n.start + offset, n.duration, n.velocity, n.mute) for n in source.notes]

        _, _, model, provider = self.bridge.ping()
        if self.settings.threshold is not None:
            self.bridge.send(protocol.SET, "threshold", float(self.settings.threshold))
        reply = self.bridge.accompany(melody, span, self.settings.model, self.settings.seed,
                                      min(max(tempo, 1.0), 999.0), self.settings.bridge_timeout,
                                      meter=f"{numerator}/{denominator}")
        parts = []
        for i, spec in enumerate(reply.tracks):
            notes = sorted((Note(n.pitch, n.start - offset, n.duration, n.velocity, n.mute)
                            for n in reply.notes.get(i, [])), key=lambda n: (n.start, n.pitch))
            parts.append(Part(spec.name, notes))
        outcome = Outcome(source, span, model=self.settings.model or model, provider=provider)
        self.write(source, parts, outcome)
        return outcome

    # ---- writing

    def write(self, source: SourceClip, parts: list[Part], outcome: Outcome) -> None:
        live = self.live
        slot = source.slot
        names = self.track_names()
        # The instrument's track: a MIDI track named after it (not the melody's own track).
        candidates = sorted({i for i, n in enumerate(names) for p in parts
                             if i != source.track and _same_name(n, p.instrument)})
        midi = dict(zip(candidates, (a[0] for a in live.ask([Query(HAS_MIDI_INPUT, (i,), (i,)) for i in candidates]))))
        missing = []
        for part in parts:
            part.track = next((i for i in candidates if midi[i] and _same_name(names[i], part.instrument)), -1)
            if part.track < 0:
                missing.append(part)
        if missing:
            for k, part in enumerate(missing):
                live.send(CREATE_MIDI_TRACK, -1)
                part.track, part.new_track = len(names) + k, True
                live.send(SET_TRACK_NAME, part.track, part.instrument)
            names = self.track_names()  # also waits until Live has made them
            for part in missing:
                if part.track >= len(names) or names[part.track] != part.instrument:
                    raise LiveError(f"Live did not make the track '{part.instrument}'; try again")

        # What sits in the slot of the scene on each instrument's track.
        in_slot = live.ask([Query(CLIP_NAMES, (p.track,), (p.track,)) for p in parts])
        to_write = []
        for part, slots in zip(parts, in_slot):
            current = slots[slot] if slot < len(slots) else None
            if current is None:
                to_write.append(part)
            elif isinstance(current, str) and current.strip() == backline_clip_name(part.instrument):
                part.replaced = True
                to_write.append(part)
            else:
                outcome.left_alone.append((part, names[part.track], str(current)))
        if not to_write:
            return

        end = source.end
        for part in to_write:
            if part.replaced:
                live.send(DELETE_CLIP, part.track, slot)
            live.send(CREATE_CLIP, part.track, slot, float(end))
        made = live.ask([Query(HAS_CLIP, (p.track, slot), (p.track, slot)) for p in to_write])
        if not all(m[0] for m in made):
            raise LiveError(f"Live did not make the clips in slot {slot + 1}; try again")

        for part in to_write:
            t = part.track
            # create_clip(end) spans [0, end) with the loop on: the ends first (each <= end),
            # so that every step leaves start < end, then the starts, then the loop switch.
            # All four are set even where they look right already, in case Live moves
            # one marker with another.
            for prop in ("loop_end", "end_marker", "loop_start", "start_marker"):
                live.send(clip_set(prop), t, slot, float(getattr(source, prop)))
            if not source.looping:
                live.send(clip_set("looping"), t, slot, False)
            live.send(clip_set("name"), t, slot, backline_clip_name(part.instrument))
            for i in range(0, len(part.notes), NOTES_PER_WRITE):
                args = []
                for n in part.notes[i:i + NOTES_PER_WRITE]:
                    args += [int(n.pitch), float(n.start), float(n.duration), int(n.velocity), bool(n.mute)]
                live.send(ADD_NOTES, t, slot, *args)
                time.sleep(0.0005)
        # Answered only once Live has made every change above (AbletonOSC works in order).
        check = live.ask([Query(clip_get("name"), (p.track, slot), (p.track, slot)) for p in to_write])
        for part, (name, *_) in zip(to_write, check):
            if name != backline_clip_name(part.instrument):
                raise LiveError(f"Live did not name the clip of {part.instrument}; try again")
        outcome.written = to_write

    # ---- the clip-name trigger

    def triggered(self, suffix: str) -> list[tuple[int, int, str]]:
        """Clips whose names end with `suffix`, renamed back at once (so each fires once)."""
        hits = []
        folded = suffix.casefold()
        for t, slots in enumerate(self.clip_names()):
            for s, name in enumerate(slots):
                if isinstance(name, str) and name.rstrip().casefold().endswith(folded):
                    plain = name.rstrip()[:-len(suffix)].rstrip()
                    self.live.send(clip_set("name"), t, s, plain)
                    hits.append((t, s, plain))
        return hits


def _too_long(text: str) -> bool:
    text = text.casefold()
    return any(w in text for w in ("too long", "emsgsize", "larger than", "errno 40", "errno 90", "10040"))


# --------------------------------------------------------------------------- the command


def add_ableton_parser(sub) -> None:
    p = sub.add_parser(
        "ableton", help="Ableton Live companion: accompany a Session View clip through AbletonOSC",
        description="Accompany a MIDI clip of Ableton Live's Session View through AbletonOSC and a running "
                    "`backline serve`: each instrument's part becomes a clip '<instrument> (backline)' in the "
                    "same scene, on a MIDI track named after the instrument. Runs resident: press Enter to "
                    f"accompany the selected clip, or rename a clip in Live so that it ends with '{TRIGGER_SUFFIX}'. "
                    "Clips that are not Backline's are never changed. Stops on Ctrl-C or SIGTERM.")
    p.add_argument("--once", action="store_true",
                   help="accompany one clip (the selected one, or the one named) and exit")
    p.add_argument("--track", default=None, metavar="N|NAME",
                   help="the clip's track: its number as Live shows it (1 = the first) or its name; with --slot")
    p.add_argument("--slot", type=cli_types.whole(1, example=1), default=None, metavar="M",
                   help="the clip's slot: its scene's number (1 = the first); with --track")
    p.add_argument("--clip", default=None, metavar="NAME", help="the clip with this name (default: the selected clip)")
    p.add_argument("--model", default=None, help="an installed model's name (default: the bridge's)")
    p.add_argument("--seed", type=cli_types.seed, default=0,
                   help="noise seed: same seed, same accompaniment (default 0)")
    p.add_argument("--threshold", type=cli_types.threshold, default=None,
                   help="note threshold in (0, 1); lower = busier (default: the model's)")
    p.add_argument("--poll", type=cli_types.non_negative, default=1.0, metavar="SECONDS",
                   help="how often to look for clips renamed to end with the trigger; 0 = never (default 1)")
    p.add_argument("--trigger", default=TRIGGER_SUFFIX, metavar="SUFFIX",
                   help=f"a clip whose name ends with this is accompanied, then renamed back "
                        f"(default {TRIGGER_SUFFIX})")
    p.add_argument("--live-host", default="127.0.0.1", help="where Live runs (default 127.0.0.1)")
    p.add_argument("--live-port", type=cli_types.whole(1, 65535, example=LIVE_PORT), default=LIVE_PORT,
                   help=f"AbletonOSC's port (default {LIVE_PORT})")
    p.add_argument("--live-reply-port", type=cli_types.listen_port, default=LIVE_REPLY_PORT,
                   help=f"the port AbletonOSC answers to (default {LIVE_REPLY_PORT}, fixed in AbletonOSC)")
    p.add_argument("--live-timeout", type=cli_types.seconds, default=2.0,
                   help="seconds to wait for each answer from Live (default 2)")
    p.add_argument("--bridge-host", default="127.0.0.1", help="the bridge's address (default 127.0.0.1)")
    p.add_argument("--bridge-port", type=cli_types.port, default=BRIDGE_PORT,
                   help=f"the bridge's UDP port (default {BRIDGE_PORT})")
    p.add_argument("--timeout", type=cli_types.seconds, default=20.0,
                   help="seconds to wait for the accompaniment (default 20)")
    p.set_defaults(func=cmd_ableton)


class _Printer:
    def __init__(self) -> None:
        self.lock = threading.Lock()

    def info(self, text: str) -> None:
        with self.lock:
            print(f"backline ableton: {text}", flush=True)

    def error(self, text: str) -> None:
        with self.lock:
            print(f"backline ableton: error: {text}", file=sys.stderr, flush=True)


def cmd_ableton(args: argparse.Namespace) -> int:
    if args.slot is not None and args.clip is not None:
        raise BacklineError("give --track and --slot, or --clip, not both")
    if args.clip is None and (args.track is None) != (args.slot is None):
        raise BacklineError("--track and --slot go together (or name the clip with --clip, or select it in Live)")
    if not args.trigger.strip():
        raise BacklineError("--trigger must not be empty, e.g. +band")
    from backline.bridge.clip.send import BridgeClient

    live = LiveClient(args.live_host, args.live_port, args.live_reply_port, args.live_timeout)
    try:
        bridge = BridgeClient(args.bridge_host, args.bridge_port)
    except BaseException:
        live.close()
        raise
    settings = Settings(args.model, args.seed, args.threshold, args.timeout)
    companion = Companion(live, bridge, settings)
    out = _Printer()
    try:
        if args.once:
            for line in accompany_target(companion, args):
                out.info(line)
            return 0
        return run_resident(companion, args, out)
    finally:
        live.close()
        bridge.close()


def target(companion: Companion, args: argparse.Namespace) -> tuple[int, int]:
    if args.slot is not None:
        return companion.track_index(args.track, companion.track_names()), args.slot - 1
    if args.clip is not None:
        track = companion.track_index(args.track, companion.track_names()) if args.track else None
        return companion.find_clip(args.clip, track)
    return companion.selected()


def accompany_target(companion: Companion, args: argparse.Namespace) -> list[str]:
    companion.live.drain()
    track, slot = target(companion, args)
    return companion.accompany(track, slot).lines(args.seed)


def run_resident(companion: Companion, args: argparse.Namespace, out: _Printer,
                 stdin: Iterable[str] | None = None) -> int:
    """Enter (or a clip renamed to end with the trigger) accompanies; errors are one line each."""
    events: queue.Queue[str] = queue.Queue()
    live_up: list[bool | None] = [None]

    def attempt(action: Callable[[], None]) -> None:
        try:
            action()
        except LiveUnavailable as exc:
            live_up[0] = False
            out.error(str(exc))
        except BacklineError as exc:
            out.error(str(exc))
        except Exception as exc:  # a bug: one line, and the companion carries on
            if os.environ.get("BACKLINE_DEBUG"):
                raise
            out.error(f"internal error ({type(exc).__name__}: {exc}); this is a bug in Backline: run again with "
                      "BACKLINE_DEBUG=1 for the details and report them")

    def on_enter() -> None:
        for line in accompany_target(companion, args):
            out.info(line)
        live_up[0] = True

    def on_poll() -> None:
        try:
            hits = companion.triggered(args.trigger)
        except LiveUnavailable as exc:
            if live_up[0] is not False:
                out.error(str(exc))
            live_up[0] = False
            return
        if live_up[0] is False:
            out.info(f"AbletonOSC answers again at {companion.live.label}")
        live_up[0] = True
        for track, slot, _ in hits:
            def act(track=track, slot=slot):
                for line in companion.accompany(track, slot).lines(args.seed):
                    out.info(line)
            attempt(act)

    def greet() -> None:
        try:
            version = companion.version()
            live_up[0] = True
            out.info(f"AbletonOSC answers at {companion.live.label} (Live {version}); replies on port "
                     f"{companion.live.reply_port}")
        except LiveUnavailable as exc:
            live_up[0] = False
            out.error(str(exc))
        try:
            _, _, model, provider = companion.bridge.ping()
            out.info(f"the bridge answers at {companion.bridge.label} (model {model} on {provider})")
        except BacklineError as exc:
            out.error(str(exc))

    attempt(greet)
    what = ("the clip " + (f"'{args.clip}'" if args.clip else f"at track {args.track}, slot {args.slot}")
            if args.clip or args.slot else "the selected clip")
    trigger = f", or rename a clip in Live to end with '{args.trigger}'" if args.poll > 0 else ""
    out.info(f"ready: press Enter to accompany {what}{trigger}; Ctrl-C stops")

    def read_lines() -> None:
        for line in (sys.stdin if stdin is None else stdin):
            events.put("quit" if line.strip().casefold() in ("q", "quit", "exit") else "enter")

    threading.Thread(target=read_lines, daemon=True, name="backline-ableton-stdin").start()

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, stop)
    next_poll = time.monotonic()
    try:
        while True:
            wait = 0.5 if args.poll <= 0 else min(0.5, max(0.0, next_poll - time.monotonic()))
            try:
                event = events.get(timeout=wait)
            except queue.Empty:
                if args.poll <= 0 or time.monotonic() < next_poll:
                    continue
                event = "poll"
            if event == "quit":
                break
            if event == "enter":
                attempt(on_enter)
            else:
                attempt(on_poll)
                next_poll = time.monotonic() + args.poll
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    out.info("stopped")
    return 0
