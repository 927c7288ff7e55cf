"""Shared fixtures: a few real chorales, a seconds-long training run, and its export.

The fixtures parse a handful of chorales from music21's bundled corpus directly, so the
suite does not depend on (or wait for) the full dataset cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .jack_server import jack  # noqa: F401  (a fixture for every test file)

# One 3/4 chorale and two pieces with a pickup bar among them; the last two are validation.
SMALL_TRAIN = ("bach/bwv26.6", "bach/bwv269", "bach/bwv347", "bach/bwv153.1")
SMALL_VAL = ("bach/bwv122.6", "bach/bwv286")


def _convert(names):
    from music21 import corpus

    from backline.training.chorales import convert_piece

    return [convert_piece(corpus.parse(name), name) for name in names]


@pytest.fixture(scope="session")
def small_data():
    """(train, validation) windows from six real chorales."""
    from backline.training.chorales import windows_from_pieces

    return windows_from_pieces(_convert(SMALL_TRAIN)), windows_from_pieces(_convert(SMALL_VAL))


def tiny_config(out_dir: Path, **overrides):
    from backline.training.networks import NetConfig
    from backline.training.train import TrainConfig

    values = dict(out_dir=str(out_dir), epochs=1, warmup_epochs=0, batch_size=16, update_ratio=2, seed=3,
                  eval_windows=16, net=NetConfig(widths=(4, 4, 8, 8), z_dim=8))
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def tiny_checkpoint(small_data, tmp_path_factory) -> Path:
    """A checkpoint from a seconds-long training run on real chorales."""
    from backline.training.train import train

    out = tmp_path_factory.mktemp("run")
    return train(tiny_config(out), *small_data, progress=False)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint, small_data, tmp_path_factory) -> Path:
    """The tiny checkpoint exported to ONNX."""
    from backline.training.export import export

    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    export(tiny_checkpoint, path, melodies=small_data[1].frames[:8, 0])
    return path


def run_backline(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real `backline` command line in a separate process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "backline.bridge.cli", *map(str, args)],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=300,
    )
