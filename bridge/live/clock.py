"""The host's musical time: a map between a time line and beat positions.

The time line is the Clock's `now` (time.monotonic() by default; on JACK the frame-accurate
ports' `now`, JACK's frame count in seconds, so that beats map to frames), and every time
handed to a Clock is on it.

`Clock` holds one straight line, `beat = anchor_beat + (t - anchor_time) * tempo / 60`,
while the host plays, and a frozen position while it is stopped. Everything that plays in
time (scheduler.py, live.py) asks it `time_at(beat)` when it needs to, so a tempo change
moves every due time that has not passed yet.

Three sources drive a Clock (`backline serve --clock`):

- MIDI clock (`MidiClockFollower`): 24 ticks per quarter note, Start, Stop, Continue and
  Song Position Pointer. The tempo AND the phase come from a least-squares line through
  the last `WINDOW` ticks (tick index -> arrival time), so jitter of a few milliseconds on
  single ticks does not move due times; outliers (a tick delayed by a busy machine) are
  dropped before the final fit; a run of ticks that all miss the line the same way is a
  real tempo change and restarts the fit from them.
- OSC transport (`/backline/transport/*`, handled in live.py): play, stop, continue,
  tempo, position, applied to the Clock directly.
- internal: the Clock at a set tempo, started at once.

Listeners hear `ClockEvent`s (start, stop, continue, locate, tempo) on the thread that
caused them, after the Clock has changed and outside its lock.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

log = logging.getLogger("backline.bridge")

EventKind = Literal["start", "stop", "continue", "locate", "tempo"]
MIN_TEMPO, MAX_TEMPO = 1.0, 999.0


@dataclass(frozen=True)
class ClockEvent:
    kind: EventKind
    beat: float  # the position when it happened
    tempo: float
    time: float  # when it happened, on the Clock's time line


Listener = Callable[[ClockEvent], None]


class Clock:
    """Beat position <-> time on `now`'s line. Thread-safe; every method takes an optional
    `t` (when it happened, default now), so sources can pass the arrival time of a message."""

    def __init__(self, tempo: float = 120.0, now: Callable[[], float] = time.monotonic) -> None:
        self.now = now
        self._lock = threading.Lock()
        self._tempo = _check_tempo(tempo)
        self._playing = False
        self._anchor_time = now()
        self._anchor_beat = 0.0
        self._listeners: list[Listener] = []
        self.generation = 0  # bumped on every jump (start, stop, continue, locate)

    # ------------------------------------------------------------------ reading

    @property
    def tempo(self) -> float:
        return self._tempo

    @property
    def playing(self) -> bool:
        return self._playing

    def beat_at(self, t: float | None = None) -> float:
        """The beat position at time `t` (now by default); frozen while stopped."""
        with self._lock:
            return self._beat_at(self.now() if t is None else t)

    def time_at(self, beat: float) -> float:
        """When `beat` is (was) due on the current line; math.inf while stopped."""
        with self._lock:
            if not self._playing:
                return math.inf
            return self._anchor_time + (beat - self._anchor_beat) * 60.0 / self._tempo

    def snapshot(self) -> tuple[bool, float, float, float, int]:
        """(playing, anchor_time, anchor_beat, tempo, generation), read atomically."""
        with self._lock:
            return self._playing, self._anchor_time, self._anchor_beat, self._tempo, self.generation

    def _beat_at(self, t: float) -> float:
        if not self._playing:
            return self._anchor_beat
        return self._anchor_beat + (t - self._anchor_time) * self._tempo / 60.0

    # ------------------------------------------------------------------ listeners

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _emit(self, kind: EventKind, t: float) -> None:
        with self._lock:
            event = ClockEvent(kind, self._beat_at(t), self._tempo, t)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception as exc:  # a listener's bug must not stop the clock's source
                log.error("clock listener failed on %s: %s: %s", kind, type(exc).__name__, exc)

    # ------------------------------------------------------------------ changing

    def start(self, beat: float = 0.0, t: float | None = None) -> None:
        """Play from `beat` (MIDI Start, OSC play, the internal clock)."""
        t = self.now() if t is None else t
        with self._lock:
            self._anchor_time, self._anchor_beat, self._playing = t, float(beat), True
            self.generation += 1
        self._emit("start", t)

    def stop(self, t: float | None = None, beat: float | None = None) -> None:
        """Stop; frozen at the position at `t` (or at `beat`, where the source knows it)."""
        t = self.now() if t is None else t
        with self._lock:
            if not self._playing:
                return
            self._anchor_beat = self._beat_at(t) if beat is None else float(beat)
            self._anchor_time, self._playing = t, False
            self.generation += 1
        self._emit("stop", t)

    def resume(self, t: float | None = None, beat: float | None = None) -> None:
        """Continue from where it stopped (or from `beat`)."""
        t = self.now() if t is None else t
        with self._lock:
            if self._playing and beat is None:
                return
            if beat is not None:
                self._anchor_beat = float(beat)
            elif self._playing:
                self._anchor_beat = self._beat_at(t)
            self._anchor_time, self._playing = t, True
            self.generation += 1
        self._emit("continue", t)

    def locate(self, beat: float, t: float | None = None) -> None:
        """Jump to `beat` (Song Position Pointer, OSC position); playing or not."""
        t = self.now() if t is None else t
        with self._lock:
            self._anchor_time, self._anchor_beat = t, float(beat)
            self.generation += 1
        self._emit("locate", t)

    def set_tempo(self, bpm: float, t: float | None = None) -> None:
        """A new tempo from time `t` on; the position at `t` stays where it is."""
        bpm = _check_tempo(bpm)
        t = self.now() if t is None else t
        with self._lock:
            if bpm == self._tempo:
                return
            self._anchor_beat = self._beat_at(t)
            self._anchor_time, self._tempo = t, bpm
        self._emit("tempo", t)

    def follow(self, beat: float, t: float, bpm: float) -> None:
        """Re-anchor on a measured line (the MIDI clock follower, every tick): the
        position `beat` at time `t` at tempo `bpm`. No event unless the tempo jumps by
        more than 1 % (small corrections are the normal life of a followed clock).
        While stopped only the tempo is taken (ticks of a host that sends them always)."""
        bpm = min(max(bpm, MIN_TEMPO), MAX_TEMPO)
        with self._lock:
            old = self._tempo
            self._tempo = bpm
            if self._playing:
                self._anchor_time, self._anchor_beat = t, float(beat)
        if abs(bpm - old) > 0.01 * old:
            self._emit("tempo", t)


def _check_tempo(bpm: float) -> float:
    if not (isinstance(bpm, (int, float)) and math.isfinite(bpm) and MIN_TEMPO <= bpm <= MAX_TEMPO):
        raise ValueError(f"tempo must be {MIN_TEMPO:g}..{MAX_TEMPO:g} beats per minute, not {bpm!r}")
    return float(bpm)


# --------------------------------------------------------------------------- MIDI clock

TICKS_PER_BEAT = 24
CLOCK, START, CONTINUE, STOP, SONG_POSITION = 0xF8, 0xFA, 0xFB, 0xFC, 0xF2
REALTIME = frozenset({CLOCK, START, CONTINUE, STOP, SONG_POSITION})


@dataclass(frozen=True)
class TempoFit:
    seconds_per_tick: float
    time_at_last: float  # the line's time for the newest tick (smoothed, not its arrival)
    last_index: int
    used: int  # ticks in the fit after outliers were dropped

    @property
    def bpm(self) -> float:
        return 60.0 / (TICKS_PER_BEAT * self.seconds_per_tick)


def fit_ticks(indices: np.ndarray, times: np.ndarray, outlier_s: float) -> TempoFit | None:
    """Least-squares line time = a + b * index through the ticks, then again without the
    ticks further than `outlier_s` (or 4 median deviations) from it."""
    if len(indices) < 3:
        return None
    keep = np.ones(len(indices), dtype=bool)
    for _ in range(2):
        x, y = indices[keep].astype(float), times[keep]
        x0, y0 = x.mean(), y.mean()
        sxx = float(((x - x0) ** 2).sum())
        if sxx == 0:
            return None
        b = float(((x - x0) * (y - y0)).sum()) / sxx
        a = y0 - b * x0
        residual = np.abs(times - (a + b * indices))
        limit = max(outlier_s, 4.0 * float(np.median(residual)))
        new_keep = residual <= limit
        if new_keep.sum() < 3 or (new_keep == keep).all():
            break
        keep = new_keep
    if b <= 0:
        return None
    last = int(indices[-1])
    return TempoFit(b, a + b * last, last, int(keep.sum()))


START_TOLERANCE = 0.05  # of a tick interval: exact times leave only rounding
LOSS_TOLERANCE = 0.02  # of a tick interval: how close to whole intervals a gap of lost ticks is


class MidiClockFollower:
    """Drives a Clock from MIDI realtime messages (`feed(message, t)` for each one).

    Start: the next tick is beat 0. Stop: frozen at the last tick's position. Song
    Position Pointer (in 16ths, normally sent while stopped): locate; the next tick after
    Continue is that position. Ticks that arrive while stopped (some hosts send them all the
    time) only keep the tempo estimate fresh.

    Tempo and phase: least squares over the last `window` ticks since the last start or
    locate (`fit_ticks`). Before `min_ticks` ticks the previous tempo is kept and the phase
    is the newest tick. A tick further than `jump_fraction` of a tick interval from the
    line counts as a miss; `jump_run` misses in a row on the same side mean the tempo
    changed, and the fit restarts from those ticks.

    Lost ticks: MIDI clock carries no position, so a tick the MIDI layer drops (a JACK
    client that misses a cycle loses its events) would shift every later beat by 1/24.
    With `exact_times` (the times are the frames the ticks were written at: bridge/
    jack_midi), a tick that comes a whole number of intervals (2 to `MAX_LOST + 1`, within
    `LOSS_TOLERANCE`) after the one before is held back for one tick: if the next interval
    is the old one again, ticks were lost and the held tick takes its rightful index; if
    not, the tempo changed and both go in as they came, for the tempo-change rule above.
    (At a tempo change a host may leave one odd gap, e.g. jack_midi_clock 1.6 intervals
    going from 120 to 150 BPM: a beat is 24 ticks as they come, gaps or not.)

    Ticks lost right after Start, before any tempo is known, show once the first fit
    exists: Start comes with beat 0's tick or up to `start_slack` seconds before it (one
    JACK period: jack_midi_clock writes Start in the cycle before), so a fitted beat 0 that
    lies k whole intervals (plus up to that slack) after the Start message means the first
    k ticks were lost, and every index moves up by k. Where the slack is close to a whole
    interval (a very fast tempo) the two cannot be told apart, and nothing is recovered.

    Without `exact_times` (arrival times) the same gap has another, commoner cause: the
    host's timeline itself stalled against the wall clock (a JACK xrun makes the frames,
    and the ticks written at them, fall behind by the length of the late cycle). Taking
    that for lost ticks would move every later beat by whole ticks for good, so a gap is
    taken as it came: the line restarts from the ticks after it (the tempo-change rule).
    """

    MAX_LOST = 3

    def __init__(self, clock: Clock, window: int = 48, min_ticks: int = 6,
                 jump_fraction: float = 0.25, jump_run: int = 3, exact_times: bool = True,
                 start_slack: float = 0.0) -> None:
        self.clock = clock
        self.exact_times = exact_times
        self.start_slack = start_slack
        self.window = window
        self.min_ticks = min_ticks
        self.jump_fraction = jump_fraction
        self.jump_run = jump_run
        self._lock = threading.Lock()
        self._ticks: deque[tuple[int, float]] = deque(maxlen=window)
        self._position = 0  # index of the next tick, in ticks from the song start
        self._running = False
        self._pending: str | None = None  # "start" or "continue": acts on the next tick
        self._misses: list[int] = []  # signs of the consecutive misses
        self._after_jump = False  # the old tempo is known wrong: fit from 3 ticks on
        self.last_heard = -math.inf
        self.fit: TempoFit | None = None
        self._held: tuple[int, float, int] | None = None  # (index, time, intervals) after a gap
        self._start_time: float | None = None  # the Start message, until the first fit checks it
        self.lost_ticks = 0

    def feed(self, message: list[int] | tuple[int, ...] | bytes, t: float) -> bool:
        """One MIDI message that arrived at time `t` (on the Clock's line); False if it is not clock."""
        if not message or message[0] not in REALTIME:
            return False
        status = message[0]
        self.last_heard = t
        with self._lock:
            action = self._feed(status, message, t)
        if action is not None:
            action()
        return True

    def _feed(self, status: int, message, t: float):
        clock = self.clock
        if status == START:
            self._position, self._pending, self._running = 0, "start", True
            self._reset()
            self._start_time = t
            return None
        if status == CONTINUE:
            self._pending, self._running = "continue", True
            self._reset()
            return None
        if status == STOP:
            self._running, self._pending = False, None
            beat = self._position / TICKS_PER_BEAT
            return lambda: clock.stop(t, beat)
        if status == SONG_POSITION:
            if len(message) < 3:
                return None
            sixteenths = (message[1] & 0x7F) | ((message[2] & 0x7F) << 7)
            self._position = sixteenths * (TICKS_PER_BEAT // 4)
            self._reset()
            beat = self._position / TICKS_PER_BEAT
            return lambda: clock.locate(beat, t)
        # a tick
        index = self._position
        self._position += 1
        if self._running and self._pending is None and self.exact_times:
            index = self._recover_lost(index, t)
            if index is None:
                return None  # held back for one tick; the clock runs on its current line
        self._add_tick(index, t)
        self._check_start()
        if not self._running:
            fit = self.fit
            return None if fit is None else (lambda: clock.follow(0.0, t, fit.bpm))
        if self._pending is not None:
            pending, self._pending = self._pending, None
            beat = index / TICKS_PER_BEAT
            if pending == "start":
                return lambda: clock.start(beat, t)
            return lambda: clock.resume(t, beat)
        fit = self.fit
        if fit is None:  # too few ticks yet: the newest tick anchors the phase
            return lambda: clock.follow(index / TICKS_PER_BEAT, t, clock.tempo)
        beat = fit.last_index / TICKS_PER_BEAT
        return lambda: clock.follow(beat, fit.time_at_last, fit.bpm)

    def _intervals_since_last(self, t: float) -> tuple[int, float] | None:
        """How many tick intervals `t` lies after the newest tick, and how far from a whole
        number (as a fraction of an interval); None without an established tempo."""
        if self.fit is None or not self._ticks:
            return None
        spacing = self.fit.seconds_per_tick
        count = (t - self._ticks[-1][1]) / spacing
        return round(count), abs(count - round(count))

    def _recover_lost(self, index: int, t: float) -> int | None:
        """The index this tick really has; None to hold it back (see the class doc)."""
        held, self._held = self._held, None
        if held is not None:
            held_index, held_t, intervals = held
            since = (t - held_t) / self.fit.seconds_per_tick if self.fit else 1.0
            if round(since) == 1 and abs(since - 1) <= LOSS_TOLERANCE:
                lost = intervals - 1  # a normal interval after the gap: ticks were lost
                self.lost_ticks += lost
                self._position += lost
                self._add_tick(held_index + lost, held_t)
                return index + lost
            self._add_tick(held_index, held_t)  # a slower tempo: both go in as they came
            return index
        gap = self._intervals_since_last(t)
        if gap is not None and 2 <= gap[0] <= self.MAX_LOST + 1 and gap[1] <= LOSS_TOLERANCE:
            self._held = (index, t, gap[0])
            return None
        return index

    def _check_start(self) -> None:
        """Once the first fit after Start exists, recover ticks lost before it (class doc)."""
        if self._start_time is None or self.fit is None or not self.exact_times:
            return
        start, self._start_time = self._start_time, None
        fit = self.fit
        beat0 = fit.time_at_last - fit.last_index * fit.seconds_per_tick
        count = (beat0 - start) / fit.seconds_per_tick  # = lost + (how long Start came before beat 0)
        slack = self.start_slack / fit.seconds_per_tick
        lost = math.floor(count + START_TOLERANCE)
        if slack + 2 * START_TOLERANCE >= 1:
            return  # at this tempo a late first tick and a lost one look the same
        if not 1 <= lost <= self.MAX_LOST or count - lost > slack + START_TOLERANCE:
            return
        self.lost_ticks += lost
        self._position += lost
        shifted = [(index + lost, at) for index, at in self._ticks]
        self._ticks.clear()
        self._ticks.extend(shifted)
        self.fit = TempoFit(fit.seconds_per_tick, fit.time_at_last, fit.last_index + lost, fit.used)

    def _reset(self) -> None:
        self._held = None
        self._start_time = None
        self._after_jump = False
        self._ticks.clear()
        self._misses.clear()
        self.fit = None

    def _add_tick(self, index: int, t: float) -> None:
        fit = self.fit
        if fit is not None:
            expected = fit.time_at_last + (index - fit.last_index) * fit.seconds_per_tick
            error = t - expected
            if abs(error) > self.jump_fraction * fit.seconds_per_tick:
                sign = 1 if error > 0 else -1
                if self._misses and self._misses[-1] != sign:
                    self._misses.clear()
                self._misses.append(sign)
                if len(self._misses) >= self.jump_run:  # the tempo changed: start again
                    recent = list(self._ticks)[-(self.jump_run - 1):] if self.jump_run > 1 else []
                    self._reset()
                    self._ticks.extend(recent)
                    self._after_jump = True
            else:
                self._misses.clear()
        if self._ticks and index <= self._ticks[-1][0]:
            self._reset()
        self._ticks.append((index, t))
        if len(self._ticks) >= (3 if self._after_jump else self.min_ticks):
            indices = np.fromiter((i for i, _ in self._ticks), dtype=float, count=len(self._ticks))
            times = np.fromiter((s for _, s in self._ticks), dtype=float, count=len(self._ticks))
            spacing = (times[-1] - times[0]) / max(indices[-1] - indices[0], 1)
            new_fit = fit_ticks(indices, times, outlier_s=max(0.002, 0.25 * spacing))
            if new_fit is not None:
                self.fit = new_fit
        else:
            self.fit = None
