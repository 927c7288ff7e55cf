"""Accompany a melody of any length with a generator.

The melody is cut into consecutive windows of the model's length (the last one padded
with silence), the windows go through the model, and the probabilities are laid end to
end before binarising. Decoding the whole roll at once is what makes the joins seamless: a
note held across a join stays one note unless the model asks for a new onset there,
every step is covered by exactly one window (no gap), and one roll cannot hold two notes
of the same pitch at once (no doubled note).

`accompany` is three steps, kept apart so that the bridge can put several melodies'
windows through one model call: `prepare` (melody -> windows), `run_windows` (windows and
noise -> probabilities, at most `MAX_RUN_WINDOWS` windows per model call; `run_calls`
gives them call by call) and `decode` (probabilities -> notes; `decode_many` reads the
melodies one call finished together, each as `decode` reads it alone). A window's output does not depend on the other windows in its
call (the generator has no batch statistics at inference): on the CPU provider it is the
same to the bit in any batch, so batching changes no note (tests/test_batching.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .keys import Key
from .melody import PreparedMelody, prepare
from .meter import Meter
from .notes import Note, note_runs
from .runtime import Generator
from .thresholds import binarise, track_thresholds
from .spec import GeneratorSpec, TrackSpec
from .voicing import accents, fit_range, roll_top, voice_parts

# Windows per model call. ONNX Runtime's working memory grows with the batch: a
# 10,000-beat melody (834 windows) in one call peaked at 1.1 GB of RSS, in calls of 32 at
# 0.23 GB; and on a CPU the time per window stops falling well below 32 windows a call.
MAX_RUN_WINDOWS = 32


@dataclass
class Accompaniment:
    tracks: list[tuple[TrackSpec, list[Note]]]
    key: Key | None  # the melody's estimated key (None for a model without key normalisation)
    shift: int  # semitones the melody was moved before generation
    notices: tuple[str, ...] = ()  # PreparedMelody.notices


@dataclass(frozen=True)
class WindowProbabilities:
    """The model's output for one melody, laid end to end: `[n_tracks, n_steps, n_pitches]`."""

    frames: np.ndarray
    onsets: np.ndarray


def run_windows(
    generator: Generator,
    melodies: Sequence[tuple[PreparedMelody, np.ndarray]],
    max_windows: int | None = None,
) -> Iterator[WindowProbabilities]:
    """Put every (melody, z) pair's windows through the model, packed end to end into calls
    of at most `max_windows` windows (several melodies share a call, a long one spans
    several). Yields each melody's probabilities, in order, as soon as its last window ran.
    z is `[n_windows, z_dim]` for each melody. max_windows: MAX_RUN_WINDOWS unless given."""
    for finished in run_calls(generator, melodies, max_windows):
        yield from finished


def run_calls(
    generator: Generator,
    melodies: Sequence[tuple[PreparedMelody, np.ndarray]],
    max_windows: int | None = None,
) -> Iterator[list[WindowProbabilities]]:
    """`run_windows` call by call: after each model call, the probabilities of the melodies
    it finished (in order; an empty list for a call inside a long melody), so that what one
    call finished can be decoded together (`decode_many`)."""
    max_windows = MAX_RUN_WINDOWS if max_windows is None else max_windows
    if max_windows < 1:
        raise ValueError("max_windows must be at least 1")
    spec = generator.spec

    def empty(n_windows: int) -> np.ndarray:
        return np.empty((spec.n_tracks, n_windows, spec.window_steps, spec.n_pitches), np.float32)

    outputs = [(empty(m.n_windows), empty(m.n_windows)) for m, _ in melodies]
    # The calls: runs of (melody index, first window, window count), packed in order.
    pieces: list[tuple[int, int, int]] = []
    room = max_windows
    done = 0  # melodies yielded so far
    for index, (melody, _) in enumerate(melodies):
        start = 0
        while start < melody.n_windows:
            count = min(room, melody.n_windows - start)
            pieces.append((index, start, count))
            start += count
            room -= count
            if room == 0:
                _run_call(generator, melodies, pieces, outputs)
                finished = index + (start == melody.n_windows)
                yield [_finished(outputs, i, melodies) for i in range(done, finished)]
                done = finished
                pieces, room = [], max_windows
    if pieces:
        _run_call(generator, melodies, pieces, outputs)
    if done < len(melodies):
        yield [_finished(outputs, i, melodies) for i in range(done, len(melodies))]


def _run_call(generator: Generator, melodies, pieces, outputs) -> None:
    """One model call over `pieces`; each piece's output is written into its melody's arrays."""
    windows = [melodies[i][0].windows[s:s + n] for i, s, n in pieces]
    noise = [melodies[i][1][s:s + n] for i, s, n in pieces]
    if len(pieces) == 1:
        probs = generator.run(windows[0], noise[0])
    else:
        probs = generator.run(np.concatenate(windows), np.concatenate(noise))
    at = 0
    for i, s, n in pieces:
        frames, onsets = outputs[i]
        # [batch, K, T, P] -> the melody's [K, windows, T, P]
        frames[:, s:s + n] = probs.frames[at:at + n].transpose(1, 0, 2, 3)
        onsets[:, s:s + n] = probs.onsets[at:at + n].transpose(1, 0, 2, 3)
        at += n


def _finished(outputs: list, index: int, melodies) -> WindowProbabilities:
    """Melody `index`'s output, handed over (the list lets go of it: a batch holds only
    what is still being filled)."""
    frames, onsets = outputs[index]
    outputs[index] = None
    n_steps = melodies[index][0].n_steps
    k, w, t, p = frames.shape
    # [K, windows, T, P] -> [K, windows * T, P] (no copy), cut to the melody's length
    return WindowProbabilities(frames.reshape(k, w * t, p)[:, :n_steps], onsets.reshape(k, w * t, p)[:, :n_steps])


@dataclass(frozen=True)
class DecodeRequest:
    """One melody's model output and how to read it (the arguments of `decode`)."""

    melody: PreparedMelody
    probs: WindowProbabilities
    seed: int = 0
    threshold: float | None = None
    sample: bool = False
    velocity: int | None = None


def decode(
    spec: GeneratorSpec,
    melody: PreparedMelody,
    probs: WindowProbabilities,
    *,
    seed: int = 0,
    threshold: float | None = None,
    sample: bool = False,
    velocity: int | None = None,
) -> Accompaniment:
    """The model's probabilities for `melody` -> notes per track, back in the melody's key,
    each track in its instrument's range (models/voicing.py), with velocities that follow
    the melody's dynamics (or all `velocity`, when given)."""
    [accompaniment] = decode_many(spec, [DecodeRequest(melody, probs, seed, threshold, sample, velocity)])
    return accompaniment


def decode_many(spec: GeneratorSpec, requests: Sequence[DecodeRequest]) -> list[Accompaniment]:
    """`decode` for several melodies of one model, in order, each getting exactly the notes
    `decode` gives it alone.

    The melodies read by the same thresholds are decoded together, laid end to end on one
    time line with a bar of silence between them (`_Timeline`). Every step of decoding is
    local in time or works phrase by phrase, and a bar of silence ends every note and every
    phrase, so nothing reaches from one melody into the next; yet the whole batch costs
    about the numpy calls of one melody, where the calls, not the arithmetic, were most of
    a clip's decoding time. Sampled ones (seeded draws, in order) are decoded one by one.
    """
    out: list[Accompaniment | None] = [None] * len(requests)
    groups: dict[float | None, list[int]] = {}
    for index, request in enumerate(requests):
        if request.sample or not _joinable(spec, request.threshold):
            out[index] = _decode_together(spec, [request])[0]
        else:
            groups.setdefault(request.threshold, []).append(index)
    for indices in groups.values():
        for index, accompaniment in zip(indices, _decode_together(spec, [requests[i] for i in indices])):
            out[index] = accompaniment
    return out  # type: ignore[return-value]


def _joinable(spec: GeneratorSpec, threshold: float | None) -> bool:
    """Whether silence reads as silence under these thresholds (a threshold of 0 would
    sound the silence between joined melodies)."""
    return all(level is None or level > 0 for track in spec.tracks
               for level in track_thresholds(spec, track, threshold))


@dataclass(frozen=True)
class _Timeline:
    """Melodies laid end to end: melody i's step t is step `offsets[i] + t`. Each starts on
    a bar of the model (rest_bars reads whole bars) and at least a bar of silence follows
    each but the last, whose steps end the line: one melody's line is its own steps, so
    that sampling draws as many numbers as for it alone."""

    offsets: np.ndarray
    n_steps: int

    @classmethod
    def of(cls, spec: GeneratorSpec, lengths: Sequence[int]) -> "_Timeline":
        bar = spec.steps_per_bar
        spans = [(-(-n // bar) + 1) * bar for n in lengths[:-1]]
        offsets = np.cumsum([0, *spans])
        return cls(offsets, int(offsets[-1]) + lengths[-1])

    def lay(self, parts: Sequence[np.ndarray], axis: int, fill: float = 0.0) -> np.ndarray:
        """The parts (each on its melody's own steps along `axis`) on the time line (a lone
        melody's own array: nothing on the line is written to)."""
        if len(parts) == 1 and parts[0].shape[axis] == self.n_steps:
            return parts[0]
        shape = list(parts[0].shape)
        shape[axis] = self.n_steps
        out = np.full(shape, fill, dtype=parts[0].dtype)
        for offset, part in zip(self.offsets.tolist(), parts):
            index = [slice(None)] * len(shape)
            index[axis] = slice(offset, offset + part.shape[axis])
            out[tuple(index)] = part
        return out

    def owner(self, step: np.ndarray) -> np.ndarray:
        """Which melody each time-line step belongs to."""
        return np.searchsorted(self.offsets, step, side="right") - 1


def _decode_together(spec: GeneratorSpec, requests: Sequence[DecodeRequest]) -> list[Accompaniment]:
    """Requests that share their thresholds (and a sample seed, if any: only ever one
    request then), decoded on one time line."""
    melodies = [r.melody for r in requests]
    line = _Timeline.of(spec, [m.n_steps for m in melodies])
    first = requests[0]
    out_frames, out_onsets = binarise(
        line.lay([r.probs.frames for r in requests], axis=1), line.lay([r.probs.onsets for r in requests], axis=1),
        spec, threshold=first.threshold, sample_seed=first.seed if first.sample else None)
    # Every track's notes in one pass, moved back into each melody's key as numbers (drums
    # stay where they are: a drum map has no key).
    track_of, column, start, length = note_runs(out_frames, out_onsets)
    owner = line.owner(start)
    offset = line.offsets[owner]
    is_drum = np.array([t.is_drum for t in spec.tracks], dtype=bool)
    shift = np.array([m.shift for m in melodies])
    pitch = column + spec.lowest_pitch - np.where(is_drum[track_of], 0, shift[owner])
    # The band comes in with the melody: nothing starts before its first note (a pickup
    # or a count-in of rests would otherwise get an accompaniment of its own).
    first_beat = np.array([m.first_beat for m in melodies])
    kept = (start - offset) / spec.steps_per_beat >= first_beat[owner] - 1e-9
    track_of, pitch, start, length, owner = track_of[kept], pitch[kept], start[kept], length[kept], owner[kept]
    # Each part in range, the ordered ones placed against each other's crossings (models/voicing.py).
    melody_top = line.lay([roll_top(m.windows.reshape(-1, spec.n_pitches)[:m.n_steps] > 0,
                                    spec.lowest_pitch - m.shift) for m in melodies], axis=0, fill=-1)
    pitch = voice_parts(spec.melody, spec.tracks, track_of, pitch, start, length, spec.steps_per_beat, melody_top)
    dynamics = _Dynamics.of(spec, requests, line)
    per_track: list[list[list[Note]]] = []  # [track][melody]
    cuts = np.searchsorted(track_of, np.arange(1, spec.n_tracks))
    for track, pitches, starts, lengths in zip(spec.tracks, np.split(pitch, cuts), np.split(start, cuts),
                                               np.split(length, cuts)):
        per_track.append(_track_notes(spec, track, pitches, starts, lengths, line, dynamics))
    return [Accompaniment([(track, per_track[k][i]) for k, track in enumerate(spec.tracks)], m.key, m.shift,
                          m.notices) for i, m in enumerate(melodies)]


@dataclass(frozen=True)
class _Dynamics:
    """What velocities follow, per melody, on the time line (see `voice_track`): each note
    the melody's velocity where it starts, scaled by its track's loudness against the
    melody's, accented by its place in the melody's bar; or the velocity asked for."""

    curve: np.ndarray  # the melody's velocity per step
    mean: np.ndarray  # [melodies] the melody's mean velocity
    fixed: np.ndarray  # [melodies] a velocity every note takes, or 0 where none was asked
    bar_steps: np.ndarray  # [melodies] accents follow the melody's meter
    beat_steps: np.ndarray

    @classmethod
    def of(cls, spec: GeneratorSpec, requests: Sequence[DecodeRequest], line: _Timeline) -> "_Dynamics":
        melodies = [r.melody for r in requests]
        curves = [m.velocity_curve if m.velocity_curve is not None else np.full(max(m.n_steps, 1), 90.0)
                  for m in melodies]
        meters = np.array([m.meter.steps(spec.steps_per_beat) for m in melodies]).reshape(-1, 2)
        return cls(line.lay([c.astype(float) for c in curves], axis=0), np.array([m.mean_velocity for m in melodies]),
                   np.array([r.velocity or 0 for r in requests]), meters[:, 0], meters[:, 1])


def _track_notes(spec: GeneratorSpec, track: TrackSpec, pitch: np.ndarray, start: np.ndarray, length: np.ndarray,
                 line: _Timeline, dynamics: _Dynamics) -> list[list[Note]]:
    """One track's notes on the time line -> each melody's list of Notes, in beats from its start."""
    pitch, start, length = _in_range(track, pitch, start, length, spec.steps_per_beat)
    owner = line.owner(start)
    local = start - line.offsets[owner]
    # The track's loudness against the melody's.
    reference = np.full(len(owner), float(spec.melody.velocity)) if spec.melody.velocity else dynamics.mean[owner]
    level = np.ones(len(owner))
    if track.velocity:
        np.divide(track.velocity, reference, out=level, where=reference != 0)
    lean = accents(local, spec.steps_per_beat, dynamics.bar_steps[owner], dynamics.beat_steps[owner])
    base = dynamics.curve[np.minimum(start, len(dynamics.curve) - 1)]  # a lone melody's curve may be short
    computed = np.clip(np.rint(base * level * lean), 1, 127).astype(int)
    levels = np.where(dynamics.fixed[owner] > 0, dynamics.fixed[owner], computed).tolist()
    step_beats = 1.0 / spec.steps_per_beat
    notes = [Note(p, b * step_beats, d * step_beats, v)
             for p, b, d, v in zip(pitch.tolist(), local.tolist(), length.tolist(), levels)]
    bounds = np.searchsorted(owner, np.arange(1, len(line.offsets))).tolist()
    return [notes[a:b] for a, b in zip([0, *bounds], [*bounds, len(notes)])]


def voice_track(spec: GeneratorSpec, track: TrackSpec, pitch: np.ndarray, start: np.ndarray, length: np.ndarray,
                curve: np.ndarray, melody_velocity: float, velocity: int | None = None,
                offset_beats: float = 0.0, bar_steps: int | None = None,
                beat_steps: int | None = None) -> list[Note]:
    """One track's notes (MIDI pitches, start and length in steps) as the instrument plays
    them: in its range, with velocities from the melody's `curve` (per step, same origin as
    `start`) relative to `melody_velocity`, or all `velocity` when given. Times come out in
    beats plus `offset_beats`. Accents follow bars of `bar_steps` and beats of `beat_steps`
    (default: the model's own bar of quarter-note beats). Live mode's bars; `decode` reads
    every melody of a batch by the same rule at once."""
    line = _Timeline(np.zeros(1, dtype=int), len(curve))
    dynamics = _Dynamics(np.asarray(curve, dtype=float), np.array([melody_velocity]), np.array([velocity or 0]),
                         np.array([bar_steps or spec.steps_per_bar]), np.array([beat_steps or spec.steps_per_beat]))
    [notes] = _track_notes(spec, track, pitch, start, length, line, dynamics)
    return [n._replace(start=offset_beats + n.start) for n in notes] if offset_beats else notes


def _in_range(track: TrackSpec, pitch: np.ndarray, start: np.ndarray, length: np.ndarray, steps_per_beat: int):
    """A track's notes inside its instrument's range; drum notes off the drum map dropped,
    and a note folded onto another of the same pitch and start kept once."""
    low, high = track.playable_range
    if track.is_drum:
        inside = (pitch >= low) & (pitch <= high)
        return pitch[inside], start[inside], length[inside]
    pitch = fit_range(pitch, start, length, low, high, phrase_gap=steps_per_beat)
    if len(pitch) > 1:
        _, first = np.unique(start * 128 + pitch, return_index=True)
        if len(first) < len(pitch):
            first.sort()
            pitch, start, length = pitch[first], start[first], length[first]
    return pitch, start, length


def accompany(
    generator: Generator,
    melody: Sequence[Note],
    *,
    seed: int = 0,
    threshold: float | None = None,
    sample: bool = False,
    velocity: int | None = None,
    meter: Meter = Meter(),
) -> Accompaniment:
    """Generate the model's tracks for `melody` (times in beats from a barline, in `meter`)."""
    prepared = prepare(generator.spec, melody, meter)
    z = generator.draw_z(seed, prepared.n_windows)
    [probs] = run_windows(generator, [(prepared, z)])
    return decode(generator.spec, prepared, probs, seed=seed, threshold=threshold, sample=sample,
                  velocity=velocity)
