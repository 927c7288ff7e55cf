"""Accompany a melody of any length with a generator.

The melody is cut into consecutive windows of the model's length (the last one padded
with silence), the windows go through the model, and the probabilities are laid end to
end before binarising. Decoding the whole roll at once is what makes the joins seamless: a
note held across a join stays one note unless the model asks for a new onset there,
every step is covered by exactly one window (no gap), and one roll cannot hold two notes
of the same pitch at once (no doubled note).

`accompany` is three steps, kept apart so that the bridge can put several melodies'
windows through one model call: `prepare` (melody -> windows), `run_windows` (windows and
noise -> probabilities, at most `MAX_RUN_WINDOWS` windows per model call) and `decode`
(probabilities -> notes). A window's output does not depend on the other windows in its
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
from .thresholds import binarise
from .spec import GeneratorSpec, TrackSpec
from .voicing import fit_range, roll_top, velocities, voice_parts

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
                while done < index + (start == melody.n_windows):
                    yield _finished(outputs, done, melodies)
                    done += 1
                pieces, room = [], max_windows
    if pieces:
        _run_call(generator, melodies, pieces, outputs)
    while done < len(melodies):
        yield _finished(outputs, done, melodies)
        done += 1


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
    out_frames, out_onsets = binarise(
        probs.frames, probs.onsets, spec, threshold=threshold, sample_seed=seed if sample else None
    )
    # Every track's notes in one pass, moved back into the melody's key as numbers (drums
    # stay where they are: a drum map has no key).
    track_of, column, start, length = note_runs(out_frames, out_onsets)
    is_drum = np.array([t.is_drum for t in spec.tracks], dtype=bool)
    pitch = column + spec.lowest_pitch - np.where(is_drum[track_of], 0, melody.shift)
    step_beats = 1.0 / spec.steps_per_beat
    # The band comes in with the melody: nothing starts before its first note (a pickup
    # or a count-in of rests would otherwise get an accompaniment of its own).
    kept = start * step_beats >= melody.first_beat - 1e-9
    track_of, pitch, start, length = track_of[kept], pitch[kept], start[kept], length[kept]
    # Each part in range, the ordered ones placed against each other's crossings (models/voicing.py).
    melody_top = roll_top(melody.windows.reshape(-1, spec.n_pitches)[:melody.n_steps] > 0,
                          spec.lowest_pitch - melody.shift)
    pitch = voice_parts(spec.melody, spec.tracks, track_of, pitch, start, length, spec.steps_per_beat, melody_top)
    cuts = np.searchsorted(track_of, np.arange(1, spec.n_tracks))
    curve = melody.velocity_curve if melody.velocity_curve is not None else np.full(max(melody.n_steps, 1), 90.0)
    bar_steps, beat_steps = melody.meter.steps(spec.steps_per_beat)
    tracks = [
        (track, voice_track(spec, track, pitches, starts, lengths, curve, melody.mean_velocity, velocity,
                            bar_steps=bar_steps, beat_steps=beat_steps))
        for track, pitches, starts, lengths in zip(spec.tracks, np.split(pitch, cuts), np.split(start, cuts),
                                                   np.split(length, cuts))
    ]
    return Accompaniment(tracks, melody.key, melody.shift, melody.notices)


def voice_track(spec: GeneratorSpec, track: TrackSpec, pitch: np.ndarray, start: np.ndarray, length: np.ndarray,
                curve: np.ndarray, melody_velocity: float, velocity: int | None = None,
                offset_beats: float = 0.0, bar_steps: int | None = None,
                beat_steps: int | None = None) -> list[Note]:
    """One track's notes (MIDI pitches, start and length in steps) as the instrument plays
    them: in its range, with velocities from the melody's `curve` (per step, same origin as
    `start`) relative to `melody_velocity`, or all `velocity` when given. Times come out in
    beats plus `offset_beats`. Accents follow bars of `bar_steps` and beats of `beat_steps`
    (default: the model's own bar of quarter-note beats)."""
    pitch, start, length = _in_range(track, pitch, start, length, spec.steps_per_beat)
    if velocity is None:
        reference = spec.melody.velocity or melody_velocity
        level = (track.velocity / reference) if track.velocity and reference else 1.0
        levels = velocities(start, curve, level, spec.steps_per_beat, bar_steps or spec.steps_per_bar,
                            beat_steps).tolist()
    else:
        levels = [velocity] * len(pitch)
    step_beats = 1.0 / spec.steps_per_beat
    return [Note(p, offset_beats + b * step_beats, d * step_beats, v)
            for p, b, d, v in zip(pitch.tolist(), start.tolist(), length.tolist(), levels)]


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
