"""Pictures for people: piano rolls of samples and the loss and metric curves."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from backline.models.midi import write_midi  # noqa: E402
from backline.models.notes import Roll, roll_to_notes  # noqa: E402
from backline.models.spec import GeneratorSpec  # noqa: E402

if TYPE_CHECKING:
    from .chorales import ChoraleDataset

TRACK_COLOURS = ["#1f1f1f", "#d62728", "#2ca02c", "#1f77b4", "#9467bd", "#ff7f0e", "#8c564b"]
SAMPLE_WINDOWS = (0, 1)  # which validation windows every checkpoint draws, always the same


def draw_roll(ax, frames: np.ndarray, names: Sequence[str], lowest_pitch: int,
              steps_per_beat: int, steps_per_bar: int, title: str) -> None:
    """frames `[K, T, P]`: each track in its own colour on one time x pitch plane."""
    n_steps, n_pitches = frames.shape[1], frames.shape[2]
    for k in range(frames.shape[0]):
        t, p = np.nonzero(frames[k])
        ax.scatter(t + 0.5, p + lowest_pitch, marker="s", s=9, linewidths=0,
                   color=TRACK_COLOURS[k % len(TRACK_COLOURS)], label=names[k])
    for bar in range(0, n_steps + 1, steps_per_bar):
        ax.axvline(bar, color="#999999", linewidth=0.8)
    for beat in range(0, n_steps + 1, steps_per_beat):
        ax.axvline(beat, color="#dddddd", linewidth=0.4, zorder=0)
    used = np.flatnonzero(frames.any(axis=(0, 1)))
    low = (used.min() if used.size else 0) + lowest_pitch - 2
    high = (used.max() if used.size else n_pitches) + lowest_pitch + 2
    ax.set_ylim(low, high)
    ax.set_xlim(0, n_steps)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel("MIDI pitch")


def save_roll_png(path: Path, panels: list[tuple[str, np.ndarray, int]], names: Sequence[str],
                  lowest_pitch: int, steps_per_beat: int) -> None:
    """panels: (title, frames [K, T, P], steps_per_bar); column 0 is `lowest_pitch`."""
    longest = max(frames.shape[1] for _, frames, _ in panels)
    width = min(24.0, max(10.0, longest / 24))  # long pieces get a wider picture
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 2.6 * len(panels)), squeeze=False)
    for ax, (title, frames, steps_per_bar) in zip(axes[:, 0], panels):
        draw_roll(ax, frames, names, lowest_pitch, steps_per_beat, steps_per_bar, title)
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=len(names), markerscale=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_sample(generator, spec: GeneratorSpec, val_set: "ChoraleDataset", stem: Path, *, seed: int) -> None:
    """Accompany the fixed validation melodies; write `stem.png` (real vs generated) and
    `stem.mid` (the generated windows one after another)."""
    from .evaluation import generate_windows
    from .train import torch_generate_fn

    idx = [i for i in SAMPLE_WINDOWS if i < val_set.frames.shape[0]]
    real = val_set.frames[idx]
    gen_f, gen_o = generate_windows(torch_generate_fn(generator), spec, real[:, 0], seed=seed)
    names = [spec.melody.name, *(t.name for t in spec.tracks)]
    panels = []
    for j, i in enumerate(idx):
        spb = int(val_set.steps_per_bar[i])
        panels.append((f"validation window {i}: real chorale", real[j], spb))
        panels.append((f"validation window {i}: generated (seed {seed})",
                       np.concatenate([real[j, :1], gen_f[j]]), spb))
    save_roll_png(stem.with_suffix(".png"), panels, names, spec.lowest_pitch, spec.steps_per_beat)

    window_beats = spec.window_steps / spec.steps_per_beat
    melody_notes, track_notes = [], [[] for _ in spec.tracks]
    for j, i in enumerate(idx):
        offset = j * window_beats
        roll = Roll(real[j, 0], val_set.onsets[i, 0], spec.steps_per_beat, spec.lowest_pitch)
        melody_notes += [n._replace(start=n.start + offset) for n in roll_to_notes(roll)]
        for k in range(spec.n_tracks):
            roll = Roll(gen_f[j, k], gen_o[j, k], spec.steps_per_beat, spec.lowest_pitch)
            track_notes[k] += [n._replace(start=n.start + offset) for n in roll_to_notes(roll)]
    write_midi(stem.with_suffix(".mid"), (spec.melody, melody_notes),
               list(zip(spec.tracks, track_notes)))


def plot_history(history: list[dict[str, Any]], real: dict[str, float], path: Path) -> None:
    """Loss curves and the headline metrics against the training set's own values."""
    epochs = [r["epoch"] for r in history]
    metric_keys = ["QN", "EB", "PR/accompaniment", "in_scale/accompaniment", "TD/melody"]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    ax = axes[0, 0]
    for key in ("loss_d", "loss_g", "wasserstein"):
        ax.plot(epochs, [r[key] for r in history], label=key)
    ax.set_title("losses")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=7)
    for ax, key in zip(axes.flat[1:], metric_keys):
        ax.plot(epochs, [r["metrics"].get(key, np.nan) for r in history], label="generated")
        if key in real:
            ax.axhline(real[key], color="black", linestyle="--", linewidth=1, label="real (train)")
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
