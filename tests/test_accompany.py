"""`backline accompany` end to end, through the real command line and real MIDI files."""

from __future__ import annotations

import mido
import numpy as np
import pytest

from backline.models.melody import MelodyError
from backline.models.accompaniment import accompany
from backline.models.midi import read_midi, write_midi
from backline.models.notes import Note
from backline.models.runtime import Generator
from backline.models.spec import TrackSpec

from .conftest import run_backline
from .fake_models import write_fixed_model


@pytest.fixture(scope="module")
def fixed_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("fixed") / "fixed.onnx"
    write_fixed_model(path)
    return path


@pytest.fixture(scope="module")
def chorale_soprano(tmp_path_factory):
    """The soprano of a validation chorale (3/4, with a pickup), written by music21's own
    MIDI writer: a real file from a program that is not ours."""
    from music21 import corpus

    path = tmp_path_factory.mktemp("melody") / "bwv122.6-soprano.mid"
    corpus.parse("bach/bwv122.6").parts[0].write("midi", fp=str(path))
    return path


def overlapping_same_pitch(notes: list[Note]) -> list[tuple[Note, Note]]:
    by_pitch: dict[int, list[Note]] = {}
    for n in notes:
        by_pitch.setdefault(n.pitch, []).append(n)
    bad = []
    for group in by_pitch.values():
        group.sort(key=lambda n: n.start)
        bad += [(a, b) for a, b in zip(group, group[1:]) if b.start < a.end - 1e-9]
    return bad


def test_windows_stitch_without_gap_or_doubled_note(fixed_model):
    generator = Generator(fixed_model, device="cpu")
    assert generator.spec.window_beats == 8
    # 30 beats: three full windows and a part of a fourth.
    melody = [Note(68 + (i % 5), float(i), 1.0) for i in range(30)]  # centred on the trained range
    result = accompany(generator, melody, seed=1)
    held, restruck, silent = (notes for _, notes in result.tracks)
    # Track 0 has no confident onset anywhere: one note over the whole melody, as loud as
    # the melody (velocity 100) with a downbeat's accent.
    assert held == [Note(48, 0.0, 30.0, 110)]
    # Track 1 restarts at every join (beats 0, 8, 16, 24): abutting, never overlapping.
    assert [(n.start, n.duration) for n in restruck] == [(0.0, 8.0), (8.0, 8.0), (16.0, 8.0), (24.0, 6.0)]
    assert overlapping_same_pitch(restruck) == []
    assert silent == []


def raw_tracks(path) -> list[tuple[str, int | None, set[int]]]:
    """(name, program, channels) of each track, read with mido directly, so that a track
    the model left silent still shows."""
    out = []
    for track in mido.MidiFile(path).tracks:
        name = next((m.name for m in track if m.type == "track_name"), "")
        program = next((m.program for m in track if m.type == "program_change"), None)
        channels = {m.channel for m in track if m.type in ("note_on", "program_change")}
        out.append((name, program, channels))
    return out


def test_accompany_real_chorale_soprano(tiny_model, chorale_soprano, tmp_path):
    """The file layout, through the CLI, with a seconds-trained model."""
    out = tmp_path / "out.mid"
    result = run_backline("accompany", chorale_soprano, "-o", out, "--model", tiny_model, "--seed", "4")
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    tracks = [t for t in raw_tracks(out) if t[0]]  # the conductor track has no name
    assert tracks == [("Soprano", 0, {0}), ("Alto", 40, {1}), ("Tenor", 41, {2}), ("Bass", 42, {3})]
    melody_in = read_midi(chorale_soprano)
    score = read_midi(out)
    assert score.time_signature == (3, 4)
    assert score.tempo_bpm == pytest.approx(melody_in.tempo_bpm)
    # The melody goes through untouched.
    assert score.tracks[0].notes == melody_in.tracks[0].notes
    end = melody_in.length_beats
    for track in score.tracks[1:]:
        assert all(0 <= n.start < end + 1e-9 and n.end <= end + 0.25 for n in track.notes)
        assert overlapping_same_pitch(track.notes) == []


def test_same_seed_same_accompaniment(tiny_model, chorale_soprano, tmp_path):
    a, b = tmp_path / "a.mid", tmp_path / "b.mid"
    for path in (a, b):
        assert run_backline("accompany", chorale_soprano, "-o", path, "--model", tiny_model,
                            "--seed", "9", "--sample").returncode == 0
    assert read_midi(a).tracks == read_midi(b).tracks


def test_track_option_picks_the_named_track(tiny_model, tmp_path):
    melody = tmp_path / "two.mid"
    tune = [Note(67 + d, i * 1.0, 1.0) for i, d in enumerate([0, 2, 4, 5, 4, 2, 0, 0])]
    bass = [Note(40, i * 2.0, 2.0) for i in range(4)]
    write_midi(melody, None, [(TrackSpec("Bass line", 33, 1), bass), (TrackSpec("Tune", 0, 0), tune)])
    out = tmp_path / "out.mid"
    result = run_backline("accompany", melody, "-o", out, "--model", tiny_model, "--track", "bass line")
    assert result.returncode == 0, result.stderr
    assert read_midi(out).tracks[0].notes == bass
    result = run_backline("accompany", melody, "-o", out, "--model", tiny_model)
    assert read_midi(out).tracks[0].notes == tune  # by rule: the higher line


def test_melody_outside_the_pitch_range_is_refused(fixed_model):
    generator = Generator(fixed_model, device="cpu")
    with pytest.raises(MelodyError, match="spans 61 semitones"):
        accompany(generator, [Note(30, 0, 1), Note(90, 1, 1)])


def test_accompany_uses_no_torch(tiny_model, chorale_soprano, tmp_path):
    """`accompany` must work where torch is not installed: block its import."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ModuleNotFoundError('No module named torch', name='torch')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from backline.bridge.cli import main\n"
        f"code = main(['accompany', {str(chorale_soprano)!r}, '-o', {str(tmp_path / 'o.mid')!r}, "
        f"'--model', {str(tiny_model)!r}])\n"
        "assert code == 0, code\n"
        "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules)\n"
        "print('ok without torch')\n"
    )
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ok without torch" in result.stdout
    assert read_midi(tmp_path / "o.mid").tracks[0].name == "Soprano"


def test_shipped_bach_model_accompanies_a_chorale_soprano(chorale_soprano, tmp_path):
    """The default model, as a user gets it: four voices, each busy and in range."""
    out, png = tmp_path / "bach.mid", tmp_path / "bach.png"
    result = run_backline("accompany", chorale_soprano, "-o", out, "--png", png)
    assert result.returncode == 0, result.stderr
    score = read_midi(out)
    assert [t.name for t in score.tracks] == ["Soprano", "Alto", "Tenor", "Bass"]
    score.tracks[0].notes
    beats = score.length_beats
    for voice, (low, high) in zip(score.tracks[1:], [(50, 80), (42, 74), (30, 67)]):
        notes = voice.notes
        # A chorale voice moves about once a beat; a silent or frantic voice fails here.
        assert beats / 3 < len(notes) < beats * 2, (voice.name, len(notes), beats)
        assert all(low <= n.pitch <= high for n in notes), voice.name
        assert overlapping_same_pitch(notes) == []
    # The voices keep their order: on average alto over tenor over bass, all under the melody.
    means = [np.mean([n.pitch for n in t.notes]) for t in score.tracks]
    assert means[0] > means[1] > means[2] > means[3]
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
