"""How many training windows per second this machine trains: the figure `backline bench`
prints for training.

It times the real steps of `train.py` (the same functions, networks, optimisers, batches
from the device-resident training set) in both phases of a run: warm-up steps (the
generator alone) and adversarial rounds (`update_ratio` critic steps, then one generator
step). The first steps of each phase run untimed: they allocate, and with --compile they
compile. Data: the cached Bach chorales when `backline train` has built the cache, else
random rolls of the same shape and sparsity (the step costs the same; the dict says which).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed
from .batches import DeviceWindows, epoch_batches
from .data.build import chorale_cache_name, split_chorales
from .data.cache import default_cache_dir, load_pieces_file
from .networks import NetConfig
from .train import TrainConfig, build_nets, critic_step, draw_z, generator_step, warmup_step

RANDOM_WINDOWS = 512
DENSITY = 0.02  # about 1 cell in 50 sounds in the chorales


def training_rolls(n_pitches: int, cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(frames, onsets, where they came from): the cached chorales' training windows, else random rolls."""
    path = Path(cache_dir or default_cache_dir()) / chorale_cache_name()
    if path.is_file():
        try:
            train_set, _ = split_chorales(*load_pieces_file(path))
            if train_set.n_pitches == n_pitches:
                return train_set.frames, train_set.onsets, f"cached chorales ({len(train_set)} training windows)"
        except (OSError, ValueError, KeyError):
            pass  # an unreadable cache: time on random rolls instead
    rng = np.random.default_rng(0)
    shape = (RANDOM_WINDOWS, 4, NetConfig().window_steps, n_pitches)
    frames = rng.random(shape) < DENSITY
    onsets = frames & (rng.random(shape) < 0.5)
    return frames, onsets, f"random rolls ({RANDOM_WINDOWS} windows; no chorale cache at {path})"


def measure_training_throughput(seconds: float = 10.0, device: str = "cpu", batch_size: int = 64, *,
                                amp: str = "auto", compile: str = "auto",
                                net: NetConfig | None = None) -> dict[str, Any]:
    """Time real training steps for about `seconds` (half per phase); windows per second.

    `samples_per_s` is the rate over a default run's schedule (its warm-up and
    adversarial epochs, each at its own measured rate).
    """
    placement = distributed.local(device, amp, compile)
    defaults = TrainConfig()
    config = TrainConfig(batch_size=batch_size, net=net or NetConfig(), device=device, amp=amp, compile=compile)
    frames, onsets, source = training_rolls(config.net.n_pitches)
    windows = DeviceWindows(frames, onsets, placement.device)
    nets = build_nets(config, placement)
    rng = np.random.default_rng(config.seed)
    noise = distributed.noise_generator(config.seed, 0, placement)
    order, next_batch = epoch_batches(rng, len(windows), batch_size, device=placement.device), 0

    def batch():
        nonlocal order, next_batch
        if next_batch == len(order):
            order, next_batch = epoch_batches(rng, len(windows), batch_size, device=placement.device), 0
        next_batch += 1
        return windows.batch(order[next_batch - 1]), draw_z(batch_size, config.net.z_dim, noise)

    def warmup_once() -> int:
        warmup_step(nets, *batch(), placement)
        return 1

    def adversarial_round() -> int:
        for _ in range(config.update_ratio):
            data, z = batch()
            critic_step(nets, data, z, noise, config.gp_lambda, placement)
        generator_step(nets, data, z, config.recon_weight, placement)
        return config.update_ratio  # windows pass the critic once per critic step

    warm, untimed_warm = timed(warmup_once, seconds / 2, placement)
    adversarial, untimed_adv = timed(adversarial_round, seconds / 2, placement)
    warm_rate = warm["steps"] * batch_size / warm["seconds"]
    adv_rate = adversarial["steps"] * batch_size / adversarial["seconds"]
    epochs = defaults.warmup_epochs + defaults.epochs
    schedule_rate = epochs / (defaults.warmup_epochs / warm_rate + defaults.epochs / adv_rate)
    return {
        "samples_per_s": schedule_rate,
        "warmup_samples_per_s": warm_rate,
        "adversarial_samples_per_s": adv_rate,
        "schedule": {"warmup_epochs": defaults.warmup_epochs, "adversarial_epochs": defaults.epochs},
        "warmup_steps": warm["steps"],
        "critic_steps": adversarial["steps"],
        "generator_steps": adversarial["steps"] // config.update_ratio,
        "update_ratio": config.update_ratio,
        "timed_s": warm["seconds"] + adversarial["seconds"],
        "untimed_first_steps_s": untimed_warm + untimed_adv,
        "device": str(placement.device),
        "amp": "bf16" if placement.amp else "off",
        "compile": placement.compile,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "widths": list(config.net.widths),
        "data": source,
    }


def timed(run_once, seconds: float, placement: distributed.Placement) -> tuple[dict[str, float], float]:
    """Run `run_once` untimed twice, then for at least `seconds` (at least once); returns
    ({'steps', 'seconds'} of the timed part, seconds the untimed runs took)."""
    began = time.perf_counter()
    for _ in range(2):
        run_once()
    sync(placement)
    untimed = time.perf_counter() - began
    steps, began = 0, time.perf_counter()
    while steps == 0 or time.perf_counter() - began < seconds:
        steps += run_once()
    sync(placement)
    return {"steps": steps, "seconds": time.perf_counter() - began}, untimed


def sync(placement: distributed.Placement) -> None:
    """Wait for queued GPU work, so the clock reads the work done."""
    if placement.device.type == "cuda":
        torch.cuda.synchronize(placement.device)


def format_training_throughput(result: dict[str, Any]) -> list[str]:
    """The figures as lines for printing."""
    schedule = result["schedule"]
    return [
        f"training throughput: {result['samples_per_s']:.1f} windows/s over a default run "
        f"({schedule['warmup_epochs']} warm-up + {schedule['adversarial_epochs']} adversarial epochs)",
        f"  warm-up steps        {result['warmup_samples_per_s']:8.1f} windows/s  "
        f"({result['warmup_steps']} generator steps)",
        f"  adversarial steps    {result['adversarial_samples_per_s']:8.1f} windows/s  "
        f"({result['critic_steps']} critic + {result['generator_steps']} generator steps, "
        f"update ratio {result['update_ratio']})",
        f"  device {result['device']}, amp {result['amp']}, compile {'on' if result['compile'] else 'off'}, "
        f"{result['threads']} threads, batch {result['batch_size']}, widths {result['widths']}; "
        f"{result['timed_s']:.1f} s timed after {result['untimed_first_steps_s']:.1f} s of untimed first steps",
        f"  data: {result['data']}",
    ]
