"""MuseGAN-style objective metrics as pure functions over boolean piano rolls (numpy only).

Conventions shared by every function:
  * `frames` is bool `[T, P]` (time step, pitch column); column c is MIDI pitch
    `lowest_pitch + c`, whose pitch class is `(lowest_pitch + c) % 12` (0 = C).
  * A cell "sounds" where `frames` is true.
  * Bars: the T steps are cut into consecutive bars of `steps_per_bar` steps from step 0;
    a trailing partial bar counts as one bar.
  * A metric with no data to average over returns nan, never 0, so that
    `mean_over_windows` can skip it.

References: Dong et al., "MuseGAN" (AAAI 2018), metrics EB, UPC, QN, DP, TD; Harte,
Sandler & Gasser, "Detecting harmonic change in musical audio" (2006), tonal centroid.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Iterable, Mapping, Sequence

import numpy as np

from backline.models.keys import Key, scale_pitch_classes
from backline.models.notes import Roll, note_durations


def _as_frames(frames: np.ndarray) -> np.ndarray:
    arr = np.asarray(frames).astype(bool)
    if arr.ndim != 2:
        raise ValueError(f"expected a [time, pitch] roll, got shape {arr.shape}")
    return arr


def _bars(frames: np.ndarray, steps_per_bar: int) -> list[np.ndarray]:
    """Split `[T, P]` into bars of `steps_per_bar` steps; the last may be partial."""
    if steps_per_bar <= 0:
        raise ValueError("steps_per_bar must be positive")
    return [frames[s : s + steps_per_bar] for s in range(0, frames.shape[0], steps_per_bar)]


def _pitch_classes(n_pitches: int, lowest_pitch: int) -> np.ndarray:
    return (lowest_pitch + np.arange(n_pitches)) % 12


def chroma(frames: np.ndarray, lowest_pitch: int) -> np.ndarray:
    """Float [12]: number of sounding (step, pitch) cells of each pitch class."""
    frames = _as_frames(frames)
    out = np.zeros(12, dtype=float)
    np.add.at(out, _pitch_classes(frames.shape[1], lowest_pitch), frames.sum(axis=0))
    return out


# --------------------------------------------------------------------------- EB, UPC


def empty_bar_rate(frames: np.ndarray, steps_per_bar: int) -> float:
    """EB: fraction of bars in which no cell sounds.

    Bars as in the module conventions (a trailing partial bar is a bar). nan if T == 0.
    This is the empty fraction as MuseGAN defines it; AWS DeepComposer's code reports
    the non-empty fraction under the same name.
    """
    bars = _bars(_as_frames(frames), steps_per_bar)
    if not bars:
        return math.nan
    return sum(not bar.any() for bar in bars) / len(bars)


def used_pitch_classes(frames: np.ndarray, steps_per_bar: int, lowest_pitch: int) -> float:
    """UPC: mean over non-empty bars of the number of distinct pitch classes sounding.

    A pitch class is used in a bar if any cell of that class sounds in the bar; empty
    bars are left out of the mean. nan if every bar is empty.
    """
    frames = _as_frames(frames)
    classes = _pitch_classes(frames.shape[1], lowest_pitch)
    counts = [
        len(set(classes[bar.any(axis=0)].tolist()))
        for bar in _bars(frames, steps_per_bar)
        if bar.any()
    ]
    return float(np.mean(counts)) if counts else math.nan


# --------------------------------------------------------------------------- QN


def qn_min_steps(steps_per_beat: int) -> int:
    """Shortest qualified note, in steps: max(2, round_half_up(3 * steps_per_beat / 12)).

    MuseGAN calls a note qualified if it lasts at least 3 steps at 12 steps per beat (a
    16th note). At 4 steps per beat a 16th is 1 step, which every note lasts, so QN
    could never fall below 1; the floor of 2 steps (an eighth note at 4 steps per beat)
    is the nearest threshold that can fail. At 12 or 24 steps/beat this gives 3 or 6.
    """
    if steps_per_beat <= 0:
        raise ValueError("steps_per_beat must be positive")
    return max(2, math.floor(3 * steps_per_beat / 12 + 0.5))


def qualified_note_rate(roll: Roll, min_steps: int) -> float:
    """QN: fraction of notes that last at least `min_steps` steps.

    Notes are decoded with `roll_to_notes`, so an onset inside a run of frames splits it
    into two notes. nan if the roll has no notes.
    """
    durations = note_durations(roll)
    if durations.size == 0:
        return math.nan
    return float(np.mean(durations >= min_steps))


# --------------------------------------------------------------------------- PR, in-scale


def polyphonic_rate(frames: np.ndarray, min_pitches: int = 2) -> float:
    """PR: among steps where at least one pitch sounds, the fraction where at least
    `min_pitches` pitches sound. nan if nothing sounds."""
    per_step = _as_frames(frames).sum(axis=1)
    sounding = per_step > 0
    if not sounding.any():
        return math.nan
    return float(np.mean(per_step[sounding] >= min_pitches))


def in_scale_ratio(frames: np.ndarray, lowest_pitch: int, key: Key) -> float:
    """Fraction of sounding (step, pitch) cells whose pitch class is in
    `scale_pitch_classes(key)` (so a minor key admits its raised 6th and 7th).

    The key is the piece's own (the caller's), not C major. nan if nothing sounds.
    """
    counts = chroma(frames, lowest_pitch)
    total = counts.sum()
    if total == 0:
        return math.nan
    in_scale = sorted(scale_pitch_classes(key))
    return float(counts[in_scale].sum() / total)


# --------------------------------------------------------------------------- DP


def drum_pattern_weights(n_steps: int, steps_per_beat: int, tolerance: float = 0.0) -> np.ndarray:
    """Float [n_steps]: weight of a drum hit at each step for `drum_in_pattern_rate`.

    Step t lies on the 16th-note grid when t / steps_per_beat beats is a whole number of
    16th notes, i.e. (4 * t) % steps_per_beat == 0 (the 8th grid is a subset). Such
    steps weigh 1; steps one step away from a grid step weigh `tolerance`; others 0.
    Where a 16th note is not a whole number of steps (e.g. 6 steps/beat) the grid steps
    are the 16th positions that fall on steps (there: the 8th grid).
    """
    if steps_per_beat <= 0:
        raise ValueError("steps_per_beat must be positive")
    t = np.arange(-1, n_steps + 1)
    on = (4 * t) % steps_per_beat == 0
    near = on[:-2] | on[2:]
    on = on[1:-1]
    return np.where(on, 1.0, np.where(near, float(tolerance), 0.0))


def drum_in_pattern_rate(
    frames: np.ndarray,
    steps_per_beat: int,
    onsets: np.ndarray | None = None,
    tolerance: float = 0.0,
) -> float:
    """DP (MuseGAN): weighted fraction of drum notes whose onset is on the 8th/16th grid.

    Drum notes are counted per (step, pitch) onset cell: `onsets & frames` when onsets
    are given, else cells that sound where the same pitch did not sound one step
    earlier. DP = sum over notes of `drum_pattern_weights(...)[onset step]` / number of
    notes; with the default tolerance 0 that is the fraction on the grid (MuseGAN's
    pypianoroll implementation uses tolerance 0.1). Steps count from the roll start,
    which must be a downbeat. At <= 4 steps per beat every step is on the 16th grid and
    DP is 1. nan if there are no drum notes.
    """
    frames = _as_frames(frames)
    if onsets is None:
        previous = np.zeros_like(frames)
        previous[1:] = frames[:-1]
        hits = frames & ~previous
    else:
        hits = _as_frames(onsets) & frames
    per_step = hits.sum(axis=1)
    n_notes = int(per_step.sum())
    if n_notes == 0:
        return math.nan
    weights = drum_pattern_weights(frames.shape[0], steps_per_beat, tolerance)
    return float((weights * per_step).sum() / n_notes)


def eighth_pattern_rate(frames: np.ndarray, onsets: np.ndarray, steps_per_beat: int) -> float:
    """Share of drum hits (onset cells) that fall on the 8th-note grid; nan without hits."""
    hits = (_as_frames(onsets) & _as_frames(frames)).sum(axis=1)
    total = int(hits.sum())
    if total == 0:
        return math.nan
    eighth = max(steps_per_beat // 2, 1)
    on_grid = np.arange(len(hits)) % eighth == 0
    return float(hits[on_grid].sum() / total)


# --------------------------------------------------------------------------- TD


def tonal_centroid_matrix(r1: float = 1.0, r2: float = 1.0, r3: float = 0.5) -> np.ndarray:
    """Float [6, 12] Harte et al. projection; column l = pitch class l (0 = C).

    Rows: r1 sin(l 7pi/6), r1 cos(l 7pi/6) (circle of fifths), r2 sin(l 3pi/2),
    r2 cos(l 3pi/2) (minor thirds), r3 sin(l 2pi/3), r3 cos(l 2pi/3) (major thirds).
    """
    l = np.arange(12)
    return np.stack(
        [
            r1 * np.sin(l * 7 * np.pi / 6),
            r1 * np.cos(l * 7 * np.pi / 6),
            r2 * np.sin(l * 3 * np.pi / 2),
            r2 * np.cos(l * 3 * np.pi / 2),
            r3 * np.sin(l * 2 * np.pi / 3),
            r3 * np.cos(l * 2 * np.pi / 3),
        ]
    )


_PHI = tonal_centroid_matrix()


def tonal_centroid(chroma_vector: np.ndarray) -> np.ndarray:
    """Float [6]: PHI @ (chroma / ||chroma||_1). Raises ValueError for a zero chroma."""
    c = np.asarray(chroma_vector, dtype=float).reshape(12)
    total = np.abs(c).sum()
    if total == 0:
        raise ValueError("zero chroma has no tonal centroid")
    return _PHI @ (c / total)


def tonal_distance(
    frames_a: np.ndarray, frames_b: np.ndarray, lowest_pitch: int, steps_per_bar: int
) -> float:
    """TD: mean over bars of the Euclidean distance between the two tracks' tonal
    centroids.

    Per bar, each track's chroma (count of sounding cells per pitch class) is
    L1-normalised and projected with `tonal_centroid_matrix()` (r1 = r2 = 1, r3 = 0.5).
    Only bars in which both tracks sound enter the mean; nan if there are none. Both
    rolls share `lowest_pitch` and must have the same number of steps.
    """
    a, b = _as_frames(frames_a), _as_frames(frames_b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"rolls differ in length: {a.shape[0]} vs {b.shape[0]}")
    distances = []
    for bar_a, bar_b in zip(_bars(a, steps_per_bar), _bars(b, steps_per_bar)):
        if not (bar_a.any() and bar_b.any()):
            continue
        ta = tonal_centroid(chroma(bar_a, lowest_pitch))
        tb = tonal_centroid(chroma(bar_b, lowest_pitch))
        distances.append(float(np.linalg.norm(ta - tb)))
    return float(np.mean(distances)) if distances else math.nan


# --------------------------------------------------------------------------- VC


def top_pitch(frames: np.ndarray) -> np.ndarray:
    """Int [T]: the column of the highest sounding pitch at each step, -1 where nothing sounds."""
    frames = _as_frames(frames)
    if frames.shape[1] == 0:
        return np.full(frames.shape[0], -1)
    highest = frames.shape[1] - 1 - np.argmax(frames[:, ::-1], axis=1)
    return np.where(frames.any(axis=1), highest, -1)


def voice_crossing_rate(upper: np.ndarray, lower: np.ndarray) -> float:
    """VC: how often the voice expected lower crosses above the voice expected higher.

    Among the steps where both rolls sound, the fraction where the highest sounding pitch
    of `lower` is strictly above the highest sounding pitch of `upper`. A unison is not a
    crossing. For single lines (a chorale voice, a string part) this is the textbook
    voice crossing; for a chord track its top note stands for its line (the one a
    listener follows). Both rolls share `lowest_pitch` and must have the same number of
    steps (the value does not depend on `lowest_pitch`). nan if the two never sound
    together.
    """
    a, b = _as_frames(upper), _as_frames(lower)
    if a.shape != b.shape:
        raise ValueError(f"rolls differ in shape: {a.shape} vs {b.shape}")
    top_a, top_b = top_pitch(a), top_pitch(b)
    both = (top_a >= 0) & (top_b >= 0)
    if not both.any():
        return math.nan
    return float(np.mean(top_b[both] > top_a[both]))


# --------------------------------------------------------------------------- bundles


def evaluate_multitrack(
    frames: np.ndarray,
    onsets: np.ndarray,
    steps_per_bar: int,
    steps_per_beat: int,
    lowest_pitch: int,
    key: Key,
    track_names: Sequence[str],
    melody_index: int = 0,
    drum_tracks: Sequence[int] = (),
    voice_pairs: Sequence[tuple[int, int]] = (),
) -> dict[str, float]:
    """All metrics of one multitrack window `frames`/`onsets` bool [K, T, P].

    Track `melody_index` is the melody (the condition); the others are accompaniment.
    Keys (M = melody name, X, Y = accompaniment names in track order):
      EB/X, UPC/X, QN/X (min steps `qn_min_steps(steps_per_beat)`), PR/X   per track
      PR/accompaniment, in_scale/accompaniment   over the OR of all accompaniment tracks
      TD/M-X   for each accompaniment track;   TD/X-Y   for each pair X before Y.
      VC/U-L   for each (upper, lower) pair of track indices in `voice_pairs` (the
               melody may be one of them): `voice_crossing_rate(frames[upper], frames[lower])`
    Drum tracks (`drum_tracks`, on the GM drum map) get EB/X, DP/X (16th grid) and DP8/X
    (8th grid: at 4 steps per beat every step is on the 16th grid, so DP is 1 by
    construction and DP8 is the one that tells patterns apart); pitch metrics (UPC, QN,
    TD, in scale, PR) are not defined for them and they are left out of the merged ones.
    """
    frames = np.asarray(frames).astype(bool)
    onsets = np.asarray(onsets).astype(bool)
    if frames.ndim != 3 or frames.shape != onsets.shape:
        raise ValueError(f"frames {frames.shape} and onsets {onsets.shape} must be [K, T, P]")
    if len(track_names) != frames.shape[0]:
        raise ValueError(f"{len(track_names)} names for {frames.shape[0]} tracks")
    drums = [k for k in range(frames.shape[0]) if k in set(drum_tracks) and k != melody_index]
    accompaniment = [k for k in range(frames.shape[0]) if k != melody_index and k not in drums]
    melody_name = track_names[melody_index]
    min_steps = qn_min_steps(steps_per_beat)
    out: dict[str, float] = {}
    for k in drums:
        name = track_names[k]
        out[f"EB/{name}"] = empty_bar_rate(frames[k], steps_per_bar)
        out[f"DP/{name}"] = drum_in_pattern_rate(frames[k], steps_per_beat, onsets[k])
        out[f"DP8/{name}"] = eighth_pattern_rate(frames[k], onsets[k], steps_per_beat)
    for k in accompaniment:
        name = track_names[k]
        out[f"EB/{name}"] = empty_bar_rate(frames[k], steps_per_bar)
        out[f"UPC/{name}"] = used_pitch_classes(frames[k], steps_per_bar, lowest_pitch)
        roll = Roll(frames[k], onsets[k], steps_per_beat, lowest_pitch)
        out[f"QN/{name}"] = qualified_note_rate(roll, min_steps)
        out[f"PR/{name}"] = polyphonic_rate(frames[k])
        out[f"in_scale/{name}"] = in_scale_ratio(frames[k], lowest_pitch, key)
    merged = frames[accompaniment].any(axis=0)
    out["PR/accompaniment"] = polyphonic_rate(merged)
    out["in_scale/accompaniment"] = in_scale_ratio(merged, lowest_pitch, key)
    for k in accompaniment:
        out[f"TD/{melody_name}-{track_names[k]}"] = tonal_distance(
            frames[melody_index], frames[k], lowest_pitch, steps_per_bar
        )
    for j, k in combinations(accompaniment, 2):
        out[f"TD/{track_names[j]}-{track_names[k]}"] = tonal_distance(
            frames[j], frames[k], lowest_pitch, steps_per_bar
        )
    for upper, lower in voice_pairs:
        out[f"VC/{track_names[upper]}-{track_names[lower]}"] = voice_crossing_rate(frames[upper], frames[lower])
    return out


def mean_over_windows(results: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Per key, the mean of the non-nan values over all windows that have the key;
    nan where a key has no non-nan value. Keys keep first-seen order."""
    values: dict[str, list[float]] = {}
    for result in results:
        for name, value in result.items():
            bucket = values.setdefault(name, [])
            if value is not None and not math.isnan(float(value)):
                bucket.append(float(value))
    return {name: (float(np.mean(v)) if v else math.nan) for name, v in values.items()}
