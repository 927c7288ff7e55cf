"""The evaluation pipeline: calibration of the onset threshold, targets, and `backline evaluate`."""

from __future__ import annotations

import numpy as np

from dataclasses import replace

from backline.models.thresholds import binarise
from backline.training.evaluation import calibrate_decoding, count_notes, meets_target

from .conftest import run_backline
from .fake_models import fixed_spec

T, P = 32, 48


def held_pitch_generator(onset_probability: float, late_frame_probability: float = 0.9):
    """Every track holds pitch column 10 throughout, with this onset probability at each
    step; from step 16 on, the pitch sounds with `late_frame_probability`."""
    def generate(melody, z):
        n = melody.shape[0]
        frames = np.zeros((n, 3, T, P), dtype=np.float32)
        frames[:, :, :16, 10] = 0.9
        frames[:, :, 16:, 10] = late_frame_probability
        onsets = np.zeros_like(frames)
        onsets[:, :, :, 10] = onset_probability
        return frames, onsets
    return generate


def real_windows(notes_per_track: int, n: int = 4):
    frames = np.zeros((n, 4, T, P), dtype=bool)
    onsets = np.zeros_like(frames)
    frames[:, :, :, 10] = True
    onsets[:, :, :: T // notes_per_track, 10] = True
    return frames, onsets


def test_count_notes_reads_onsets():
    frames, onsets = real_windows(notes_per_track=4, n=2)
    assert count_notes(frames, onsets) == 2 * 4 * 4


def test_calibration_matches_the_real_note_density():
    spec = fixed_spec(monophonic=True)
    generate = held_pitch_generator(0.35)
    # Thresholds <= 0.35 strike the pitch every step (32 notes a track), higher ones hold
    # one note a window. Real data with one note per track asks for a threshold above 0.35,
    # real data struck every step for one at or below it.
    def onset_thresholds(real):
        return [t.onset_threshold for t in calibrate_decoding(generate, spec, *real)["tracks"]]

    assert onset_thresholds(real_windows(1)) == [0.4] * spec.n_tracks
    assert onset_thresholds(real_windows(32)) == [0.1] * spec.n_tracks  # the first candidate at or below 0.35


def test_calibration_matches_how_much_the_voices_sound():
    spec = fixed_spec(monophonic=True)
    generate = held_pitch_generator(0.0, late_frame_probability=0.28)
    # The second half sounds only at note thresholds up to 0.25. Real voices that sound
    # all the time ask for the lowest candidate; voices silent in the second half for the
    # first candidate above 0.28.
    frames, onsets = real_windows(1)
    chosen = calibrate_decoding(generate, spec, frames, onsets)
    assert [t.threshold for t in chosen["tracks"]] == [0.05] * spec.n_tracks and chosen["threshold"] == 0.05
    frames[:, :, 16:] = False
    onsets[:, :, 16:] = False
    assert [t.threshold for t in calibrate_decoding(generate, spec, frames, onsets)["tracks"]] == [0.3] * spec.n_tracks


def test_calibration_is_per_track():
    """One track silent in the second half, the others sounding throughout: each gets its own."""
    spec = fixed_spec(monophonic=True)
    generate = held_pitch_generator(0.0, late_frame_probability=0.28)
    frames, onsets = real_windows(1)
    frames[:, 2, 16:] = False
    onsets[:, 2, 16:] = False
    chosen = calibrate_decoding(generate, spec, frames, onsets)
    assert [t.threshold for t in chosen["tracks"]] == [0.05, 0.3, 0.05]


def test_targets():
    assert meets_target("QN", 0.94, 0.98) is True
    assert meets_target("QN", 0.92, 0.98) is False
    assert meets_target("in_scale/accompaniment", 0.88, 0.97) is True
    assert meets_target("in_scale/accompaniment", 0.87, 0.97) is False
    assert meets_target("TD/melody", 0.98, 0.90) is True
    assert meets_target("TD/melody", 0.995, 0.90) is False
    assert meets_target("UPC", 3.0, 3.3) is True  # within 20 %
    assert meets_target("UPC", 4.0, 3.3) is False
    assert meets_target("QN/Bass", 0.80, 0.90) is False  # a track's metric has its family's target
    assert meets_target("TD/Melody-Bass", 0.98, 0.90, melody="Melody") is True
    assert meets_target("TD/Bass-Guitar", 2.0, 0.90, melody="Melody") is None  # between two tracks: none
    assert meets_target("PR/Bass", 0.1, 0.5) is None
    assert meets_target("QN", float("nan"), 0.98) is None


def test_evaluate_command_prints_the_table(tiny_model):
    result = run_backline("evaluate", "--model", tiny_model)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "validation windows" in out
    for metric in ("| QN |", "| EB |", "| PR/accompaniment |", "| in_scale/accompaniment |", "| TD/melody |"):
        assert metric in out
    # The real chorales' own values appear beside the model's.
    qn_row = next(line for line in out.splitlines() if line.startswith("| QN |"))
    real_qn = float(qn_row.split("|")[3])
    assert 0.9 < real_qn <= 1.0


def test_calibration_rests_a_track_in_as_many_bars_as_the_data():
    """Bar 1 faint everywhere (0.3), bar 2 sure of two steps (0.8) and faint elsewhere
    (0.25). The real voices sound through bar 2 and rest in bar 1: matching how much they
    sound takes threshold 0.3, which plays bar 1 too; the rest threshold then silences it."""
    spec = fixed_spec(monophonic=True)
    bar = spec.steps_per_bar

    def generate(melody, z):
        frames = np.zeros((melody.shape[0], spec.n_tracks, T, P), dtype=np.float32)
        frames[:, :, :bar, 10] = 0.3
        frames[:, :, bar:, 10] = 0.25
        frames[:, :, bar:bar + 2, 10] = 0.8
        return frames, np.zeros_like(frames)

    frames, onsets = real_windows(1)
    frames[:, 1:, :bar] = False
    onsets[:, 1:, :bar] = False
    onsets[:, 1:, bar, 10] = True
    chosen = calibrate_decoding(generate, spec, frames, onsets)
    assert [t.threshold for t in chosen["tracks"]] == [0.3] * spec.n_tracks
    assert all(t.rest_threshold is not None and 0.3 < t.rest_threshold <= 0.8 for t in chosen["tracks"])
    calibrated = replace(spec, tracks=chosen["tracks"])
    probs = generate(np.zeros((1, T, P), dtype=np.float32), None)
    out, _ = binarise(probs[0][0], probs[1][0], calibrated)
    assert not out[:, :bar].any() and out[:, bar:bar + 2, 10].all()
