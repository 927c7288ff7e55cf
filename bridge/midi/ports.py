"""Virtual MIDI ports (python-rtmidi): what a DAW sees of `backline serve`.

One input port, `backline in` (the melody a DAW plays, and its MIDI clock: 0xF8, Start,
Continue, Stop and Song Position all come through), and the output: `backline out`, one
channel per accompaniment track (the track's own channel; drums on channel index 9), or
with `per_track_ports` one port per track, `backline <track name>`, each sending on its
track's channel.

Every python-rtmidi object is a client of its own in JACK and ALSA, so the ports belong to
`backline`, `backline-01`... in JACK (JACK renames a taken client name); `port_names` holds
the full names the backend shows.

JACK: `MidiPorts.open("jack", ...)` gives the frame-accurate ports of bridge/midi/jack_ports.py
(one client, times on JACK's frame line, messages written at their frame) wherever libjack
can be loaded, and these python-rtmidi ports otherwise (`frames=False` asks for them).
Both have `now()`: the time line of their input times and of `send(..., at=)` (here
time.monotonic(), arrival times; `timed` False: a message goes out when it is sent).

JACK through python-rtmidi: nothing here starts a server (JACK_NO_START_SERVER). A small port-less client
(`backline-watch`, through libjack's C API, the very library python-rtmidi uses) tells
whether a server runs before any port opens, so a missing server is one quick
MidiUnavailable rather than a burst of JACK's own messages, and its shutdown callback
says when the server goes away: the ports then turn unhealthy, `send` does nothing (JACK's
output ring buffer would never drain) and one line is logged. JACK's messages are routed
to this module's logger at debug level.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import threading
import time
from typing import Callable, Iterable, Sequence

import rtmidi

from backline.models.spec import TrackSpec

from backline.bridge.midi.common import (ALL_NOTES_OFF, FLUSH_S, IN_PORT, InputCallback,
                                         MidiUnavailable, Routes, channel_message, default_api, no_jack_server,
                                         note_sent, output_plan, port_name)

log = logging.getLogger("backline.bridge.midi")

API_NAMES = {"alsa": rtmidi.API_LINUX_ALSA, "jack": rtmidi.API_UNIX_JACK, "coremidi": rtmidi.API_MACOSX_CORE}
class MidiPorts:
    """The open virtual ports. Use `MidiPorts.open`; `send` may be called from any thread."""

    timed = False  # send() sends at once: the caller sends each message when it is due
    frame_accurate = False  # input times are arrival times
    now = staticmethod(time.monotonic)  # the time line of input times

    def __init__(self, api: str, client_name: str, per_track_ports: bool) -> None:
        self.api = api
        self.client_name = client_name
        self.per_track_ports = per_track_ports
        self.port_names: list[str] = []
        self._lock = threading.RLock()
        self._input: rtmidi.MidiIn | None = None
        self._lister: rtmidi.MidiOut | None = None
        self._outputs: dict[str, rtmidi.MidiOut] = {}  # short port name -> port
        self._routes = Routes()
        self._full: dict[str, str] = {}  # short port name -> full name
        self._used: set[int] = set()
        self._sounding: set[tuple[int, int]] = set()  # (channel, pitch)
        self._callback: InputCallback | None = None
        self._healthy = True
        self._closed = False
        self._watch: _JackWatch | None = None
        self._full_in = port_name(client_name, IN_PORT)

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, api: str, tracks: Sequence[TrackSpec], *, client_name: str = "backline",
             per_track_ports: bool = False, frames: bool = True):
        """The ports on `api`; on JACK the frame-accurate ones unless `frames` is False or
        libjack cannot be loaded (then these, through python-rtmidi)."""
        if api not in API_NAMES:
            raise MidiUnavailable(f"unknown MIDI API {api!r}; pick one of {', '.join(API_NAMES)} or none")
        if api == "jack" and frames:
            from backline.bridge.midi.jack_ports import JackMidiPorts

            try:
                return JackMidiPorts.open(tracks, client_name=client_name, per_track_ports=per_track_ports)
            except RuntimeError as exc:  # no usable libjack: python-rtmidi brings its own JACK support
                log.info("frame-accurate JACK ports unavailable (%s); using python-rtmidi's", exc)
        _check_backend(api)
        ports = cls(api, client_name, per_track_ports)
        try:
            if api == "jack":
                ports._watch = _JackWatch.open(f"{client_name}-watch", ports._backend_gone)
            ports._input = _new(rtmidi.MidiIn, api, client_name)
            # A client without ports that lists the input ports (the MidiIn lists the
            # outputs): made now, so that naming ports never adds a client to the graph
            # later (a graph change while MIDI flows can garble what RtMidi receives).
            ports._lister = _new(rtmidi.MidiOut, api, client_name)
            before_in, before_out = ports._list_ports()
            ports._input.ignore_types(sysex=True, timing=False, active_sense=True)
            ports._input.set_callback(ports._on_input)
            ports._input.open_virtual_port(port_name(client_name, IN_PORT))
            ports._retarget_outputs(tracks)
            ports._name_ports(before_in, before_out)
        except BaseException:
            ports._release()
            raise
        return ports

    def _list_ports(self) -> tuple[set[str], set[str]]:
        """(input ports, output ports) as the backend names them, everyone's."""
        try:
            return set(self._lister.get_ports()), set(self._input.get_ports())
        except (rtmidi.RtMidiError, AttributeError):
            return set(), set()

    def _retarget_outputs(self, tracks: Sequence[TrackSpec]) -> None:
        """Open and close output ports to match the tracks; rebuild the channel routes."""
        wanted = output_plan(self.client_name, tracks, self.per_track_ports)
        for name in [n for n in self._outputs if n not in wanted]:
            _close_quietly(self._outputs.pop(name), self._healthy)
            self._full.pop(name, None)
        for name in wanted:
            if name not in self._outputs:
                out = _new(rtmidi.MidiOut, self.api, self.client_name)
                out.open_virtual_port(name)
                self._outputs[name] = out
        self._routes = Routes(wanted, self.per_track_ports)

    def _name_ports(self, before_in: set[str] | None = None, before_out: set[str] | None = None) -> None:
        """Full names as the backend lists them (new ones, by their short names), else short."""
        after_in, after_out = self._list_ports()
        new_in = after_in - (before_in or set())
        new_out = after_out - (before_out or set())
        if before_in is not None or not self.port_names:
            self._full_in = _match(port_name(self.client_name, IN_PORT), new_in, self.api)
        names = [self._full_in]
        for short in self._outputs:
            if short not in self._full:
                self._full[short] = _match(short, new_out, self.api)
            names.append(self._full[short])
        self.port_names = names

    # ------------------------------------------------------------------ input

    def set_input_callback(self, callback: InputCallback | None) -> None:
        """callback(message bytes, time.monotonic() at arrival), on the backend's thread.
        Clock, Start, Continue, Stop and Song Position are passed on; sysex and active
        sensing are not. Until a callback is set, input is dropped (never queued)."""
        self._callback = callback

    def _on_input(self, event, _data=None) -> None:
        arrival = time.monotonic()
        callback = self._callback
        if callback is None:
            return
        try:
            callback(list(event[0]), arrival)
        except Exception as exc:  # the backend's thread must survive a bad callback
            log.error("MIDI input callback failed: %s: %s", type(exc).__name__, exc)

    # ------------------------------------------------------------------ output

    @property
    def healthy(self) -> bool:
        return self._healthy and not self._closed

    @property
    def output_latency_s(self) -> float:
        """How long after `send` a message sounds at the port: one period on JACK (which
        writes it at the start of the next process cycle), about nothing elsewhere. The
        player sends this much early so that notes sound on their beat."""
        return self._watch.period_s if self._watch is not None else 0.0

    @property
    def channels(self) -> list[int]:
        """The channels that have a port, in track order."""
        return self._routes.channels()

    def send(self, channel: int, message: Sequence[int]) -> bool:
        """Send one message on `channel` (0-15) through the port for that channel. A channel
        voice message gets `channel` in its status byte; a system message goes as it is.
        False (and nothing sent) when no port carries the channel or the backend is gone."""
        data = channel_message(channel, message)
        with self._lock:
            if not self.healthy:
                return False
            name = self._routes.port(channel)
            if name is None:
                return False
            self._outputs[name].send_message(data)
            note_sent(self._used, self._sounding, channel, data)
            return True

    def notes_off(self, channels: Iterable[int] | None = None) -> None:
        """A note-off for every note it sent that still sounds, then All Notes Off (CC 123)
        on every channel it has used (or on `channels`)."""
        with self._lock:
            chosen = sorted(self._used if channels is None else set(channels))
            for channel, pitch in sorted(self._sounding):
                if channel in chosen:
                    self.send(channel, [0x80, pitch, 0])
            for channel in chosen:
                self.send(channel, [0xB0, ALL_NOTES_OFF, 0])
            self._sounding = {n for n in self._sounding if n[0] not in chosen}

    def retarget(self, tracks: Sequence[TrackSpec]) -> None:
        """Another model with other tracks: silence everything, then (with per-track ports)
        open and close ports to match; `port_names` follows."""
        with self._lock:
            if self._closed:
                return
            self.notes_off()
            self._used.clear()
            self._sounding.clear()
            if not self._healthy:
                return
            before_out = self._list_ports()[1]
            if self.per_track_ports:
                time.sleep(FLUSH_S)  # let the note-offs reach the peers before the graph changes
            self._retarget_outputs(tracks)
            self._name_ports(None, before_out)

    def close(self) -> None:
        """notes_off(), then close every port; again is a no-op."""
        with self._lock:
            if self._closed:
                return
            if self._used and self.healthy:
                self.notes_off()
                time.sleep(FLUSH_S)  # the note-offs reach the peers before the ports go
            self._closed = True
            self._release()

    def _release(self) -> None:
        if self._input is not None:
            self._input.cancel_callback()
            _close_quietly(self._input, self._healthy)
            self._input = None
        for out in self._outputs.values():
            _close_quietly(out, self._healthy)
        if self._lister is not None:
            _close_quietly(self._lister, self._healthy)
            self._lister = None
        self._outputs.clear()
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def _backend_gone(self) -> None:
        """From the backend's thread: the JACK server stopped (or dropped us)."""
        if self._healthy and not self._closed:
            self._healthy = False
            log.warning("the JACK server went away; virtual MIDI is off (OSC still serves); "
                        "restart backline serve once JACK runs again")
        self._healthy = False

    def __repr__(self) -> str:
        return f"MidiPorts({self.api}, {self.port_names}, healthy={self.healthy})"


# ---------------------------------------------------------------------- helpers

_abandoned: list = []  # rtmidi objects of a dead JACK server: closing one blocks a second


def _close_quietly(port, healthy: bool) -> None:
    if not healthy:
        # RtMidi's JACK close waits a second for a process callback that will never run;
        # keep the object instead (the process is about to end or to carry on without it).
        _abandoned.append(port)
        return
    try:
        port.close_port()
    except rtmidi.RtMidiError as exc:
        log.debug("closing a MIDI port: %s", exc)
    port.delete()


def _new(kind, api: str, client_name: str):
    try:
        return kind(API_NAMES[api], name=client_name)
    except rtmidi.RtMidiError as exc:
        raise MidiUnavailable(_explain(api, str(exc))) from None


def _explain(api: str, error: str) -> str:
    if api == "jack":
        return ("no JACK server is running; start one (jackd -d alsa / qjackctl) or use --midi-api alsa "
                f"({error.strip()})")
    if api == "alsa":
        return f"the ALSA sequencer refused a client ({error.strip()}); use --midi-api jack or none"
    return f"CoreMIDI refused a client ({error.strip()}); use --midi-api none"


def _check_backend(api: str) -> None:
    if API_NAMES[api] not in rtmidi.get_compiled_api():
        what = {"alsa": "ALSA", "jack": "JACK", "coremidi": "CoreMIDI"}[api]
        raise MidiUnavailable(f"this Python's python-rtmidi has no {what} support; "
                              f"use --midi-api {default_api() if api != default_api() else 'none'} or none")
    if api == "alsa" and not os.path.exists("/dev/snd/seq"):
        raise MidiUnavailable("ALSA sequencer not available (/dev/snd/seq missing; modprobe snd-seq); "
                              "use --midi-api jack or none")
    if api == "jack":
        os.environ.setdefault("JACK_NO_START_SERVER", "1")  # never start a server behind the user's back


def _match(short: str, candidates: set[str], api: str) -> str:
    """The one backend name among the new ports that is this port's."""
    if api == "jack":
        found = [c for c in candidates if c.split(":", 1)[-1] == short]
    elif api == "alsa":  # 'client:port client_id:port_id'
        found = [c for c in candidates if re.fullmatch(rf".*:{re.escape(short)} \d+:\d+", c)]
    else:
        found = [c for c in candidates if c == short or c.endswith(" " + short) or c.endswith(":" + short)]
    return found[0] if len(found) == 1 else short


# ---------------------------------------------------------------------- JACK watch

_SHUTDOWN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_JACK_NO_START_SERVER = 0x01


def _libjack():
    from backline.bridge.midi.jack_ports import libjack  # the one loader of libjack, shared with the frame-accurate ports

    return libjack()


class _JackWatch:
    """A JACK client with no ports whose shutdown callback reports the server's end."""

    def __init__(self, lib, client: int, on_gone: Callable[[], None]) -> None:
        self._lib = lib
        self._client = client
        self._on_gone = on_gone
        self._gone = False
        self._callback = _SHUTDOWN(self._shutdown)  # referenced as long as the client lives
        lib.jack_on_shutdown(client, self._callback, None)

    @classmethod
    def open(cls, name: str, on_gone: Callable[[], None]) -> "_JackWatch | None":
        lib = _libjack()
        if lib is None:
            return None  # rtmidi's own attempt reports a missing server
        status = ctypes.c_int(0)
        client = lib.jack_client_open(name.encode(), _JACK_NO_START_SERVER, ctypes.byref(status))
        if not client:
            raise MidiUnavailable(no_jack_server())
        return cls(lib, client, on_gone)

    @property
    def period_s(self) -> float:
        """The server's period: JACK plays what a client sends at the next period's start."""
        if not self._client or self._gone:
            return 0.0
        rate = self._lib.jack_get_sample_rate(self._client)
        return self._lib.jack_get_buffer_size(self._client) / rate if rate else 0.0

    def _shutdown(self, _arg) -> None:
        self._gone = True
        try:
            self._on_gone()
        except Exception:  # never raise into JACK's thread
            pass

    def close(self) -> None:
        if self._client:
            if not self._gone:
                self._lib.jack_client_close(self._client)
            self._client = 0
