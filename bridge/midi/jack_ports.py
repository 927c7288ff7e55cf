"""Frame-accurate virtual MIDI ports on JACK, through libjack's C API (ctypes).

Why not python-rtmidi here: RtMidi stamps incoming JACK MIDI with the time its process
callback ran, not with the frame the event sits at, and writes outgoing messages at the
start of the next period. On a JACK server the host's timeline IS the frame count, and
the frame count does not keep step with the wall clock: each xrun (a late cycle on a busy
machine) makes the frames fall behind by however long the cycle was late. A MIDI clock
timed by arrival then looks as if ticks were lost, and notes sent by the wall clock land
periods away from the frames their beats are at.

These ports work on JACK's own time line instead, in seconds = frames / sample rate:

- input: each event is stamped `(frame of the cycle + its offset) / rate`, the frame the
  sender wrote it at (jack_midi_clock writes each tick at its exact frame);
- output: `send(channel, message, at=t)` writes the message at the frame of `t`, inside
  the cycle that holds it; `at=None` at the start of the next cycle;
- `now()` is the current position on the same line: the first frame of the last cycle
  plus the time since its process callback began, so a Clock built with `now=ports.now`
  maps beats to frames. (JACK's own estimates, jack_frame_time and the cycle times, come
  from a filter that strays by several periods from the real cycles on a busy machine.)

The process callback does the least it can (copy events in, write due events out); the
input callback runs on a thread of its own. Same interface as MidiPorts otherwise (one
client `backline`, ports `backline in`, `backline out` or one per track). Where libjack
cannot be loaded, bridge/midi_ports falls back to python-rtmidi's JACK ports.

The process callback is Python, so it needs the GIL in JACK's thread. Every libjack call
here goes through ctypes, which lets the GIL go while JACK works; a library that waits for
the JACK server while HOLDING the GIL (python-rtmidi's JACK clients do, when they open and
close) stalls the graph until JACK gives up on this client, and must not share a process
with these ports. And JACK ends a client's process thread by cancelling it, which is safe
only while that thread is outside Python: close() lets the callback go idle first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import heapq
import itertools
import logging
import os
import queue
import threading
import time
from typing import Iterable, Sequence

from backline.models.spec import TrackSpec

from backline.bridge.midi.common import (ALL_NOTES_OFF, IN_PORT, InputCallback, MidiUnavailable, Routes, channel_message,
                         no_jack_server, note_sent, output_plan, port_name)

log = logging.getLogger("backline.bridge.midi")

MIDI_TYPE = b"8 bit raw midi"
_PORT_IS_INPUT, _PORT_IS_OUTPUT = 0x1, 0x2
_NO_START_SERVER = 0x01
_WRAP = 1 << 32  # jack_nframes_t is 32 bits: about a day at 48 kHz
FLUSH_TIMEOUT_S = 0.5  # close(): how long queued messages get to leave
SCHEDULING_MARGIN_S = 0.040  # how late the player's thread may wake (a busy machine) and still be in time


class _MidiEvent(ctypes.Structure):
    _fields_ = [("time", ctypes.c_uint32), ("size", ctypes.c_size_t), ("buffer", ctypes.POINTER(ctypes.c_ubyte))]


_MESSAGE = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
_SHUTDOWN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_PROCESS = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p)
_libjack_cache: list = []


def _to_debug(message: bytes) -> None:
    log.debug("jack: %s", message.decode(errors="replace"))


_quiet = _MESSAGE(_to_debug)  # kept alive for the life of the process


def libjack():
    """The libjack python-rtmidi itself uses (its wheel carries one), quietened and with
    the calls used here declared; None where none can be loaded."""
    if _libjack_cache:
        return _libjack_cache[0]
    candidates = []
    try:
        with open("/proc/self/maps") as maps:  # the copy already loaded with rtmidi's module
            candidates += sorted({line.split()[-1] for line in maps if "libjack" in line and "/" in line})
    except OSError:
        pass
    try:
        import rtmidi

        package = os.path.dirname(os.path.dirname(rtmidi.__file__))
        candidates += glob.glob(os.path.join(package, "python_rtmidi*", "libjack*"))
        candidates += glob.glob(os.path.join(os.path.dirname(rtmidi.__file__), ".dylibs", "libjack*"))
    except ImportError:
        pass
    system = ctypes.util.find_library("jack")
    if system:
        candidates.append(system)
    lib = None
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
            break
        except OSError:
            continue
    if lib is not None:
        try:
            _declare(lib)
            lib.jack_set_error_function(_quiet)
            lib.jack_set_info_function(_quiet)
        except AttributeError:
            lib = None
    _libjack_cache.append(lib)
    return lib


def _declare(lib) -> None:
    p, u32, i = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
    signatures = {
        "jack_client_open": (p, [ctypes.c_char_p, i, ctypes.POINTER(i)]),
        "jack_client_close": (i, [p]),
        "jack_activate": (i, [p]),
        "jack_deactivate": (i, [p]),
        "jack_on_shutdown": (None, [p, _SHUTDOWN, p]),
        "jack_set_process_callback": (i, [p, _PROCESS, p]),
        "jack_get_buffer_size": (u32, [p]),
        "jack_get_sample_rate": (u32, [p]),
        "jack_frame_time": (u32, [p]),
        "jack_last_frame_time": (u32, [p]),
        "jack_port_register": (p, [p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_ulong]),
        "jack_port_unregister": (i, [p, p]),
        "jack_port_name": (ctypes.c_char_p, [p]),
        "jack_port_get_buffer": (p, [p, u32]),
        "jack_midi_get_event_count": (u32, [p]),
        "jack_midi_event_get": (i, [ctypes.POINTER(_MidiEvent), p, u32]),
        "jack_midi_clear_buffer": (None, [p]),
        "jack_midi_event_write": (i, [p, u32, ctypes.POINTER(ctypes.c_ubyte), ctypes.c_size_t]),
        "jack_set_error_function": (None, [_MESSAGE]),
        "jack_set_info_function": (None, [_MESSAGE]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes


class JackMidiPorts:
    """One JACK client with the input port and the output port(s). Use `JackMidiPorts.open`;
    `send`, `notes_off`, `now` may be called from any thread."""

    timed = True  # send(..., at=t) places a message at the frame of t
    frame_accurate = True  # input times are the frames the sender wrote at

    def __init__(self, lib, client: int, client_name: str, per_track_ports: bool) -> None:
        self._lib = lib
        self._client = client
        self.client_name = client_name
        self.per_track_ports = per_track_ports
        self.api = "jack"
        self.rate = lib.jack_get_sample_rate(client)
        self.period_frames = lib.jack_get_buffer_size(client)
        self._lock = threading.Lock()  # the queue, the ports table, the frame base
        self._queue: list[tuple[int, int, str, bytes, int]] = []  # (frame, seq, port, bytes, channel)
        self._seq = itertools.count()
        self._outputs: dict[str, int] = {}  # short port name -> jack_port_t*
        self._routes = Routes()
        self._used: set[int] = set()
        self._sounding: set[tuple[int, int]] = set()
        self._callback: InputCallback | None = None
        self._incoming: queue.SimpleQueue = queue.SimpleQueue()
        self._healthy = True
        self._closed = False
        self._idle = False  # close(): the callback returns at once
        raw = lib.jack_frame_time(client)
        self._base = (raw, raw)  # (raw 32-bit frame, its 64-bit value): unwraps frame counters
        self._cycle = (raw, time.monotonic())  # (64-bit first frame, when its callback began) of the last cycle
        self._gone_at: tuple[float, float] | None = None  # (now() then, time.monotonic() then)
        self.cycles = 0
        self.missed_cycles = 0  # cycles the process callback did not see (JACK skipped it)
        self.late_events = 0  # timed messages written after their frame (handed over too late)
        self._last_cycle: int | None = None
        self._event = _MidiEvent()
        self._process_cb = _PROCESS(self._process)  # referenced as long as the client lives
        self._shutdown_cb = _SHUTDOWN(self._shutdown)
        self._input_port = self._register(port_name(client_name, IN_PORT), _PORT_IS_INPUT)
        self.port_names: list[str] = []
        self._dispatcher = threading.Thread(target=self._dispatch, name="backline-midi-in", daemon=True)

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, tracks: Sequence[TrackSpec], *, client_name: str = "backline",
             per_track_ports: bool = False) -> "JackMidiPorts":
        """MidiUnavailable when no server runs; RuntimeError when libjack cannot be loaded
        (bridge/midi_ports then falls back to python-rtmidi's JACK ports)."""
        lib = libjack()
        if lib is None:
            raise RuntimeError("libjack cannot be loaded")
        os.environ.setdefault("JACK_NO_START_SERVER", "1")  # never start a server behind the user's back
        status = ctypes.c_int(0)
        client = lib.jack_client_open(client_name.encode(), _NO_START_SERVER, ctypes.byref(status))
        if not client:
            raise MidiUnavailable(no_jack_server())
        try:
            ports = cls(lib, client, client_name, per_track_ports)
            lib.jack_on_shutdown(client, ports._shutdown_cb, None)
            if lib.jack_set_process_callback(client, ports._process_cb, None) != 0:
                raise MidiUnavailable("the JACK server refused a process callback; use --midi-api alsa")
            ports._retarget_outputs(tracks)
            if lib.jack_activate(client) != 0:
                raise MidiUnavailable("the JACK server refused to activate the client; use --midi-api alsa")
            ports._dispatcher.start()
            ports._name_ports()
        except BaseException:
            lib.jack_client_close(client)
            raise
        return ports

    def _register(self, name: str, flags: int) -> int:
        port = self._lib.jack_port_register(self._client, name.encode(), MIDI_TYPE, flags, 0)
        if not port:
            raise MidiUnavailable(f"the JACK server refused the port '{name}'; restart it or use --midi-api alsa")
        return port

    def _retarget_outputs(self, tracks: Sequence[TrackSpec]) -> list[int]:
        """Register the output ports the tracks need, switch the routes to them, and return
        the ports no longer used (the caller unregisters them once a cycle has passed)."""
        wanted = output_plan(self.client_name, tracks, self.per_track_ports)
        outputs = {name: self._outputs.get(name) or self._register(name, _PORT_IS_OUTPUT) for name in wanted}
        routes = Routes(wanted, self.per_track_ports)
        with self._lock:
            old = [port for name, port in self._outputs.items() if name not in outputs]
            self._outputs, self._routes = outputs, routes
        return old

    def _name_ports(self) -> None:
        name = self._lib.jack_port_name
        with self._lock:
            outputs = list(self._outputs.values())
        self.port_names = [name(self._input_port).decode()] + [name(p).decode() for p in outputs]

    # ------------------------------------------------------------------ time

    @property
    def period_s(self) -> float:
        return self.period_frames / self.rate if self.rate else 0.0

    @property
    def output_latency_s(self) -> float:
        return 0.0  # messages go out at their own frame: nothing to send early for

    @property
    def schedule_ahead_s(self) -> float:
        """How long before its time a timed message is handed over: the cycle that holds
        its frame begins up to a period before it, a cycle can come early after a late
        one, and the player's thread itself can wake late on a busy machine.
        Handed over later, it goes out at the start of the next cycle."""
        return 2 * self.period_s + SCHEDULING_MARGIN_S

    def now(self) -> float:
        """The current position on JACK's time line, in seconds (frames / rate): the last
        cycle's first frame plus the time since its callback began. After a late cycle it
        steps back by as much as the cycle was late (the frames fell behind the wall clock)."""
        if self._gone_at is not None:  # the server went away: carry on by the wall clock
            then, wall = self._gone_at
            return then + (time.monotonic() - wall)
        frame, began = self._cycle
        return frame / self.rate + (time.monotonic() - began)

    def _unwrap(self, raw: int) -> int:
        base_raw, base = self._base
        delta = ((raw - base_raw + (_WRAP >> 1)) % _WRAP) - (_WRAP >> 1)
        return base + delta

    # ------------------------------------------------------------------ the process callback

    def _process(self, nframes: int, _arg) -> int:
        """JACK's thread, once a cycle: events in (stamped), due events out. Never raises."""
        if self._idle:  # closing: only clear the outputs (a buffer left as it is plays again)
            try:
                for port in self._outputs.values():
                    self._lib.jack_midi_clear_buffer(self._lib.jack_port_get_buffer(port, nframes))
            except Exception:  # never raise into JACK's thread
                pass
            self.cycles += 1
            return 0
        try:
            began = time.monotonic()
            lib = self._lib
            start = self._unwrap(lib.jack_last_frame_time(self._client))
            self._cycle = (start, began)
            self._base = (start % _WRAP, start)
            if self._last_cycle is not None and start - self._last_cycle > nframes:
                self.missed_cycles += (start - self._last_cycle) // nframes - 1
            self._last_cycle = start
            self.cycles += 1
            buffer = lib.jack_port_get_buffer(self._input_port, nframes)
            count = lib.jack_midi_get_event_count(buffer)
            event = self._event
            for index in range(count):
                if lib.jack_midi_event_get(ctypes.byref(event), buffer, index) == 0 and event.size:
                    data = ctypes.string_at(event.buffer, event.size)
                    self._incoming.put((list(data), (start + event.time) / self.rate))
            end = start + nframes
            due = []
            with self._lock:
                outputs = self._outputs
                while self._queue and self._queue[0][0] < end:
                    due.append(heapq.heappop(self._queue))
            buffers = {}
            for name, port in outputs.items():
                out = lib.jack_port_get_buffer(port, nframes)
                lib.jack_midi_clear_buffer(out)
                buffers[name] = out
            offsets = dict.fromkeys(buffers, 0)  # JACK wants each port's events in frame order
            for frame, _, name, data, _ in due:
                out = buffers.get(name)
                if out is None:
                    continue
                if 0 < frame < start:
                    self.late_events += 1
                offset = max(offsets[name], min(max(frame - start, 0), nframes - 1))
                offsets[name] = offset
                raw = (ctypes.c_ubyte * len(data)).from_buffer_copy(data)
                lib.jack_midi_event_write(out, offset, raw, len(data))
        except Exception as exc:  # never raise into JACK's thread
            log.error("JACK process callback: %s: %s", type(exc).__name__, exc)
        return 0

    def _shutdown(self, _arg) -> None:
        """From JACK's thread: the server stopped (or dropped us)."""
        try:
            if self._healthy and not self._closed:
                log.warning("the JACK server went away; virtual MIDI is off (OSC still serves); "
                            "restart backline serve once JACK runs again")
            if self._gone_at is None:
                frame, _ = self._cycle
                self._gone_at = (frame / self.rate if self.rate else 0.0, time.monotonic())
            self._healthy = False
        except Exception:  # never raise into JACK's thread
            pass

    # ------------------------------------------------------------------ input

    def set_input_callback(self, callback: InputCallback | None) -> None:
        """callback(message bytes, time on `now()`'s line: the frame it came at), on a
        thread of its own. Clock, transport and Song Position pass; sysex and active
        sensing do not. Until a callback is set, input is dropped (never queued)."""
        self._callback = callback

    def _dispatch(self) -> None:
        while True:
            item = self._incoming.get()
            if item is None:
                return
            message, when = item
            callback = self._callback
            if callback is None or not message or message[0] in (0xF0, 0xFE):
                continue
            try:
                callback(message, when)
            except Exception as exc:  # the input thread must survive a bad callback
                log.error("MIDI input callback failed: %s: %s", type(exc).__name__, exc)

    # ------------------------------------------------------------------ output

    @property
    def healthy(self) -> bool:
        return self._healthy and not self._closed

    @property
    def channels(self) -> list[int]:
        return self._routes.channels()

    def send(self, channel: int, message: Sequence[int], at: float | None = None) -> bool:
        """Send one message on `channel` (0-15): at time `at` on `now()`'s line (its frame),
        or at the start of the next cycle. A channel voice message gets `channel` in its
        status byte. False (nothing sent) when no port carries the channel or JACK is gone."""
        data = channel_message(channel, message)
        frame = 0 if at is None else max(1, round(at * self.rate))  # 0 sorts before every timed message
        with self._lock:
            if not self.healthy:
                return False
            name = self._routes.port(channel)
            if name is None:
                return False
            heapq.heappush(self._queue, (frame, next(self._seq), name, bytes(data), channel))
            note_sent(self._used, self._sounding, channel, data)
            return True

    def notes_off(self, channels: Iterable[int] | None = None) -> None:
        """Drop the timed messages not out yet on those channels, then at once a note-off
        for every note it sent that still sounds and All Notes Off (CC 123) on every
        channel it has used (or on `channels`)."""
        with self._lock:
            chosen = sorted(self._used if channels is None else set(channels))
            kept, dropped = [], []
            for item in self._queue:
                (kept if item[0] == 0 or item[4] not in chosen else dropped).append(item)
            heapq.heapify(kept)
            self._queue = kept
            # `_sounding` counted every queued message as sent: undo the dropped ones, last first.
            for _, _, _, data, channel in sorted(dropped, key=lambda item: item[1], reverse=True):
                kind = data[0] & 0xF0
                if kind == 0x90 and len(data) > 2 and data[2] > 0:
                    self._sounding.discard((channel, data[1]))
                elif kind in (0x80, 0x90) and len(data) > 1:
                    self._sounding.add((channel, data[1]))
            sounding = sorted(n for n in self._sounding if n[0] in chosen)
        for channel, pitch in sounding:
            self.send(channel, [0x80, pitch, 0])
        for channel in chosen:
            self.send(channel, [0xB0, ALL_NOTES_OFF, 0])
        with self._lock:
            self._sounding = {n for n in self._sounding if n[0] not in chosen}

    def retarget(self, tracks: Sequence[TrackSpec]) -> None:
        """Another model with other tracks: silence everything, then (with per-track ports)
        register and unregister ports to match; `port_names` follows."""
        if self._closed:
            return
        self.notes_off()
        with self._lock:
            self._used.clear()
            self._sounding.clear()
        if not self._healthy:
            return
        if self.per_track_ports:
            self._flush()  # the note-offs reach the peers before the graph changes
        old = self._retarget_outputs(tracks)
        if old:
            self._wait_cycles(2)  # the process callback no longer holds the old ports
            for port in old:
                self._lib.jack_port_unregister(self._client, port)
        self._name_ports()

    def close(self) -> None:
        """notes_off(), then the client goes; again is a no-op."""
        if self._closed:
            return
        if self._used and self.healthy:
            self.notes_off()
            self._flush()
        self._closed = True
        # JACK cancels the process thread on deactivation: have it between cycles, not
        # waiting for the GIL inside the callback (see the module doc).
        self._idle = True
        self._wait_cycles(2)
        if self.missed_cycles or self.late_events:
            log.debug("JACK MIDI: %d of %d cycles missed by the process callback (their input lost), "
                     "%d messages written after their frame", self.missed_cycles, self.cycles, self.late_events)
        if self._healthy:
            self._lib.jack_deactivate(self._client)
            self._lib.jack_client_close(self._client)
        # else: the server is gone; closing would wait for it (the process ends soon anyway)
        self._incoming.put(None)
        self._dispatcher.join(1.0)

    def _flush(self) -> None:
        """Wait until every queued message is out (or the server stops answering)."""
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while self._healthy and time.monotonic() < deadline:
            with self._lock:
                pending = bool(self._queue)
            if not pending:
                self._wait_cycles(1)  # the last cycle's messages have been read by the peers
                return
            time.sleep(0.002)

    def _wait_cycles(self, n: int) -> None:
        target = self.cycles + n
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while self._healthy and self.cycles < target and time.monotonic() < deadline:
            time.sleep(0.002)

    def __repr__(self) -> str:
        return f"JackMidiPorts({self.port_names}, healthy={self.healthy})"
