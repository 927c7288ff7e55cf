"""Where training runs, and what the processes of a `torchrun` launch share.

One process trains alone unless `torchrun` started it: torchrun sets WORLD_SIZE, RANK and
LOCAL_RANK, and each process then joins one process group (gloo on the CPU, NCCL on
CUDA), wraps both networks in DistributedDataParallel, and takes its share of every
batch. Rank 0 alone writes checkpoints, logs and samples; `agree` hands its decisions
(stop on the time budget) to the others so that no rank waits on a collective the rest
have left.

Also here: the --device, --amp and --compile choices ('auto' resolves per device), and
a digest of the weights that each rank writes when BACKLINE_RANK_DIGESTS names a folder,
so a test can check that the ranks ended with the very same networks.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from backline.models.errors import BacklineError

DIGEST_DIR_ENV = "BACKLINE_RANK_DIGESTS"
CHOICES = ("auto", "on", "off")


@dataclass(frozen=True)
class Placement:
    """This process's device, its rank among `world` processes, and the speed switches."""

    device: torch.device
    rank: int = 0
    world: int = 1
    amp: bool = False  # bf16 autocast for the forward passes
    compile: bool = False  # torch.compile the networks

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def describe(self) -> str:
        ranks = f", {self.world} processes" if self.distributed else ""
        return (f"device {self.device}{ranks}, amp {'bf16' if self.amp else 'off'}, "
                f"compile {'on' if self.compile else 'off'}")


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """'auto' is CUDA when torch sees a GPU, else the CPU."""
    if choice not in ("auto", "cpu", "cuda"):
        raise BacklineError(f"unknown device {choice!r}; use auto, cpu or cuda")
    if choice == "cuda" and not torch.cuda.is_available():
        raise BacklineError(
            f"--device cuda asked for, but this torch ({torch.__version__}) sees no CUDA GPU; "
            "use --device cpu (or auto)"
        )
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def resolve_switch(choice: str, device: torch.device, flag: str) -> bool:
    """'auto' turns a speed switch on where it was measured to help: CUDA only
    (docs/TRAINING.md has the CPU figures that keep both off there)."""
    if choice not in CHOICES:
        raise BacklineError(f"{flag} {choice!r} is not one of auto, on, off")
    return device.type == "cuda" if choice == "auto" else choice == "on"


def launched_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    try:
        return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise BacklineError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers; launch with torchrun") from None


def local(device: str = "auto", amp: str = "auto", compile: str = "auto", *, rank: int = 0,
          world: int = 1, local_rank: int = 0) -> Placement:
    """Resolve the choices for one process and set up its GPU, if any; joins no group."""
    where = resolve_device(device, local_rank)
    if where.type == "cuda":
        torch.cuda.set_device(where)
        torch.backends.cudnn.benchmark = True  # fixed window shapes: let cuDNN pick its kernels
        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 matmuls (linear layers)
    return Placement(where, rank, world, amp=resolve_switch(amp, where, "--amp"),
                     compile=resolve_switch(compile, where, "--compile"))


def start(device: str = "auto", amp: str = "auto", compile: str = "auto") -> Placement:
    """Resolve the choices and, under torchrun, join the process group."""
    rank, world, local_rank = launched_world()
    placement = local(device, amp, compile, rank=rank, world=world, local_rank=local_rank)
    if placement.distributed and not dist.is_initialized():
        backend = "nccl" if placement.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world)
    return placement


def stop(placement: Placement) -> None:
    if placement.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def main_first(placement: Placement) -> Iterator[None]:
    """Rank 0 runs the block first (it may build the data cache), then the others."""
    if placement.distributed and not placement.is_main:
        dist.barrier()
    yield
    if placement.distributed and placement.is_main:
        dist.barrier()


class GeneratorLogits(nn.Module):
    """The generator with `logits` as its forward: DistributedDataParallel synchronises
    gradients only through forward(), and training needs the logits."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, melody: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.generator.logits(melody, z)


def wrap(module: nn.Module, placement: Placement) -> nn.Module:
    """DistributedDataParallel across ranks; the module itself when training alone."""
    if not placement.distributed:
        return module
    # No buffer broadcast before every forward: the BatchNorm running statistics that
    # count are rank 0's, which it saves, and rank 0 never receives a broadcast anyway.
    if placement.device.type == "cuda":
        # Batch statistics over the whole global batch, as a single process computes them
        # (SyncBatchNorm runs on CUDA only; on the CPU each rank normalises its own share).
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return DistributedDataParallel(module, device_ids=[placement.device.index], broadcast_buffers=False)
    return DistributedDataParallel(module, broadcast_buffers=False)


def noise_generator(seed: int, epoch: int, placement: Placement) -> torch.Generator:
    """The noise (z, penalty interpolation) for one epoch on one rank: distinct per rank,
    and the same again when a run resumes at that epoch."""
    state = np.random.SeedSequence([seed, epoch, placement.rank]).generate_state(1)[0]
    return torch.Generator(placement.device).manual_seed(int(state))


def mean_across_ranks(values: torch.Tensor, placement: Placement) -> torch.Tensor:
    if placement.distributed:
        values = values.clone()
        dist.all_reduce(values)
        values /= placement.world
    return values


def agree(flag: bool, placement: Placement) -> bool:
    """Rank 0's value of `flag`, on every rank."""
    if not placement.distributed:
        return flag
    box = torch.tensor([1.0 if flag else 0.0], device=placement.device)
    dist.broadcast(box, src=0)
    return bool(box.item())


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of the module's parameters, in name order."""
    digest = hashlib.sha256()
    for name, value in sorted(module.named_parameters()):
        digest.update(name.encode())
        digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def write_rank_digest(placement: Placement, **modules: nn.Module) -> Path | None:
    """With BACKLINE_RANK_DIGESTS=DIR, write DIR/rank-N.json holding each module's digest."""
    folder = os.environ.get(DIGEST_DIR_ENV)
    if not folder:
        return None
    path = Path(folder) / f"rank-{placement.rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"rank": placement.rank, "world": placement.world,
              **{name: weights_digest(m) for name, m in modules.items()}}
    path.write_text(json.dumps(record, sort_keys=True))
    return path
