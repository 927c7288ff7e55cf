"""Music metrics of a generator's accompaniment beside those of the real chorales.

The same code scores a PyTorch generator during training and an exported ONNX model in
`backline evaluate`: both go through `backline.models.runtime.binarise`, the exact
decoding the bridge uses, so the numbers describe what a user will hear.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from backline.models.keys import Key
from backline.models.notes import Roll, roll_to_notes
from backline.models.runtime import binarise
from backline.models.spec import GeneratorSpec

from .metrics import evaluate_multitrack, mean_over_windows

# (melody [B, T, P] float32, z [B, z_dim] float32) -> (frame probs, onset probs) [B, K, T, P]
GenerateFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

NORMALISED_KEYS = {"major": Key(0, "major"), "minor": Key(9, "minor")}

# What `evaluate` prints, and the targets of the offline-core issue for each.
HEADLINE = ["QN", "EB", "UPC", "PR/accompaniment", "in_scale/accompaniment", "TD/melody"]


def generate_windows(
    generate: GenerateFn,
    spec: GeneratorSpec,
    melodies: np.ndarray,
    *,
    seed: int = 0,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Accompany each melody window; returns boolean frames, onsets `[N, K, T, P]`."""
    rng = np.random.default_rng(seed)
    n = melodies.shape[0]
    z = rng.standard_normal((n, spec.z_dim)).astype(np.float32)
    frames = np.zeros((n, spec.n_tracks, *melodies.shape[1:]), dtype=bool)
    onsets = np.zeros_like(frames)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        p, q = generate(melodies[start:stop].astype(np.float32), z[start:stop])
        for i in range(stop - start):
            frames[start + i], onsets[start + i] = binarise(p[i], q[i], spec)
    return frames, onsets


def score_windows(
    frames: np.ndarray,
    onsets: np.ndarray,
    steps_per_bar: np.ndarray,
    modes: list[str],
    spec: GeneratorSpec,
) -> dict[str, float]:
    """Mean metrics over windows. frames/onsets `[N, 1 + K, T, P]`, melody first."""
    names = [spec.melody.name, *(t.name for t in spec.tracks)]
    per_window = [
        evaluate_multitrack(
            frames[i],
            onsets[i],
            steps_per_bar=int(steps_per_bar[i]),
            steps_per_beat=spec.steps_per_beat,
            lowest_pitch=spec.lowest_pitch,
            key=NORMALISED_KEYS[modes[i]],
            track_names=names,
            melody_index=0,
        )
        for i in range(frames.shape[0])
    ]
    return add_summaries(mean_over_windows(per_window), spec)


def add_summaries(metrics: dict[str, float], spec: GeneratorSpec) -> dict[str, float]:
    """Per-track metrics averaged over the accompaniment tracks: QN, EB, UPC, TD/melody."""
    out = dict(metrics)
    tracks = [t.name for t in spec.tracks]
    for name, keys in [
        ("QN", [f"QN/{t}" for t in tracks]),
        ("EB", [f"EB/{t}" for t in tracks]),
        ("UPC", [f"UPC/{t}" for t in tracks]),
        ("TD/melody", [f"TD/{spec.melody.name}-{t}" for t in tracks]),
    ]:
        values = [metrics[k] for k in keys if k in metrics and np.isfinite(metrics[k])]
        out[name] = float(np.mean(values)) if values else float("nan")
    return out


def accompany_and_score(
    generate: GenerateFn,
    spec: GeneratorSpec,
    frames: np.ndarray,
    onsets: np.ndarray,
    steps_per_bar: np.ndarray,
    modes: list[str],
    *,
    seed: int = 0,
) -> dict[str, float]:
    """Generate accompaniment for the melodies of real windows `[N, 1 + K, T, P]` and
    score it with those melodies."""
    melody = frames[:, 0]
    gen_frames, gen_onsets = generate_windows(generate, spec, melody, seed=seed)
    all_frames = np.concatenate([frames[:, :1], gen_frames], axis=1)
    all_onsets = np.concatenate([onsets[:, :1], gen_onsets], axis=1)
    return score_windows(all_frames, all_onsets, steps_per_bar, modes, spec)


TARGETS = {
    # metric: (kind, amount) — "points": |gen - real| <= amount (rates as fractions);
    # "relative": |gen - real| <= amount * real; "ceiling": gen <= real * (1 + amount)
    "QN": ("points", 0.05),
    "EB": ("points", 0.05),
    "PR/accompaniment": ("relative", 0.10),
    "in_scale/accompaniment": ("relative", 0.10),
    "TD/melody": ("ceiling", 0.10),
}


def meets_target(metric: str, generated: float, real: float) -> bool | None:
    if metric not in TARGETS or not (np.isfinite(generated) and np.isfinite(real)):
        return None
    kind, amount = TARGETS[metric]
    if kind == "points":
        return abs(generated - real) <= amount
    if kind == "relative":
        return abs(generated - real) <= amount * abs(real)
    return generated <= real * (1 + amount)


def format_table(generated: dict[str, float], real: dict[str, float], metrics: list[str] | None = None) -> str:
    """A Markdown table: metric, model, real chorales, target, met."""
    rows = ["| metric | model | real | target | met |", "|---|---|---|---|---|"]
    for metric in metrics or sorted(set(generated) & set(real)):
        g, r = generated.get(metric, float("nan")), real.get(metric, float("nan"))
        target = ""
        if metric in TARGETS:
            kind, amount = TARGETS[metric]
            target = {
                "points": f"within {amount * 100:.0f} points",
                "relative": f"within {amount * 100:.0f} %",
                "ceiling": f"<= real + {amount * 100:.0f} %",
            }[kind]
        met = meets_target(metric, g, r)
        rows.append(f"| {metric} | {g:.3f} | {r:.3f} | {target} | {'' if met is None else ('yes' if met else 'NO')} |")
    return "\n".join(rows)


def count_notes(frames: np.ndarray, onsets: np.ndarray, steps_per_beat: int, lowest_pitch: int) -> int:
    """Notes in rolls `[..., T, P]`, as `roll_to_notes` reads them."""
    flat_f = frames.reshape(-1, *frames.shape[-2:])
    flat_o = onsets.reshape(-1, *onsets.shape[-2:])
    return sum(len(roll_to_notes(Roll(f, o, steps_per_beat, lowest_pitch))) for f, o in zip(flat_f, flat_o))


ONSET_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6)


def calibrate_onset_threshold(generate: GenerateFn, spec: GeneratorSpec, frames: np.ndarray,
                              onsets: np.ndarray, *, seed: int = 0) -> float:
    """The onset threshold at which the model plays as many notes as the real accompaniment
    of the same melodies (`[N, 1 + K, T, P]`, pass training windows, never validation).

    The onset threshold sets how readily a held pitch is struck again, so it sets the note
    density; matching the data's density is a calibration, not a fit to the metrics."""
    real = count_notes(frames[:, 1:], onsets[:, 1:], spec.steps_per_beat, spec.lowest_pitch)
    best, best_gap = spec.onset_threshold, None
    for candidate in ONSET_THRESHOLDS:
        trial = replace(spec, onset_threshold=candidate)
        gen_f, gen_o = generate_windows(generate, trial, frames[:, 0], seed=seed)
        gap = abs(count_notes(gen_f, gen_o, spec.steps_per_beat, spec.lowest_pitch) - real)
        if best_gap is None or gap < best_gap:
            best, best_gap = candidate, gap
    return best
