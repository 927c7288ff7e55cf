"""Checkpoints: one plain dict, written atomically, checked on load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .networks import ARCHITECTURES
from backline.models.atomic import atomic_write
from backline.models.errors import BacklineError


class CheckpointError(BacklineError, RuntimeError):
    """A checkpoint is missing, unreadable, or from another architecture."""


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file beside `path`, then rename it into place, so a crash
    mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as handle:
        torch.save(state, handle)


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the checkpoint.pt written by 'backline train'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(exc).__name__}); pass the "
            "checkpoint.pt written by 'backline train'"
        ) from None
    if not isinstance(state, dict) or "generator" not in state:
        raise CheckpointError(f"{path} is not a Backline training checkpoint")
    found = state.get("architecture")
    if found not in ARCHITECTURES.values():
        raise CheckpointError(
            f"{path} was written for architecture {found!r}, but this Backline trains "
            f"{', '.join(repr(a) for a in ARCHITECTURES.values())}; retrain with 'backline train' "
            "or use the Backline version that wrote it"
        )
    return state
