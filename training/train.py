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
from tqdm.auto import tqdm

from backline.models.spec import GeneratorSpec

from .chorales import ChoraleDataset
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .evaluation import accompany_and_score, score_windows
from .layout import bach_spec
from .networks import ARCHITECTURE, Critic, NetConfig, UNetGenerator

log = logging.getLogger("backline.training")


@dataclass
class TrainConfig:
    out_dir: str = "runs/bach"
    epochs: int = 20  # adversarial epochs
    warmup_epochs: int = 10  # generator-only epochs on the paired loss, before those
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.9)
    update_ratio: int = 5
    batch_size: int = 64
    seed: int = 0
    time_budget_s: float | None = None  # stop after the epoch that passes this wall time
    gp_lambda: float = 10.0
    recon_weight: float = 10.0
    checkpoint_every: int = 1  # epochs
    eval_windows: int = 192  # validation windows scored each epoch
    net: NetConfig = field(default_factory=NetConfig)
    command: str = ""  # the command line that started the run, for the model card

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        data["net"] = NetConfig.from_dict(data["net"])
        data["betas"] = tuple(data["betas"])
        return cls(**data)


def window_modes(data: ChoraleDataset, idx: np.ndarray | None = None) -> list[str]:
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


def gradient_penalty(critic: Critic, melody, real_f, real_o, fake_f, fake_o) -> torch.Tensor:
    """WGAN-GP: the critic's gradient norm is pushed to 1 on random interpolates."""
    alpha = torch.rand(real_f.shape[0], 1, 1, 1)
    mix_f = (alpha * real_f + (1 - alpha) * fake_f).requires_grad_(True)
    mix_o = (alpha * real_o + (1 - alpha) * fake_o).requires_grad_(True)
    score = critic(melody, mix_f, mix_o)
    grad_f, grad_o = torch.autograd.grad(score.sum(), [mix_f, mix_o], create_graph=True)
    norm = torch.sqrt(grad_f.pow(2).sum((1, 2, 3)) + grad_o.pow(2).sum((1, 2, 3)) + 1e-12)
    return ((norm - 1) ** 2).mean()


def torch_generate_fn(generator: UNetGenerator):
    @torch.no_grad()
    def generate(melody: np.ndarray, z: np.ndarray):
        was_training = generator.training
        generator.eval()
        f, o = generator(torch.from_numpy(melody), torch.from_numpy(z))
        generator.train(was_training)
        return f.numpy(), o.numpy()

    return generate


def monophonic_tracks(frames: np.ndarray) -> list[bool]:
    """A track is monophonic when under 1 % of its sounding steps hold two or more pitches."""
    out = []
    for k in range(1, frames.shape[1]):
        counts = frames[:, k].sum(axis=-1)
        sounding = (counts > 0).sum()
        out.append(bool(sounding == 0 or (counts >= 2).sum() / sounding < 0.01))
    return out


def build_spec(config: TrainConfig, train: ChoraleDataset, **extra) -> GeneratorSpec:
    return bach_spec(
        config.net,
        lowest_pitch=train.lowest_pitch,
        monophonic=monophonic_tracks(train.frames),
        melody_range=train.melody_range,
        **extra,
    )


def fixed_subset(n: int, size: int, seed: int = 1234) -> np.ndarray:
    """The same windows every epoch, so metric curves compare like with like."""
    return np.sort(np.random.default_rng(seed).permutation(n)[: min(size, n)])


def train(
    config: TrainConfig,
    train_set: ChoraleDataset,
    val_set: ChoraleDataset,
    *,
    resume: Path | None = None,
    progress: bool = True,
) -> Path:
    """Train (or resume) and return the path of the final checkpoint."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)

    generator, critic = UNetGenerator(config.net), Critic(config.net)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=config.betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=config.lr, betas=config.betas)
    start_epoch, history, wall_before, step = 0, [], 0.0, 0
    if resume is not None:
        state = load_checkpoint(resume)
        if NetConfig.from_dict(state["net_config"]) != config.net:
            raise CheckpointError(
                f"{resume} holds a network of shape {state['net_config']}, not "
                f"{config.net.to_dict()}; resume with the same network settings"
            )
        generator.load_state_dict(state["generator"])
        critic.load_state_dict(state["critic"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        start_epoch, history = state["epoch"], state["history"]
        wall_before, step = state["wall_time_s"], state["step"]
        torch.set_rng_state(state["torch_rng"])
        rng.bit_generator.state = state["numpy_rng"]
        log.info("resuming %s at epoch %d", resume, start_epoch + 1)

    spec = build_spec(config, train_set)
    frames = torch.from_numpy(train_set.frames.astype(np.uint8))
    onsets = torch.from_numpy(train_set.onsets.astype(np.uint8))
    n = frames.shape[0]
    batches_per_epoch = max(1, n // config.batch_size)

    # Reference values: the real data's own metrics, computed once.
    eval_idx = fixed_subset(val_set.frames.shape[0], config.eval_windows)
    train_idx = fixed_subset(n, config.eval_windows)
    real_train = score_windows(
        train_set.frames[train_idx], train_set.onsets[train_idx],
        train_set.steps_per_bar[train_idx], window_modes(train_set, train_idx), spec,
    )
    real_val = score_windows(
        val_set.frames[eval_idx], val_set.onsets[eval_idx],
        val_set.steps_per_bar[eval_idx], window_modes(val_set, eval_idx), spec,
    )
    (out / "reference_metrics.json").write_text(
        json.dumps({"train": real_train, "validation": real_val}, indent=2, sort_keys=True)
    )

    from .plots import plot_history, write_sample  # matplotlib loads only when training
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tensorboard"))
    metrics_log = out / "metrics.jsonl"
    started = time.monotonic()
    total_epochs = config.warmup_epochs + config.epochs
    total = (total_epochs - start_epoch) * batches_per_epoch
    bar = tqdm(total=total, disable=not progress, unit="batch", desc="training")
    generator.train()
    critic.train()
    epoch = start_epoch
    for epoch in range(start_epoch, total_epochs):
        warming_up = epoch < config.warmup_epochs
        order = torch.from_numpy(rng.permutation(n))
        sums = {"loss_d": 0.0, "loss_g": 0.0, "wasserstein": 0.0, "gp": 0.0, "recon": 0.0}
        d_steps = g_steps = 0
        for b in range(batches_per_epoch):
            idx = order[b * config.batch_size : (b + 1) * config.batch_size]
            batch_f = frames[idx].float()
            batch_o = onsets[idx].float()
            melody, real_f, real_o = batch_f[:, 0], batch_f[:, 1:], batch_o[:, 1:]
            z = torch.randn(melody.shape[0], config.net.z_dim)

            if warming_up:
                logit_f, logit_o = generator.logits(melody, z)
                recon = F.binary_cross_entropy_with_logits(logit_f, real_f) + \
                    F.binary_cross_entropy_with_logits(logit_o, real_o)
                opt_g.zero_grad(set_to_none=True)
                recon.backward()
                opt_g.step()
                sums["recon"] += recon.item()
                g_steps += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, warmup=f"{recon.item():.3f}")
                continue

            # Critic step.
            with torch.no_grad():
                fake_f, fake_o = generator(melody, z)
            d_real = critic(melody, real_f, real_o).mean()
            d_fake = critic(melody, fake_f, fake_o).mean()
            gp = gradient_penalty(critic, melody, real_f, real_o, fake_f, fake_o)
            loss_d = d_fake - d_real + config.gp_lambda * gp
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            sums["loss_d"] += loss_d.item()
            sums["wasserstein"] += (d_real - d_fake).item()
            sums["gp"] += gp.item()
            d_steps += 1
            step += 1

            # Generator step, once every `update_ratio` critic steps.
            if step % config.update_ratio == 0:
                logit_f, logit_o = generator.logits(melody, z)
                adversarial = -critic(melody, torch.sigmoid(logit_f), torch.sigmoid(logit_o)).mean()
                recon = F.binary_cross_entropy_with_logits(logit_f, real_f) + \
                    F.binary_cross_entropy_with_logits(logit_o, real_o)
                loss_g = adversarial + config.recon_weight * recon
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()
                sums["loss_g"] += loss_g.item()
                sums["recon"] += recon.item()
                g_steps += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss_d=f"{loss_d.item():.3f}")

        record: dict[str, Any] = {"epoch": epoch + 1, "step": step, "warmup": warming_up}
        for key in ("loss_d", "wasserstein", "gp"):
            record[key] = sums[key] / d_steps if d_steps else float("nan")
        for key in ("loss_g", "recon"):
            record[key] = sums[key] / g_steps if g_steps else float("nan")
        generated = accompany_and_score(
            torch_generate_fn(generator), spec,
            val_set.frames[eval_idx], val_set.onsets[eval_idx],
            val_set.steps_per_bar[eval_idx], window_modes(val_set, eval_idx),
            seed=config.seed,
        )
        record["metrics"] = generated
        record["wall_time_s"] = wall_before + time.monotonic() - started
        history.append(record)
        for key in ("loss_d", "loss_g", "wasserstein", "gp", "recon"):
            if math.isfinite(record[key]):
                writer.add_scalar(f"loss/{key}", record[key], epoch + 1)
        for key, value in generated.items():
            if math.isfinite(value):
                writer.add_scalars(
                    f"metrics/{key}",
                    {"generated": value, "train_real": real_train.get(key, float("nan"))},
                    epoch + 1,
                )
        with metrics_log.open("a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        bar.write(format_epoch(record, real_train))

        last = epoch + 1 == total_epochs
        over_budget = config.time_budget_s is not None and record["wall_time_s"] - wall_before >= config.time_budget_s
        if (epoch + 1) % config.checkpoint_every == 0 or last or over_budget:
            state = {
                "architecture": ARCHITECTURE,
                "net_config": config.net.to_dict(),
                "train_config": asdict(config),
                "generator": generator.state_dict(),
                "critic": critic.state_dict(),
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(),
                "epoch": epoch + 1,
                "step": step,
                "history": history,
                "wall_time_s": record["wall_time_s"],
                "torch_rng": torch.get_rng_state(),
                "numpy_rng": rng.bit_generator.state,
                "data": {
                    "dataset": "music21 Bach chorales (bundled corpus), key-normalised",
                    "lowest_pitch": train_set.lowest_pitch,
                    "monophonic": [t.monophonic for t in spec.tracks],
                    "melody_range": spec.melody_range,
                    "train_windows": int(n),
                    "validation_windows": int(val_set.frames.shape[0]),
                    "reference_metrics": {"train": real_train, "validation": real_val},
                },
                "commit": git_commit(),
                "machine": machine_description(),
            }
            save_checkpoint(state, ckpt_path)
            write_sample(generator, spec, val_set, out / "samples" / f"epoch-{epoch + 1:03d}", seed=config.seed)
            plot_history(history, real_train, out / "losses.png")
        if over_budget:
            bar.write(f"time budget of {config.time_budget_s:.0f} s reached after epoch {epoch + 1}")
            break
    bar.close()
    writer.close()
    return ckpt_path


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
