"""Training batches straight from memory on the training device.

The whole training set is small (4,060 windows, 87 MB as bytes), so it lives on the
training device as one uint8 tensor, `[N, 7, T, P]`: the melody, the three accompaniment
frame rolls, the three accompaniment onset rolls (the melody's onsets are never trained
on). A batch is one `index_select` on the device and one conversion to float: no
DataLoader, no per-window Python, no host-to-device copy per step. Kept as bytes rather
than floats because that is 4 times less memory and, measured on the CPU, the faster
gather of the two (docs/TRAINING.md).
"""

from __future__ import annotations

import numpy as np
import torch

from backline.models.errors import BacklineError

from .data.windows import WindowDataset


class DeviceWindows:
    """The training windows on one device, served a batch of indices at a time."""

    def __init__(self, frames: np.ndarray, onsets: np.ndarray, device: torch.device) -> None:
        packed = np.concatenate([frames, onsets[:, 1:]], axis=1).astype(np.uint8)
        self.rolls = torch.from_numpy(packed).to(device)
        self.n_tracks = frames.shape[1] - 1

    @classmethod
    def from_dataset(cls, data: WindowDataset, device: torch.device) -> "DeviceWindows":
        return cls(data.frames, data.onsets, device)

    def __len__(self) -> int:
        return int(self.rolls.shape[0])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(melody [B, T, P], frames [B, K, T, P], onsets [B, K, T, P]) as float."""
        x = self.rolls.index_select(0, idx).float()
        k = self.n_tracks
        return x[:, 0], x[:, 1 : 1 + k], x[:, 1 + k :]


def check_split(batch_size: int, world: int) -> None:
    """The global batch must split evenly over the processes."""
    if batch_size % world:
        raise BacklineError(
            f"--batch-size {batch_size} does not split evenly over {world} processes; "
            f"use a multiple of {world}"
        )


def epoch_batches(rng: np.random.Generator, n: int, batch_size: int, *, rank: int = 0,
                  world: int = 1, device: torch.device | None = None) -> torch.Tensor:
    """This rank's window indices for every batch of one epoch: `[batches, batch_size // world]`.

    Every rank draws the same permutation (same seed, same stream), cuts it into global
    batches of `batch_size`, and takes its own `1/world` of each. So an epoch is one pass
    over the data whatever the number of processes, and the ranks' shares of step s put
    together are exactly the batch a single process trains on at step s.
    """
    check_split(batch_size, world)
    if n < batch_size:
        raise BacklineError(f"only {n} training windows for a batch of {batch_size}; lower --batch-size")
    batches = n // batch_size
    order = rng.permutation(n)[: batches * batch_size]
    share = batch_size // world
    order = order.reshape(batches, world, share)[:, rank]
    return torch.from_numpy(np.ascontiguousarray(order)).to(device or "cpu")
