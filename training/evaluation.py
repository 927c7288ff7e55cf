"""Music metrics of a generator's accompaniment beside those of the real chorales.

The same code scores a PyTorch generator during training and an exported ONNX model in
`backline evaluate`: both go through `backline.models.thresholds.binarise`, the exact
decoding the bridge uses, so the numbers describe what a user will hear. Voice crossing
(VC) is read one step further on, after the decoder's voicing (`voiced_windows`): moving
parts into their instruments' ranges moves whole phrases by octaves, which changes which
part is on top but no pitch class, onset or length.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import numpy as np

from backline.models.keys import Key
from backline.models.notes import note_runs
from backline.models.thresholds import binarise
from backline.models.spec import GeneratorSpec
from backline.models.voicing import roll_top, voice_pairs, voice_parts

from .metrics import empty_bar_rate, evaluate_multitrack, mean_over_windows, qn_min_steps, voice_crossing_rate

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
    crossing_frames: np.ndarray | None = None,
) -> dict[str, float]:
    """Mean metrics over windows. frames/onsets `[N, 1 + K, T, P]`, melody first.
    Voice crossing (VC/U-L for each pair of `crossing_pairs(spec)`) is read from
    `crossing_frames` `[N, 1 + K, T, any pitch columns]` where given (a model's voiced
    output, `voiced_windows`), else from `frames`."""
    names = [spec.melody.name, *(t.name for t in spec.tracks)]
    pairs = crossing_pairs(spec)
    crossing = frames if crossing_frames is None else crossing_frames
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
            drum_tracks=drum_rows(spec),
        )
        | {f"VC/{names[u]}-{names[v]}": voice_crossing_rate(crossing[i, u], crossing[i, v]) for u, v in pairs}
        for i in range(frames.shape[0])
    ]
    return add_summaries(mean_over_windows(per_window), spec)


def crossing_pairs(spec: GeneratorSpec) -> list[tuple[int, int]]:
    """(upper, lower) rows of `[melody, *tracks]` whose crossing is scored: the adjacent
    pairs of the parts' expected order (models/voicing.voice_pairs)."""
    return voice_pairs(spec.melody, spec.tracks)


def voiced_windows(frames: np.ndarray, onsets: np.ndarray, spec: GeneratorSpec) -> np.ndarray:
    """Windows `[N, 1 + K, T, P]` (melody first, then the model's decoded tracks) as the
    decoder voices the tracks for `accompany` (models/voicing.voice_parts), on a full MIDI
    roll: bool `[N, 1 + K, T, 128]`, column = MIDI pitch. Each window is voiced on its own,
    in the key the windows are in (C major / A minor for a key-normalised model)."""
    frames = np.asarray(frames, dtype=bool)
    n, rows, steps, n_pitches = frames.shape
    low = spec.lowest_pitch
    out = np.zeros((n, rows, steps, 128), dtype=bool)
    out[:, 0, :, low:low + n_pitches] = frames[:, 0]
    for i in range(n):
        track_of, column, start, length = note_runs(frames[i, 1:], onsets[i, 1:])
        if not len(column):
            continue
        pitch = voice_parts(spec.melody, spec.tracks, track_of, column + low, start, length, spec.steps_per_beat,
                            melody_top=roll_top(frames[i, 0], low))
        note = np.repeat(np.arange(len(pitch)), length)
        step = start[note] + np.arange(len(note)) - np.repeat(np.cumsum(length) - length, length)
        out[i, 1 + track_of[note], step, pitch[note]] = True
    return out


def drum_rows(spec: GeneratorSpec) -> list[int]:
    """Rows of the drum tracks in `[melody, *tracks]` order."""
    return [1 + k for k, t in enumerate(spec.tracks) if t.is_drum]


def headline(spec: GeneratorSpec) -> list[str]:
    """The summary metrics `evaluate` prints for this model (DP only where it has drums)."""
    return HEADLINE + (["DP", "DP8"] if drum_rows(spec) else []) + (["VC"] if crossing_pairs(spec) else [])


def add_summaries(metrics: dict[str, float], spec: GeneratorSpec) -> dict[str, float]:
    """Per-track metrics averaged over the accompaniment tracks: QN, EB, UPC, TD/melody
    (pitched tracks; EB over all) and DP, DP8 (drum tracks); VC averaged over the pairs
    of `crossing_pairs`."""
    out = dict(metrics)
    tracks = [t.name for t in spec.tracks]
    names = [spec.melody.name, *tracks]
    for name, keys in [
        ("DP", [f"DP/{t}" for t in tracks]),
        ("DP8", [f"DP8/{t}" for t in tracks]),
        ("QN", [f"QN/{t}" for t in tracks]),
        ("EB", [f"EB/{t}" for t in tracks]),
        ("UPC", [f"UPC/{t}" for t in tracks]),
        ("TD/melody", [f"TD/{spec.melody.name}-{t}" for t in tracks]),
        ("VC", [f"VC/{names[u]}-{names[v]}" for u, v in crossing_pairs(spec)]),
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
    voiced = voiced_windows(all_frames, all_onsets, spec) if crossing_pairs(spec) else None
    return score_windows(all_frames, all_onsets, steps_per_bar, modes, spec, crossing_frames=voiced)


TARGETS = {
    # metric: (kind, amount) — "points": |gen - real| <= amount (rates as fractions);
    # "relative": |gen - real| <= amount * real; "ceiling": gen <= real * (1 + amount)
    # VC: "voices cross no more often than in the training data" (the real tracks here)
    "QN": ("points", 0.05),
    "EB": ("points", 0.05),
    "DP": ("points", 0.05),
    "DP8": ("points", 0.05),
    "UPC": ("relative", 0.20),
    "PR/accompaniment": ("relative", 0.10),
    "in_scale/accompaniment": ("relative", 0.10),
    "TD/melody": ("ceiling", 0.10),
    "VC": ("ceiling", 0.0),
}


def target_of(metric: str, melody: str | None = None) -> tuple[str, float] | None:
    """The target of a summary metric, or of a per-track one ('QN/Bass' has QN's, and
    'TD/<melody>-Bass' has TD/melody's); None where there is none."""
    if metric in TARGETS:
        return TARGETS[metric]
    family, _, rest = metric.partition("/")
    if family == "TD":
        return TARGETS["TD/melody"] if melody is not None and rest.startswith(f"{melody}-") else None
    if family in ("QN", "EB", "DP", "DP8", "UPC", "VC") and rest:
        return TARGETS[family]
    return None


def meets_target(metric: str, generated: float, real: float, melody: str | None = None) -> bool | None:
    target = target_of(metric, melody)
    if target is None or not (np.isfinite(generated) and np.isfinite(real)):
        return None
    kind, amount = target
    if kind == "points":
        return abs(generated - real) <= amount
    if kind == "relative":
        return abs(generated - real) <= amount * abs(real)
    return generated <= real * (1 + amount)


def format_table(generated: dict[str, float], real: dict[str, float], metrics: list[str] | None = None,
                 melody: str | None = None) -> str:
    """A Markdown table: metric, model, real, target, met. `melody`: the melody track's
    name, so that per-track TD/<melody>-X rows carry TD/melody's target."""
    rows = ["| metric | model | real | target | met |", "|---|---|---|---|---|"]
    for metric in metrics or sorted(set(generated) & set(real)):
        g, r = generated.get(metric, float("nan")), real.get(metric, float("nan"))
        target = ""
        found = target_of(metric, melody)
        if found is not None:
            kind, amount = found
            target = {
                "points": f"within {amount * 100:.0f} points",
                "relative": f"within {amount * 100:.0f} %",
                "ceiling": f"<= real + {amount * 100:.0f} %" if amount else "<= real",
            }[kind]
        met = meets_target(metric, g, r, melody)
        rows.append(f"| {metric} | {g:.3f} | {r:.3f} | {target} | {'' if met is None else ('yes' if met else 'NO')} |")
    return "\n".join(rows)


def note_lengths(frames: np.ndarray, onsets: np.ndarray) -> np.ndarray:
    """The length in steps of every note in rolls `[..., T, P]`, as `roll_to_notes` reads them."""
    return note_runs(frames.reshape(-1, *frames.shape[-2:]), onsets.reshape(-1, *onsets.shape[-2:]))[3]


def count_notes(frames: np.ndarray, onsets: np.ndarray) -> int:
    """Notes in rolls `[..., T, P]`, as `roll_to_notes` reads them."""
    return len(note_lengths(frames, onsets))


THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
ONSET_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)  # 1.0: never restruck
REST_RATIOS = (1.25, 1.5, 2.0, 3.0)  # rest thresholds tried, as multiples of the note threshold
HOLD_RATIOS = (0.8, 0.6, 0.4, 0.25)  # hold thresholds tried, as fractions of the note threshold


def _closest(candidates, measure, target: float):
    """The first candidate whose measure is nearest the target."""
    gaps = [abs(measure(c) - target) for c in candidates]
    return candidates[int(np.argmin(gaps))]


def calibrate_decoding(generate: GenerateFn, spec: GeneratorSpec, frames: np.ndarray,
                       onsets: np.ndarray, *, seed: int = 0) -> dict[str, Any]:
    """Decoding thresholds, track by track, at which the model plays like the real
    accompaniment of the same melodies (`[N, 1 + K, T, P]`; pass training windows, never
    validation). For each track:

    - `threshold`: the share of steps at which the track sounds matches the data's;
    - `rest_threshold` (given that): the share of bars in which the track rests (EB);
    - `onset_threshold` (given those): the number of notes matches, since the onset
      threshold sets how readily a held pitch is struck again;
    - `hold_threshold` (chord tracks, given those): how long their notes run, matched to
      the data's share of qualified notes (QN); then the onset threshold once more.

    All match the training data, never the metrics reported on validation. Returns the
    spec fields to set: `tracks` (each with its thresholds) and, for display and for a
    user's `--threshold`, the model-level median of the tracks' note thresholds."""
    batches = range(0, len(frames), 256)
    probs = [generate(frames[i:i + 256, 0].astype(np.float32),
                      np.random.default_rng(seed + i).standard_normal((len(frames[i:i + 256]), spec.z_dim)).astype(np.float32))
             for i in batches]
    frame_p = np.concatenate([p for p, _ in probs])
    onset_p = np.concatenate([q for _, q in probs])
    min_steps = qn_min_steps(spec.steps_per_beat)
    tracks = list(spec.tracks)
    for k, track in enumerate(tracks):
        real_f, real_o = frames[:, 1 + k], onsets[:, 1 + k]

        def decoded(trial, k=k):
            """This track alone, decoded with `trial`'s settings: bool `[N, T, P]` twice."""
            alone = replace(spec, tracks=(trial,))
            out = [binarise(frame_p[i, k:k + 1], onset_p[i, k:k + 1], alone) for i in range(len(frame_p))]
            return np.stack([f[0] for f, _ in out]), np.stack([o[0] for _, o in out])

        track = replace(track, threshold=_closest(
            THRESHOLDS, lambda c: float(decoded(replace(track, threshold=c))[0].any(axis=-1).mean()),
            float(real_f.any(axis=-1).mean())))
        # Windows are whole bars, so one roll of them end to end has the same bars.
        def rests_of(f):
            return empty_bar_rate(f.reshape(-1, f.shape[-1]), spec.steps_per_bar)

        rests = [None] + [min(round(track.threshold * r, 3), 0.95) for r in REST_RATIOS]
        track = replace(track, rest_threshold=_closest(
            rests, lambda c: rests_of(decoded(replace(track, rest_threshold=c))[0]), rests_of(real_f)))
        def fit_onsets(track):
            return replace(track, onset_threshold=_closest(
                ONSET_THRESHOLDS, lambda c: count_notes(*decoded(replace(track, onset_threshold=c))),
                count_notes(real_f, real_o)))

        track = fit_onsets(track)
        if not track.monophonic and not track.is_drum:
            # With restrikes already as rare as the data's, how long notes run is the hold's.
            holds = [None] + [round(track.threshold * r, 3) for r in HOLD_RATIOS]
            track = replace(track, hold_threshold=_closest(
                holds, lambda h: notes_qualified(*decoded(replace(track, hold_threshold=h)), min_steps),
                notes_qualified(real_f, real_o, min_steps)))
            track = fit_onsets(track)
        tracks[k] = track
    return {"tracks": tuple(tracks), "threshold": float(np.median([t.threshold for t in tracks]))}


def notes_qualified(frames: np.ndarray, onsets: np.ndarray, min_steps: int) -> float:
    """The share of notes at least `min_steps` long in rolls `[..., T, P]` (QN over them all)."""
    lengths = note_lengths(frames, onsets)
    return float((lengths >= min_steps).mean()) if len(lengths) else 0.0


# Per-track columns of `evaluate`: (metric family, column title).
TRACK_COLUMNS = (("EB", "EB"), ("UPC", "UPC"), ("QN", "QN"), ("DP", "DP"), ("DP8", "DP8"), ("TD", "TD(melody)"),
                 ("PR", "PR"), ("in_scale", "in scale"))


def format_track_table(generated: dict[str, float], real: dict[str, float], spec: GeneratorSpec) -> str:
    """One row per track, each cell `model / real`, marked where a target is missed (✗) or met (✓);
    then, for a model whose parts have an expected order, `format_crossing_table`."""
    columns = [(f, t) for f, t in TRACK_COLUMNS
               if any(_track_key(f, spec, track) in real for track in spec.tracks)]
    rows = ["| track | " + " | ".join(t for _, t in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for track in spec.tracks:
        cells = []
        for family, _ in columns:
            key = _track_key(family, spec, track)
            g, r = generated.get(key, float("nan")), real.get(key, float("nan"))
            if not np.isfinite(r) and not np.isfinite(g):
                cells.append("")
                continue
            met = meets_target(key, g, r, spec.melody.name)
            mark = "" if met is None else (" ✓" if met else " ✗")
            cells.append(f"{_figure(g)} / {_figure(r)}{mark}")
        rows.append(f"| {track.name} | " + " | ".join(cells) + " |")
    crossing = format_crossing_table(generated, real, spec)
    return "\n".join(rows) + (f"\n\nvoice crossing, per pair (model / real):\n{crossing}" if crossing else "")


def format_crossing_table(generated: dict[str, float], real: dict[str, float], spec: GeneratorSpec) -> str:
    """One row per pair of `crossing_pairs`: how often the part expected lower sounds above
    the one expected higher, `model / real`, marked as in the track table ("" without pairs)."""
    names = [spec.melody.name, *(t.name for t in spec.tracks)]
    rows = []
    for u, v in crossing_pairs(spec):
        key = f"VC/{names[u]}-{names[v]}"
        g, r = generated.get(key, float("nan")), real.get(key, float("nan"))
        met = meets_target(key, g, r)
        mark = "" if met is None else (" ✓" if met else " ✗")
        rows.append(f"| {names[u]} over {names[v]} | {_figure(g, 4)} / {_figure(r, 4)}{mark} |")
    return "\n".join(["| voices | crossing |", "|---|---|", *rows]) if rows else ""


def _figure(value: float, digits: int = 3) -> str:
    """A table cell: the value, or a dash where there is none (a track silent throughout)."""
    return f"{value:.{digits}f}" if np.isfinite(value) else "-"


def _track_key(family: str, spec: GeneratorSpec, track) -> str:
    return f"TD/{spec.melody.name}-{track.name}" if family == "TD" else f"{family}/{track.name}"
