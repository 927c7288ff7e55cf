"""Voice crossing: the metric (training/metrics.py), the parts' expected order and the
decoder rule that places phrases against crossings (models/voicing.py), and what the
shipped bach model plays on a held-out chorale."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backline.models import registry
from backline.models.keys import Key
from backline.models.spec import TrackSpec
from backline.models.voicing import fit_range, voice_pairs, voice_parts
from backline.training.evaluation import crossing_pairs, format_crossing_table, score_windows, voiced_windows
from backline.training.metrics import evaluate_multitrack, top_pitch, voice_crossing_rate

from .fake_models import fixed_spec

LOW = 28


def roll(n: int, notes: list[tuple[int, int, int]], n_pitches: int = 64) -> np.ndarray:
    """Bool [n, n_pitches]; notes (MIDI pitch, first step, end step), column 0 = MIDI LOW."""
    out = np.zeros((n, n_pitches), dtype=bool)
    for pitch, start, end in notes:
        out[start:end, pitch - LOW] = True
    return out


# ----------------------------------------------------------------------------- the metric


def test_top_pitch_is_the_highest_sounding_column():
    r = roll(4, [(60, 0, 2), (67, 1, 3)])
    assert top_pitch(r).tolist() == [60 - LOW, 67 - LOW, 67 - LOW, -1]


def test_crossing_rate_counts_steps_where_the_lower_part_is_on_top():
    # Upper holds C5 for 8 steps. Lower: E4 for 4 steps, D5 (over the C5) for 2, then rests.
    upper = roll(8, [(72, 0, 8)])
    lower = roll(8, [(64, 0, 4), (74, 4, 6)])
    assert voice_crossing_rate(upper, lower) == pytest.approx(2 / 6)  # 6 steps together, 2 crossed
    # The same rolls with the roles swapped: the C5 is over the E4 on 4 of the 6 steps.
    assert voice_crossing_rate(lower, upper) == pytest.approx(4 / 6)


def test_no_crossing_under_or_at_a_unison():
    upper = roll(8, [(72, 0, 8)])
    lower = roll(8, [(60, 0, 4), (72, 4, 8)])  # under, then a unison (not a crossing)
    assert voice_crossing_rate(upper, lower) == 0.0


def test_chords_compare_their_top_notes():
    chord = roll(4, [(60, 0, 4), (76, 0, 4)])
    assert voice_crossing_rate(chord, roll(4, [(67, 0, 4)])) == 0.0  # G4 under the chord's E5
    assert voice_crossing_rate(roll(4, [(72, 0, 4)]), roll(4, [(55, 0, 4), (74, 0, 4)])) == 1.0


def test_crossing_is_nan_when_the_parts_never_sound_together():
    assert math.isnan(voice_crossing_rate(roll(8, [(72, 0, 4)]), roll(8, [(80, 4, 8)])))
    with pytest.raises(ValueError):
        voice_crossing_rate(roll(8, []), roll(4, []))


def test_evaluate_multitrack_scores_the_pairs_it_is_given():
    sop = roll(8, [(72, 0, 8)])
    alto = roll(8, [(64, 0, 4), (74, 4, 6)])
    tenor = roll(8, [(60, 0, 8)])
    frames = np.stack([sop, alto, tenor])
    out = evaluate_multitrack(frames, frames, 8, 4, LOW, Key(0, "major"), ["S", "A", "T"],
                              voice_pairs=[(0, 1), (1, 2)])
    assert out["VC/S-A"] == pytest.approx(2 / 6)
    assert out["VC/A-T"] == 0.0
    assert "VC/S-T" not in out


# ----------------------------------------------------------------------------- the order

CHORALE = (TrackSpec("Soprano", 40, 0), (TrackSpec("Alto", 40, 1, monophonic=True),
                                          TrackSpec("Tenor", 41, 2, monophonic=True),
                                          TrackSpec("Bass", 42, 3, monophonic=True)))
BAND = (TrackSpec("Melody", 0, 0), (TrackSpec("Drums", 0, 9, is_drum=True), TrackSpec("Bass", 33, 1, monophonic=True),
                                    TrackSpec("Guitar", 27, 2), TrackSpec("Piano", 0, 3), TrackSpec("Strings", 48, 4)))


def test_a_chorale_is_ordered_soprano_alto_tenor_bass():
    # Soprano and alto are both violins: two lines on one instrument count from the top.
    assert voice_pairs(*CHORALE) == [(0, 1), (1, 2), (2, 3)]


def test_a_band_has_its_bass_under_every_other_pitched_part_and_no_drums():
    # Guitar, piano and strings (range centres 63, 64.5, 62) have no order among themselves.
    assert voice_pairs(*BAND) == [(0, 2), (3, 2), (4, 2), (5, 2)]


def test_chord_parts_on_one_instrument_have_no_order_but_lines_do():
    melody = TrackSpec("Melody", 40, 0)
    assert voice_pairs(melody, (TrackSpec("A", 40, 1), TrackSpec("B", 40, 2))) == []
    # Three violin lines (the melody is one): numbered from the top, like Violin I and II.
    assert voice_pairs(melody, (TrackSpec("A", 40, 1, monophonic=True), TrackSpec("B", 40, 2, monophonic=True))) == [
        (0, 1), (1, 2)]


@pytest.mark.parametrize("name, expected", [
    ("bach", [("Soprano", "Alto"), ("Alto", "Tenor"), ("Tenor", "Bass")]),
    ("symphony", [("Violin I", "Violin II"), ("Violin II", "Viola"), ("Viola", "Cello")]),
    ("pop", [("Melody", "Bass"), ("Guitar", "Bass"), ("Piano", "Bass"), ("Strings", "Bass")]),
    ("rock", [("Melody", "Bass"), ("Guitar", "Bass"), ("Organ", "Bass"), ("Strings", "Bass")]),
    ("jazz", [("Melody", "Bass"), ("Guitar", "Bass"), ("Piano", "Bass"), ("Horns", "Bass")]),
])
def test_the_shipped_models_pairs(name, expected):
    spec = next(e.spec for e in registry.list_models() if e.path.stem == name)
    names = [spec.melody.name, *(t.name for t in spec.tracks)]
    assert [(names[u], names[v]) for u, v in crossing_pairs(spec)] == expected


# ----------------------------------------------------------------------------- the decoder rule


def notes(*tracks: list[tuple[int, int, int]]):
    """Arrays (track, pitch, start, length) as note_runs gives them, from per-track lists
    of (MIDI pitch, start, length)."""
    rows = sorted((k, s, p, n) for k, track in enumerate(tracks) for p, s, n in track)
    k, s, p, n = (np.array(c, dtype=np.int64) for c in zip(*rows))
    return k, p, s, n


def test_an_alto_with_one_note_under_the_violin_stays_under_the_soprano():
    """fit_range moves the whole phrase up an octave for one F3 (the violin stops at G3),
    over the soprano's G4; the rule keeps the line where the model put it and folds the F3."""
    melody, tracks = CHORALE
    track_of, pitch, start, length = notes([(60, 0, 4), (62, 4, 4), (53, 8, 4), (57, 12, 4)], [], [])
    soprano = np.full(16, 67)
    assert fit_range(pitch, start, length, 55, 103, 4).tolist() == [72, 74, 65, 69]  # 12 of 16 steps over G4
    placed = voice_parts(melody, tracks[:3], track_of, pitch, start, length, 4, soprano)
    assert placed.tolist() == [60, 62, 65, 57]


def test_a_bass_over_the_guitar_moves_down_an_octave_as_a_whole():
    melody, tracks = BAND
    # Drums, bass G3-A3 over the guitar's A2-E3 dyad for 8 steps; the melody on C5.
    track_of, pitch, start, length = notes([(36, 0, 1)], [(55, 0, 4), (57, 4, 4)], [(45, 0, 8), (52, 0, 8)], [], [])
    placed = voice_parts(melody, tracks, track_of, pitch, start, length, 4, np.full(8, 72))
    assert placed.tolist() == [36, 43, 45, 45, 52]  # drum untouched, the bass line an octave down


def test_a_crossing_no_placement_in_range_avoids_stays():
    """The soprano on A3: a violin alto's C can only be C4 or higher, over it."""
    melody, tracks = CHORALE
    track_of, pitch, start, length = notes([(60, 0, 8)], [], [])
    assert voice_parts(melody, tracks[:3], track_of, pitch, start, length, 4, np.full(8, 57)).tolist() == [60]


def crossing_steps(tracks, pairs, track_of, pitch, start, length, melody_top) -> int:
    n = len(melody_top)
    tops = [melody_top]
    for k in range(len(tracks)):
        mine = track_of == k
        r = np.zeros((n, 128), dtype=bool)
        for p, s, d in zip(pitch[mine], start[mine], length[mine]):
            r[s:s + d, p] = True
        tops.append(top_pitch(r))
    total = 0
    for u, v in pairs:
        both = (tops[u] >= 0) & (tops[v] >= 0)
        total += int(np.count_nonzero(both & (tops[v] > tops[u])))
    return total


@pytest.mark.parametrize("which", ["chorale", "band"])
@pytest.mark.parametrize("seed", range(12))
def test_the_rule_keeps_every_note_in_range_and_never_adds_crossings(which, seed):
    """Random decoded parts, anywhere on the model's grid: after voicing every pitched note
    is in its instrument's range and an octave from where it was decoded, drums are
    untouched, and the crossing steps summed over the pairs are no more than with
    `fit_range` alone."""
    melody, tracks = CHORALE if which == "chorale" else BAND
    rng = np.random.default_rng(seed)
    n = 64
    parts = []
    for track in tracks:
        part, step = [], 0
        while step < n:
            length = int(rng.integers(1, 8))
            if rng.random() < 0.8:
                for _ in range(1 if track.monophonic or track.is_drum else int(rng.integers(1, 4))):
                    part.append((int(rng.integers(36, 82) if track.is_drum else rng.integers(28, 92)), step,
                                 min(length, n - step)))
            step += length + (int(rng.integers(4, 8)) if rng.random() < 0.2 else 0)
        parts.append(sorted(set(part), key=lambda x: (x[1], x[0])))
    track_of, pitch, start, length = notes(*parts)
    melody_top = np.where(rng.random(n) < 0.9, rng.integers(52, 85, n), -1)
    placed = voice_parts(melody, tracks, track_of, pitch, start, length, 4, melody_top)
    fitted = pitch.copy()
    for k, track in enumerate(tracks):
        mine = track_of == k
        if not track.is_drum:
            fitted[mine] = fit_range(pitch[mine], start[mine], length[mine], *track.playable_range, 4)
    for k, track in enumerate(tracks):
        mine = track_of == k
        low, high = track.playable_range
        if track.is_drum:
            assert (placed[mine] == pitch[mine]).all()
        else:
            assert ((placed[mine] >= low) & (placed[mine] <= high)).all()
            assert ((placed[mine] - pitch[mine]) % 12 == 0).all()
    pairs = voice_pairs(melody, tracks)
    after = crossing_steps(tracks, pairs, track_of, placed, start, length, melody_top)
    before = crossing_steps(tracks, pairs, track_of, fitted, start, length, melody_top)
    assert after <= before


# ----------------------------------------------------------------------------- in `evaluate`


def test_evaluation_scores_crossing_after_voicing():
    """fixed_spec: the melody, then 'Held' (an acoustic bass, 28..60) under
    'Restruck' (strings) and 'Silent' (piano). A Held note at 65 is over the range: voiced,
    it plays at 53, under the Restruck's 55, as `accompany` would play it."""
    spec = fixed_spec()
    assert [(u, v) for u, v in crossing_pairs(spec)] == [(0, 1), (2, 1), (3, 1)]
    T, P = spec.window_steps, spec.n_pitches
    frames = np.zeros((1, 4, T, P), dtype=bool)
    frames[0, 0, :, 72 - spec.lowest_pitch] = True
    frames[0, 1, :, 65 - spec.lowest_pitch] = True
    frames[0, 2, :, 55 - spec.lowest_pitch] = True
    onsets = np.zeros_like(frames)
    onsets[0, :, 0] = frames[0, :, 0]
    voiced = voiced_windows(frames, onsets, spec)
    assert voiced.shape == (1, 4, T, 128)
    assert voiced[0, 1].any(axis=0).nonzero()[0].tolist() == [53]
    assert voiced[0, 2].any(axis=0).nonzero()[0].tolist() == [55]
    modes = ["major"]
    raw = score_windows(frames, onsets, np.array([spec.steps_per_bar]), modes, spec)
    assert raw["VC/Restruck-Held"] == 1.0
    scored = score_windows(frames, onsets, np.array([spec.steps_per_bar]), modes, spec, crossing_frames=voiced)
    assert scored["VC/Restruck-Held"] == 0.0 and scored["VC/Melody-Held"] == 0.0
    assert math.isnan(scored["VC/Silent-Held"])
    assert scored["VC"] == 0.0  # the mean over pairs that have a value
    table = format_crossing_table(scored, raw, spec)
    assert "| Restruck over Held | 0.0000 / 1.0000 ✓ |" in table
    assert "| Silent over Held | - / - |" in table


# ----------------------------------------------------------------------------- the shipped bach model


@pytest.fixture(scope="module")
def bwv433():
    """bach/bwv433 (in the shipped model's validation split): soprano notes in the piece's
    own key, and the real parts' top pitches per step."""
    music21 = pytest.importorskip("music21")
    from backline.models.notes import Roll, roll_to_notes
    from backline.training.data.grid import LOWEST_PITCH
    from backline.training.data.split import is_validation
    from backline.training.sources.chorales import convert_piece

    assert is_validation("bach/bwv433")
    piece = convert_piece(music21.corpus.parse("bach/bwv433"), "bach/bwv433")
    melody = [n._replace(pitch=n.pitch - piece.shift)
              for n in roll_to_notes(Roll(piece.frames[0], piece.onsets[0], 4, LOWEST_PITCH), 90)]
    return piece, melody


def tops_of(notes_list, n_steps):
    from backline.models.notes import notes_to_roll

    return top_pitch(notes_to_roll(notes_list, n_steps, 4, 0, 128).frames)


def test_shipped_bach_keeps_its_alto_under_the_soprano_of_a_held_out_chorale(bwv433, monkeypatch):
    """bwv433 is in F major: the model's alto (written in C) has a few notes under G3 that
    the violin cannot play. `fit_range` alone moves the whole line (one phrase: the alto
    never rests a beat) an octave up, over the soprano on every step. With the rule the
    alto stays under it on all but a handful of steps (Bach's own alto: none), every note
    in range, and the crossings summed over the three pairs fall."""
    import backline.models.voicing as voicing
    from backline.models.accompaniment import accompany

    piece, melody = bwv433
    generator = registry.load("bach", device="cpu")
    spec = generator.spec
    n = piece.n_steps

    def rates(accompaniment):
        tops = [tops_of(melody, n)] + [tops_of(part, n) for _, part in accompaniment.tracks]
        out = []
        for u, v in voice_pairs(spec.melody, spec.tracks):
            both = (tops[u] >= 0) & (tops[v] >= 0)
            out.append((int(np.count_nonzero(both & (tops[v] > tops[u]))), int(both.sum())))
        return out

    with_rule = accompany(generator, melody, seed=0)
    with monkeypatch.context() as m:
        m.setattr(voicing, "separate_voices", lambda tracks, pairs, track_of, pitch, fitted, *a, **k: fitted)
        fit_only = accompany(generator, melody, seed=0)
    before, after = rates(fit_only), rates(with_rule)
    assert before[0][0] / before[0][1] > 0.95
    assert after[0][0] / after[0][1] < 0.02
    assert sum(c for c, _ in after) <= sum(c for c, _ in before)
    for track, part in with_rule.tracks:
        low, high = track.playable_range
        assert part and all(low <= note.pitch <= high for note in part), track.name
    # The data's own rate on this piece, for the record: Bach's parts never cross here.
    real = [top_pitch(piece.frames[k]) for k in range(4)]
    assert all(not ((real[u] >= 0) & (real[v] >= 0) & (real[v] > real[u])).any() for u, v in [(0, 1), (1, 2), (2, 3)])



@pytest.mark.parametrize("example", ["chorale-bwv286-soprano", "chorale-bwv122.6-soprano", "ode-to-joy"])
def test_live_bars_are_voiced_like_clips(monkeypatch, example):
    """Live mode places each bar's parts with the same rule: on a real chorale soprano,
    bar by bar, the alto sits over the soprano on no more steps than with range fitting
    alone (voice_parts swapped for per-track fit_range), and every note is in range."""
    from backline.bridge.live import session
    from backline.models.midi import pick_melody_track, read_midi

    generator = registry.load("bach")
    spec = generator.spec
    melody = pick_melody_track(read_midi(registry.SHIPPED_DIR / "examples" / f"{example}.mid"), None).notes
    z = generator.draw_z(0, 1)
    bars = int(max(n.end for n in melody) // spec.beats_per_bar)

    def alto_over_soprano() -> int:
        over = 0
        for bar in range(1, bars):
            window_start = (bar + 1) * spec.beats_per_bar - spec.window_beats
            window = [n._replace(start=n.start - window_start) for n in melody
                      if window_start <= n.start < (bar + 1) * spec.beats_per_bar]
            result = session.generate_bar(generator, window, melody, window_start, z, None)
            if result is None:
                continue
            for track, notes in zip(spec.tracks, result.tracks):
                low, high = track.playable_range
                assert all(low <= n.pitch <= high for n in notes), track.name
            step = 1 / spec.steps_per_beat
            for i in range(spec.beats_per_bar * spec.steps_per_beat):
                t = bar * spec.beats_per_bar + i * step
                soprano = [n.pitch for n in melody if n.start <= t < n.end]
                alto = [n.pitch for n in result.tracks[0] if n.start <= t < n.end]
                over += bool(soprano and alto and max(alto) > max(soprano))
        return over

    voiced = alto_over_soprano()

    def fitted_only(melody_spec, tracks, track_of, pitch, start, length, phrase_gap, melody_top=None):
        pitch = np.array(pitch, copy=True)
        for k, track in enumerate(tracks):
            mine = track_of == k
            if mine.any() and not track.is_drum:
                pitch[mine] = fit_range(pitch[mine], start[mine], length[mine], *track.playable_range, phrase_gap)
        return pitch

    monkeypatch.setattr(session, "voice_parts", fitted_only)
    fitted = alto_over_soprano()
    assert voiced <= fitted
    if example == "ode-to-joy":  # a melody that sits low for a chorale: range fitting alone
        assert voiced < fitted  # lifts alto phrases over it (16 steps against 6 when written)
