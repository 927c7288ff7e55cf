"""Shared fixtures: a few real chorales, a seconds-long training run, and its export.

The fixtures parse a handful of chorales from music21's bundled corpus directly, so the
suite does not depend on (or wait for) the full dataset cache.

Every test runs with HOME, $BACKLINE_CACHE and the user's model folder inside the
session's temp folder (one for the whole session, so a full chorale cache is built at
most once); a write to the real ones fails the test and the session.
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

    from backline.training.sources.chorales import convert_piece

    return [convert_piece(corpus.parse(name), name) for name in names]


# --------------------------------------------------------------------------- nothing outside the temp folder


def user_folders() -> list[Path]:
    """The folders outside a run's own that Backline writes to for a user: the data and
    TensorRT cache, the user's model folder, and $BACKLINE_CACHE / $BACKLINE_MODELS if set."""
    home = Path.home()
    folders = [home / ".cache" / "backline", home / ".local" / "share" / "backline" / "models"]
    if os.environ.get("BACKLINE_CACHE"):
        folders.append(Path(os.environ["BACKLINE_CACHE"]).expanduser())
    folders += [Path(p) for p in os.environ.get("BACKLINE_MODELS", "").split(os.pathsep) if p]
    return folders


WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
# audit event -> which of its arguments are paths it changes
WRITE_EVENTS = {"open": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.remove": (0,), "os.rmdir": (0,),
                "os.truncate": (0,), "os.symlink": (1,), "os.link": (1,), "os.chmod": (0,), "os.utime": (0,)}


class OutsideWrites:
    """An audit hook (sys.addaudithook) that refuses, and records, any write of this process
    under the given folders. Another process writing there (a musician's own training
    run on the same machine) does not count; the tests' subprocesses get HOME and
    $BACKLINE_CACHE in the temp folder instead."""

    def __init__(self, folders: list[Path]) -> None:
        self.prefixes = tuple(os.path.join(os.path.abspath(f), "") for f in folders)
        self.active = True
        self.seen: list[str] = []

    def __call__(self, event: str, args: tuple) -> None:
        if not self.active or event not in WRITE_EVENTS:
            return
        if event == "open" and not (args[2] & WRITE_FLAGS):
            return
        for i in WRITE_EVENTS[event]:
            path = args[i]
            if not isinstance(path, (str, bytes, os.PathLike)):
                continue  # a file descriptor
            path = os.path.join(os.path.abspath(os.fsdecode(path)), "")
            if path.startswith(self.prefixes):
                self.seen.append(f"{event} {path.rstrip(os.sep)}")
                raise PermissionError(f"a test wrote outside its temp folder: {event} {path.rstrip(os.sep)}")


@pytest.fixture(scope="session", autouse=True)
def private_user_folders(tmp_path_factory):
    """HOME, $BACKLINE_CACHE and the user's model folder under the session's temp folder
    (one for the whole session: a chorale cache is built at most once), $BACKLINE_MODELS
    unset; a write to the real ones fails the test that made it, and the session."""
    from backline.models import providers, registry

    guard = OutsideWrites(user_folders())
    sys.addaudithook(guard)  # (a hook stays for the process: `active` turns it off)
    root = tmp_path_factory.mktemp("user")
    home = root / "home"
    home.mkdir()
    patch = pytest.MonkeyPatch()
    patch.setenv("HOME", str(home))  # subprocesses, and Path.home() here
    patch.setenv("BACKLINE_CACHE", str(root / "cache"))
    patch.delenv("BACKLINE_MODELS", raising=False)
    # (read from HOME when these modules were imported, before this fixture ran)
    patch.setattr(registry, "USER_DIR", home / ".local" / "share" / "backline" / "models")
    patch.setattr(providers, "TENSORRT_CACHE", home / ".cache" / "backline" / "tensorrt")
    yield guard
    guard.active = False
    patch.undo()
    assert not guard.seen, "tests wrote outside their temp folders: " + "; ".join(guard.seen[:10])


@pytest.fixture(scope="session")
def small_data():
    """(train, validation) windows from six real chorales."""
    from backline.training.data.build import chorale_windows

    return chorale_windows(_convert(SMALL_TRAIN)), chorale_windows(_convert(SMALL_VAL))


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


@pytest.fixture(scope="session")
def small_chorale_cache(tmp_path_factory) -> Path:
    """A $BACKLINE_CACHE folder whose chorale cache holds the six chorales of `small_data`."""
    from backline.training.data.build import chorale_cache_name
    from backline.training.data.cache import save_pieces

    folder = tmp_path_factory.mktemp("chorale-cache")
    save_pieces(folder / chorale_cache_name(), _convert(SMALL_TRAIN + SMALL_VAL))
    return folder


def run_backline(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real `backline` command line in a separate process; `env` adds to this
    process's environment (a value of None removes the variable)."""
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "backline.bridge.cli", *map(str, args)],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=300,
    )


@pytest.fixture(scope="module")
def fixed_model(tmp_path_factory) -> Path:
    """The fixed model of tests/fake_models.py, for the bridge's protocol tests."""
    from .fake_models import write_fixed_model

    path = tmp_path_factory.mktemp("fixed") / "fixed.onnx"
    write_fixed_model(path)
    return path
