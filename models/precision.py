"""Half precision, and how far a candidate execution may drift from the fp32 reference.

The rule: an execution that is not plain fp32 (fp16 anywhere, and TensorRT, which may
compute fp32 as TF32) is measured when the model loads against fp32 on the CPU, on
PROBE_WINDOWS windows of real melody (the example melodies shipped in models/examples,
cut into windows as `accompany` cuts them). If more than MAX_FLIPPED of the binarised
cells (frames and onsets) differ, it is refused and the runtime falls back to fp32, with
one log line. What users hear is the binarised notes, so that is what the rule guards;
the largest probability difference is reported beside it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import BacklineError
from .melody import prepare
from .midi import pick_melody_track, read_midi
from .spec import GeneratorSpec
from .thresholds import binarise

# The share of binarised cells allowed to differ: the same bar as an export's parity check
# (training/export.py), where only cells sitting on the threshold may flip.
MAX_FLIPPED = 1e-4
PROBE_WINDOWS = 16
EXAMPLES = Path(__file__).resolve().parent / "examples"

Run = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # (melody, z) -> (frames, onsets)


class PrecisionError(BacklineError, RuntimeError):
    """Half precision was asked for but cannot be prepared here."""


@dataclass
class Agreement:
    n_windows: int
    flipped_fraction: float
    max_abs_diff: float

    def ok(self) -> bool:
        return self.flipped_fraction <= MAX_FLIPPED

    def __str__(self) -> str:
        return (f"{self.flipped_fraction:.2e} of binarised cells differ from fp32 on the CPU "
                f"(allowed {MAX_FLIPPED:.0e}), max |diff| {self.max_abs_diff:.2e}, "
                f"{self.n_windows} windows")


def to_fp16(model: bytes) -> bytes:
    """The model with fp16 weights and arithmetic; its inputs and outputs stay fp32."""
    try:
        import onnx
        from onnxconverter_common import float16
    except ModuleNotFoundError as exc:
        raise PrecisionError(
            f"fp16 needs the {exc.name} package to convert the model; run: pip install "
            "onnxconverter-common (or use fp32)"
        ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns about every weight it rounds
        converted = float16.convert_float_to_float16(onnx.load_from_string(model), keep_io_types=True)
    return converted.SerializeToString()


def probe_windows(spec: GeneratorSpec, n: int = PROBE_WINDOWS) -> np.ndarray:
    """`[n, window_steps, n_pitches]` float32: the example melodies cut into windows (in
    turn, repeated if they give fewer than n); random sparse melodies for a model that
    none of them fits."""
    windows = [w for path in sorted(EXAMPLES.glob("*.mid")) for w in _melody_windows(path, spec)]
    if not windows:
        rng = np.random.default_rng(0)
        return (rng.random((n, spec.window_steps, spec.n_pitches)) < 0.03).astype(np.float32)
    return np.stack([windows[i % len(windows)] for i in range(n)]).astype(np.float32)


def _melody_windows(path: Path, spec: GeneratorSpec) -> list[np.ndarray]:
    """One melody file cut into windows by `accompany`'s own first step."""
    try:
        return list(prepare(spec, pick_melody_track(read_midi(path), None).notes).windows)
    except BacklineError:  # a melody this model cannot take
        return []


def compare(spec: GeneratorSpec, reference: tuple[np.ndarray, np.ndarray],
            candidate: tuple[np.ndarray, np.ndarray]) -> Agreement:
    """Agreement of two runs' (frames, onsets) `[windows, n_tracks, time, n_pitches]`,
    each window binarised with the model's thresholds."""
    max_diff = max(float(np.abs(r - c).max()) for r, c in zip(reference, candidate))
    flips = cells = 0
    for i in range(reference[0].shape[0]):
        a = binarise(reference[0][i], reference[1][i], spec)
        b = binarise(candidate[0][i], candidate[1][i], spec)
        flips += int((a[0] != b[0]).sum() + (a[1] != b[1]).sum())
        cells += a[0].size + a[1].size
    return Agreement(reference[0].shape[0], flips / cells, max_diff)


def agreement_of(spec: GeneratorSpec, reference: Run, candidate: Run, n_windows: int = PROBE_WINDOWS,
                 seed: int = 0) -> Agreement:
    """Run both on the probe windows (the same noise for both) and compare."""
    melodies = probe_windows(spec, n_windows)
    z = np.random.default_rng(seed).standard_normal((n_windows, spec.z_dim)).astype(np.float32)
    return compare(spec, reference(melodies, z), candidate(melodies, z))
