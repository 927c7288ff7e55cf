"""The player: sends committed notes at their beat positions on the host's clock.

Notes are committed in beats (absolute positions on the host's timeline). One thread
takes the earliest pending event, asks the Clock when that beat is due on its CURRENT
line (so a tempo change or a clock correction that comes while it waits moves the due
time), and hands it to the ports. Times are on the Clock's own line (`clock.now()`).

- Timed ports (`ports.timed`: bridge/jack_midi on JACK) place a message at its frame
  themselves: the player hands each one over `ports.schedule_ahead_s` before it is due,
  with its due time, and sleeps coarsely.
- Other ports send at once: the player sleeps until shortly before the due time
  (`SPIN_S`), spins the last stretch with `time.sleep(0)`, and sends
  `ports.output_latency_s` early (python-rtmidi on JACK writes at the next period).

Coarse sleeps are at most `MAX_WAIT_S` long and wake early when notes are committed or
the clock jumps, so nothing waits on stale information. All Notes Off at a model swap is
handed over at its due time itself, never ahead, so that the notes after it cannot be
silenced by it.

No hung notes, ever: the scheduler knows which (channel, pitch) it has sounding.
`panic()` (stop, locate, model swap, shutdown) drops what is pending, sends a note-off
for every sounding note and then All Notes Off (CC 123) through the ports.

The ports are anything with `send(channel, message)` (timed ports: `send(channel,
message, at=)`) and `notes_off(channels=None)` (bridge/midi/ports.MidiPorts,
bridge/midi/jack_ports.JackMidiPorts); None plays nowhere (the plan over OSC still works).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from backline.bridge.live.clock import Clock

log = logging.getLogger("backline.bridge")

SPIN_S = 0.0015  # sleep until this long before the due time, then spin
MAX_WAIT_S = 0.05  # the longest single sleep: re-read the clock at least this often
MAX_LATE_S = 0.1  # a note-on later than this is dropped (a late note is worse than none)
STATS_KEPT = 100_000

NOTE_OFF, NOTE_ON = 0, 1  # sort order of events at the same beat: offs first


class Ports(Protocol):
    def send(self, channel: int, message: list[int]) -> None: ...
    def notes_off(self, channels: Iterable[int] | None = None) -> None: ...


@dataclass(frozen=True)
class ScheduledNote:
    """One note on the host's timeline (beats)."""

    channel: int
    pitch: int
    start: float
    end: float
    velocity: int = 90


@dataclass(order=True)
class _Event:
    beat: float
    kind: int
    seq: int
    channel: int = field(compare=False)
    pitch: int = field(compare=False)
    velocity: int = field(compare=False, default=0)
    channels: tuple[int, ...] | None = field(compare=False, default=None)  # set: All Notes Off there
    then: Callable[[], None] | None = field(compare=False, default=None)
    cancelled: bool = field(compare=False, default=False)


@dataclass(frozen=True)
class SentRecord:
    """One sent note-on, for the timing benchmark: due and sent (handed to the ports) on
    the Clock's time line."""

    beat: float
    channel: int
    pitch: int
    due: float
    sent: float


class Scheduler:
    def __init__(self, clock: Clock, ports: Ports | None) -> None:
        self.clock = clock
        self.ports = ports
        self.timed = bool(getattr(ports, "timed", False))
        # Untimed ports: sent this much before the beat, so that it sounds on it (see MidiPorts).
        self.lead_s = 0.0 if self.timed else float(getattr(ports, "output_latency_s", 0.0) or 0.0)
        # Timed ports: handed over this much before the beat, to be placed at its frame.
        self.ahead_s = float(getattr(ports, "schedule_ahead_s", 0.0) or 0.0) if self.timed else 0.0
        self._cond = threading.Condition()
        self._heap: list[_Event] = []
        self._seq = itertools.count()
        self._offs: dict[tuple[int, int], _Event] = {}  # pending note-off of each sounding/planned note
        self._sounding: set[tuple[int, int]] = set()
        self._running = True
        self._woken = False
        self.sent: deque[SentRecord] = deque(maxlen=STATS_KEPT)
        self.dropped_late = 0
        self._thread = threading.Thread(target=self._loop, name="backline-player", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ committing

    def add(self, notes: Iterable[ScheduledNote]) -> None:
        """Commit notes. A note on a (channel, pitch) that is still planned to sound
        ends the earlier note there first (MIDI cannot hold one pitch twice)."""
        with self._cond:
            for note in notes:
                if note.end <= note.start:
                    continue
                key = (note.channel, note.pitch)
                earlier = self._offs.get(key)
                if earlier is not None and earlier.beat > note.start:
                    earlier.cancelled = True
                    self._push(note.start, NOTE_OFF, note.channel, note.pitch)
                self._push(note.start, NOTE_ON, note.channel, note.pitch, note.velocity)
                self._offs[key] = self._push(note.end, NOTE_OFF, note.channel, note.pitch)
            self._wake()

    def tie(self, channel: int, pitch: int, at_beat: float, new_end: float) -> bool:
        """Extend a committed note that ends at `at_beat` to `new_end` instead (a note the
        next bar continues). False if there is no such note any more."""
        with self._cond:
            off = self._offs.get((channel, pitch))
            if off is None or off.cancelled or abs(off.beat - at_beat) > 1e-6:
                return False
            off.cancelled = True
            self._offs[(channel, pitch)] = self._push(new_end, NOTE_OFF, channel, pitch)
            self._wake()
            return True

    def all_off_at(self, beat: float, channels: Iterable[int], then: Callable[[], None] | None = None) -> None:
        """All Notes Off on `channels` at `beat`, before the notes that start there; then
        call `then` (a model swap: ports.retarget) on the player thread."""
        with self._cond:
            # Sorts with the note-offs: before the note-ons of that beat.
            event = self._push(beat, NOTE_OFF, -1, -1, channels=tuple(channels))
            event.then = then
            self._wake()

    def pending(self) -> int:
        with self._cond:
            return sum(1 for e in self._heap if not e.cancelled)

    def _push(self, beat: float, kind: int, channel: int, pitch: int, velocity: int = 0,
              channels: tuple[int, ...] | None = None) -> _Event:
        event = _Event(float(beat), kind, next(self._seq), channel, pitch, velocity, channels)
        heapq.heappush(self._heap, event)
        return event

    def _wake(self) -> None:
        self._woken = True
        self._cond.notify_all()

    # ------------------------------------------------------------------ silencing

    def panic(self) -> None:
        """Drop every pending event; note-off for every sounding note; All Notes Off."""
        with self._cond:
            self._heap.clear()
            self._offs.clear()
            sounding, self._sounding = self._sounding, set()
            channels = sorted({c for c, _ in sounding})
            self._wake()
            # Sent under the lock: the player cannot slip a note-on in between.
            for channel, pitch in sorted(sounding):
                self._send(channel, [0x80 | channel, pitch, 0])
            if self.ports is not None:
                try:
                    self.ports.notes_off(None)
                except Exception as exc:
                    log.error("all notes off failed: %s: %s", type(exc).__name__, exc)
        if channels:
            log.debug("panic: %d sounding notes ended on channels %s", len(sounding), channels)

    def close(self) -> None:
        """Silence everything and stop the thread."""
        self.panic()
        with self._cond:
            self._running = False
            self._wake()
        self._thread.join(2.0)

    # ------------------------------------------------------------------ the player thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._running:
                    return
                self._drop_cancelled()
                if not self._heap:
                    self._wait(None)
                    continue
                head = self._heap[0]
                due = self.clock.time_at(head.beat) - self.lead_s
                if self.timed:
                    ahead = 0.0 if head.channels is not None else self.ahead_s
                    wait = due - ahead - self.clock.now()
                    if wait > 0:
                        self._wait(min(wait, MAX_WAIT_S) if math.isfinite(wait) else MAX_WAIT_S)
                        continue
                    heapq.heappop(self._heap)
                    self._fire(head, due)
                    continue
                wait = due - self.clock.now()
                if wait > SPIN_S:
                    self._wait(min(wait - SPIN_S, MAX_WAIT_S) if math.isfinite(wait) else MAX_WAIT_S)
                    continue
            # The last stretch: spin without the lock so commits are not held up.
            while self.clock.now() < due:
                time.sleep(0)
            with self._cond:
                if not self._heap or self._heap[0] is not head or self.clock.time_at(head.beat) - self.lead_s > due + 1e-4:
                    continue  # something came first, or the clock moved: look again
                heapq.heappop(self._heap)
                self._fire(head, due)

    def _wait(self, timeout: float | None) -> None:
        self._woken = False
        self._cond.wait_for(lambda: self._woken, timeout=timeout if timeout is not None else MAX_WAIT_S * 4)

    def _drop_cancelled(self) -> None:
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)

    def _fire(self, event: _Event, due: float) -> None:
        """Send one due event (lock held)."""
        key = (event.channel, event.pitch)
        if event.channels is not None:
            for channel, pitch in sorted(k for k in self._sounding if k[0] in event.channels):
                self._send(channel, [0x80 | channel, pitch, 0])
            self._sounding = {k for k in self._sounding if k[0] not in event.channels}
            try:
                if self.ports is not None:
                    self.ports.notes_off(event.channels)
                if event.then is not None:
                    event.then()
            except Exception as exc:
                log.error("all notes off / retarget failed: %s: %s", type(exc).__name__, exc)
            return
        at = due if self.timed else None
        if event.kind == NOTE_OFF:
            if self._offs.get(key) is event:
                del self._offs[key]
            if key in self._sounding:
                self._sounding.discard(key)
                self._send(event.channel, [0x80 | event.channel, event.pitch, 0], at)
            return
        now = self.clock.now()
        if now - due > MAX_LATE_S:
            self.dropped_late += 1
            return
        if key in self._sounding:  # cannot happen with add()'s rule; end it cleanly anyway
            self._send(event.channel, [0x80 | event.channel, event.pitch, 0], at)
        self._sounding.add(key)
        self._send(event.channel, [0x90 | event.channel, event.pitch, event.velocity], at)
        self.sent.append(SentRecord(event.beat, event.channel, event.pitch, due, self.clock.now()))

    def _send(self, channel: int, message: list[int], at: float | None = None) -> None:
        """Send now, or (timed ports) at `at` on the Clock's time line."""
        if self.ports is None:
            return
        try:
            if at is None:
                self.ports.send(channel, message)
            else:
                self.ports.send(channel, message, at=at)
        except Exception as exc:  # a port that went away must not kill the player
            log.error("MIDI send failed: %s: %s", type(exc).__name__, exc)

    # ------------------------------------------------------------------ stats

    def timing(self) -> dict[str, Any]:
        """Send error (sent - due) percentiles in ms over the notes sent so far (timed
        ports: negative, how long before its time each was handed over)."""
        errors = sorted((r.sent - r.due) * 1000 for r in list(self.sent))
        if not errors:
            return {"notes": 0, "dropped_late": self.dropped_late}
        pick = lambda q: errors[min(len(errors) - 1, int(q * len(errors)))]
        return {"notes": len(errors), "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": errors[-1],
                "dropped_late": self.dropped_late}
