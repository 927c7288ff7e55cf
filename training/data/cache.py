"""The data cache: converted pieces (not windows) in one compressed ``.npz`` per data set.

Files live in ``$BACKLINE_CACHE``, else ``~/.cache/backline``; `data/build.py` names them
(one for the chorales, one per genre and set of files for the rest). The rolls are
bit-packed; a file written for another grid or format is refused on load, and the
builder then rebuilds it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from backline.models.atomic import atomic_write

from .grid import LOWEST_PITCH, N_PITCHES, STEPS_PER_BEAT, PieceRolls

FORMAT_VERSION = 2  # the layout of a pieces file; a new value makes every cache rebuild


def default_cache_dir() -> Path:
    env = os.environ.get("BACKLINE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "backline"


def save_pieces(path: Path, pieces: Sequence[PieceRolls], info: dict | None = None) -> None:
    """Write pieces to one compressed .npz (bool rolls bit-packed), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.asarray([p.n_steps for p in pieces], dtype=np.int64)
    if pieces:
        frames = np.concatenate([p.frames for p in pieces], axis=1)
        onsets = np.concatenate([p.onsets for p in pieces], axis=1)
    else:
        frames = onsets = np.zeros((0, 0, N_PITCHES), dtype=bool)  # no pieces, no tracks
    meta = {
        "version": FORMAT_VERSION,
        "lowest_pitch": LOWEST_PITCH,
        "n_pitches": N_PITCHES,
        "steps_per_beat": STEPS_PER_BEAT,
        "shape": list(frames.shape),
        "info": info or {},
    }
    arrays = dict(
        frames=np.packbits(frames, axis=-1),
        onsets=np.packbits(onsets, axis=-1),
        lengths=lengths,
        names=np.asarray([p.name for p in pieces], dtype=str),
        beats_per_bar=np.asarray([p.beats_per_bar for p in pieces], dtype=np.int64),
        key_tonic=np.asarray([p.key_tonic for p in pieces], dtype=np.int64),
        key_mode=np.asarray([p.key_mode for p in pieces], dtype=str),
        shift=np.asarray([p.shift for p in pieces], dtype=np.int64),
        meta=np.asarray(json.dumps(meta)),
    )
    with atomic_write(path) as handle:
        np.savez_compressed(handle, **arrays)


def load_pieces_file(path: Path) -> tuple[list[PieceRolls], dict]:
    """Read pieces written by `save_pieces`; returns (pieces, build info)."""
    with np.load(Path(path), allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        if (
            meta.get("version") != FORMAT_VERSION
            or meta.get("lowest_pitch") != LOWEST_PITCH
            or meta.get("n_pitches") != N_PITCHES
        ):
            raise ValueError(f"{path} was written for another layout: {meta}")
        n_pitches = meta["n_pitches"]
        frames = np.unpackbits(data["frames"], axis=-1, count=n_pitches).astype(bool)
        onsets = np.unpackbits(data["onsets"], axis=-1, count=n_pitches).astype(bool)
        bounds = np.concatenate([[0], np.cumsum(data["lengths"])])
        pieces = [
            PieceRolls(
                name=str(data["names"][i]),
                frames=frames[:, bounds[i] : bounds[i + 1]],
                onsets=onsets[:, bounds[i] : bounds[i + 1]],
                beats_per_bar=int(data["beats_per_bar"][i]),
                key_tonic=int(data["key_tonic"][i]),
                key_mode=str(data["key_mode"][i]),
                shift=int(data["shift"][i]),
            )
            for i in range(len(data["lengths"]))
        ]
    return pieces, meta.get("info", {})
