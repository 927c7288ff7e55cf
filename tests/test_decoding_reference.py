"""The array-based decoders against plain step-by-step readings of the same rules, on
random rolls of every density (including empty, full and one-step rolls)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from backline.models.notes import Note, Roll, note_runs, roll_to_notes
from backline.models.thresholds import MONOPHONIC_TOP_K, binarise
from backline.models.spec import TrackSpec

from .fake_models import fixed_spec


def notes_step_by_step(frames: np.ndarray, onsets: np.ndarray, steps_per_beat: int, lowest: int) -> list[Note]:
    """A note starts where a pitch sounds after silence or carries an onset, and lasts
    while the pitch sounds with no new onset."""
    notes = []
    n_steps, n_pitches = frames.shape
    for pitch in range(n_pitches):
        step = 0
        while step < n_steps:
            if not frames[step, pitch]:
                step += 1
                continue
            end = step + 1
            while end < n_steps and frames[end, pitch] and not onsets[end, pitch]:
                end += 1
            notes.append(Note(pitch + lowest, step / steps_per_beat, (end - step) / steps_per_beat, 100))
            step = end
    return sorted(notes, key=lambda n: (n.start, n.pitch))


def voice_step_by_step(p: np.ndarray, q: np.ndarray, threshold: float, onset_threshold: float) -> np.ndarray:
    """One voice: it sounds where its top-k pitches together pass the threshold; a note runs
    from a start (sounding after silence, or an onset) to the next start or silence, on
    the pitch with the most probability over the note."""
    n_steps = len(p)
    sounding = [min(1.0, float(np.sort(p[t])[-MONOPHONIC_TOP_K:].sum())) >= threshold for t in range(n_steps)]
    starts = [t for t in range(n_steps)
              if sounding[t] and (t == 0 or not sounding[t - 1] or q[t].max() >= onset_threshold)]
    out = np.zeros(p.shape, dtype=bool)
    for i, start in enumerate(starts):
        end = start + 1
        while end < n_steps and sounding[end] and (i + 1 == len(starts) or end < starts[i + 1]):
            end += 1
        out[start:end, int(p[start:end].sum(axis=0).argmax())] = True
    return out


@pytest.mark.parametrize("seed", range(40))
def test_roll_to_notes_reads_random_rolls_as_the_step_by_step_rule_does(seed):
    rng = np.random.default_rng(seed)
    n_steps, n_pitches = int(rng.integers(0, 60)), int(rng.integers(1, 24))
    frames = rng.random((n_steps, n_pitches)) < rng.random()
    onsets = rng.random((n_steps, n_pitches)) < rng.random()
    expected = notes_step_by_step(frames, onsets & frames, 4, 30)
    assert roll_to_notes(Roll(frames, onsets, 4, 30), velocity=100) == expected


@pytest.mark.parametrize("seed", range(40))
def test_monophonic_voices_decode_random_probabilities_as_the_step_by_step_rule_does(seed):
    """Three voices and a polyphonic track between them, decoded in one call: each voice
    as the one-voice reading has it (no note runs from one voice into the next)."""
    rng = np.random.default_rng(seed)
    n_steps, n_pitches = int(rng.integers(1, 60)), int(rng.integers(2, 24))
    p = (rng.random((4, n_steps, n_pitches)) ** rng.uniform(1, 6)).astype(np.float32)
    q = rng.random((4, n_steps, n_pitches)).astype(np.float32)
    tracks = tuple(TrackSpec(f"track {k}", 0, k, monophonic=k != 1) for k in range(4))
    spec = replace(fixed_spec(), tracks=tracks, threshold=0.3, onset_threshold=0.5)
    frames, onsets = binarise(p, q, spec)
    assert np.array_equal(frames[1], p[1] >= 0.3)
    assert np.array_equal(onsets[1], (p[1] >= 0.3) & (q[1] >= 0.5))
    for k in (0, 2, 3):
        expected = voice_step_by_step(p[k], q[k], 0.3, 0.5)
        assert np.array_equal(frames[k], expected)
        starts = [(t, int(np.flatnonzero(expected[t])[0])) for t in range(n_steps)
                  if expected[t].any() and (t == 0 or not np.array_equal(expected[t], expected[t - 1])
                                            or q[k, t].max() >= 0.5)]
        assert {tuple(c) for c in np.argwhere(onsets[k])} == set(starts)


@pytest.mark.parametrize("seed", range(20))
def test_note_runs_reads_a_stack_of_rolls_as_roll_to_notes_reads_each(seed):
    rng = np.random.default_rng(100 + seed)
    n_rolls, n_steps, n_pitches = int(rng.integers(1, 5)), int(rng.integers(0, 40)), int(rng.integers(1, 16))
    frames = rng.random((n_rolls, n_steps, n_pitches)) < rng.random()
    onsets = rng.random((n_rolls, n_steps, n_pitches)) < rng.random()
    roll, pitch, start, length = note_runs(frames, onsets)
    for k in range(n_rolls):
        mine = roll == k
        expected = notes_step_by_step(frames[k], onsets[k] & frames[k], 4, 30)
        assert [(n.pitch - 30, round(n.start * 4), round(n.duration * 4)) for n in expected] == \
            list(zip(pitch[mine].tolist(), start[mine].tolist(), length[mine].tolist()))
    assert np.array_equal(roll, np.sort(roll))


def held_step_by_step(p: np.ndarray, threshold: float, hold: float) -> np.ndarray:
    """A cell sounds where p >= threshold, or where the cell before it sounds and p >= hold."""
    out = np.zeros(p.shape, dtype=bool)
    for pitch in range(p.shape[1]):
        for t in range(p.shape[0]):
            before = t > 0 and out[t - 1, pitch]
            out[t, pitch] = p[t, pitch] >= threshold or (before and p[t, pitch] >= hold)
    return out


@pytest.mark.parametrize("seed", range(30))
def test_held_cells_follow_the_step_by_step_hold_rule(seed):
    from backline.models.thresholds import held_cells

    rng = np.random.default_rng(seed)
    p = rng.random((int(rng.integers(1, 50)), int(rng.integers(1, 20)))) ** rng.uniform(0.5, 3)
    threshold = float(rng.uniform(0.2, 0.8))
    hold = threshold * float(rng.uniform(0.1, 1.0))
    assert np.array_equal(held_cells(p, threshold, hold), held_step_by_step(p, threshold, hold))
    assert np.array_equal(held_cells(p, threshold, None), p >= threshold)


def test_a_hold_keeps_a_wavering_chord_note_whole():
    """Confidence dipping under the threshold mid-note: one note with a hold, three without."""
    spec = fixed_spec()
    spec = replace(spec, tracks=tuple(replace(t, monophonic=False) for t in spec.tracks), threshold=0.5)
    p = np.zeros((spec.n_tracks, 16, spec.n_pitches), dtype=np.float32)
    p[0, :, 10] = [0.9, 0.6, 0.4, 0.6, 0.45, 0.7, 0.8, 0.6, 0, 0, 0, 0, 0, 0, 0, 0]
    q = np.zeros_like(p)
    q[0, 0, 10] = 0.9
    without = note_runs(*binarise(p, q, spec))
    held = note_runs(*binarise(p, q, replace(spec, hold_threshold=0.3)))
    assert len(without[0]) == 3 and list(held[3]) == [8]


def test_a_rest_threshold_silences_the_bars_the_model_barely_wants():
    """Bar 1 peaks at 0.35, bar 2 at 0.9: with a rest threshold of 0.5 only bar 2 sounds."""
    spec = fixed_spec()
    bar = spec.steps_per_bar
    p = np.zeros((spec.n_tracks, 2 * bar, spec.n_pitches), dtype=np.float32)
    p[0, :bar, 5] = 0.35
    p[0, bar:, 5] = 0.9
    q = np.zeros_like(p)
    spec = replace(spec, threshold=0.3, tracks=(replace(spec.tracks[0], monophonic=False, rest_threshold=0.5),
                                                *spec.tracks[1:]))
    frames, _ = binarise(p, q, spec)
    assert not frames[0, :bar].any() and frames[0, bar:, 5].all()
    ungated = replace(spec, tracks=(replace(spec.tracks[0], rest_threshold=None), *spec.tracks[1:]))
    assert binarise(p, q, ungated)[0][0, :, 5].all()


def place_step_by_step(tracks, pairs, track_of, pitch, start, length, phrase_gap, melody_top) -> list[int]:
    """separate_voices' rule read plainly: the parts one at a time in `_placing_order`,
    each phrase once, trying the octave moves nearest fit_range's first and keeping one
    only where it costs strictly less (crossing steps with the neighbours as they stand,
    plus a beat of steps per folded note)."""
    from backline.models.voicing import _placing_order, fit_range

    fitted = np.array(pitch)
    for k, track in enumerate(tracks):
        mine = track_of == k
        if mine.any():
            fitted[mine] = fit_range(pitch[mine], start[mine], length[mine], *track.playable_range, phrase_gap)
    n_steps = max(int((start + length).max()), len(melody_top))
    tops = [[-1] * n_steps for _ in range(1 + len(tracks))]
    tops[0][:len(melody_top)] = [int(t) for t in melody_top]
    for i in range(len(pitch)):
        for t in range(start[i], start[i] + length[i]):
            tops[1 + track_of[i]][t] = max(tops[1 + track_of[i]][t], int(fitted[i]))

    def fold(p: int, low: int, high: int) -> int:
        while p < low:
            p += 12
        while p > high:
            p -= 12
        return p

    for row in _placing_order(tracks, pairs):
        low, high = tracks[row - 1].playable_range
        neighbours = [(u, True) for u, v in pairs if v == row] + [(v, False) for u, v in pairs if u == row]
        notes = [i for i in range(len(pitch)) if track_of[i] == row - 1]
        phrases, end = [], None
        for i in notes:
            if end is None or start[i] - end >= phrase_gap:
                phrases.append([])
            phrases[-1].append(i)
            end = max(end or 0, start[i] + length[i])
        for phrase in phrases:
            first, last = start[phrase[0]], max(start[i] + length[i] for i in phrase)

            def placement(octave: int) -> tuple[list[int], list[int], int]:
                moved = [int(pitch[i]) + 12 * octave for i in phrase]
                folds = sum(not low <= p <= high for p in moved)
                placed = [fold(p, low, high) for p in moved]
                own = [-1] * (last - first)
                for i, p in zip(phrase, placed):
                    for t in range(start[i], start[i] + length[i]):
                        own[t - first] = max(own[t - first], p)
                crossed = sum(1 for other, upper in neighbours for t in range(first, last)
                              if own[t - first] >= 0 and tops[other][t] >= 0
                              and (own[t - first] > tops[other][t] if upper else tops[other][t] > own[t - first]))
                return placed, own, crossed + phrase_gap * folds

            inside = {o: sum(low <= int(pitch[i]) + 12 * o <= high for i in phrase) for o in range(-4, 5)}
            fit = max(range(-4, 5), key=lambda o: (inside[o], -abs(o), o))
            best, (placed, own, cost) = fit, placement(fit)
            for octave in sorted(range(-4, 5), key=lambda o: (abs(o - fit), o)):
                candidate = placement(octave)
                if candidate[2] < cost:
                    best, (placed, own, cost) = octave, candidate
            if best != fit:
                fitted[phrase] = placed
                tops[row][first:last] = own
    return fitted.tolist()


@pytest.mark.parametrize("seed", range(30))
def test_voice_placement_follows_the_plain_reading_of_its_rule(seed):
    """separate_voices weighs every phrase of a part in one set of array steps; it must
    place each as the plain reading does, on random parts that cross, stray out of
    range and leave gaps (the bach quartet's and the pop band's instruments)."""
    from backline.models import registry
    from backline.models.voicing import voice_pairs, voice_parts

    rng = np.random.default_rng(seed)
    spec = registry.load(("bach", "pop")[seed % 2], device="cpu").spec
    n_steps = 64 * (1 + seed % 3)
    track_of, pitch, start, length = [], [], [], []
    for k, track in enumerate(spec.tracks):
        if track.is_drum:
            continue
        t = int(rng.integers(0, 8))
        while t < n_steps:
            duration = int(rng.choice([1, 2, 4, 8]))
            track_of.append(k), pitch.append(int(rng.integers(30, 100))), start.append(t)
            length.append(min(duration, n_steps - t))
            t += duration + int(rng.choice([0, 0, 0, 2, 5]))
    order = np.lexsort((pitch, start, track_of))
    track_of, pitch, start, length = (np.array(a)[order] for a in (track_of, pitch, start, length))
    melody_top = np.where(rng.random(n_steps) < 0.8, rng.integers(55, 85, n_steps), -1)
    placed = voice_parts(spec.melody, spec.tracks, track_of, pitch, start, length, spec.steps_per_beat, melody_top)
    pairs = voice_pairs(spec.melody, spec.tracks)
    assert placed.tolist() == place_step_by_step(spec.tracks, pairs, track_of, pitch, start, length,
                                                 spec.steps_per_beat, melody_top)
    assert (placed != pitch).any()  # the parts did have to move
