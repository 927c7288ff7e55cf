"""A genre model end to end on real multi-track MIDI: a seconds-long MuseGAN run on a few
openmsx songs (Debian package openttd-openmsx), refusing to resume it as something
else, exporting it with parity, and playing a real song's melody with it.

The run is tiny (widths 4 8 16 32, 48 windows, one warm-up and one adversarial epoch),
trained and exported once per module. Torch runs on one thread meanwhile: on two busy
cores its two-thread convolutions are many times slower than one thread.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import mido
import numpy as np
import pytest
import torch

from backline.models.accompaniment import accompany
from backline.models.instruments import GM_DRUM_RANGE
from backline.models.midi import read_midi, write_midi
from backline.models.runtime import Generator
from backline.models.spec import METADATA_KEY, TrackSpec
from backline.training.checkpoint import CheckpointError, load_checkpoint
from backline.training.data.build import load_training_data
from backline.training.data.genres import DRUM_PITCHES, GENRES
from backline.training.data.melody import choose_melody, split_top_line

from .conftest import run_backline
from .debian_music import openmsx

# Five short songs: 148 training windows, and careless_perc (39 windows) for validation.
SONGS = ("coconut_run2.mid", "ultimate_run.mid", "train_filled_with_cash.mid", "ttsong_iv_imuh3.mid",
         "careless_perc_redfarn.mid")
PLAYED = "keep_on_rolling.mid"  # not trained on; its melody is a trumpet, chosen by register
POP = GENRES["pop"]
POP_TRACKS = ["Drums", "Bass", "Guitar", "Piano", "Strings"]
LICENCE = "GPL-2 (OpenMSX, openttd-openmsx)"
LOSSES = ("loss_d", "wasserstein", "gp", "loss_g", "recon")
WIDTHS = (4, 8, 16, 32)




def missing(value) -> bool:
    """A loss no step computed: NaN in metrics.jsonl (null, should it ever be written so)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def pop_data(cache_dir):
    paths = [str(openmsx(name)) for name in SONGS]
    train, val = load_training_data(paths, POP, cache_dir=cache_dir, progress=False)
    return paths, train, val


def pop_config(out: Path, paths, genre: str = "pop", arch: str = "musegan", **overrides):
    from backline.training.networks import net_config_for
    from backline.training.train import TrainConfig

    values = dict(out_dir=str(out), epochs=1, warmup_epochs=1, batch_size=16, update_ratio=2, seed=0,
                  eval_windows=16, data=tuple(paths), genre=genre,
                  net=net_config_for(genre, arch, n_pitches=64, lowest_pitch=28, widths=WIDTHS))
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def train_windows(pop_data):
    from backline.training.train import fixed_subset

    _, train, _ = pop_data
    return train.subset(fixed_subset(len(train), 48))  # 3 batches of 16 per epoch


@pytest.fixture(scope="module")
def pop_run(pop_data, train_windows, tmp_path_factory, one_thread) -> Path:
    from backline.training.train import train

    paths, _, val = pop_data
    return train(pop_config(tmp_path_factory.mktemp("run"), paths), train_windows, val, progress=False)


@pytest.fixture(scope="module")
def pop_model(pop_run, pop_data, train_windows, tmp_path_factory):
    """The run exported with the export command's calibration of the decoding thresholds."""
    from backline.training.commands import onnx_generate_fn
    from backline.training.evaluation import calibrate_decoding
    from backline.training.export import export

    _, _, val = pop_data

    def calibrate(runtime):
        return calibrate_decoding(onnx_generate_fn(runtime), runtime.spec, train_windows.frames,
                                  train_windows.onsets)

    path = tmp_path_factory.mktemp("models") / "pop-tiny.onnx"
    spec, report = export(pop_run, path, melodies=val.frames[:8, 0], calibrate=calibrate)
    return path, spec, report


@pytest.fixture(scope="module")
def band(pop_model):
    return Generator(pop_model[0], device="cpu")


@pytest.fixture(scope="module")
def played_melody():
    """The melody of a real song, picked by the training data's own rule."""
    score = read_midi(openmsx(PLAYED), lenient=True)
    choice = choose_melody(score)
    notes = score.tracks[choice.index].notes
    if choice.top_line:
        notes = split_top_line(notes)[0]
    return score, score.tracks[choice.index], notes


# --------------------------------------------------------------------------- 6. training


def test_the_data_is_a_few_real_songs_split_by_file(pop_data, train_windows):
    _, train, val = pop_data
    assert train.info["kept"] == len(SONGS) and train.info["licence"] == LICENCE
    assert len(train) >= 48 and len(val) > 0
    assert train.frames.shape[1:] == (6, 64, 64)
    files = {train_windows.piece_names[i] for i in np.unique(train_windows.piece_index)}
    assert len(files) >= 3  # the subset still spans several songs


def test_a_seconds_long_musegan_run_logs_finite_losses(pop_run):
    lines = (pop_run.parent / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["epoch"], r["warmup"]) for r in records] == [(1, True), (2, False)]
    warmup, adversarial = records
    # Warm-up: the generator alone on the paired loss; no critic step, so no critic losses.
    assert isinstance(warmup["recon"], float) and math.isfinite(warmup["recon"]) and warmup["recon"] > 0
    for key in ("loss_d", "wasserstein", "gp"):
        assert missing(warmup[key]), (key, warmup[key])
    # Adversarial: 3 critic steps, a generator step after the second: every loss has steps.
    assert adversarial["step"] == 3
    for key in LOSSES:
        value = adversarial[key]
        assert isinstance(value, float) and math.isfinite(value), (key, value)
    assert adversarial["gp"] >= 0 and adversarial["recon"] > 0
    assert adversarial["wall_time_s"] > warmup["wall_time_s"] > 0


def test_the_warmup_epoch_logs_no_adversarial_generator_loss(pop_run):
    warmup = json.loads((pop_run.parent / "metrics.jsonl").read_text().splitlines()[0])
    assert missing(warmup["loss_g"]), warmup["loss_g"]


def test_the_checkpoint_records_the_architecture_and_the_roles(pop_run, pop_data):
    state = load_checkpoint(pop_run)
    assert state["architecture"] == "musegan-onset-v1"
    assert state["data"]["tracks"] == POP_TRACKS == [t.name for t in POP.tracks]
    assert state["data"]["licence"] == LICENCE
    assert state["net_config"]["arch"] == "musegan" and tuple(state["net_config"]["widths"]) == WIDTHS
    assert state["net_config"]["n_tracks"] == 5 and state["net_config"]["window_steps"] == 64
    assert tuple(state["net_config"]["drum_tracks"]) == (0,)
    assert state["train_config"]["genre"] == "pop"
    assert list(state["train_config"]["data"]) == pop_data[0]
    assert state["epoch"] == 2 and state["data"]["train_windows"] == 48


@pytest.mark.parametrize("change,expected", [
    (dict(arch="unet"), ("holds a musegan network, not unet", "--arch musegan")),
    (dict(genre="jazz"), ("generates Drums, Bass, Guitar, Piano, Strings, not Drums, Bass, Guitar, Piano, Horns",
                          "--genre pop")),
])
def test_resuming_as_another_network_or_genre_is_refused_in_one_line(pop_run, pop_data, train_windows, tmp_path,
                                                                     change, expected):
    from backline.training.train import train

    paths, _, val = pop_data
    out = tmp_path / "resumed"
    with pytest.raises(CheckpointError) as info:
        train(pop_config(out, paths, **change), train_windows, val, resume=pop_run, progress=False)
    message = str(info.value)
    assert "\n" not in message and str(pop_run) in message
    for part in expected:
        assert part in message
    assert not out.exists()


# --------------------------------------------------------------------------- 7. export


def test_export_checks_parity_and_describes_the_band(pop_model, pop_run):
    import onnx

    path, spec, report = pop_model
    assert report.ok(), str(report)
    assert report.n_windows == 8 and report.flipped_fraction == 0.0
    assert "ONNX Runtime vs PyTorch on 8 windows" in str(report)
    assert not list(path.parent.glob("*.tmp"))

    [entry] = [e for e in onnx.load(str(path)).metadata_props if e.key == METADATA_KEY]
    meta = json.loads(entry.value)
    assert meta["genre"] == "pop" and meta["name"] == "pop-tiny"
    assert [t["name"] for t in meta["tracks"]] == POP_TRACKS
    drums = meta["tracks"][0]
    assert drums["is_drum"] is True and drums["channel"] == 9
    assert all(t["is_drum"] is False and t["channel"] != 9 for t in meta["tracks"][1:])
    assert meta["melody"]["channel"] == 0
    assert meta["bars"] * meta["beats_per_bar"] == POP.window_beats == 16
    assert meta["key_normalised"] is True
    provenance = meta["provenance"]
    assert provenance["licence"] == LICENCE
    assert provenance["architecture"] == "musegan-onset-v1" and provenance["genre"] == "pop"
    assert provenance["epochs"] == 2 and provenance["update_ratio"] == 2 and provenance["batch_size"] == 16
    # The calibrated thresholds are what the file ships.
    assert 0 < meta["threshold"] < 1 and (meta["threshold"], meta["onset_threshold"]) == \
        (spec.threshold, spec.onset_threshold)


def test_the_export_command_writes_the_same_band(pop_run, cache_dir, tmp_path):
    out = tmp_path / "cli.onnx"
    # (one OpenMP thread, as in-process: two threads crawl on two busy cores)
    result = run_backline("export", pop_run, "-o", out, "--no-evaluate",
                          env={"BACKLINE_CACHE": str(cache_dir), "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "ONNX Runtime vs PyTorch" in result.stdout and "allowed" in result.stdout
    spec = Generator(out, device="cpu").spec
    assert [t.name for t in spec.tracks] == POP_TRACKS
    assert spec.tracks[0].is_drum and spec.tracks[0].channel == 9
    assert spec.provenance["licence"] == LICENCE
    assert out.with_suffix(".md").is_file()
    assert not (tmp_path / ".cache" / "backline").exists()  # the data came from BACKLINE_CACHE


# --------------------------------------------------------------------------- 8. playing it


def test_the_band_accompanies_a_real_songs_melody(band, played_melody):
    score, track, notes = played_melody
    assert track.name == "Trumpet" and not track.is_drum
    # A one-epoch model barely clears its calibrated thresholds; sampling makes it play.
    result = accompany(band, notes, seed=0, sample=True)
    assert result.shift % 12 != 0  # the melody was moved: drums moved with it would leave the drum map
    assert [t.name for t, _ in result.tracks] == POP_TRACKS
    drum_spec, drum_notes = result.tracks[0]
    assert drum_spec.is_drum and drum_spec.channel == 9
    assert drum_notes and {n.pitch for n in drum_notes} <= set(DRUM_PITCHES)
    assert all(GM_DRUM_RANGE[0] <= n.pitch <= GM_DRUM_RANGE[1] for n in drum_notes)
    played = 0
    for spec, part in result.tracks:
        low, high = spec.playable_range
        outside = [n for n in part if not low <= n.pitch <= high]
        assert not outside, (spec.name, (low, high), outside[:3])
        assert all(1 <= n.velocity <= 127 and n.duration > 0 for n in part)
        played += bool(part)
    assert played >= 4
    velocities = [n.velocity for _, part in result.tracks for n in part]
    assert len(set(velocities)) > 1
    assert len({n.velocity for n in drum_notes}) > 1


def test_the_band_follows_the_melodys_dynamics_and_the_beat(band, played_melody):
    _, _, notes = played_melody
    loud = accompany(band, [n._replace(velocity=100) for n in notes], seed=0, sample=True)
    soft = accompany(band, [n._replace(velocity=50) for n in notes], seed=0, sample=True)
    step = 1 / band.spec.steps_per_beat
    for (spec, a), (_, b) in zip(loud.tracks, soft.tracks):
        # The same notes, at half the loudness.
        assert [n[:3] for n in a] == [n[:3] for n in b]
        for x, y in zip(a, b):
            if x.velocity < 127:
                assert abs(x.velocity - 2 * y.velocity) <= 2, (spec.name, x, y)
        # With the melody at one level, a downbeat is louder than a sixteenth off-beat.
        by_position = {"bar": [], "sixteenth": []}
        for n in a:
            at = round(n.start / step)
            if at % band.spec.steps_per_bar == 0:
                by_position["bar"].append(n.velocity)
            elif at % 2:
                by_position["sixteenth"].append(n.velocity)
        if by_position["bar"] and by_position["sixteenth"]:
            assert min(by_position["bar"]) > max(by_position["sixteenth"]), spec.name


def test_the_result_round_trips_through_a_midi_file_with_drums_on_channel_10(band, played_melody, tmp_path):
    score, track, notes = played_melody
    result = accompany(band, notes, seed=0, sample=True)
    path = tmp_path / "played.mid"
    melody_spec = TrackSpec(track.name, track.program, band.spec.melody.channel)
    write_midi(path, (melody_spec, notes), result.tracks, tempo_bpm=score.tempo_bpm,
               time_signature=score.time_signature, ticks_per_beat=score.ticks_per_beat,
               tempo_changes=score.tempo_changes)
    back = read_midi(path)
    by_name = {t.name: t for t in back.tracks}
    drums = by_name["Drums"]
    assert drums.channel == 9 and drums.is_drum
    drum_notes = result.tracks[0][1]
    assert len(drums.notes) == len(drum_notes)
    assert Counter(n.pitch for n in drums.notes) == Counter(n.pitch for n in drum_notes)
    in_order = sorted(notes, key=lambda n: (n.start, n.pitch))
    assert [n.pitch for n in by_name["Trumpet"].notes] == [n.pitch for n in in_order]
    for spec, part in result.tracks[1:]:
        if part:
            assert by_name[spec.name].channel == spec.channel != 9 and not by_name[spec.name].is_drum
    raw = mido.MidiFile(str(path))
    [drum_track] = [t for t in raw.tracks if any(m.type == "track_name" and m.name == "Drums" for m in t)]
    channels = {m.channel for m in drum_track if m.type in ("note_on", "note_off")}
    assert channels == {9}
    others = {m.channel for t in raw.tracks if t is not drum_track for m in t if m.type == "note_on"}
    assert 9 not in others
