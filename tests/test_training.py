"""Training end to end on a few real chorales: what a run leaves behind, resuming, the
time budget, and refusing checkpoints that do not fit."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import mido
import pytest
import torch

from backline.models.midi import read_midi
from backline.training.checkpoint import CheckpointError, load_checkpoint
from backline.training.networks import ARCHITECTURE, NetConfig

from .conftest import run_backline, tiny_config

LOSSES = ("loss_d", "loss_g", "wasserstein", "gp", "recon")


def read_metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def tmp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name.endswith(".tmp"))


def error_lines(stderr: str) -> list[str]:
    """stderr without the progress bar of a first-time chorale dataset build."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("chorales")]


# --------------------------------------------------------------------------- a short run


def test_a_short_run_leaves_everything_behind(tiny_checkpoint):
    run = tiny_checkpoint.parent
    assert tiny_checkpoint.name == "checkpoint.pt" and tiny_checkpoint.is_file()
    state = load_checkpoint(tiny_checkpoint)
    assert state["architecture"] == ARCHITECTURE
    assert state["epoch"] == 1 and state["step"] > 0
    assert state["net_config"] == tiny_config(run).net.to_dict()
    for key in ("generator", "critic", "opt_g", "opt_d", "torch_rng", "numpy_rng", "data", "commit"):
        assert key in state

    records = read_metrics(run)
    assert [r["epoch"] for r in records] == [1]
    record = records[0]
    for key in LOSSES:
        assert math.isfinite(record[key]), (key, record[key])
    metrics = record["metrics"]
    for key in ("QN", "EB", "in_scale/accompaniment", "TD/melody"):
        assert key in metrics
    assert record["wall_time_s"] > 0
    # (through JSON: metrics of a generator that plays nothing yet are NaN, and NaN != NaN)
    assert json.dumps(state["history"], sort_keys=True) == json.dumps(records, sort_keys=True)

    sample = run / "samples" / "epoch-001"
    assert sample.with_suffix(".png").stat().st_size > 0
    # One MIDI track per voice, whether or not a one-epoch generator plays any notes yet
    # (read_midi leaves out tracks without notes, so count them in the file itself).
    raw = mido.MidiFile(str(sample.with_suffix(".mid")))
    names = [m.name for t in raw.tracks for m in t if m.type == "track_name"]
    assert names == ["Soprano", "Alto", "Tenor", "Bass"]
    score = read_midi(sample.with_suffix(".mid"))
    assert score.tracks[0].name == "Soprano" and score.tracks[0].notes
    assert {t.name for t in score.tracks} <= set(names)
    assert (run / "losses.png").stat().st_size > 0
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").rglob("*"))
    reference = json.loads((run / "reference_metrics.json").read_text())
    assert set(reference) == {"train", "validation"} and "QN" in reference["train"]


def test_the_checkpoint_is_written_atomically(tiny_checkpoint):
    assert tmp_files(tiny_checkpoint.parent) == []


# --------------------------------------------------------------------------- budget and resume


@pytest.fixture(scope="module")
def budget_run(small_data, tmp_path_factory):
    """A run of 5 epochs with a 1 ms wall-clock budget: it stops after the first."""
    from backline.training.train import train

    out = tmp_path_factory.mktemp("budget")
    path = train(tiny_config(out, epochs=5, time_budget_s=0.001), *small_data, progress=False)
    return path


def test_time_budget_stops_after_the_epoch_that_passes_it(budget_run):
    state = load_checkpoint(budget_run)
    assert state["epoch"] == 1
    assert [r["epoch"] for r in read_metrics(budget_run.parent)] == [1]
    assert tmp_files(budget_run.parent) == []


def test_resume_continues_where_the_run_stopped(budget_run, small_data, tmp_path):
    from backline.training.train import train

    run = tmp_path / "run"
    shutil.copytree(budget_run.parent, run)
    before = load_checkpoint(run / "checkpoint.pt")
    path = train(tiny_config(run, epochs=2), *small_data, resume=run / "checkpoint.pt", progress=False)
    assert path == run / "checkpoint.pt"
    state = load_checkpoint(path)
    assert state["epoch"] == 2
    assert [r["epoch"] for r in state["history"]] == [1, 2]
    assert state["step"] > before["step"]
    assert state["history"][1]["step"] == state["step"]
    assert state["wall_time_s"] > before["wall_time_s"]
    records = read_metrics(run)
    assert [r["epoch"] for r in records] == [1, 2]
    assert (run / "samples" / "epoch-002.mid").is_file()
    assert tmp_files(run) == []


def test_resume_with_another_network_is_refused(budget_run, small_data, tmp_path):
    from backline.training.train import train

    config = tiny_config(tmp_path / "other", epochs=2)
    config = replace(config, net=replace(config.net, z_dim=16))
    with pytest.raises(CheckpointError, match="resume with the same network settings"):
        train(config, *small_data, resume=budget_run, progress=False)


def test_resume_from_a_missing_checkpoint_is_refused(small_data, tmp_path):
    from backline.training.train import train

    with pytest.raises(CheckpointError, match="does not exist"):
        train(tiny_config(tmp_path / "run"), *small_data, resume=tmp_path / "nope.pt", progress=False)


# --------------------------------------------------------------------------- bad checkpoints


def doctored(tiny_checkpoint: Path, path: Path, **changes) -> Path:
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    state = dict(state)
    for key, value in changes.items():
        state[key] = value
    torch.save(state, path)
    return path


def test_checkpoint_from_another_architecture_is_refused(tiny_checkpoint, tmp_path):
    bad = doctored(tiny_checkpoint, tmp_path / "old.pt", architecture="musegan-hybrid-v0")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    message = str(info.value)
    assert "musegan-hybrid-v0" in message and ARCHITECTURE in message
    assert "\n" not in message


def test_export_command_refuses_another_architecture_in_one_line(tiny_checkpoint, tmp_path):
    bad = doctored(tiny_checkpoint, tmp_path / "old.pt", architecture="musegan-hybrid-v0")
    out = tmp_path / "out.onnx"
    result = run_backline("export", bad, "-o", out, "--no-evaluate")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("backline: error:") and "musegan-hybrid-v0" in lines[0]
    assert not out.exists()
    assert list(tmp_path.glob("*.tmp")) == []


def test_export_refuses_weights_that_do_not_fit(tiny_checkpoint, tmp_path):
    from backline.training.export import export

    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    net = dict(state["net_config"], z_dim=state["net_config"]["z_dim"] * 2)
    bad = doctored(tiny_checkpoint, tmp_path / "wider.pt", net_config=net)
    out = tmp_path / "out.onnx"
    with pytest.raises(CheckpointError, match="do not fit the generator") as info:
        export(bad, out)
    assert "\n" not in str(info.value)
    assert not out.exists()
    assert tmp_files(tmp_path) == []


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_unreadable_checkpoint_is_refused(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_a_torch_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a Backline training checkpoint"):
        load_checkpoint(path)


def test_config_round_trips_through_the_checkpoint(tiny_checkpoint):
    from backline.training.train import TrainConfig

    state = load_checkpoint(tiny_checkpoint)
    config = TrainConfig.from_dict(state["train_config"])
    assert config == tiny_config(tiny_checkpoint.parent)


# --------------------------------------------------------------------------- speed


def test_bf16_autocast_trains_with_finite_losses(small_data, tmp_path):
    """--amp on: the forward passes in bf16, the penalty and the paired loss in fp32 (on the
    CPU here, where bf16 is slow and so off by default; the same code runs on CUDA)."""
    from backline.training.train import train

    path = train(tiny_config(tmp_path / "amp", warmup_epochs=1, amp="on"), *small_data, progress=False)
    state = load_checkpoint(path)
    assert state["epoch"] == 2 and state["train_config"]["amp"] == "on"
    record = read_metrics(path.parent)[-1]
    for key in LOSSES:
        assert math.isfinite(record[key]), (key, record[key])
    assert all(v.dtype == torch.float32 for v in state["generator"].values() if v.is_floating_point())


def test_training_throughput_times_real_steps():
    from backline.training.networks import NetConfig
    from backline.training.throughput import format_training_throughput, measure_training_throughput

    result = measure_training_throughput(seconds=0.4, device="cpu", batch_size=4,
                                         net=NetConfig(widths=(4, 4, 8, 8), z_dim=8))
    for key in ("samples_per_s", "warmup_samples_per_s", "adversarial_samples_per_s"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert (result["device"], result["amp"], result["compile"], result["batch_size"]) == ("cpu", "off", False, 4)
    assert result["warmup_steps"] >= 1
    # Whole adversarial rounds: update_ratio critic steps per generator step.
    assert result["generator_steps"] >= 1
    assert result["critic_steps"] == result["generator_steps"] * result["update_ratio"]
    assert result["data"].startswith(("cached chorales", "random rolls"))
    lines = format_training_throughput(result)
    assert f"{result['samples_per_s']:.1f} windows/s" in lines[0]
    assert any(result["data"] in line for line in lines)


def test_throughput_data_is_the_chorale_cache_else_random_rolls(tmp_path):
    from backline.training.data.build import chorale_cache_name
    from backline.training.data.cache import save_pieces
    from backline.training.throughput import training_rolls

    from .conftest import SMALL_TRAIN, _convert

    frames, onsets, source = training_rolls(64, cache_dir=tmp_path)
    assert source.startswith("random rolls") and str(tmp_path) in source
    assert frames.shape == onsets.shape and frames.shape[1:] == (4, 48, 64)
    assert 0 < frames.mean() < 0.05 and not (onsets & ~frames).any()

    save_pieces(tmp_path / chorale_cache_name(), _convert(SMALL_TRAIN))
    frames, onsets, source = training_rolls(64, cache_dir=tmp_path)
    assert source == f"cached chorales ({frames.shape[0]} training windows)"
    assert frames.shape[1:] == (4, 48, 64) and frames.shape[0] > 0


def test_the_train_commands_default_network_is_the_networks_default_for_each_genre():
    from backline.bridge.cli import build_parser
    from backline.training.networks import net_config_for

    args = build_parser().parse_args(["train"])
    assert args.widths is None and args.arch is None
    assert net_config_for("bach", None, n_pitches=64, lowest_pitch=28) == NetConfig()
    band = net_config_for("rock", None, n_pitches=64, lowest_pitch=28)
    assert band.arch == "musegan" and band.n_tracks == 5 and band.window_steps == 64
    assert band.drum_tracks == (0,) and [c + 28 for c in band.drum_columns] == [36, 38, 42, 45, 46, 48, 49, 51]
