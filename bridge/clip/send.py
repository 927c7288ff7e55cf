"""`backline send`: accompany a MIDI file through a running bridge, over OSC.

The client a DAW script would be, in a few lines: ping, send the clip in chunks, collect
the reply stream on the same socket, write melody + accompaniment to a MIDI file.
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, Deque, Sequence

from pythonosc.osc_message import OscMessage

from backline.models.errors import BacklineError
from backline.models.midi import pick_melody_track, read_midi, write_midi
from backline.models.meter import Meter
from backline.models.notes import Note
from backline.models.spec import TrackSpec

from backline.bridge.osc import protocol

PING_TIMEOUT_S = 2.0
# UDP has no flow control: a short pause between note messages keeps a long clip from
# overrunning the server's receive buffer while it is parsing.
PAUSE_BETWEEN_MESSAGES_S = 0.0005


# Per socket: the messages of a bundle that arrived but were not returned yet.
_pending: "weakref.WeakKeyDictionary[socket.socket, Deque[OscMessage]]" = weakref.WeakKeyDictionary()


def receive_message(sock: socket.socket, deadline: float) -> OscMessage | None:
    """The next OSC message on `sock`, or None once the `time.monotonic()` deadline has
    passed with nothing received left to return. A bundle's messages come one by one, in
    order (the rest wait for the next call); datagrams that are not OSC are skipped."""
    pending = _pending.setdefault(sock, collections.deque())
    while not pending:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(65535)
        except (socket.timeout, ConnectionError):  # ConnectionError: Windows' ICMP reset
            continue
        try:
            pending.extend(protocol.read_datagram(data))
        except Exception:
            continue
    return pending.popleft()


def drain(sock: socket.socket) -> None:
    """Drop whatever arrived on `sock` and was not read yet (late answers, stray errors)."""
    _pending.pop(sock, None)
    sock.setblocking(False)
    try:
        while True:
            sock.recvfrom(65535)
    except (BlockingIOError, ConnectionError):
        pass
    finally:
        sock.setblocking(True)


@dataclass
class Reply:
    """The accompaniment as it arrived: track headers and their notes."""

    length_beats: float = 0.0
    tracks: list[TrackSpec] = field(default_factory=list)
    notes: dict[int, list[Note]] = field(default_factory=dict)
    expected_notes: int | None = None  # from /backline/accomp/end


class BridgeClient:
    """One bound UDP socket: requests go out of it and replies come back to it."""

    def __init__(self, host: str, port: int) -> None:
        self.label = f"{host}:{port}"
        try:
            family, _, _, _, self.server = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
        except socket.gaierror as exc:
            raise BacklineError(f"cannot find host {host!r} ({exc.strerror}); use --host 127.0.0.1") from None
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # a burst of replies
        self.sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))

    def close(self) -> None:
        self.sock.close()

    def send(self, address: str, *args: Any) -> None:
        self.sock.sendto(protocol.message(address, *args).dgram, self.server)

    def receive(self, deadline: float) -> OscMessage | None:
        """The next OSC message, or None once the deadline has passed."""
        return receive_message(self.sock, deadline)

    def ping(self) -> list[Any]:
        """The pong's arguments (id, version, model, provider); BacklineError if none comes.
        Then asks for replies in bundles: a server older than the `bundle` setting answers
        `unknown_setting` (id ""), which `_collect` passes over, and replies as before."""
        ping_id = _new_id("ping")
        self.send(protocol.REPLY_TO)  # replies to this socket, whatever others registered
        self.send(protocol.PING, ping_id)
        deadline = time.monotonic() + PING_TIMEOUT_S
        while (msg := self.receive(deadline)) is not None:
            if msg.address == protocol.PONG and msg.params[:1] == [ping_id]:
                self.send(protocol.SET, "bundle", 1)
                return msg.params
        raise BacklineError(
            f"no Backline bridge answered at {self.label} within {PING_TIMEOUT_S:g} s; "
            "start one with: backline serve"
        )

    def accompany(self, notes: Sequence[Note], length_beats: float, model: str | None, seed: int,
                  tempo: float, timeout: float, meter: str = "") -> Reply:
        """`meter`: the notes' meter, e.g. '6/8' ('': 4/4)."""
        clip_id = _new_id("clip")
        # reply_to again with every clip: a pin is forgotten after 10 idle minutes (a
        # companion waiting in a DAW idles longer), and the clip's replies must come here.
        request = protocol.clip_request(clip_id, notes, float(length_beats), model or "", seed, float(tempo), meter,
                                        lead=[protocol.message(protocol.REPLY_TO)])
        for index, packet in enumerate(request):
            if index:
                time.sleep(PAUSE_BETWEEN_MESSAGES_S)
            self.sock.sendto(packet.dgram, self.server)
        return self._collect(clip_id, time.monotonic() + timeout, timeout)

    def _collect(self, clip_id: str, deadline: float, timeout: float) -> Reply:
        reply = Reply()
        while (msg := self.receive(deadline)) is not None:
            args = msg.params
            if args[:1] != [clip_id]:
                continue
            if msg.address == protocol.ERROR:
                raise BacklineError(f"the bridge answered {args[1]}: {args[2]}")
            if msg.address == protocol.ACCOMP_BEGIN:
                reply.length_beats = args[2]
            elif msg.address == protocol.ACCOMP_TRACK:
                _, index, name, program, channel, is_drum = args
                reply.tracks.append(TrackSpec(name, program, channel, bool(is_drum)))
                reply.notes.setdefault(index, [])
            elif msg.address == protocol.ACCOMP_NOTES:
                values = args[2:]
                reply.notes.setdefault(args[1], []).extend(
                    Note(*values[i:i + 3], values[i + 3], bool(values[i + 4])) for i in range(0, len(values), 5)
                )
            elif msg.address == protocol.ACCOMP_END:
                reply.expected_notes = args[1] if len(args) > 1 else None
                return _checked(reply)
        raise BacklineError(
            f"the bridge at {self.label} did not finish the accompaniment within {timeout:g} s; "
            "a long melody may need more: try --timeout 60"
        )


def _checked(reply: Reply) -> Reply:
    got = sum(len(n) for n in reply.notes.values())
    if reply.expected_notes is not None and got != reply.expected_notes:
        raise BacklineError(
            f"{reply.expected_notes - got} of {reply.expected_notes} accompaniment notes were lost on "
            "the way (UDP); run the command again"
        )
    return reply


def _new_id(kind: str) -> str:
    return f"send-{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def cmd_send(args: argparse.Namespace) -> int:
    score = read_midi(args.melody)
    melody = pick_melody_track(score, args.track)
    client = BridgeClient(args.host, args.port)
    try:
        _, _, model, provider = client.ping()
        length = max(n.end for n in melody.notes)
        tempo = min(max(score.tempo_bpm, 1.0), 999.0)  # the protocol's range; clip mode does not use it
        meter = getattr(args, "meter", None) or Meter(*score.time_signature)
        reply = client.accompany(melody.notes, length, args.model, args.seed, tempo, args.timeout,
                                 meter=str(meter))
    finally:
        client.close()
    tracks = [(spec, sorted(reply.notes.get(i, []), key=lambda n: (n.start, n.pitch)))
              for i, spec in enumerate(reply.tracks)]
    melody_spec = TrackSpec(melody.name, melody.program, _free_channel(melody.channel, reply.tracks))
    try:
        write_midi(args.output, (melody_spec, melody.notes), tracks, tempo_bpm=score.tempo_bpm,
                   time_signature=score.time_signature, ticks_per_beat=score.ticks_per_beat,
                   tempo_changes=score.tempo_changes)
    except OSError as exc:
        raise BacklineError(
            f"cannot write {args.output} ({exc.strerror or exc}); give -o the path of a .mid file in a "
            "folder that exists and that you can write to"
        ) from None
    counts = ", ".join(f"{spec.name} {len(notes)}" for spec, notes in tracks)
    print(f"wrote {args.output}: melody '{melody.name}' ({len(melody.notes)} notes), {counts} notes "
          f"(model {args.model or model} on {provider}, via {client.label})")
    return 0


def _free_channel(wanted: int, tracks: Sequence[TrackSpec]) -> int:
    """The melody keeps its channel unless an accompaniment track plays on it."""
    taken = {t.channel for t in tracks}
    if wanted not in taken:
        return wanted
    return next(c for c in range(16) if c not in taken and c != 9)
