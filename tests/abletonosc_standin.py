"""A STAND-IN for AbletonOSC, not Live: a small in-memory Live set behind a real UDP OSC
server, for testing `backline ableton` where Live cannot run.

It answers the AbletonOSC addresses that the companion uses (and a few neighbours) as
AbletonOSC's source does (github.com/ideoforms/AbletonOSC, commit 0ca6821, 2025-11-19:
abletonosc/osc_server.py, song.py, track.py, clip_slot.py, clip.py, view.py,
application.py):

- it listens on one UDP port (AbletonOSC: 11000) and sends every answer *from that
  socket* to the sender's IP at a fixed reply port (AbletonOSC: 11001), whatever port
  the query came from;
- an answer repeats the query's address; clip and clip-slot answers start with the
  track and clip indices, track answers with the track index;
- writes (create_midi_track, create_clip, delete_clip, set/..., add/notes) have no answer;
- datagrams are taken in "ticks" (Live runs AbletonOSC every 100 ms): all waiting
  datagrams in order, until one raises; the rest wait for the next tick. An exception
  is answered with `/live/error "Error handling OSC message: <exception>"` and an unknown
  address with `/live/error "Unknown OSC address: <address>"`, to the last sender's IP
  at the reply port, as AbletonOSC's log handler does;
- an answer longer than `max_datagram` bytes fails as sendto() does on macOS (9216
  bytes by default there; AbletonOSC issue #88) and is answered with the socket error;
- values are typed as AbletonOSC's python-osc builder types them: Python ints `i`,
  floats `f`, bools `T`/`F`, None `N`. Live hands note velocities out as floats and
  mute flags as bools.

What is Live's own behaviour here is modelled from its documented API, not observed:
Clip.get_notes_extended(from_pitch, pitch_span, from_time, time_span) returns notes with
from_pitch <= pitch < from_pitch + pitch_span and from_time <= start < from_time +
time_span, sorted by pitch then time (AbletonOSC's tests say so); clip.length is
loop_end - loop_start when looping, else end_marker - start_marker; create_clip(length)
makes a looping MIDI clip over [0, length); create_midi_track(-1) appends a track named
"<n>-MIDI"; a marker change that would leave start >= end is refused.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder


@dataclass
class Clip:
    name: str = ""
    notes: list[tuple[int, float, float, float, bool]] = field(default_factory=list)
    is_midi: bool = True
    loop_start: float = 0.0
    loop_end: float = 4.0
    start_marker: float = 0.0
    end_marker: float = 4.0
    looping: bool = True

    @classmethod
    def midi(cls, name: str, length: float, notes=(), **markers) -> "Clip":
        clip = cls(name, [(int(p), float(s), float(d), float(v), bool(m)) for p, s, d, v, m in notes],
                   loop_end=float(length), end_marker=float(length))
        for key, value in markers.items():
            setattr(clip, key, value)
        return clip

    @property
    def length(self) -> float:
        return self.loop_end - self.loop_start if self.looping else self.end_marker - self.start_marker


@dataclass
class Track:
    name: str
    slots: list[Clip | None]
    midi: bool = True


class LiveSet:
    """Tracks of clip slots (one per scene), a selection, a tempo."""

    def __init__(self, n_scenes: int = 4, tempo: float = 120.0) -> None:
        self.n_scenes = n_scenes
        self.tracks: list[Track] = []
        self.selected_track: int | str = 0  # an index into tracks, or "master"
        self.selected_scene = 0
        self.tempo = tempo
        self.signature = (4, 4)  # numerator, denominator
        self.version = (12, 1)

    def add_track(self, name: str, midi: bool = True) -> Track:
        track = Track(name, [None] * self.n_scenes, midi)
        self.tracks.append(track)
        return track

    def named(self, name: str) -> list[int]:
        return [i for i, t in enumerate(self.tracks) if t.name == name]


class AbletonOSCStandIn:
    """A stand-in for AbletonOSC (not Live) serving a LiveSet on a real UDP socket."""

    def __init__(self, live_set: LiveSet, reply_port: int, port: int = 0, tick: float = 0.01,
                 max_datagram: int = 65507) -> None:
        self.set = live_set
        self.reply_port = reply_port
        self.tick = tick
        self.max_datagram = max_datagram
        self.lock = threading.RLock()  # held while a tick runs: tests change the set under it
        self.received: list[tuple[str, list[Any]]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.remote = ("127.0.0.1", reply_port)
        self.handlers: dict[str, Callable[[list[Any]], tuple | None]] = {}
        self._install()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="abletonosc-standin")
        self.thread.start()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        self.sock.close()

    # ---- the server loop, as AbletonOSC's OSCServer.process() once per tick

    def _run(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                self._process()
            time.sleep(self.tick)

    def _process(self) -> None:
        try:
            while True:
                data, addr = self.sock.recvfrom(65536)
                self.remote = (addr[0], self.reply_port)
                message = OscMessage(data)
                self._handle(message, addr)
        except BlockingIOError:
            pass
        except OSError as exc:
            self._error(f"Socket error: {exc}")
        except Exception as exc:  # the rest of the datagrams wait for the next tick
            self._error(f"Error handling OSC message: {exc}")

    def _handle(self, message: OscMessage, addr) -> None:
        params = list(message.params)
        self.received.append((message.address, params))
        handler = self.handlers.get(message.address)
        if handler is None:
            self._error(f"Unknown OSC address: {message.address}")
            return
        rv = handler(params)
        if rv is not None:
            self._send(message.address, rv, (addr[0], self.reply_port))

    def _send(self, address: str, params, remote) -> None:
        builder = OscMessageBuilder(address)
        for value in params:
            builder.add_arg(value)
        data = builder.build().dgram
        if len(data) > self.max_datagram:
            raise OSError(40, "Message too long")
        self.sock.sendto(data, remote)

    def _error(self, text: str) -> None:
        try:
            self._send("/live/error", (text,), self.remote)
        except OSError:
            pass

    # ---- the API

    def _clip(self, params) -> tuple[int, int, Clip | None]:
        t, c = int(params[0]), int(params[1])
        return t, c, self.set.tracks[t].slots[c]

    def _install(self) -> None:
        s = self.set
        h = self.handlers

        h["/live/test"] = lambda p: self._send("/live/test", ("ok",), self.remote)
        h["/live/application/get/version"] = lambda p: s.version

        # Song
        h["/live/song/get/num_tracks"] = lambda p: (len(s.tracks),)
        h["/live/song/get/num_scenes"] = lambda p: (s.n_scenes,)
        h["/live/song/get/tempo"] = lambda p: (s.tempo,)
        h["/live/song/get/signature_numerator"] = lambda p: (s.signature[0],)
        h["/live/song/get/signature_denominator"] = lambda p: (s.signature[1],)

        def track_names(p):
            lo, hi = (0, len(s.tracks)) if not p else (p[0], len(s.tracks) if p[1] == -1 else p[1])
            return tuple(s.tracks[i].name for i in range(lo, hi))
        h["/live/song/get/track_names"] = track_names

        def create_midi_track(p):
            index = p[0] if p else -1
            track = Track(f"{len(s.tracks) + 1}-MIDI", [None] * s.n_scenes)
            if index == -1:
                s.tracks.append(track)
            elif 0 <= index <= len(s.tracks):
                s.tracks.insert(index, track)
            else:
                raise IndexError("Index out of range")
        h["/live/song/create_midi_track"] = create_midi_track

        def create_scene(p):
            s.n_scenes += 1
            for t in s.tracks:
                t.slots.append(None)
        h["/live/song/create_scene"] = create_scene

        # Track (create_track_callback: answers (track_index, *value))
        def track_get(fn):
            def callback(p):
                t = int(p[0])
                return (t, *fn(s.tracks[t], p[1:]))
            return callback

        h["/live/track/get/name"] = track_get(lambda tr, p: (tr.name,))
        h["/live/track/get/has_midi_input"] = track_get(lambda tr, p: (tr.midi,))
        h["/live/track/get/has_audio_input"] = track_get(lambda tr, p: (not tr.midi,))
        h["/live/track/get/clips/name"] = track_get(lambda tr, p: tuple(c.name if c else None for c in tr.slots))
        h["/live/track/get/clips/length"] = track_get(lambda tr, p: tuple(c.length if c else None for c in tr.slots))

        def track_set_name(p):
            s.tracks[int(p[0])].name = p[1]
        h["/live/track/set/name"] = track_set_name

        # Clip slot (answers (track_index, clip_index, *value))
        def has_clip(p):
            t, c, clip = self._clip(p)
            return (t, c, clip is not None)
        h["/live/clip_slot/get/has_clip"] = has_clip

        def create_clip(p):
            t, c, clip = self._clip(p)
            if clip is not None:
                raise RuntimeError("Clip slot already has a clip")
            if not s.tracks[t].midi:
                raise RuntimeError("Cannot create a MIDI clip on an audio track")
            length = float(p[2])
            s.tracks[t].slots[c] = Clip("", [], True, 0.0, length, 0.0, length, True)
        h["/live/clip_slot/create_clip"] = create_clip

        def delete_clip(p):
            t, c, clip = self._clip(p)
            if clip is None:
                raise RuntimeError("Clip slot has no clip")
            s.tracks[t].slots[c] = None
        h["/live/clip_slot/delete_clip"] = delete_clip

        # Clip: a missing clip fails as AbletonOSC's getattr(None, prop) does.
        def need(clip: Clip | None, prop: str) -> Clip:
            if clip is None:
                raise AttributeError(f"'NoneType' object has no attribute '{prop}'")
            return clip

        getters = {
            "name": lambda c: c.name, "length": lambda c: c.length, "is_midi_clip": lambda c: c.is_midi,
            "is_audio_clip": lambda c: not c.is_midi, "loop_start": lambda c: c.loop_start,
            "loop_end": lambda c: c.loop_end, "start_marker": lambda c: c.start_marker,
            "end_marker": lambda c: c.end_marker, "looping": lambda c: c.looping,
        }
        for prop, get in getters.items():
            def getter(p, prop=prop, get=get):
                t, c, clip = self._clip(p)
                return (t, c, get(need(clip, prop)))
            h[f"/live/clip/get/{prop}"] = getter

        def set_marker(clip: Clip, prop: str, value: float) -> None:
            start, end = {"loop_start": ("loop_start", "loop_end"), "loop_end": ("loop_start", "loop_end"),
                          "start_marker": ("start_marker", "end_marker"),
                          "end_marker": ("start_marker", "end_marker")}[prop]
            values = {start: getattr(clip, start), end: getattr(clip, end), prop: value}
            if not values[start] < values[end]:
                raise RuntimeError(f"Invalid {prop}: {value}")
            setattr(clip, prop, value)

        def setter(prop):
            def callback(p):
                t, c, clip = self._clip(p)
                clip = need(clip, prop)
                value = p[2]
                if prop == "name":
                    clip.name = str(value)
                elif prop == "looping":
                    clip.looping = bool(value)
                else:
                    set_marker(clip, prop, float(value))
            return callback
        for prop in ("name", "looping", "loop_start", "loop_end", "start_marker", "end_marker"):
            h[f"/live/clip/set/{prop}"] = setter(prop)

        def get_notes(p):
            t, c, clip = self._clip(p)
            rest = p[2:]
            if len(rest) == 4:
                p0, pspan, t0, tspan = rest
            elif len(rest) == 0:
                p0, pspan, t0, tspan = 0, 127, -8192, 16384
            else:
                raise ValueError("Invalid number of arguments for /clip/get/notes. "
                                 "Either 0 or 4 arguments must be passed.")
            clip = need(clip, "get_notes_extended")
            if not clip.is_midi:
                raise RuntimeError("MIDI clip expected")
            notes = sorted((n for n in clip.notes if p0 <= n[0] < p0 + pspan and t0 <= n[1] < t0 + tspan),
                           key=lambda n: (n[0], n[1]))
            return (t, c, *[v for n in notes for v in n])
        h["/live/clip/get/notes"] = get_notes

        def add_notes(p):
            t, c, clip = self._clip(p)
            clip = need(clip, "add_new_notes")
            values = p[2:]
            for i in range(0, len(values), 5):
                pitch, start, duration, velocity, mute = values[i:i + 5]
                clip.notes.append((int(pitch), float(start), float(duration), float(velocity), bool(mute)))
        h["/live/clip/add/notes"] = add_notes

        # View
        def selected_track(p=()):
            if not isinstance(s.selected_track, int):
                raise ValueError("<Track.Track object> is not in list")  # list.index() of the master track
            return (s.selected_track,)
        h["/live/view/get/selected_track"] = selected_track
        h["/live/view/get/selected_scene"] = lambda p: (s.selected_scene,)
        h["/live/view/get/selected_clip"] = lambda p: (selected_track()[0], s.selected_scene)

        def set_selected_clip(p):
            s.selected_track, s.selected_scene = int(p[0]), int(p[1])
        h["/live/view/set/selected_clip"] = set_selected_clip

    # ---- for the tests

    def addresses(self) -> list[str]:
        return [a for a, _ in self.received]
