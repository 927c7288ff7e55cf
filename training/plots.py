"""Pictures for people: piano rolls of samples and the loss and metric curves."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from backline.models.midi import write_midi  # noqa: E402
from backline.models.notes import Note, Roll, roll_to_notes  # noqa: E402
from backline.models.spec import GeneratorSpec  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .data.windows import WindowDataset

TRACK_COLOURS = ["#1f1f1f", "#d62728", "#2ca02c", "#1f77b4", "#9467bd", "#ff7f0e", "#8c564b"]
SAMPLE_WINDOWS = (0, 1)  # which validation windows every checkpoint draws, always the same


def draw_notes(ax, tracks: Sequence[Sequence[Note]], names: Sequence[str], length_beats: float,
               beats_per_bar: float, title: str, drums: Sequence[bool] = ()) -> None:
    """Each track's notes as bars in its own colour on one time x pitch plane; a small gap
    at each note's end keeps repeated notes visible as separate notes. Drum tracks
    (`drums`) get a lane of their own under the lowest note, one row per drum voice, since
    a drum map's numbers are instruments, not pitches."""
    drums = list(drums) + [False] * (len(tracks) - len(drums))
    pitches = [n.pitch for notes, d in zip(tracks, drums) if not d for n in notes]
    floor = min(pitches, default=48) - 2
    voices = sorted({n.pitch for notes, d in zip(tracks, drums) if d for n in notes})
    for k, notes in enumerate(tracks):
        colour = TRACK_COLOURS[k % len(TRACK_COLOURS)]
        for n in notes:
            y = floor - 1 - voices.index(n.pitch) if drums[k] else n.pitch
            width = 0.12 if drums[k] else max(n.duration - 0.08, 0.04)
            ax.broken_barh([(n.start, width)], (y - 0.4, 0.8), facecolors=colour)
        ax.plot([], [], color=colour, linewidth=5, label=names[k])  # legend entry
    bar = 0.0
    while bar <= length_beats + 1e-9:
        ax.axvline(bar, color="#999999", linewidth=0.8, zorder=0)
        bar += beats_per_bar
    for beat in range(int(length_beats) + 1):
        ax.axvline(beat, color="#e5e5e5", linewidth=0.4, zorder=0)
    ax.set_ylim(floor - 1 - len(voices) - 0.5 if voices else floor, max(pitches, default=84) + 2)
    ax.set_xlim(0, length_beats)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("beat")
    ax.set_ylabel("MIDI pitch")


Panel = tuple[str, Sequence[Sequence[Note]], float, float]  # title, tracks, beats, beats/bar


def save_roll_png(path: Path, panels: Sequence[Panel], names: Sequence[str], drums: Sequence[bool] = ()) -> None:
    """One piano roll per panel, stacked, the legend above them (never over a note).
    `drums`: which of `names` are drum tracks (drawn in a lane of their own)."""
    longest = max(beats for _, _, beats, _ in panels)
    width = min(24.0, max(10.0, longest / 6))  # long pieces get a wider picture
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 2.6 * len(panels) + 0.4), squeeze=False)
    for ax, (title, tracks, beats, beats_per_bar) in zip(axes[:, 0], panels):
        draw_notes(ax, tracks, names, beats, beats_per_bar, title, drums)
    axes[0, 0].legend(loc="lower center", bbox_to_anchor=(0.5, 1.12), fontsize=7, ncol=len(names), frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_sample(generate, spec: GeneratorSpec, val_set: "WindowDataset", stem: Path, *, seed: int) -> None:
    """Accompany the fixed validation melodies with `generate` ((melody, z) -> (frames,
    onsets), numpy); write `stem.png` (real vs generated) and `stem.mid` (the generated
    windows one after another)."""
    from .evaluation import generate_windows

    idx = [i for i in SAMPLE_WINDOWS if i < val_set.frames.shape[0]]
    real = val_set.frames[idx]
    gen_f, gen_o = generate_windows(generate, spec, real[:, 0], seed=seed)
    names = [spec.melody.name, *(t.name for t in spec.tracks)]
    window_beats = spec.window_steps / spec.steps_per_beat

    def notes(frames: np.ndarray, onsets: np.ndarray) -> list[Note]:
        return roll_to_notes(Roll(frames, onsets, spec.steps_per_beat, spec.lowest_pitch))

    panels: list[Panel] = []
    melody_notes, track_notes = [], [[] for _ in spec.tracks]
    for j, i in enumerate(idx):
        beats_per_bar = val_set.steps_per_bar[i] / spec.steps_per_beat
        melody = notes(real[j, 0], val_set.onsets[i, 0])
        panels.append((f"validation window {i}: real",
                       [notes(real[j, k], val_set.onsets[i, k]) for k in range(real.shape[1])],
                       window_beats, beats_per_bar))
        generated = [notes(gen_f[j, k], gen_o[j, k]) for k in range(spec.n_tracks)]
        panels.append((f"validation window {i}: generated (seed {seed})", [melody, *generated],
                       window_beats, beats_per_bar))
        # The MIDI file plays the generated windows one after another.
        offset = j * window_beats
        melody_notes += [n._replace(start=n.start + offset) for n in melody]
        for k, track in enumerate(generated):
            track_notes[k] += [n._replace(start=n.start + offset) for n in track]
    save_roll_png(stem.with_suffix(".png"), panels, names, [False, *(t.is_drum for t in spec.tracks)])
    write_midi(stem.with_suffix(".mid"), (spec.melody, melody_notes),
               list(zip(spec.tracks, track_notes)))


WARMUP_COLOUR = "#fdebc8"
METRIC_KEYS = ("QN", "EB", "PR/accompaniment", "in_scale/accompaniment", "TD/melody")
# (panel title, [(record key, legend label)]): losses of very different sizes apart
LOSS_PANELS = (
    ("critic", [("loss_d", "loss_d"), ("wasserstein", "wasserstein estimate")]),
    ("generator (adversarial epochs)", [("loss_g", "loss_g")]),
    ("paired loss (recon)", [("recon", "recon")]),
)


def value(x: Any) -> float:
    """A logged number, NaN where there is none (None in metrics.jsonl, NaN in old runs)."""
    return float("nan") if x is None else float(x)


def marker_size(n_epochs: int) -> float:
    """Big enough to show a lone point; smaller, then none, as the curves get long."""
    return 5.0 if n_epochs <= 30 else 3.0 if n_epochs <= 150 else 0.0


def draw_curve(ax, epochs: Sequence[int], values: Sequence[float], warmup: Sequence[bool], size: float,
               **style: Any) -> None:
    """One curve through the epochs that have a value, a marker on each (hollow in the
    warm-up), so a single epoch still shows."""
    xs, ys = np.asarray(epochs), np.asarray(values, dtype=float)
    known = np.isfinite(ys)
    size = size if known.sum() > 1 else 5.0  # a lone value always gets its marker
    (line,) = ax.plot(xs[known], ys[known], marker="o" if size else None, markersize=size, linewidth=1.2,
                      **style)
    hollow = known & np.asarray(warmup, dtype=bool)
    if size and hollow.any():
        ax.plot(xs[hollow], ys[hollow], linestyle="none", marker="o", markersize=size,
                markerfacecolor="white", markeredgecolor=line.get_color())


def shade_warmup(ax, epochs: Sequence[int], warmup: Sequence[bool]) -> None:
    warm = [e for e, w in zip(epochs, warmup) if w]
    if warm:
        ax.axvspan(min(warm) - 0.5, max(warm) + 0.5, color=WARMUP_COLOUR, zorder=0, label="warm-up")


def finish_panel(ax, title: str, epochs: Sequence[int], has_value: bool) -> None:
    ax.set_title(title if has_value else f"{title}: no value yet", fontsize=10)
    ax.set_xlabel("epoch")
    ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.legend(fontsize=7)


def history_figure(history: list[dict[str, Any]], real: dict[str, float]) -> "Figure":
    """Loss curves and the headline metrics against the training set's own values; warm-up
    epochs (generator alone on the paired loss) shaded. Epochs without a value (None or NaN)
    are left out."""
    epochs = [int(r["epoch"]) for r in history]
    warmup = [bool(r.get("warmup")) for r in history]
    size = marker_size(len(epochs))
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5))
    panels = list(axes.flat)
    for ax, (title, keys) in zip(panels, LOSS_PANELS):
        shade_warmup(ax, epochs, warmup)
        has_value = False
        for key, label in keys:
            ys = [value(r.get(key)) for r in history]
            has_value |= bool(np.isfinite(ys).any())
            draw_curve(ax, epochs, ys, warmup, size, label=label)
        finish_panel(ax, title, epochs, has_value)
    for ax, key in zip(panels[len(LOSS_PANELS):], METRIC_KEYS):
        shade_warmup(ax, epochs, warmup)
        ys = [value(r.get("metrics", {}).get(key)) for r in history]
        draw_curve(ax, epochs, ys, warmup, size, label="generated")
        reference = value(real.get(key))
        if np.isfinite(reference):
            ax.axhline(reference, color="black", linestyle="--", linewidth=1, label="real (train)")
        finish_panel(ax, key, epochs, bool(np.isfinite(ys).any()))
    fig.tight_layout()
    return fig


def plot_history(history: list[dict[str, Any]], real: dict[str, float], path: Path) -> None:
    """`history_figure` as a PNG (nothing before the first epoch)."""
    if not history:
        return
    fig = history_figure(history, real)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
