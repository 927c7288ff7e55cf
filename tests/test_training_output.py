"""What a musician reads after a short run: metrics.jsonl as strict JSON, a losses.png that
shows a one-epoch run and its warm-up, and an export hint that can be followed as printed."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from backline.training.checkpoint import load_checkpoint

from .conftest import run_backline, tiny_config

HINT = "export it with: "
# One warm-up and one adversarial epoch of a tiny network on four chorales.
TINY_RUN = ("--epochs", "1", "--warmup-epochs", "1", "--max-pieces", "4", "--batch-size", "16",
            "--widths", "4", "4", "8", "8", "--seed", "3", "--device", "cpu", "--no-progress")


def strict_json(line: str):
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


@pytest.fixture(scope="module")
def warmup_run(small_data, tmp_path_factory) -> Path:
    """1 warm-up epoch (no critic step: its losses have no value) and 1 adversarial epoch
    with fewer batches than the update ratio (no generator step: loss_g has none)."""
    from backline.training.train import train

    out = tmp_path_factory.mktemp("warmup-run")
    return train(tiny_config(out, warmup_epochs=1, update_ratio=50), *small_data, progress=False)


def test_metrics_jsonl_is_strict_json_with_null_for_missing_values(warmup_run):
    lines = (warmup_run.parent / "metrics.jsonl").read_text().splitlines()
    records = [strict_json(line) for line in lines]
    assert [(r["epoch"], r["warmup"]) for r in records] == [(1, True), (2, False)]
    warmup, adversarial = records
    assert warmup["loss_d"] is None and warmup["gp"] is None and warmup["loss_g"] is None
    assert warmup["recon"] > 0
    assert adversarial["loss_d"] is not None and adversarial["loss_g"] is None
    # The checkpoint's history is the same records, so a resumed run plots what the log says.
    assert load_checkpoint(warmup_run)["history"] == records
    strict_json((warmup_run.parent / "reference_metrics.json").read_text())


def test_losses_png_shows_a_one_epoch_run_and_its_warmup(warmup_run):
    from backline.training.plots import history_figure

    assert (warmup_run.parent / "losses.png").stat().st_size > 0
    records = [json.loads(line) for line in (warmup_run.parent / "metrics.jsonl").read_text().splitlines()]
    reference = json.loads((warmup_run.parent / "reference_metrics.json").read_text())["train"]
    fig = history_figure(records, reference)
    axes = {ax.get_title(): ax for ax in fig.axes}

    def points(title: str, label: str) -> list[float]:
        (line,) = [line for line in axes[title].get_lines() if line.get_label() == label]
        assert line.get_marker() == "o"  # a lone point shows
        return list(line.get_xdata())

    assert points("critic", "loss_d") == [2]
    assert points("paired loss (recon)", "recon") == [1]  # the warm-up's loss
    assert "generator (adversarial epochs): no value yet" in axes
    for ax in fig.axes:
        assert "warm-up" in ax.get_legend_handles_labels()[1], ax.get_title()
        assert ax.get_xlim() == (0.5, 2.5)


@pytest.mark.parametrize("models_env", ["unset", "set"])
def test_the_export_hint_puts_the_model_where_backline_models_finds_it(models_env, small_chorale_cache, tmp_path):
    """Train, run the printed export command as it is (NAME filled in), list the models."""
    mine = tmp_path / "my models"  # a space: the hint must quote it
    env = {"HOME": str(tmp_path / "home"), "BACKLINE_CACHE": str(small_chorale_cache), "OMP_NUM_THREADS": "1",
           "BACKLINE_MODELS": str(mine) if models_env == "set" else None}
    trained = run_backline("train", "--out", tmp_path / "run", *TINY_RUN, env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (hint,) = [line[len(HINT):] for line in trained.stdout.splitlines() if line.startswith(HINT)]
    command = shlex.split(hint.split(" (a model there")[0])
    assert command[:2] == ["backline", "export"]
    assert command[-1].endswith("/NAME.onnx")
    command[-1] = command[-1][: -len("NAME.onnx")] + "hinted.onnx"

    exported = run_backline(*command[1:], env=env)
    assert exported.returncode == 0, exported.stderr[-3000:]
    expected = mine if models_env == "set" else tmp_path / "home" / ".local" / "share" / "backline" / "models"
    assert Path(command[-1]) == expected / "hinted.onnx" and Path(command[-1]).is_file()

    listed = run_backline("models", env=env)
    assert listed.returncode == 0, listed.stderr
    assert any(line.split()[0] == "hinted" and line.endswith(command[-1]) for line in listed.stdout.splitlines()), \
        listed.stdout
