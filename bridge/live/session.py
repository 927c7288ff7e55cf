"""Live mode: the band plays along with a melody as it is played, in time with the host.

The melody comes in as it is played (MIDI on 'backline in', any channel, or OSC
`/backline/live/note`) and is placed on the host's timeline at `clock.beat_at(arrival)`.
The accompaniment is generated bar by bar, AHEAD of the playhead:

- Commit point. Bar b (beats [b*M, (b+1)*M), M = the model's beats per bar) is generated
  and committed to the player at beat `b*M - commit_ahead` (default 2 beats before it
  starts; 0.67 s at 180 BPM, while one model call takes a few milliseconds), so every note
  is in the player before it is due and the logical latency is zero. After a start or a
  locate, bars whose commit point has passed already are generated at once (a note-on that
  would then be more than 0.1 s late is dropped by the player, never played late).
- Window. The model sees one window of its own length (`spec.window_beats`) ENDING with
  bar b: the melody heard so far, and for the part not heard yet (from the commit point
  to the end of bar b) a prediction.
- Prediction rule. The part not heard yet repeats the last P beats heard, tiled forward:
  P = the loop length when one is set (`/backline/live/loop beats`), else one bar. A
  position x >= h (h = the playhead at the commit) gets the melody heard at x - k*P for
  the smallest k that lands before h. So a looped phrase predicts itself exactly, and a
  through-composed melody is assumed to go on like its last bar.
- Key. The melody is moved as `accompany()` moves it (models/accompaniment.melody_shift):
  the key estimated from the melody heard in the last `HISTORY_BEATS` beats, then whole
  octaves towards the model's melody range; notes the model cannot take are dropped.
- Decoding. The window's probabilities are binarised as a whole (thresholds.binarise), and
  the last bar is read back as notes, voiced as `accompany()` voices them (drums stay on
  the drum map, each part is kept in its instrument's range a phrase at a time within
  the bar, velocities follow the window's melody and the beat). A note that sounds across the bar line with no new
  onset in the model's output, where the player still holds that pitch to the bar line,
  is tied (its note-off moves); every other note is cut at the end of its bar.
- Silence. A bar whose window holds no melody at all (nothing heard yet, or the melody
  stopped a while ago) gets no accompaniment: the band comes in with the melody.

The host's transport: start, continue and locate silence everything (the player's panic:
note-offs + All Notes Off) and restart from the new position; stop silences; a tempo
change needs nothing (the player asks the clock for each due time). `swap_model` takes
effect at the next bar line that is not committed yet: All Notes Off on the old model's
channels there, then the new model's notes.

Settings. Live mode is one session on the server. Its `LiveSettings` (model, seed,
threshold, sample) are read at each commit, so a change takes effect at the next bar line
not committed yet, like a model swap. In `backline serve` they are the settings
(/backline/set) of the client that drives live mode: the last one to send a melody note,
a transport message, a loop length or /backline/live/set (LiveFrontend). A model named
there plays once it is loaded (/backline/set loads it in the background); until then,
and if it cannot be loaded, the session goes on with the model it has.

Times. Every time here is on the Clock's time line (`clock.now()`): time.monotonic(), or
on JACK the frame-accurate ports' frame line (bridge/jack_midi), so that beats map to the
frames the host's clock ticks were written at and notes are written at their frames.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from backline.models.melody import MelodyError, melody_shift
from backline.models.accompaniment import voice_track
from backline.models.errors import BacklineError
from backline.models.notes import Note, note_runs, notes_to_roll
from backline.models.voicing import melody_velocity_curve, roll_top, voice_parts
from backline.models.runtime import Generator
from backline.models.thresholds import binarise
from backline.models.spec import TrackSpec

from backline.bridge.osc import protocol
from backline.bridge.live.clock import REALTIME, Clock, ClockEvent, MidiClockFollower
from backline.bridge.osc.protocol import ProtocolError
from backline.bridge.live.scheduler import Scheduler, ScheduledNote

log = logging.getLogger("backline.bridge")

DEFAULT_COMMIT_AHEAD = 2.0  # beats
HISTORY_BEATS = 64.0  # melody kept for the key estimate and the prediction
RECORDS_KEPT = 10_000


def track_channel(track: TrackSpec) -> int:
    return 9 if track.is_drum else track.channel  # as bridge/midi_ports routes them


@dataclass(frozen=True)
class LiveSettings:
    """What the live session plays with (applied from the next bar line not committed yet)."""

    model: str | None = None  # None: the server's default model
    seed: int = 0  # the noise; with `sample`, also the draws
    threshold: float | None = None  # None: the model's own
    sample: bool = False  # draw notes from the probabilities instead of thresholding


def sample_seed(seed: int, bar: int) -> int:
    """The Bernoulli draws of one bar: the same seed and bar give the same notes, and each
    bar gets draws of its own (one seed for every bar would repeat the same dice)."""
    return seed * 1_000_003 + bar


@dataclass(frozen=True)
class CommitRecord:
    """One committed bar: how far ahead of the playhead it went into the player."""

    bar: int
    beats_ahead: float  # bar start - playhead, when the notes were in the player
    catch_up: bool  # generated at once after a start/locate (its commit point had passed)
    notes: int
    generate_ms: float


# --------------------------------------------------------------------------- pure music


def predict(heard: Sequence[Note], h: float, end: float, period: float) -> list[Note]:
    """The prediction rule: the melody for [h, end) as the last `period` beats before h,
    tiled forward (see the module docstring). Heard notes end at h at the latest."""
    if period <= 0 or end <= h:
        return []
    source = [n for n in heard if h - period <= n.start < h]
    out = []
    k = 1
    while h - period + k * period < end:
        shift = k * period
        for n in source:
            start = n.start + shift
            if h <= start < end:
                stop = min(n.start + min(n.duration, period) + shift, end)
                out.append(n._replace(start=start, duration=stop - start))
        k += 1
    return out


def window_melody(heard: Sequence[Note], h: float, window_start: float, window_end: float,
                  period: float) -> list[Note]:
    """The model's melody for [window_start, window_end): heard notes (cut at h) plus the
    prediction, with times from the window's start."""
    notes = []
    for n in heard:
        start, end = max(n.start, window_start), min(n.end, h, window_end)
        if end > start:
            notes.append(n._replace(start=start - window_start, duration=end - start))
    for n in predict(heard, h, window_end, period):
        start = max(n.start, window_start)
        notes.append(n._replace(start=start - window_start, duration=n.end - start))
    return notes


@dataclass
class BarNotes:
    """One bar of accompaniment: per track, the notes (absolute beats) and the pitches
    that continue a note from the bar before (tie candidates)."""

    tracks: list[list[Note]]
    continued: list[set[int]]


def generate_bar(generator: Generator, window: list[Note], key_notes: Sequence[Note],
                 window_start: float, z: np.ndarray, threshold: float | None,
                 draws: int | None = None) -> BarNotes | None:
    """Run the model on one window and read back its last bar. None without melody.
    `draws`: sample the notes with this seed instead of thresholding."""
    spec = generator.spec
    if not window:
        return None
    try:
        _, shift = melody_shift(key_notes or window, spec)
    except MelodyError:  # too wide a range over the history: use this window alone
        try:
            _, shift = melody_shift(window, spec)
        except MelodyError:
            shift = 0
    roll = notes_to_roll(window, spec.window_steps, spec.steps_per_beat, spec.lowest_pitch, spec.n_pitches,
                         clip=True, shift=shift)
    if not roll.frames.any():
        return None
    probs = generator.run(roll.frames[None].astype(np.float32), z)
    frames, onsets = binarise(probs.frames[0], probs.onsets[0], spec, threshold=threshold, sample_seed=draws)
    bar_steps = spec.steps_per_bar
    first = spec.window_steps - bar_steps
    bar_start = window_start + spec.window_beats - spec.beats_per_bar
    # The bar's notes as accompany() plays them: drums untransposed, each part in its
    # instrument's range, loud as the melody of this window is.
    track_of, column, start, length = note_runs(frames[:, first:], onsets[:, first:])
    curve = melody_velocity_curve(window, spec.window_steps, spec.steps_per_beat)[first:]
    melody_velocity = float(np.mean([n.velocity for n in window]))
    # Ranges and voice order as decode() places them, against the bar's own melody.
    is_drum = np.array([t.is_drum for t in spec.tracks], dtype=bool)
    pitch = column + spec.lowest_pitch - np.where(is_drum[track_of], 0, shift)
    melody_top = roll_top(roll.frames[first:] > 0, spec.lowest_pitch - shift)
    pitch = voice_parts(spec.melody, spec.tracks, track_of, pitch, start, length, spec.steps_per_beat, melody_top)
    tracks, continued = [], []
    for k, track in enumerate(spec.tracks):
        unshift = 0 if track.is_drum else shift
        mine = track_of == k
        tracks.append(voice_track(spec, track, pitch[mine], start[mine], length[mine], curve, melody_velocity,
                                  offset_beats=bar_start))
        if first > 0:
            held = frames[k, first - 1] & frames[k, first] & ~onsets[k, first]
            continued.append({int(c) + spec.lowest_pitch - unshift for c in np.flatnonzero(held)})
        else:
            continued.append(set())
    return BarNotes(tracks, continued)


# --------------------------------------------------------------------------- the session


class LiveSession:
    """Melody in, accompaniment out through a Scheduler, bar by bar ahead of the clock."""

    def __init__(self, clock: Clock, scheduler: Scheduler, generator: Generator, *,
                 commit_ahead: float = DEFAULT_COMMIT_AHEAD,
                 settings_source: Callable[[], LiveSettings] | None = None,
                 models: Callable[[str | None], Generator | None] | None = None,
                 on_commit: Callable[[], None] | None = None,
                 retarget: Callable[[Sequence[TrackSpec]], None] | None = None) -> None:
        """`settings_source`: read at each commit (default: LiveSettings()). `models`: a model
        name (None: the default) -> its loaded Generator, or None while it is not loaded;
        without it the session keeps `generator` (and whatever swap_model gives it)."""
        if commit_ahead < 0:
            raise ValueError("commit_ahead must be >= 0 beats")
        self.clock = clock
        self.scheduler = scheduler
        self.commit_ahead = float(commit_ahead)
        self.settings_source = settings_source or LiveSettings
        self.models = models
        self.on_commit = on_commit  # after each commit (the plan subscribers)
        self.retarget = retarget  # ports.retarget, at the bar line where a new model begins
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._generator = generator
        self.settings = LiveSettings()  # the settings the last committed bar was made with
        self._z = generator.draw_z(self.settings.seed, 1)
        self._pending_model: Generator | None = None
        self._heard: list[Note] = []
        self._open: dict[int, tuple[float, int]] = {}  # pitch -> (start beat, velocity)
        self._loop: float | None = None
        self._next_bar: int | None = None  # None: find it from the playhead
        self._jump_beat = 0.0  # where the playhead was when the commit thread last (re)started
        self._generation = clock.generation
        self._plan: dict[int, list[list[Note]]] = {}  # bar -> per track notes
        self._plan_channels: dict[int, list[int]] = {}
        self.commits: deque[CommitRecord] = deque(maxlen=RECORDS_KEPT)
        self._running = True
        clock.add_listener(self._on_clock)
        self._thread = threading.Thread(target=self._loop_forever, name="backline-live", daemon=True)
        self._thread.start()

    @property
    def spec(self):
        return self._generator.spec

    @property
    def beats_per_bar(self) -> int:
        return self._generator.spec.beats_per_bar

    # ------------------------------------------------------------------ melody in

    def note_on(self, pitch: int, velocity: int, t: float | None = None) -> None:
        """A melody note starts (velocity 0 = note off), arrived at `t` (the Clock's line)."""
        if velocity <= 0:
            self.note_off(pitch, t)
            return
        t = self.clock.now() if t is None else t
        if not self.clock.playing:
            return  # no place on the timeline for it
        beat = self.clock.beat_at(t)
        with self._lock:
            if pitch in self._open:
                self._close(pitch, beat)
            self._open[pitch] = (beat, velocity)

    def note_off(self, pitch: int, t: float | None = None) -> None:
        t = self.clock.now() if t is None else t
        beat = self.clock.beat_at(t)
        with self._lock:
            if pitch in self._open:
                self._close(pitch, beat)

    def _close(self, pitch: int, beat: float) -> None:
        start, velocity = self._open.pop(pitch)
        if beat > start:
            self._heard.append(Note(pitch, start, beat - start, velocity))

    def on_midi(self, message: Sequence[int], t: float) -> None:
        """A melody message from 'backline in' (note on/off on any channel)."""
        if len(message) < 3:
            return
        kind = message[0] & 0xF0
        if kind == 0x90:
            self.note_on(message[1], message[2], t)
        elif kind == 0x80:
            self.note_off(message[1], t)

    def heard(self, until: float | None = None) -> list[Note]:
        """The melody heard so far (open notes end at `until`, default now)."""
        until = self.clock.beat_at() if until is None else until
        with self._lock:
            notes = list(self._heard)
            notes += [Note(p, s, until - s, v) for p, (s, v) in self._open.items() if until > s]
        return sorted(notes, key=lambda n: (n.start, n.pitch))

    def set_loop(self, beats: float | None) -> None:
        """The loop length used by the prediction rule; None or 0: no loop (one bar)."""
        with self._lock:
            self._loop = float(beats) if beats else None

    # ------------------------------------------------------------------ model

    def swap_model(self, generator: Generator) -> None:
        """Use `generator` from the next bar line that is not committed yet."""
        with self._lock:
            self._pending_model = generator
            self._wake.notify_all()

    # ------------------------------------------------------------------ the plan

    def plan(self, from_beat: float | None = None) -> tuple[float, float, list[list[Note]]]:
        """What will be played from `from_beat` (default the playhead) to the end of the
        last committed bar: (from, to, notes per track of the current model)."""
        from_beat = self.clock.beat_at() if from_beat is None else from_beat
        with self._lock:
            n_tracks = self._generator.spec.n_tracks
            tracks: list[list[Note]] = [[] for _ in range(n_tracks)]
            bars = sorted(b for b in self._plan if (b + 1) * self.beats_per_bar > from_beat)
            to_beat = (bars[-1] + 1) * self.beats_per_bar if bars else from_beat
            for b in bars:
                for k, notes in enumerate(self._plan[b][:n_tracks]):
                    tracks[k] += [n for n in notes if n.end > from_beat]
        return from_beat, max(to_beat, from_beat), tracks

    # ------------------------------------------------------------------ the clock

    def _on_clock(self, event: ClockEvent) -> None:
        if event.kind == "tempo":
            with self._lock:
                self._wake.notify_all()
            return
        with self._lock:
            # Silence first, under the lock: no commit of the old position slips in after.
            self.scheduler.panic()
            self._next_bar = None
            self._plan.clear()
            if event.kind in ("start", "continue", "locate"):
                # Notes heard after the new position belong to a pass that is not this one.
                self._heard = [n for n in self._heard if n.start < event.beat]
            self._open.clear()
            self._wake.notify_all()

    # ------------------------------------------------------------------ the commit thread

    def close(self) -> None:
        with self._lock:
            self._running = False
            self._wake.notify_all()
        self.clock.remove_listener(self._on_clock)
        self._thread.join(2.0)

    def _loop_forever(self) -> None:
        while True:
            with self._lock:
                if not self._running:
                    return
                if not self.clock.playing:
                    self._wake.wait(0.1)
                    continue
                generation = self.clock.generation
                now_beat = self.clock.beat_at()
                if self._next_bar is None or generation != self._generation:
                    self._generation = generation
                    self._next_bar = math.floor(now_beat / self.beats_per_bar + 1e-9)
                    self._jump_beat = now_beat
                bar = self._next_bar
                commit_beat = bar * self.beats_per_bar - self.commit_ahead
                wait = self.clock.time_at(commit_beat) - self.clock.now()
                if wait > 0:
                    self._wake.wait(min(wait, 0.05))
                    continue
                # Its commit point passed before the playhead got here (a start or locate
                # just before it): generated at once, and not counted in the lookahead stats.
                catch_up = commit_beat < self._jump_beat
            try:
                self._commit(bar, generation, catch_up)
            except Exception as exc:  # a bad bar must not end live mode
                log.error("live: bar %d not generated: %s: %s", bar, type(exc).__name__, exc)
            with self._lock:
                if self._next_bar == bar and self._generation == generation:
                    self._next_bar = bar + 1

    def _settings_now(self) -> tuple[LiveSettings, Generator | None]:
        """The settings to commit the next bar with, and the model they name (None: keep)."""
        try:
            wanted = self.settings_source()
        except Exception as exc:  # a bad source must not stop live mode: keep what it had
            log.error("live: settings unreadable, keeping the last: %s: %s", type(exc).__name__, exc)
            return self.settings, None
        model = None
        if self.models is not None:
            try:
                model = self.models(wanted.model)
            except Exception as exc:
                log.error("live: model %r unavailable, keeping %s: %s", wanted.model, self.spec.name, exc)
        return wanted, model

    def _commit(self, bar: int, generation: int, catch_up: bool) -> None:
        started = time.perf_counter()
        wanted, named = self._settings_now()
        with self._lock:
            swap_model, self._pending_model = self._pending_model, None
            if swap_model is None and named is not None and named is not self._generator:
                swap_model = named
            old_channels = [track_channel(t) for t in self._generator.spec.tracks]
            if swap_model is not None:
                log.info("live: model %s from bar %d", swap_model.spec.name, bar)
                self._generator = swap_model
            if swap_model is not None or wanted.seed != self.settings.seed:
                self._z = self._generator.draw_z(wanted.seed, 1)
            self.settings = wanted
            generator, z, loop = self._generator, self._z, self._loop
        spec = generator.spec
        bpb = spec.beats_per_bar
        bar_start, bar_end = bar * bpb, (bar + 1) * bpb
        h = min(self.clock.beat_at(), bar_end)
        heard = [n for n in self.heard(h) if n.end > h - HISTORY_BEATS]
        window_start = bar_end - spec.window_beats
        window = window_melody(heard, h, window_start, bar_end, loop or bpb)
        draws = sample_seed(wanted.seed, bar) if wanted.sample else None
        result = generate_bar(generator, window, heard, window_start, z, wanted.threshold, draws)
        channels = [track_channel(t) for t in spec.tracks]
        to_add: list[ScheduledNote] = []
        planned: list[list[Note]] = [[] for _ in spec.tracks]
        with self._lock:
            if generation != self.clock.generation or not self._running:
                return  # the host jumped meanwhile: this bar belongs to a position left behind
            if swap_model is not None:
                retarget = (lambda tracks=spec.tracks: self.retarget(tracks)) if self.retarget else None
                self.scheduler.all_off_at(bar_start, old_channels, then=retarget)
            if result is not None:
                previous = self._plan.get(bar - 1)
                for k, notes in enumerate(result.tracks):
                    for note in notes:
                        if (note.start == bar_start and note.pitch in result.continued[k] and swap_model is None
                                and self.scheduler.tie(channels[k], note.pitch, bar_start, note.end)):
                            # The held note moves into this bar's plan, longer.
                            held = _take(previous, k, note.pitch, bar_start)
                            note = note._replace(start=held.start, duration=note.end - held.start) if held else note
                            planned[k].append(note)
                            continue
                        planned[k].append(note)
                        to_add.append(ScheduledNote(channels[k], note.pitch, note.start, note.end, note.velocity))
                self.scheduler.add(to_add)
            self._plan[bar] = planned
            for old in [b for b in self._plan if b < bar - 2]:
                del self._plan[old]
            ahead = bar_start - self.clock.beat_at()
        self.commits.append(CommitRecord(bar, ahead, catch_up, len(to_add), (time.perf_counter() - started) * 1000))
        if self.on_commit is not None:
            self.on_commit()

    # ------------------------------------------------------------------ stats

    def commit_stats(self) -> dict[str, Any]:
        records = [r for r in list(self.commits) if not r.catch_up]
        if not records:
            return {"bars": 0}
        ahead = sorted(r.beats_ahead for r in records)
        gen = sorted(r.generate_ms for r in records)
        return {"bars": len(records), "min_beats_ahead": ahead[0], "p50_beats_ahead": ahead[len(ahead) // 2],
                "p99_generate_ms": gen[min(len(gen) - 1, int(0.99 * len(gen)))], "max_generate_ms": gen[-1]}


def _take(plan: list[list[Note]] | None, track: int, pitch: int, at: float) -> Note | None:
    """Remove and return, from the plan of the bar before, the note of `pitch` ending at `at`."""
    if plan is None or track >= len(plan):
        return None
    for i, n in enumerate(plan[track]):
        if n.pitch == pitch and abs(n.end - at) < 1e-6:
            return plan[track].pop(i)
    return None


# --------------------------------------------------------------------------- OSC and MIDI in

ClockMode = str  # auto | midi | osc | internal
Send = Callable[[Any, Any], None]


class LiveFrontend:
    """The wiring of live mode: the clock's sources (MIDI clock, OSC transport, internal),
    the melody's (MIDI in, OSC), the plan over OSC, and who configures the session.
    `routes` are OSC handlers in the Bridge's form, `on_midi` is the ports' input callback.

    `exact_times`: MIDI input times are the frames the messages were written at (bridge/
    jack_midi), so the clock follower may recover lost ticks; `start_slack`: how long before
    beat 0's tick a Start may come (a JACK period). `client_of` (the Bridge's
    Clients.client) and `configure` (Bridge.set): the session then plays with the
    settings of its driver, the last client to send a driving message (transport, note,
    loop, live/set; asking for the plan does not drive)."""

    def __init__(self, session: LiveSession, mode: ClockMode, send: Send,
                 target_for: Callable[[Any], Any], *, exact_times: bool = False, start_slack: float = 0.0,
                 client_of: Callable[[Any], Any] | None = None,
                 configure: Callable[[Any, str, Any], None] | None = None) -> None:
        if mode not in ("auto", "midi", "osc", "internal"):
            raise ValueError(f"unknown clock mode {mode!r}")
        self.session = session
        self.clock = session.clock
        self.mode = mode
        self.send = send
        self.target_for = target_for
        self.client_of = client_of
        self.configure = configure
        self.follower = MidiClockFollower(self.clock, exact_times=exact_times, start_slack=start_slack)
        self._subscribers: set[Any] = set()
        self._driver: Any = None  # the Client whose settings live mode plays with
        session.on_commit = self._push_plan
        if client_of is not None:
            session.settings_source = self.driver_settings
        driving = {
            protocol.TRANSPORT_PLAY: self.transport_play,
            protocol.TRANSPORT_STOP: self.transport_stop,
            protocol.TRANSPORT_CONTINUE: self.transport_continue,
            protocol.TRANSPORT_TEMPO: self.transport_tempo,
            protocol.TRANSPORT_POSITION: self.transport_position,
            protocol.LIVE_NOTE: self.live_note,
            protocol.LIVE_LOOP: self.live_loop,
            protocol.LIVE_SET: self.live_set,
        }
        self.routes = {address: self._driving(handler) for address, handler in driving.items()}
        self.routes.update({protocol.LIVE_PLAN: self.live_plan, protocol.LIVE_SUBSCRIBE: self.live_subscribe})
        if mode == "internal":
            self.clock.start(0.0)

    # ------------------------------------------------------------------ who drives

    def _driving(self, handler: Callable[[Any, str, Any], None]) -> Callable[[Any, str, Any], None]:
        """The handler, after which (if it took the message) the sender drives live mode."""
        def handle(sender, address: str, args) -> None:
            handler(sender, address, args)
            if self.client_of is not None:
                self._driver = self.client_of(sender)
        return handle

    def driver_settings(self) -> LiveSettings:
        """The driver's /backline/set settings as live settings (the defaults before anyone drives)."""
        client = self._driver
        if client is None:
            return LiveSettings()
        s = client.settings
        return LiveSettings(model=s.model, seed=s.seed or 0, threshold=s.threshold, sample=bool(s.sample))

    # ------------------------------------------------------------------ MIDI in

    def on_midi(self, message: list[int], t: float) -> None:
        if message and message[0] in REALTIME:
            if self.mode in ("auto", "midi"):
                self.follower.feed(message, t)
            return
        self.session.on_midi(message, t)

    # ------------------------------------------------------------------ OSC transport

    def _transport(self, address: str) -> None:
        if self.mode == "midi":
            raise ProtocolError("clock", f"{address}: this server follows MIDI clock (--clock midi); "
                                         "start it with --clock osc, auto or internal to drive it over OSC")

    def transport_play(self, sender, address: str, args) -> None:
        arrival = self.clock.now()
        self._transport(address)
        (beat,) = protocol.parse_numbers(address, args, 0, 1, "[beat:f]") or [0.0]
        self.clock.start(beat, arrival)

    def transport_stop(self, sender, address: str, args) -> None:
        arrival = self.clock.now()
        self._transport(address)
        protocol.parse_numbers(address, args, 0, 0, "no arguments")
        self.clock.stop(arrival)

    def transport_continue(self, sender, address: str, args) -> None:
        arrival = self.clock.now()
        self._transport(address)
        protocol.parse_numbers(address, args, 0, 0, "no arguments")
        self.clock.resume(arrival)

    def transport_tempo(self, sender, address: str, args) -> None:
        arrival = self.clock.now()
        self._transport(address)
        (bpm,) = protocol.parse_numbers(address, args, 1, 1, "bpm:f")
        if not 1 <= bpm <= 999:
            raise ProtocolError("bad_args", f"{address}: tempo must be 1..999 beats per minute")
        self.clock.set_tempo(bpm, arrival)

    def transport_position(self, sender, address: str, args) -> None:
        arrival = self.clock.now()
        self._transport(address)
        (beat,) = protocol.parse_numbers(address, args, 1, 1, "beat:f")
        if not 0 <= beat < protocol.MAX_START_BEATS:
            raise ProtocolError("bad_args", f"{address}: the position must be a number of beats >= 0")
        self.clock.locate(beat, arrival)

    # ------------------------------------------------------------------ OSC live

    def live_note(self, sender, address: str, args) -> None:
        arrival = self.clock.now()
        protocol.expect_count(address, args, 2, 2, "pitch:i velocity:i")
        pitch, velocity = args
        if not protocol._is_int(pitch) or not 0 <= pitch <= 127 or not protocol._is_int(velocity) \
                or not 0 <= velocity <= 127:
            raise ProtocolError("bad_args", f"{address} takes pitch:i 0..127 velocity:i 0..127 (0 = note off)")
        self.session.note_on(pitch, velocity, arrival)

    def live_loop(self, sender, address: str, args) -> None:
        (beats,) = protocol.parse_numbers(address, args, 1, 1, "beats:f (0 = no loop)")
        if not 0 <= beats <= 1024:
            raise ProtocolError("bad_args", f"{address}: the loop length must be 0..1024 beats")
        self.session.set_loop(beats or None)

    def live_set(self, sender, address: str, args) -> None:
        """/backline/set for live mode: the same keys and checks, and the sender drives."""
        protocol.expect_count(address, args, 2, 2, "key value (model, seed, threshold or sample)")
        if args[0] == "tempo":
            raise ProtocolError("bad_args", f"{address}: live mode's tempo is the host's clock; send "
                                            "/backline/transport/tempo (or MIDI clock) instead")
        if args[0] == "bundle":  # live mode's plan always goes out as single messages
            raise ProtocolError("bad_args", f"{address}: bundle is a setting of clip replies, not of live "
                                            "mode; send /backline/set bundle 1")
        if self.configure is None:
            raise ProtocolError("bad_args", f"{address}: this live session takes no settings")
        self.configure(sender, address, args)

    def live_plan(self, sender, address: str, args) -> None:
        protocol.expect_count(address, args, 0, 0, "no arguments")
        self._send_plan(self.target_for(sender))

    def live_subscribe(self, sender, address: str, args) -> None:
        (on,) = protocol.parse_numbers(address, args, 0, 1, "[on:i] (1 = push the plan at each commit, 0 = stop)") \
            or [1.0]
        target = self.target_for(sender)
        if on:
            self._subscribers.add(target)
        else:
            self._subscribers.discard(target)

    def _send_plan(self, target) -> None:
        from_beat, to_beat, tracks = self.session.plan()
        for message in protocol.live_plan(from_beat, to_beat, tracks):
            self.send(target, message)

    def _push_plan(self) -> None:
        for target in list(self._subscribers):
            self._send_plan(target)


def start_live(engine, osc, ports, args) -> Callable[[], None]:
    """Live mode in `backline serve` (called from serve.start_frontends): a Clock from
    --clock/--tempo on the ports' time line, the player on `ports` (None: nowhere, the plan
    over OSC still works), the session on the models of the engine with its driver's
    settings, its OSC addresses and MIDI input. Returns its stop."""
    mode = getattr(args, "clock", "auto") or "auto"
    tempo = getattr(args, "tempo", None) or 120.0
    commit_ahead = getattr(args, "commit_ahead", DEFAULT_COMMIT_AHEAD)
    if not 1 <= tempo <= 999:
        raise BacklineError(f"--tempo must be 1..999 beats per minute, not {tempo:g}")
    if not 0 <= commit_ahead <= 16:
        raise BacklineError(f"--commit-ahead must be 0..16 beats, not {commit_ahead:g}")
    clock = Clock(tempo=tempo, now=getattr(ports, "now", time.monotonic))
    scheduler = Scheduler(clock, ports)
    # A name -> the model as loaded now: a hot reload (Engine.swap) or a model the driver
    # picked with /backline/set (loaded in the background) shows at the next commit.
    session = LiveSession(clock, scheduler, engine.loaded(None), commit_ahead=commit_ahead,
                          models=engine.loaded, retarget=getattr(ports, "retarget", None))
    bridge = osc.bridge
    exact = bool(getattr(ports, "frame_accurate", False))
    frontend = LiveFrontend(session, mode, osc.send, bridge.clients.target_for, exact_times=exact,
                            start_slack=ports.period_s if exact else 0.0,
                            client_of=bridge.clients.client, configure=bridge.set)
    osc.add_routes(frontend.routes)
    if ports is not None:
        ports.set_input_callback(frontend.on_midi)

    def stop() -> None:
        if ports is not None:
            ports.set_input_callback(None)
        session.close()
        scheduler.close()  # note-offs + All Notes Off

    log.info("live mode: clock %s%s, committing %g beats ahead%s", mode,
             f" at {clock.tempo:g} BPM" if mode == "internal" else "", session.commit_ahead,
             ", timed in frames" if getattr(ports, "frame_accurate", False) else "")
    return stop
