"""The training loop: WGAN-GP with DeepComposer's knobs, read top to bottom.

One epoch is one pass of the critic over the training windows. Every `update_ratio`
critic updates (each on a fresh batch) the generator takes one step, so the update ratio
means what it means in DeepComposer and MuseGAN (5 by default).

The generator's loss is the adversarial term plus `recon_weight` times the binary
cross-entropy to the real accompaniment of the same melody (pix2pix's recipe). On a
2-core CPU the adversarial signal alone needs hours to find harmony; the paired term
finds it in minutes, and the critic keeps the texture (note lengths, voice motion) from
going blurry. `--recon-weight 0` gives the pure WGAN-GP of DeepComposer's lab.

Before the adversarial epochs, `warmup_epochs` epochs train the generator alone on the
paired term, one generator step per batch. A generator step costs a fifth of a critic
round, so the warm-up reaches plausible harmony in a few minutes and the critic then
starts against a generator worth criticising. `--warmup-epochs 0` turns it off.

Batches come straight from the training set held on the training device
(`batches.DeviceWindows`). Under `torchrun` every process trains on its share of each
batch and DistributedDataParallel averages the gradients, so the batch size, the epoch
and the update ratio mean what they mean in one process (`distributed.py`); rank 0
alone evaluates, logs and writes checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from backline.models.spec import GeneratorSpec

from . import distributed
from .batches import DeviceWindows, check_split, epoch_batches
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data.windows import WindowDataset
from .distributed import GeneratorLogits, Placement
from .evaluation import accompany_and_score, score_windows
from .layout import genre_spec
from .networks import NetConfig, architecture_name, build_critic, build_generator

log = logging.getLogger("backline.training")

LOSSES = ("loss_d", "wasserstein", "gp", "loss_g", "recon")  # per-epoch means, in this order
CRITIC_LOSSES, GENERATOR_LOSSES, RECON = slice(0, 3), slice(3, 5), 4  # where steps add into the sums


@dataclass
class TrainConfig:
    out_dir: str = "runs/bach"
    epochs: int = 20  # adversarial epochs
    warmup_epochs: int = 10  # generator-only epochs on the paired loss, before those
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.9)
    update_ratio: int = 5
    batch_size: int = 64  # the global batch, split over the processes of a torchrun launch
    seed: int = 0
    time_budget_s: float | None = None  # stop after the epoch that passes this wall time
    gp_lambda: float = 10.0
    recon_weight: float = 10.0
    checkpoint_every: int = 1  # epochs
    eval_windows: int = 192  # validation windows scored each epoch
    net: NetConfig = field(default_factory=NetConfig)
    command: str = ""  # the command line that started the run, for the model card
    data: tuple[str, ...] = ("chorales",)  # --data: a named corpus or paths
    genre: str = "bach"  # the roles the model generates (training/data/genres.py)
    melody_track: str | None = None  # --melody-track
    data_licence: str | None = None  # --data-licence
    device: str = "auto"  # auto (CUDA when there is one), cpu, cuda
    amp: str = "auto"  # bf16 autocast: auto, on, off (auto = on for CUDA only)
    compile: str = "auto"  # torch.compile: auto, on, off (auto = on for CUDA only)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        data["net"] = NetConfig.from_dict(data["net"])
        data["betas"] = tuple(data["betas"])
        data["data"] = tuple(data.get("data", ("chorales",)))
        return cls(**data)


def window_modes(data: WindowDataset, idx: np.ndarray | None = None) -> list[str]:
    """'major' or 'minor' for each window (its piece's mode after key normalisation)."""
    pieces = data.piece_index if idx is None else data.piece_index[idx]
    return [data.piece_modes[i] for i in pieces]


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=Path(__file__).parent, timeout=5,
        ).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_description() -> str:
    return f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, torch {torch.__version__}"


# --------------------------------------------------------------------------- the networks


@dataclass
class Nets:
    """The two networks, their optimisers, and the callables the training steps use.

    `generator` and `critic` are the plain modules: checkpoints, samples, export.
    `g_logits` and `d_score` are what the steps call: wrapped in DistributedDataParallel
    across processes and compiled where asked. `d_penalty` scores the gradient penalty's
    interpolates: the same DDP wrapper, never compiled, as compiled graphs do not support
    the penalty's double backward.
    """

    generator: nn.Module
    critic: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    g_logits: nn.Module
    d_score: nn.Module
    d_penalty: nn.Module


def build_nets(config: TrainConfig, placement: Placement, state: dict[str, Any] | None = None) -> Nets:
    """Fresh networks from the seed, or the ones in a checkpoint's `state`."""
    torch.manual_seed(config.seed)
    generator = build_generator(config.net).to(placement.device)
    critic = build_critic(config.net).to(placement.device)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=config.betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=config.lr, betas=config.betas)
    if state is not None:
        generator.load_state_dict(state["generator"])
        critic.load_state_dict(state["critic"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
    g_logits = distributed.wrap(GeneratorLogits(generator), placement)
    d_penalty = distributed.wrap(critic, placement)
    d_score = d_penalty
    if placement.compile:
        g_logits, d_score = torch.compile(g_logits), torch.compile(d_penalty)
    generator.train()
    critic.train()
    return Nets(generator, critic, opt_g, opt_d, g_logits, d_score, d_penalty)


# --------------------------------------------------------------------------- the steps


def autocast(placement: Placement):
    """bf16 autocast for forward passes when --amp is on (bf16 needs no loss scaling)."""
    return torch.autocast(placement.device.type, dtype=torch.bfloat16, enabled=placement.amp)


def gradient_penalty(critic: nn.Module, melody, real_f, real_o, fake_f, fake_o,
                     noise: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP: the critic's gradient norm is pushed to 1 on random interpolates.

    Always in fp32, autocast or not: the penalty differentiates a gradient, and bf16's
    8-bit mantissa makes that second derivative too coarse to hold the norm at 1.
    """
    alpha = torch.rand(real_f.shape[0], 1, 1, 1, device=real_f.device, generator=noise)
    mix_f = (alpha * real_f + (1 - alpha) * fake_f).requires_grad_(True)
    mix_o = (alpha * real_o + (1 - alpha) * fake_o).requires_grad_(True)
    with torch.autocast(real_f.device.type, enabled=False):
        score = critic(melody, mix_f, mix_o)
        grad_f, grad_o = torch.autograd.grad(score.sum(), [mix_f, mix_o], create_graph=True)
    norm = torch.sqrt(grad_f.pow(2).sum((1, 2, 3)) + grad_o.pow(2).sum((1, 2, 3)) + 1e-12)
    return ((norm - 1) ** 2).mean()


def paired_loss(logit_f, logit_o, real_f, real_o) -> torch.Tensor:
    """Binary cross-entropy to the real accompaniment of the same melody (in fp32)."""
    return F.binary_cross_entropy_with_logits(logit_f.float(), real_f) + \
        F.binary_cross_entropy_with_logits(logit_o.float(), real_o)


def warmup_step(nets: Nets, batch, z: torch.Tensor, placement: Placement) -> torch.Tensor:
    """One generator step on the paired loss alone; returns that loss."""
    melody, real_f, real_o = batch
    with autocast(placement):
        logit_f, logit_o = nets.g_logits(melody, z)
    recon = paired_loss(logit_f, logit_o, real_f, real_o)
    nets.opt_g.zero_grad(set_to_none=True)
    recon.backward()
    nets.opt_g.step()
    return recon.detach()


def critic_step(nets: Nets, batch, z: torch.Tensor, noise: torch.Generator, gp_lambda: float,
                placement: Placement) -> torch.Tensor:
    """One critic step; returns [loss_d, wasserstein estimate, gradient penalty]."""
    melody, real_f, real_o = batch
    with torch.no_grad(), autocast(placement):
        logit_f, logit_o = nets.g_logits(melody, z)
    fake_f, fake_o = torch.sigmoid(logit_f.float()), torch.sigmoid(logit_o.float())
    with autocast(placement):
        d_real = nets.d_score(melody, real_f, real_o).float().mean()
        d_fake = nets.d_score(melody, fake_f, fake_o).float().mean()
    gp = gradient_penalty(nets.d_penalty, melody, real_f, real_o, fake_f, fake_o, noise)
    loss_d = d_fake - d_real + gp_lambda * gp
    nets.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    nets.opt_d.step()
    return torch.stack([loss_d, d_real - d_fake, gp]).detach()


def generator_step(nets: Nets, batch, z: torch.Tensor, recon_weight: float,
                   placement: Placement) -> torch.Tensor:
    """One adversarial generator step; returns [loss_g, paired loss]."""
    melody, real_f, real_o = batch
    with autocast(placement):
        logit_f, logit_o = nets.g_logits(melody, z)
        adversarial = -nets.d_score(melody, torch.sigmoid(logit_f), torch.sigmoid(logit_o)).float().mean()
    recon = paired_loss(logit_f, logit_o, real_f, real_o)
    loss_g = adversarial + recon_weight * recon
    # The critic gets gradients here too; its next step clears them before they count.
    nets.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    nets.opt_g.step()
    return torch.stack([loss_g, recon]).detach()


def draw_z(n: int, z_dim: int, noise: torch.Generator) -> torch.Tensor:
    return torch.randn(n, z_dim, device=noise.device, generator=noise)


# --------------------------------------------------------------------------- evaluation


def torch_generate_fn(generator: nn.Module):
    """numpy in, numpy out, whichever device the generator is on."""
    device = next(generator.parameters()).device

    @torch.no_grad()
    def generate(melody: np.ndarray, z: np.ndarray):
        was_training = generator.training
        generator.eval()
        f, o = generator(torch.from_numpy(melody).to(device), torch.from_numpy(z).to(device))
        generator.train(was_training)
        return f.float().cpu().numpy(), o.float().cpu().numpy()

    return generate


MONOPHONIC_SHARE = 0.10


def monophonic_tracks(frames: np.ndarray, drums: "list[bool] | None" = None) -> list[bool]:
    """A track is read one note at a time when under 10 % of its sounding steps hold two or
    more pitches (a chorale voice: 0 %; bass lines with the odd double stop or overlap: 3 %
    in simutrans' songs, 7 % in Freedoom's; chord instruments: well over 10 %).
    Drum tracks (`drums`) never are: a kick and a hi-hat sound together."""
    out = []
    for k in range(1, frames.shape[1]):
        counts = frames[:, k].sum(axis=-1)
        sounding = (counts > 0).sum()
        is_drum = bool(drums and drums[k - 1])
        out.append(not is_drum and bool(sounding == 0 or (counts >= 2).sum() / sounding < MONOPHONIC_SHARE))
    return out


def build_spec(config: TrainConfig, train: WindowDataset, **extra) -> GeneratorSpec:
    return genre_spec(
        config.genre,
        config.net,
        lowest_pitch=train.lowest_pitch,
        monophonic=monophonic_tracks(train.frames, drum_flags(config.genre)),
        melody_range=train.melody_range,
        velocities=train.info.get("velocity"),
        **extra,
    )


def drum_flags(genre_name: str) -> list[bool]:
    """Which of a genre's tracks are drums (none for bach)."""
    if genre_name == "bach":
        return []
    from .data.genres import get_genre

    return [t.is_drum for t in get_genre(genre_name).tracks]


def check_resumable(state: dict[str, Any], config: TrainConfig, spec: GeneratorSpec, path: Path) -> None:
    """A run resumes only with the network and the tracks it was started with."""
    saved = NetConfig.from_dict(state["net_config"])
    if saved.arch != config.net.arch:
        raise CheckpointError(
            f"{path} holds a {saved.arch} network, not {config.net.arch}; resume with --arch {saved.arch} "
            "or start a new run in another --out folder"
        )
    saved_tracks = state.get("data", {}).get("tracks")
    tracks = [t.name for t in spec.tracks]
    if saved_tracks is not None and list(saved_tracks) != tracks:
        raise CheckpointError(
            f"{path} generates {', '.join(saved_tracks)}, not {', '.join(tracks)}; resume with the "
            f"genre it was trained for (--genre {state.get('train_config', {}).get('genre', '?')}) "
            "or start a new run in another --out folder"
        )
    if saved != config.net:
        raise CheckpointError(
            f"{path} holds a network of shape {state['net_config']}, not "
            f"{config.net.to_dict()}; resume with the same network settings"
        )


def fixed_subset(n: int, size: int, seed: int = 1234) -> np.ndarray:
    """The same windows every epoch, so metric curves compare like with like."""
    return np.sort(np.random.default_rng(seed).permutation(n)[: min(size, n)])


# --------------------------------------------------------------------------- the loop


def train(
    config: TrainConfig,
    train_set: WindowDataset,
    val_set: WindowDataset,
    *,
    resume: Path | None = None,
    progress: bool = True,
    placement: Placement | None = None,
) -> Path:
    """Train (or resume) and return the path of the final checkpoint.

    `placement` is where this process trains and its rank (`distributed.start`, which
    the caller also stops); without it, one process on config.device.
    """
    placement = placement or distributed.start(config.device, config.amp, config.compile)
    check_split(config.batch_size, placement.world)
    main = placement.is_main
    out = Path(config.out_dir)
    ckpt_path = out / "checkpoint.pt"
    rng = np.random.default_rng(config.seed)  # the epochs' batch order, the same on every rank

    start_epoch, history, wall_before, step, state = 0, [], 0.0, 0, None
    spec = build_spec(config, train_set)
    if resume is not None:
        state = load_checkpoint(resume)  # every rank loads it
        check_resumable(state, config, spec, resume)
    nets = build_nets(config, placement, state)
    if state is not None:
        start_epoch, history = state["epoch"], [json_safe(r) for r in state["history"]]
        wall_before, step = state["wall_time_s"], state["step"]
        torch.set_rng_state(state["torch_rng"])
        rng.bit_generator.state = state["numpy_rng"]
        if main:
            log.info("resuming %s at epoch %d", resume, start_epoch + 1)
    generator, critic = nets.generator, nets.critic

    windows = DeviceWindows.from_dataset(train_set, placement.device)
    n = len(windows)
    batches_per_epoch = n // config.batch_size
    share = config.batch_size // placement.world  # windows per step on this rank

    eval_idx = fixed_subset(val_set.frames.shape[0], config.eval_windows)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        real_train, real_val = reference_metrics(train_set, val_set, spec, config.eval_windows, eval_idx)
        (out / "reference_metrics.json").write_text(
            json.dumps(json_safe({"train": real_train, "validation": real_val}), indent=2, sort_keys=True,
                       allow_nan=False)
        )
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
        log.info("training on %s", placement.describe())
    started = time.monotonic()
    total_epochs = config.warmup_epochs + config.epochs
    total = (total_epochs - start_epoch) * batches_per_epoch
    bar = tqdm(total=total, disable=not (progress and main), unit="batch", desc="training")
    for epoch in range(start_epoch, total_epochs):
        warming_up = epoch < config.warmup_epochs
        order = epoch_batches(rng, n, config.batch_size, rank=placement.rank,
                              world=placement.world, device=placement.device)
        noise = distributed.noise_generator(config.seed, epoch, placement)
        sums = torch.zeros(len(LOSSES), device=placement.device)  # on the device: no sync per step
        d_steps = g_steps = adversarial_g_steps = 0
        bar.set_postfix(epoch=epoch + 1, phase="warm-up" if warming_up else "adversarial")
        for b in range(batches_per_epoch):
            batch = windows.batch(order[b])
            z = draw_z(share, config.net.z_dim, noise)

            if warming_up:
                sums[RECON] += warmup_step(nets, batch, z, placement)
                g_steps += 1
                bar.update(1)
                continue

            sums[CRITIC_LOSSES] += critic_step(nets, batch, z, noise, config.gp_lambda, placement)
            d_steps += 1
            step += 1
            # Generator step, once every `update_ratio` critic steps.
            if step % config.update_ratio == 0:
                sums[GENERATOR_LOSSES] += generator_step(nets, batch, z, config.recon_weight, placement)
                g_steps += 1
                adversarial_g_steps += 1
            bar.update(1)

        # Every rank joins the average; rank 0 alone evaluates, logs and saves.
        means = mean_losses(distributed.mean_across_ranks(sums, placement), d_steps, g_steps,
                            adversarial_g_steps)
        over_budget = False
        if main:
            record: dict[str, Any] = {"epoch": epoch + 1, "step": step, "warmup": warming_up, **means}
            record["metrics"] = accompany_and_score(
                torch_generate_fn(generator), spec,
                val_set.frames[eval_idx], val_set.onsets[eval_idx],
                val_set.steps_per_bar[eval_idx], window_modes(val_set, eval_idx),
                seed=config.seed,
            )
            record["wall_time_s"] = wall_before + time.monotonic() - started
            history.append(json_safe(record))
            log_epoch(record, real_train, writer, out / "metrics.jsonl")
            bar.write(format_epoch(record, real_train))
            over_budget = config.time_budget_s is not None and \
                record["wall_time_s"] - wall_before >= config.time_budget_s
            if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == total_epochs or over_budget:
                state = checkpoint_state(config, nets, spec, train_set, val_set, record, history,
                                         rng, (real_train, real_val))
                save_checkpoint(state, ckpt_path)
                save_samples(generator, spec, val_set, out, epoch + 1, history, real_train, config.seed)
        if distributed.agree(over_budget, placement):
            if main:
                bar.write(f"time budget of {config.time_budget_s:.0f} s reached after epoch {epoch + 1}")
            break
    bar.close()
    if main:
        writer.close()
    distributed.write_rank_digest(placement, generator=generator, critic=critic)
    return ckpt_path


# --------------------------------------------------------------------------- what rank 0 writes


def reference_metrics(train_set: WindowDataset, val_set: WindowDataset, spec: GeneratorSpec,
                      size: int, eval_idx: np.ndarray) -> tuple[dict, dict]:
    """The real data's own metrics on the fixed subsets, computed once."""
    train_idx = fixed_subset(len(train_set), size)
    real_train = score_windows(
        train_set.frames[train_idx], train_set.onsets[train_idx],
        train_set.steps_per_bar[train_idx], window_modes(train_set, train_idx), spec,
    )
    real_val = score_windows(
        val_set.frames[eval_idx], val_set.onsets[eval_idx],
        val_set.steps_per_bar[eval_idx], window_modes(val_set, eval_idx), spec,
    )
    return real_train, real_val


def mean_losses(sums: torch.Tensor, d_steps: int, g_steps: int, adversarial_g_steps: int | None = None
                ) -> dict[str, float]:
    """Per-epoch means; NaN for a loss no step of the epoch computed (null in metrics.jsonl)."""
    values = sums.tolist()
    # loss_g is the adversarial generator loss: warm-up steps (recon only) do not count.
    adversarial = g_steps if adversarial_g_steps is None else adversarial_g_steps
    counts = (d_steps, d_steps, d_steps, adversarial, g_steps)
    return {key: value / count if count else float("nan") for key, value, count in zip(LOSSES, values, counts)}


def log_epoch(record: dict[str, Any], real_train: dict[str, float], writer, metrics_log: Path) -> None:
    epoch = record["epoch"]
    for key in LOSSES:
        if math.isfinite(record[key]):
            writer.add_scalar(f"loss/{key}", record[key], epoch)
    for key, value in record["metrics"].items():
        if math.isfinite(value):
            writer.add_scalars(
                f"metrics/{key}", {"generated": value, "train_real": real_train.get(key, float("nan"))}, epoch,
            )
    with metrics_log.open("a") as handle:
        handle.write(json.dumps(json_safe(record), sort_keys=True, allow_nan=False) + "\n")


def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinity made None (null in JSON, which has no NaN):
    a loss no step computed, a metric of a generator that plays nothing yet."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def checkpoint_state(config: TrainConfig, nets: Nets, spec: GeneratorSpec, train_set: WindowDataset,
                     val_set: WindowDataset, record: dict[str, Any], history: list,
                     rng: np.random.Generator, reference: tuple[dict, dict]) -> dict[str, Any]:
    return {
        "architecture": architecture_name(config.net),
        "net_config": config.net.to_dict(),
        "train_config": asdict(config),
        "generator": nets.generator.state_dict(),
        "critic": nets.critic.state_dict(),
        "opt_g": nets.opt_g.state_dict(),
        "opt_d": nets.opt_d.state_dict(),
        "epoch": record["epoch"],
        "step": record["step"],
        "history": history,
        "wall_time_s": record["wall_time_s"],
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": rng.bit_generator.state,
        "data": {
            "dataset": train_set.info.get("dataset", "music21 Bach chorales (bundled corpus), key-normalised"),
            "licence": config.data_licence or train_set.info.get("licence", "music21 corpus (BSD-3-Clause package; public-domain scores)"),
            "tracks": [t.name for t in spec.tracks],
            "spec": spec.to_json(),
            "lowest_pitch": train_set.lowest_pitch,
            "monophonic": [t.monophonic for t in spec.tracks],
            "melody_range": spec.melody_range,
            "train_windows": len(train_set),
            "validation_windows": int(val_set.frames.shape[0]),
            "reference_metrics": {"train": reference[0], "validation": reference[1]},
        },
        "commit": git_commit(),
        "machine": machine_description(),
    }


def save_samples(generator: nn.Module, spec: GeneratorSpec, val_set: WindowDataset, out: Path,
                 epoch: int, history: list, real_train: dict[str, float], seed: int) -> None:
    from .plots import plot_history, write_sample  # matplotlib loads only when training

    write_sample(torch_generate_fn(generator), spec, val_set, out / "samples" / f"epoch-{epoch:03d}", seed=seed)
    plot_history(history, real_train, out / "losses.png")


def format_epoch(record: dict[str, Any], real: dict[str, float]) -> str:
    m = record["metrics"]
    parts = [f"epoch {record['epoch']:3d}"]
    if record.get("warmup"):
        parts.append(f"warm-up recon {record['recon']:.4f}")
    else:
        parts += [f"D {record['loss_d']:+.3f}", f"G {record['loss_g']:+.3f}",
                  f"W {record['wasserstein']:+.3f}", f"recon {record['recon']:.4f}"]
    for key, label in [("QN", "QN"), ("EB", "EB"), ("PR/accompaniment", "PR"),
                       ("in_scale/accompaniment", "scale"), ("TD/melody", "TD")]:
        parts.append(f"{label} {m.get(key, float('nan')):.2f}/{real.get(key, float('nan')):.2f}")
    return "  ".join(parts) + "  (generated/real)"
