"""What every MIDI backend shares: port names, the output plan and its channel routes,
channel messages and the book of sounding notes, and the one error they raise."""

from __future__ import annotations

import os
import re
import sys
from typing import Callable, Sequence

from backline.models.errors import BacklineError
from backline.models.spec import TrackSpec

DRUM_CHANNEL = 9  # General MIDI channel 10, 0-based
ALL_NOTES_OFF = 123
IN_PORT = "in"
FLUSH_S = 0.02  # a few JACK periods: sent messages have left before ports open or close
OUT_PORT = "out"

InputCallback = Callable[[list[int], float], None]


class MidiUnavailable(BacklineError):
    """The asked-for MIDI backend cannot give us ports; str() says what to do."""


def no_jack_server() -> str:
    server = os.environ.get("JACK_DEFAULT_SERVER", "default")
    return (f"no JACK server is running (server '{server}'); start one "
            "(jackd -d alsa / qjackctl) or use --midi-api alsa")


def default_api() -> str:
    """CoreMIDI on macOS, ALSA elsewhere (JACK only when asked for)."""
    return "coremidi" if sys.platform == "darwin" else "alsa"


def track_channel(track: TrackSpec) -> int:
    """The 0-based channel a track sends on: its own; a drum track always on 9."""
    return DRUM_CHANNEL if track.is_drum else track.channel


def port_name(client_name: str, suffix: str) -> str:
    """'backline in', 'backline bass': lower case, no ':' (JACK's client/port separator)."""
    suffix = re.sub(r"\s+", " ", suffix.replace(":", " ")).strip().lower() or "track"
    return f"{client_name} {suffix}"


def output_plan(client_name: str, tracks: Sequence[TrackSpec], per_track_ports: bool) -> dict[str, list[int]]:
    """The output ports the tracks need, each with the channels it carries: one port for
    all tracks, or one per track (two tracks of one name both get a port)."""
    if not per_track_ports:
        return {port_name(client_name, OUT_PORT): [track_channel(t) for t in tracks]}
    wanted: dict[str, list[int]] = {}
    for track in tracks:
        name = port_name(client_name, track.name)
        while name in wanted:
            name += "'"
        wanted[name] = [track_channel(track)]
    return wanted


class Routes:
    """Which output port carries each channel, from an `output_plan`. With a single port,
    a channel no track uses goes out on it too; with a port per track, nowhere."""

    def __init__(self, plan: dict[str, list[int]] | None = None, per_track_ports: bool = False) -> None:
        plan = plan or {}
        self._port: dict[int, str] = {}
        for name, channels in plan.items():
            for channel in channels:
                self._port.setdefault(channel, name)
        self._default = next(iter(plan), None) if not per_track_ports else None

    def channels(self) -> list[int]:
        """The channels the tracks use, in track order."""
        return list(self._port)

    def port(self, channel: int) -> str | None:
        """The short name of the port for `channel`, or None where none carries it."""
        return self._port.get(channel, self._default)


def channel_message(channel: int, message: Sequence[int]) -> list[int]:
    """`message` as bytes to send on `channel` (0-15): a channel voice message gets the
    channel in its status byte, a system message stays as it is. ValueError for a bad
    channel or an empty message."""
    if not 0 <= channel <= 15 or not message:
        raise ValueError(f"bad MIDI channel {channel} or empty message")
    data = [int(b) & 0xFF for b in message]
    if 0x80 <= data[0] < 0xF0:
        data[0] = (data[0] & 0xF0) | channel
    return data


def note_sent(used: set[int], sounding: set[tuple[int, int]], channel: int, data: Sequence[int]) -> None:
    """Book a message as sent (as channel_message made it): a channel message's channel is
    used, a note-on starts a sounding note and a note-off (or note-on at velocity 0) ends
    it; what All Notes Off undoes."""
    status = data[0]
    if not 0x80 <= status < 0xF0:
        return
    used.add(channel)
    kind = status & 0xF0
    if kind == 0x90 and len(data) > 2 and data[2] > 0:
        sounding.add((channel, data[1]))
    elif kind in (0x80, 0x90) and len(data) > 1:
        sounding.discard((channel, data[1]))
