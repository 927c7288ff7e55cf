"""The chorale data pipeline on a few real chorales from music21's bundled corpus."""

from __future__ import annotations

import numpy as np
import pytest

music21 = pytest.importorskip("music21")

from backline.training.data import build, cache, grid, split  # noqa: E402
from backline.training.sources import chorales as ch  # noqa: E402

# name: (beats per bar, starts with a pickup bar). 3/4 with a one-beat pickup, 4/4 with a
# one-beat pickup, 4/4 without a pickup, 3/4 without a pickup.
PIECES = {
    "bach/bwv269": (3, True),
    "bach/bwv101.7": (4, True),
    "bach/bwv10.7": (4, False),
    "bach/bwv11.6": (3, False),
}


@pytest.fixture(scope="module")
def scores():
    return {name: music21.corpus.parse(name) for name in PIECES}


@pytest.fixture(scope="module")
def pieces(scores):
    out = {}
    for name, score in scores.items():
        piece = ch.piece_rolls(score, name)
        assert piece is not None, name
        out[name] = piece
    return out


def _written_notes(part):
    """(note, pitch) for every note that starts a sound: no grace notes, no tie ends."""
    found = []
    for n in part.recurse().notes:
        if n.duration.isGrace or n.duration.quarterLength == 0:
            continue
        members = n.notes if n.isChord else [n]
        for m in members:
            tie = m.tie if (m.tie is not None or not n.isChord) else n.tie
            if tie is not None and tie.type in ("stop", "continue"):
                continue
            found.append((n, m.pitch.midi))
    return found


def _padding(part) -> float:
    """Rests before the piece: music21 marks a pickup bar with paddingLeft."""
    first = part.getElementsByClass("Measure")[0]
    return float(first.paddingLeft)


def test_meter_and_pickup(pieces):
    for name, (beats, pickup) in PIECES.items():
        piece = pieces[name]
        assert piece.beats_per_bar == beats
        assert piece.steps_per_bar == 4 * beats
        assert piece.n_steps % piece.steps_per_bar == 0
        first_onset = int(np.flatnonzero(piece.onsets[0].any(axis=1))[0])
        # a pickup is padded so it ends on the first barline; otherwise music starts at 0
        if pickup:
            assert 0 < first_onset < piece.steps_per_bar
        else:
            assert first_onset == 0


def test_bar_grid_matches_music21_beats(scores, pieces):
    """Every written note sits where music21's own beat says, relative to the barline."""
    for name, score in scores.items():
        piece = pieces[name]
        pad = _padding(score.parts[0])
        for track, part in enumerate(score.parts):
            for n, midi in _written_notes(part):
                step = round((float(n.getOffsetInHierarchy(part)) + pad) * grid.STEPS_PER_BEAT)
                expected_in_bar = round((float(n.beat) - 1) * grid.STEPS_PER_BEAT)
                assert step % piece.steps_per_bar == expected_in_bar, (name, track, n)
                column = midi + piece.shift - grid.LOWEST_PITCH
                assert piece.onsets[track, step, column], (name, track, n, step)


def test_downbeat_of_first_full_bar(scores, pieces):
    for name, score in scores.items():
        piece = pieces[name]
        spb = piece.steps_per_bar
        for track, part in enumerate(score.parts):
            bar = next(m for m in part.getElementsByClass("Measure") if m.paddingLeft == 0)
            first = bar.notes[0]
            assert first.offset == 0 and first.beat == 1
            step = spb if PIECES[name][1] else 0
            column = first.pitch.midi + piece.shift - grid.LOWEST_PITCH
            assert piece.onsets[track, step, column], (name, track)
            assert step % spb == 0


def test_ties_merge_into_one_note(scores, pieces):
    tied_seen = 0
    for name, score in scores.items():
        piece = pieces[name]
        pad = _padding(score.parts[0])
        for track, part in enumerate(score.parts):
            # one onset per written note: tie continuations add none
            assert int(piece.onsets[track].sum()) == len(_written_notes(part)), (name, track)
            for n in part.recurse().notes:
                if n.isChord or n.tie is None or n.tie.type not in ("stop", "continue"):
                    continue
                step = round((float(n.getOffsetInHierarchy(part)) + pad) * grid.STEPS_PER_BEAT)
                column = n.pitch.midi + piece.shift - grid.LOWEST_PITCH
                assert piece.frames[track, step, column]  # still sounding
                assert not piece.onsets[track, step, column]  # but not restruck
                assert piece.frames[track, step - 1, column]  # continuous with the start
                tied_seen += 1
    assert tied_seen > 0, "the test pieces should contain ties"


def test_three_four_windows_are_four_bars(pieces):
    piece = pieces["bach/bwv269"]
    ds = build.chorale_windows([piece])
    assert ds.frames.shape[1:] == (4, 48, grid.N_PITCHES)
    assert ds.onsets.shape == ds.frames.shape
    assert ch.WINDOW_STEPS == 48 == 4 * 12
    assert set(ds.steps_per_bar.tolist()) == {12}
    assert np.all(ds.window_start % 12 == 0)
    assert len(ds) == (piece.n_steps - 48) // 12 + 1
    last = ds.window_start[-1]
    assert last + 48 <= piece.n_steps and last + 12 + 48 > piece.n_steps
    np.testing.assert_array_equal(ds.frames[1], piece.frames[:, 12:60])
    # a 4/4 piece: 3 bars of 16
    ds44 = build.chorale_windows([pieces["bach/bwv10.7"]])
    assert set(ds44.steps_per_bar.tolist()) == {16}
    assert np.all(ds44.window_start % 16 == 0)


def test_key_normalised_to_c_major_or_a_minor(scores, pieces):
    for name, score in scores.items():
        piece = pieces[name]
        assert -6 <= piece.shift <= 5
        key = score.transpose(piece.shift).analyze("key")
        assert key.mode == piece.key_mode
        assert key.tonic.pitchClass == {"major": 0, "minor": 9}[key.mode], (name, key)


def test_key_shift():
    assert ch.key_shift(0, "major") == 0
    assert ch.key_shift(9, "minor") == 0
    assert ch.key_shift(7, "major") == 5  # G major -> C major: up a fourth
    assert ch.key_shift(6, "major") == -6
    assert ch.key_shift(2, "minor") == -5  # D minor -> A minor
    assert all(-6 <= ch.key_shift(t, m) <= 5 for t in range(12) for m in ("major", "minor"))


def test_notes_fit_the_pitch_range(scores, pieces):
    for name, score in scores.items():
        piece = pieces[name]
        for track, part in enumerate(score.parts):
            midis = [midi + piece.shift for _, midi in _written_notes(part)]
            assert grid.LOWEST_PITCH <= min(midis)
            assert max(midis) < grid.LOWEST_PITCH + grid.N_PITCHES
            columns = np.flatnonzero(piece.frames[track].any(axis=0))
            assert columns[0] + grid.LOWEST_PITCH == min(midis)
            assert columns[-1] + grid.LOWEST_PITCH == max(midis)
    assert grid.N_PITCHES % 16 == 0


def test_skipped_pieces():
    with pytest.raises(grid.SkipPiece) as info:
        ch.convert_piece(music21.corpus.parse("bach/bwv1.6"), "bach/bwv1.6")
    assert info.value.reason == "parts not exactly SATB"
    with pytest.raises(grid.SkipPiece) as info:
        ch.convert_piece(music21.corpus.parse("bach/bwv123.6"), "bach/bwv123.6")
    assert info.value.reason == "other meter"  # 3/2
    assert ch.piece_rolls(music21.corpus.parse("bach/bwv1.6"), "bach/bwv1.6") is None


def test_split_is_by_piece_and_stable():
    names = ch.corpus_names()
    assert len(names) > 400
    train, val = split.split_names(names)
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(names)
    assert 0.05 < len(val) / len(names) < 0.15
    assert split.split_names(reversed(names)) == (train[::-1], val[::-1])
    assert all(split.is_validation(n) for n in val)
    assert not any(split.is_validation(n) for n in train)


def _renamed(piece, name, new_melody=False):
    frames, onsets = piece.frames.copy(), piece.onsets.copy()
    if new_melody:  # another melody: the soprano a semitone higher
        frames[0] = np.roll(frames[0], 1, axis=-1)
        onsets[0] = np.roll(onsets[0], 1, axis=-1)
    return grid.PieceRolls(**{**vars(piece), "name": name, "frames": frames, "onsets": onsets})


def test_split_chorales_never_shares_a_piece(pieces):
    candidates = [f"x/{i}" for i in range(1000)]
    val_like = [n for n in candidates if split.is_validation(n)][:2]
    train_like = [n for n in candidates if not split.is_validation(n)][:2]
    extra = val_like + train_like
    # copies under other names with other melodies: two validation names, two train names
    fake = [_renamed(p, n, new_melody=True) for p, n in zip(pieces.values(), extra)]
    all_pieces = list(pieces.values()) + fake
    train, val = build.split_chorales(all_pieces)
    train_names = {train.piece_names[i] for i in np.unique(train.piece_index)}
    val_names = {val.piece_names[i] for i in np.unique(val.piece_index)}
    assert set(val_like) <= val_names and set(train_like) <= train_names
    assert not train_names & val_names
    assert train_names | val_names == {p.name for p in all_pieces}
    assert len(train) + len(val) == sum(len(p.window_starts(ch.WINDOW_STEPS)) for p in all_pieces)


def test_same_melody_lands_in_one_split(pieces):
    """A chorale melody harmonised twice (same Soprano) never straddles the split."""
    base = pieces["bach/bwv10.7"]
    names = [f"y/{i}" for i in range(1000)]
    v = next(n for n in names if split.is_validation(n))
    t = next(n for n in names if not split.is_validation(n) and n > v)
    twins = [_renamed(base, v), _renamed(base, t)]  # v sorts first and decides
    assert split.split_keys(twins) == [v, v]
    train, val = build.split_chorales(twins)
    assert len(train) == 0 and set(val.piece_names) == {v, t}
    twins = [_renamed(base, t), _renamed(base, t + "0")]
    train, val = build.split_chorales(twins)
    assert len(val) == 0 and len(train.piece_names) == 2


def test_subset(pieces):
    ds = build.chorale_windows(list(pieces.values()))
    mask = ds.steps_per_bar == 12
    sub = ds.subset(mask)
    assert len(sub) == int(mask.sum()) > 0
    assert sub.piece_names == ds.piece_names
    assert {sub.piece_names[i] for i in sub.piece_index} == {"bach/bwv269", "bach/bwv11.6"}
    np.testing.assert_array_equal(sub.frames, ds.frames[mask])
    assert sub.melody_range is not None


def test_cache_round_trip(tmp_path, pieces, monkeypatch):
    original = list(pieces.values())
    info = {"corpus_files": 4, "kept": 4, "skipped": {}}
    cache.save_pieces(tmp_path / build.chorale_cache_name(), original, info)
    assert not [p for p in tmp_path.iterdir() if p.name != build.chorale_cache_name()]  # no temp left
    loaded, loaded_info = cache.load_pieces_file(tmp_path / build.chorale_cache_name())
    assert loaded_info == info
    for a, b in zip(original, loaded):
        assert (a.name, a.beats_per_bar, a.key_tonic, a.key_mode, a.shift) == (
            b.name, b.beats_per_bar, b.key_tonic, b.key_mode, b.shift)
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.onsets, b.onsets)

    # load_chorales reads the cache and never rebuilds
    def no_build(*args, **kwargs):
        raise AssertionError("should have read the cache")

    monkeypatch.setattr(ch, "read_corpus", no_build)
    train, val = build.load_chorales(cache_dir=tmp_path, progress=False)
    assert len(train) + len(val) == sum(len(p.window_starts(ch.WINDOW_STEPS)) for p in original)
    assert "pieces" in build.chorale_summary(train, val)
