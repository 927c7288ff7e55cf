"""Metrics and key finding on small hand-made rolls; expected values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backline.models.keys import (
    Key,
    estimate_key,
    normalising_shift,
    pitch_class_histogram,
    scale_pitch_classes,
)
from backline.models.notes import Note, Roll
from backline.training.metrics import (
    drum_in_pattern_rate,
    empty_bar_rate,
    evaluate_multitrack,
    in_scale_ratio,
    mean_over_windows,
    polyphonic_rate,
    qn_min_steps,
    qualified_note_rate,
    tonal_centroid_matrix,
    tonal_distance,
    used_pitch_classes,
)

LOW = 48  # column 0 = C3; pitch class of column c is c % 12
P = 37  # C3..C6
BAR = 16  # 4 steps per beat, 4/4


def roll(n_steps: int, cells: list[tuple[int, int, int]]) -> np.ndarray:
    """Frames with pitch `p` sounding on steps [start, end) for each (p, start, end)."""
    frames = np.zeros((n_steps, P), dtype=bool)
    for pitch, start, end in cells:
        frames[start:end, pitch - LOW] = True
    return frames


# ----------------------------------------------------------------------------- EB


def test_empty_bar_rate_two_bars_one_empty():
    # Bar 0 holds a C4 quarter note, bar 1 is silent: 1 empty of 2 bars -> 0.5.
    frames = roll(32, [(60, 0, 4)])
    assert empty_bar_rate(frames, BAR) == pytest.approx(0.5)


def test_empty_bar_rate_trailing_partial_bar_counts():
    # 40 steps = bars [0,16), [16,32), [32,40). Only the partial bar sounds -> 2/3 empty.
    frames = roll(40, [(60, 35, 37)])
    assert empty_bar_rate(frames, BAR) == pytest.approx(2 / 3)
    # Nothing at all: 3 of 3 bars empty.
    assert empty_bar_rate(roll(40, []), BAR) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- UPC


def test_used_pitch_classes_triad_and_means_over_non_empty_bars():
    # Bar 0: C4 E4 G4 + C5 -> pitch classes {C, E, G} = 3 (C5 repeats C).
    # Bar 1: empty (left out). Bar 2: one D4 -> 1. Mean over non-empty bars (3 + 1) / 2 = 2.
    frames = roll(48, [(60, 0, 8), (64, 0, 8), (67, 0, 8), (72, 8, 12), (62, 32, 36)])
    assert used_pitch_classes(frames[:16], BAR, LOW) == pytest.approx(3.0)
    assert used_pitch_classes(frames, BAR, LOW) == pytest.approx(2.0)


def test_used_pitch_classes_uses_lowest_pitch_and_nan_when_empty():
    # C4 then C5 (columns 12, 24) -> one pitch class.
    frames = roll(16, [(60, 0, 4), (72, 4, 8)])
    assert used_pitch_classes(frames, BAR, LOW) == pytest.approx(1.0)
    # Columns 12 and 13 read with lowest pitch 50 are pitches 62, 63 (D, Eb) -> 2.
    frames = roll(16, [(60, 0, 4), (61, 4, 8)])
    assert used_pitch_classes(frames, BAR, 50) == pytest.approx(2.0)
    assert math.isnan(used_pitch_classes(roll(32, []), BAR, LOW))


# ----------------------------------------------------------------------------- QN


def test_qn_min_steps():
    # max(2, round(3 * spb / 12)): 4 -> max(2, 1) = 2; 12 -> 3; 24 -> 6; 16 -> 4; 2 -> 2.
    assert [qn_min_steps(s) for s in (2, 4, 8, 12, 16, 24)] == [2, 2, 2, 3, 4, 6]


def test_qualified_note_rate_durations_1_1_2_4():
    # Notes of 1, 1, 2 and 4 steps; at min 2 steps the 2- and 4-step notes qualify -> 2/4.
    frames = roll(16, [(60, 0, 1), (62, 2, 3), (64, 4, 6), (65, 8, 12)])
    onsets = roll(16, [(60, 0, 1), (62, 2, 3), (64, 4, 5), (65, 8, 9)])
    r = Roll(frames, onsets, 4, LOW)
    assert qualified_note_rate(r, 2) == pytest.approx(0.5)
    # At min 1 all four qualify; at min 3 only the 4-step note -> 1/4.
    assert qualified_note_rate(r, 1) == pytest.approx(1.0)
    assert qualified_note_rate(r, 3) == pytest.approx(0.25)


def test_qualified_note_rate_onset_splits_a_run():
    # One run of 4 steps of C4. With onsets at 0 and 3 it is two notes of 3 and 1 steps
    # -> 1 of 2 qualify at min 2. With an onset only at 0 it is one 4-step note -> 1.0.
    frames = roll(16, [(60, 0, 4)])
    split = Roll(frames, roll(16, [(60, 0, 1), (60, 3, 4)]), 4, LOW)
    whole = Roll(frames, roll(16, [(60, 0, 1)]), 4, LOW)
    assert qualified_note_rate(split, 2) == pytest.approx(0.5)
    assert qualified_note_rate(whole, 2) == pytest.approx(1.0)
    empty = Roll(roll(16, []), roll(16, []), 4, LOW)
    assert math.isnan(qualified_note_rate(empty, 2))


# ----------------------------------------------------------------------------- PR


def test_polyphonic_rate():
    # Step 0: C4 only; step 1: C4+E4; step 2: C4+E4+G4; step 3: silence; step 4: D4.
    # Sounding steps 0,1,2,4 (4 steps); >= 2 pitches at 1,2 -> 2/4; >= 3 at 2 -> 1/4.
    frames = roll(8, [(60, 0, 3), (64, 1, 3), (67, 2, 3), (62, 4, 5)])
    assert polyphonic_rate(frames) == pytest.approx(0.5)
    assert polyphonic_rate(frames, min_pitches=3) == pytest.approx(0.25)
    assert math.isnan(polyphonic_rate(roll(8, [])))


# ----------------------------------------------------------------------------- in scale


def test_in_scale_ratio_is_relative_to_the_key():
    # F#4 (pc 6) is degree 7 of G major -> in; it is not in C major -> out.
    fsharp = roll(4, [(66, 0, 2)])
    assert in_scale_ratio(fsharp, LOW, Key(7, "major")) == pytest.approx(1.0)
    assert in_scale_ratio(fsharp, LOW, Key(0, "major")) == pytest.approx(0.0)
    # Cells: C4 x2 steps, E4 x1, F#4 x1 = 4 cells; in C major 3 of 4 are in scale.
    mixed = roll(4, [(60, 0, 2), (64, 2, 3), (66, 3, 4)])
    assert in_scale_ratio(mixed, LOW, Key(0, "major")) == pytest.approx(0.75)
    assert math.isnan(in_scale_ratio(roll(4, []), LOW, Key(0, "major")))


def test_in_scale_ratio_minor_admits_raised_sixth_and_seventh():
    a_minor = Key(9, "minor")
    # G#4 (raised 7th of A minor) and F#4 (raised 6th) count in.
    assert in_scale_ratio(roll(4, [(68, 0, 1)]), LOW, a_minor) == pytest.approx(1.0)
    assert in_scale_ratio(roll(4, [(66, 0, 1)]), LOW, a_minor) == pytest.approx(1.0)
    # Bb4 (pc 10) and C#4 (pc 1) are outside A minor: 1 of 3 cells (A4) is in.
    cells = roll(4, [(70, 0, 1), (61, 1, 2), (69, 2, 3)])
    assert in_scale_ratio(cells, LOW, a_minor) == pytest.approx(1 / 3)


def test_scale_pitch_classes():
    assert scale_pitch_classes(Key(0, "major")) == frozenset({0, 2, 4, 5, 7, 9, 11})
    assert scale_pitch_classes(Key(7, "major")) == frozenset({7, 9, 11, 0, 2, 4, 6})
    # A natural minor A B C D E F G + F# G#.
    assert scale_pitch_classes(Key(9, "minor")) == frozenset({9, 11, 0, 2, 4, 5, 7, 6, 8})
    # C minor: C D Eb F G Ab Bb + A B.
    assert scale_pitch_classes(Key(0, "minor")) == frozenset({0, 2, 3, 5, 7, 8, 10, 9, 11})


# ----------------------------------------------------------------------------- DP


def test_drum_in_pattern_rate_8_steps_per_beat():
    # 8 steps/beat: a 16th is 2 steps, so even steps are on the grid.
    # Kick (36) hits at 0, 2, 3, 4; snare (38) at 4 -> 5 notes, 4 on grid -> 0.8.
    frames = roll(16, [(36, 0, 1), (36, 2, 3), (36, 3, 4), (36, 4, 5), (38, 4, 5)])
    onsets = frames.copy()  # one-step hits: 2, 3 and 4 are separate kick hits
    assert drum_in_pattern_rate(frames, 8, onsets) == pytest.approx(0.8)
    # Tolerance 0.1: step 3 is one step from grid step 2 -> (4 + 0.1) / 5 = 0.82.
    assert drum_in_pattern_rate(frames, 8, onsets, tolerance=0.1) == pytest.approx(0.82)
    # Without onsets the kick run 2..4 is one note (onset 2): kick 0, kick 2, snare 4 -> 1.0.
    assert drum_in_pattern_rate(frames, 8) == pytest.approx(1.0)


def test_drum_in_pattern_rate_12_and_4_steps_per_beat():
    # 12 steps/beat: 16th = 3 steps; hits at 0, 1, 3, 5 -> on grid 0, 3 -> 2/4 = 0.5.
    # Tolerance 0.1: 1 is next to 0 and 5 next to 6 -> (2 + 0.2) / 4 = 0.55.
    frames = roll(12, [(36, 0, 1), (36, 1, 2), (36, 3, 4), (36, 5, 6)])
    assert drum_in_pattern_rate(frames, 12, frames) == pytest.approx(0.5)
    assert drum_in_pattern_rate(frames, 12, frames, tolerance=0.1) == pytest.approx(0.55)
    # 4 steps/beat: every step is a 16th -> 1.0. No hits -> nan.
    assert drum_in_pattern_rate(frames, 4, frames) == pytest.approx(1.0)
    assert math.isnan(drum_in_pattern_rate(roll(12, []), 12))


# ----------------------------------------------------------------------------- TD


def test_tonal_centroid_matrix_columns():
    phi = tonal_centroid_matrix()
    assert phi.shape == (6, 12)
    # C (l=0): all sines 0, cosines r = 1, 1, 0.5.
    np.testing.assert_allclose(phi[:, 0], [0, 1, 0, 1, 0, 0.5], atol=1e-12)
    # G (l=7): 49pi/6 = pi/6, 21pi/2 = pi/2, 14pi/3 = 2pi/3 (mod 2pi).
    expected_g = [0.5, math.sqrt(3) / 2, 1, 0, math.sqrt(3) / 4, -0.25]
    np.testing.assert_allclose(phi[:, 7], expected_g, atol=1e-12)


def test_tonal_distance_identical_chroma_is_zero():
    # C4 E4 G4 against C3 E3 G3 (other octave, same durations): identical chroma -> 0.
    a = roll(16, [(60, 0, 4), (64, 0, 4), (67, 0, 4)])
    b = roll(16, [(48, 0, 4), (52, 0, 4), (55, 0, 4)])
    assert tonal_distance(a, b, LOW, BAR) == pytest.approx(0.0, abs=1e-12)
    # Proportional counts (each pitch 8 steps instead of 4) normalise to the same chroma.
    c = roll(16, [(48, 0, 8), (52, 0, 8), (55, 0, 8)])
    assert tonal_distance(a, c, LOW, BAR) == pytest.approx(0.0, abs=1e-12)


def test_tonal_distance_c_major_vs_a_minor():
    # C major {C, E, G} vs A minor {A, C, E}, each pc 1/3 of the chroma. C and E cancel:
    # d = (1/3) |phi(G) - phi(A)|.
    # phi(G) = (1/2, sqrt3/2, 1, 0, sqrt3/4, -1/4)
    # phi(A): 63pi/6 = pi/2, 27pi/2 = 3pi/2, 6pi = 0 -> (1, 0, -1, 0, 0, 1/2)
    # diff = (-1/2, sqrt3/2, 2, 0, sqrt3/4, -3/4); squared sum = 1/4 + 3/4 + 4 + 3/16 + 9/16
    #      = 23/4 -> |diff| = sqrt(23)/2 -> d = sqrt(23)/6 ~ 0.7993.
    c_major = roll(32, [(60, 0, 4), (64, 0, 4), (67, 0, 4), (60, 16, 20)])
    a_minor = roll(32, [(57, 0, 4), (60, 0, 4), (64, 0, 4)])
    # Bar 1 has only c_major sounding, so it is left out of the mean.
    assert tonal_distance(c_major, a_minor, LOW, BAR) == pytest.approx(math.sqrt(23) / 6)
    assert math.isnan(tonal_distance(roll(32, []), a_minor, LOW, BAR))


def test_tonal_distance_matches_independent_formula_and_averages_bars():
    # Written out independently of the module: bar 0 C vs G (single notes), bar 1 the
    # C major vs A minor triads; TD is the mean of the two per-bar distances.
    def phi(pc: int) -> np.ndarray:
        return np.array(
            [
                math.sin(pc * 7 * math.pi / 6),
                math.cos(pc * 7 * math.pi / 6),
                math.sin(pc * 3 * math.pi / 2),
                math.cos(pc * 3 * math.pi / 2),
                0.5 * math.sin(pc * 2 * math.pi / 3),
                0.5 * math.cos(pc * 2 * math.pi / 3),
            ]
        )

    bar0 = float(np.linalg.norm(phi(0) - phi(7)))
    # C vs G: diff = (0 - 1/2, 1 - sqrt3/2, -1, 1, -sqrt3/4, 1/2 + 1/4)
    # squared = 1/4 + (7/4 - sqrt3) + 1 + 1 + 3/16 + 9/16 = 19/4 - sqrt3
    assert bar0 == pytest.approx(math.sqrt(19 / 4 - math.sqrt(3)))
    bar1 = float(np.linalg.norm((phi(0) + phi(4) + phi(7)) / 3 - (phi(9) + phi(0) + phi(4)) / 3))
    a = roll(32, [(60, 0, 16), (60, 16, 20), (64, 16, 20), (67, 16, 20)])
    b = roll(32, [(67, 0, 16), (57, 16, 20), (60, 16, 20), (64, 16, 20)])
    assert tonal_distance(a, b, LOW, BAR) == pytest.approx((bar0 + bar1) / 2)
    assert tonal_distance(a, b, LOW, BAR) == pytest.approx(
        (math.sqrt(19 / 4 - math.sqrt(3)) + math.sqrt(23) / 6) / 2
    )


# ----------------------------------------------------------------------------- bundles


def test_evaluate_multitrack_keys_and_values():
    # Soprano (melody) holds C5 over bar 0 only. Alto: E4 in bar 0, bar 1 empty.
    # Tenor: C4 + G4 in bar 0, and an F#4 in bar 1.
    # Two bars of 16 steps, 4 steps/beat, key C major.
    n = 32
    sop = roll(n, [(72, 0, 16)])
    alto = roll(n, [(64, 0, 8)])
    tenor = roll(n, [(60, 0, 16), (67, 0, 16), (66, 16, 17)])
    frames = np.stack([sop, alto, tenor])
    onsets = np.stack(
        [
            roll(n, [(72, 0, 1)]),
            roll(n, [(64, 0, 1)]),
            roll(n, [(60, 0, 1), (67, 0, 1), (66, 16, 17)]),
        ]
    )
    out = evaluate_multitrack(
        frames, onsets, 16, 4, LOW, Key(0, "major"), ["Soprano", "Alto", "Tenor"]
    )
    assert list(out) == [
        "EB/Alto", "UPC/Alto", "QN/Alto", "PR/Alto", "in_scale/Alto",
        "EB/Tenor", "UPC/Tenor", "QN/Tenor", "PR/Tenor", "in_scale/Tenor",
        "PR/accompaniment", "in_scale/accompaniment",
        "TD/Soprano-Alto", "TD/Soprano-Tenor", "TD/Alto-Tenor",
    ]  # fmt: skip
    assert out["EB/Alto"] == pytest.approx(0.5)
    assert out["UPC/Alto"] == pytest.approx(1.0)
    assert out["QN/Alto"] == pytest.approx(1.0)
    assert out["PR/Alto"] == pytest.approx(0.0)
    assert out["EB/Tenor"] == pytest.approx(0.0)
    assert out["UPC/Tenor"] == pytest.approx((2 + 1) / 2)  # {C, G} then {F#}
    assert out["QN/Tenor"] == pytest.approx(2 / 3)  # 16, 16, 1 steps at min 2
    assert out["PR/Tenor"] == pytest.approx(16 / 17)  # 17 sounding steps, 16 with 2
    # Merged: steps 0..7 C E G (3), 8..15 C G (2), 16 F# (1) -> 16 of 17 polyphonic.
    assert out["PR/accompaniment"] == pytest.approx(16 / 17)
    # Cells: 8 (E) + 16 (C) + 16 (G) + 1 (F#) = 41, 40 in C major.
    assert out["in_scale/accompaniment"] == pytest.approx(40 / 41)
    # Soprano and Alto are single notes C and E in bar 0 only; bar 1 has no soprano.
    phi = tonal_centroid_matrix()
    assert out["TD/Soprano-Alto"] == pytest.approx(float(np.linalg.norm(phi[:, 0] - phi[:, 4])))
    # Soprano C vs Tenor {C, G} half and half in bar 0: |phi(C) - (phi(C) + phi(G))/2|.
    assert out["TD/Soprano-Tenor"] == pytest.approx(
        float(np.linalg.norm(phi[:, 0] - phi[:, 7]) / 2)
    )
    # Alto E vs Tenor {C, G}, bar 0 only (Alto is empty in bar 1).
    assert out["TD/Alto-Tenor"] == pytest.approx(
        float(np.linalg.norm(phi[:, 4] - (phi[:, 0] + phi[:, 7]) / 2))
    )


def test_mean_over_windows_ignores_nan():
    windows = [
        {"a": 1.0, "b": math.nan, "c": math.nan},
        {"a": 3.0, "b": 2.0},
        {"a": math.nan, "c": math.nan},
    ]
    out = mean_over_windows(windows)
    assert list(out) == ["a", "b", "c"]
    assert out["a"] == pytest.approx(2.0)
    assert out["b"] == pytest.approx(2.0)
    assert math.isnan(out["c"])


# ----------------------------------------------------------------------------- keys


def melody(pitches: list[int], durations: list[float] | None = None) -> list[Note]:
    durations = durations or [1.0] * len(pitches)
    notes, t = [], 0.0
    for p, d in zip(pitches, durations):
        notes.append(Note(p, t, d))
        t += d
    return notes


def test_pitch_class_histogram_is_duration_weighted():
    # C4 2 beats + C5 1 beat -> C = 3; E4 half a beat -> E = 0.5; muted G ignored.
    notes = [Note(60, 0, 2.0), Note(72, 2, 1.0), Note(64, 3, 0.5), Note(67, 4, 1.0, mute=True)]
    expected = np.zeros(12)
    expected[0], expected[4] = 3.0, 0.5
    np.testing.assert_allclose(pitch_class_histogram(notes), expected)


def test_estimate_key():
    c_major = [60, 62, 64, 65, 67, 69, 71, 72]
    assert estimate_key(melody(c_major)) == Key(0, "major")
    assert estimate_key(melody([p + 3 for p in c_major])) == Key(3, "major")  # Eb major
    assert estimate_key(melody([p + 3 for p in c_major])).name == "Eb major"
    # A harmonic minor up and down: A B C D E F G# A G# F E D C B A.
    a_harmonic = [57, 59, 60, 62, 64, 65, 68, 69, 68, 65, 64, 62, 60, 59, 57]
    assert estimate_key(melody(a_harmonic)) == Key(9, "minor")
    with pytest.raises(ValueError):
        estimate_key([])


def test_normalising_shift():
    cases = {
        Key(0, "major"): 0,
        Key(7, "major"): 5,  # G -> C: up a 4th
        Key(5, "major"): -5,  # F -> C: down a 4th
        Key(6, "major"): -6,  # F# -> C: the tritone goes down
        Key(2, "major"): -2,
        Key(11, "major"): 1,
        Key(3, "major"): -3,  # Eb
        Key(9, "minor"): 0,
        Key(4, "minor"): 5,  # E minor -> A minor
        Key(2, "minor"): -5,  # D minor
        Key(0, "minor"): -3,  # C minor -> A minor
        Key(6, "minor"): 3,  # F# minor
        Key(3, "minor"): -6,  # Eb minor
    }
    for key, shift in cases.items():
        assert normalising_shift(key) == shift, key
    for tonic in range(12):
        for mode, target in (("major", 0), ("minor", 9)):
            s = normalising_shift(Key(tonic, mode))
            assert -6 <= s <= 5 and (tonic + s) % 12 == target
