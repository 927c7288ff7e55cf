"""Probabilities -> piano rolls: the thresholds a model ships with, per track.

Pure numpy, shared by every path that reads notes off a generator's output: clip mode,
live mode, `backline evaluate` and export's calibration, so that all of them decode alike.
"""

from __future__ import annotations

import numpy as np

from .spec import GeneratorSpec

MONOPHONIC_TOP_K = 3


def binarise(
    frames: np.ndarray,
    onsets: np.ndarray,
    spec: GeneratorSpec,
    *,
    threshold: float | None = None,
    sample_seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities `[n_tracks, time, n_pitches]` -> boolean frames and onsets.

    By threshold, or by Bernoulli sampling seeded with `sample_seed`. Each track uses its
    own thresholds where the model calibrated them per track (`TrackSpec.threshold` ...),
    else the model's; a `threshold` given here overrides every track's note threshold. A
    polyphonic track keeps every cell that passes (held through dips down to its hold
    threshold, `held_cells`). A monophonic track is read note by note (`_read_voices`).
    """
    rng = np.random.default_rng(sample_seed) if sample_seed is not None else None
    levels = [track_thresholds(spec, track, threshold) for track in spec.tracks]
    if any(t.rest_threshold is not None for t in spec.tracks):
        frames = rest_bars(frames, spec)
    out_frames = np.zeros(frames.shape, dtype=bool)
    out_onsets = np.zeros(frames.shape, dtype=bool)
    voices = [k for k, track in enumerate(spec.tracks) if track.monophonic]
    if rng is None and voices:  # every voice in one pass, each with its own thresholds
        _read_voices(frames[voices], onsets[voices], np.array([[levels[k][0]] for k in voices]),
                     np.array([[levels[k][1]] for k in voices]), voices, out_frames, out_onsets)
    for k, track in enumerate(spec.tracks):
        note, onset, hold = levels[k]
        if not track.monophonic:
            if rng is None:
                out_frames[k] = held_cells(frames[k], note, hold)
                out_onsets[k] = out_frames[k] & (onsets[k] >= onset)
            else:
                out_frames[k] = rng.random(frames[k].shape) < frames[k]
                out_onsets[k] = out_frames[k] & (rng.random(onsets[k].shape) < onsets[k])
        elif rng is not None:  # voice by voice, so that a seed draws in the same order
            _read_voices(frames[k:k + 1], onsets[k:k + 1], note, onset, [k], out_frames, out_onsets, rng)
    return out_frames, out_onsets


def rest_bars(frames: np.ndarray, spec: GeneratorSpec) -> np.ndarray:
    """Frame probabilities `[K, T, P]` (T from a barline) with each track's rest bars
    zeroed: bars where no cell reaches the track's `rest_threshold`. A band member sits
    out a bar the model barely wants them in, as often as they sat out in the data,
    instead of playing its faintest guess."""
    out = frames.copy()
    bar = spec.steps_per_bar
    n_steps = frames.shape[1]
    for k, track in enumerate(spec.tracks):
        if track.rest_threshold is None:
            continue
        for start in range(0, n_steps, bar):
            if frames[k, start:start + bar].max(initial=0.0) < track.rest_threshold:
                out[k, start:start + bar] = 0.0
    return out


def track_thresholds(spec: GeneratorSpec, track, threshold: float | None = None
                     ) -> tuple[float, float, float | None]:
    """(note, onset, hold) thresholds of one track: its own, else the model's; `threshold`
    (a user's choice) overrides the note threshold, and then the hold scales with it."""
    note = track.threshold if track.threshold is not None else spec.threshold
    onset = track.onset_threshold if track.onset_threshold is not None else spec.onset_threshold
    hold = track.hold_threshold if track.threshold is not None else spec.hold_threshold
    if threshold is not None:
        hold = None if hold is None else hold * threshold / note
        note = threshold
    return note, onset, hold


def held_cells(p: np.ndarray, threshold: float, hold: float | None) -> np.ndarray:
    """Cells `[T, P]` that sound: where p >= threshold, and (with `hold`) onward from
    there while p stays >= hold. The hold keeps a note whole through a dip in the model's
    confidence, the fragmentation a single threshold turns into a stutter of short notes;
    a repeated note still needs its onset to restrike (read from the onset map)."""
    start = p >= threshold
    if hold is None or hold >= threshold:
        return start
    sustain = p >= hold  # start implies sustain
    n_steps = p.shape[0]
    steps = np.arange(n_steps)[:, None]
    # Per cell: where its run of sustain began, and the last start at or before it.
    run_start = np.maximum.accumulate(np.where(~sustain, steps + 1, 0), axis=0)
    last_start = np.maximum.accumulate(np.where(start, steps, -1), axis=0)
    return sustain & (last_start >= run_start)


def _read_voices(p, q, threshold, onset_threshold, rows, out_frames, out_onsets, rng=None) -> None:
    """Read voices `[V, T, P]` note by note, writing voice v into out_frames[rows[v]] and
    out_onsets[rows[v]] (`[T, P]` each).

    A voice sounds where its `MONOPHONIC_TOP_K` likeliest pitches together pass the test:
    a model unsure between two neighbouring notes still plays one, while the faint mass
    spread over every other pitch cannot add up to a note. A note starts where the voice
    starts sounding or where an onset passes (the likeliest pitch's onset); it lasts until
    the next start, and its pitch is the one most probable over its whole length (sampled
    from those probabilities, one draw per note in order, when `rng` is given). Choosing
    the pitch per note, not per step, is what keeps a wavering model from breaking a
    quarter note into flickering fragments.
    """
    n_voices, n_steps, n_pitches = p.shape
    # The K likeliest (a partition, then those K sorted: summed in the order a full sort gives).
    likeliest = np.sort(np.partition(p, max(n_pitches - MONOPHONIC_TOP_K, 0), axis=-1)[..., -MONOPHONIC_TOP_K:], axis=-1)
    top = np.clip(likeliest.sum(axis=-1), 0.0, 1.0)
    loudest_onset = q.max(axis=-1)
    if rng is None:
        sounding, onset_here = top >= threshold, loudest_onset >= onset_threshold
    else:
        sounding = rng.random(top.shape) < top
        onset_here = rng.random(loudest_onset.shape) < loudest_onset
    previous = np.zeros_like(sounding)
    previous[:, 1:] = sounding[:, :-1]
    # Voice-major rows with a silent step appended: a note never runs into the next voice.
    is_start = np.zeros((n_voices, n_steps + 1), dtype=bool)
    is_start[:, :n_steps] = sounding & (~previous | onset_here)
    starts = np.flatnonzero(is_start)
    if len(starts) == 0:
        return
    # Each note ends at the first step after its start that is silent or starts the next note.
    boundary = np.ones((n_voices, n_steps + 1), dtype=bool)
    boundary[:, :n_steps] = ~sounding
    boundary |= is_start
    stops = np.flatnonzero(boundary)
    ends = stops[np.searchsorted(stops, starts, side="right")]
    # Each note's probability mass per pitch, summed over its steps (the appended silent
    # rows make every end a valid segment boundary for reduceat).
    padded = np.zeros((n_voices, n_steps + 1, n_pitches), dtype=p.dtype)
    padded[:, :n_steps] = p
    bounds = np.stack([starts, ends], axis=1).ravel()
    weights = np.add.reduceat(padded.reshape(-1, n_pitches), bounds, axis=0)[::2]
    if rng is None:
        pitches = weights.argmax(axis=1)
    else:
        pitches = np.array([rng.choice(len(w), p=w / w.sum()) for w in weights], dtype=int)
    voice, start = np.divmod(starts, n_steps + 1)
    lengths = ends - starts
    # Every step of every note, as (row, step, pitch) index arrays.
    steps = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(start, lengths)
    track = np.asarray(rows)[voice]
    out_frames[np.repeat(track, lengths), steps, np.repeat(pitches, lengths)] = True
    out_onsets[track, start, pitches] = True
