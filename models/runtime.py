"""Run an exported generator with ONNX Runtime, and turn its probabilities into rolls.

Provider choice: CUDA where a GPU and ONNX Runtime's CUDA libraries are both present,
else the CPU. The choice is logged once, and a CPU-only machine sees no error output
from ONNX Runtime's own attempt to load CUDA.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .spec import METADATA_KEY, GeneratorSpec, SpecError
from .errors import BacklineError

log = logging.getLogger("backline.models")


class ModelLoadError(BacklineError, RuntimeError):
    """A model file is missing, unreadable, or not a Backline generator."""


def _gpu_driver_present() -> bool:
    """Whether an NVIDIA driver is loadable, without asking ONNX Runtime (which logs
    errors when it cannot find CUDA)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def choose_providers(device: str = "auto") -> list[str]:
    """Execution providers to ask for, best first. device: auto, cpu or cuda."""
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    wants_cuda = device == "cuda" or (device == "auto" and _gpu_driver_present())
    if wants_cuda and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _open_session(model: bytes, providers: list[str]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Threads: ONNX Runtime's default spins one thread per core; for our small generator
    # two intra-op threads are as fast and leave the other cores to the DAW.
    options.intra_op_num_threads = min(2, os.cpu_count() or 1)
    if providers[0] == "CPUExecutionProvider":
        return ort.InferenceSession(model, options, providers=providers)
    # A failed CUDA load is reported by the session itself below; silence ONNX Runtime's
    # own multi-line error for it.
    ort.set_default_logger_severity(4)
    try:
        return ort.InferenceSession(model, options, providers=providers)
    finally:
        ort.set_default_logger_severity(2)


MONOPHONIC_TOP_K = 3


@dataclass
class Probabilities:
    """Generator output for a batch: `[batch, n_tracks, time, n_pitches]` each."""

    frames: np.ndarray
    onsets: np.ndarray


class Generator:
    """An exported accompaniment generator: its spec plus an ONNX Runtime session."""

    def __init__(self, path: str | os.PathLike, device: str = "auto", *, announce: bool = True) -> None:
        """Load `path` on `device` (auto, cpu or cuda); `announce` logs the provider in use."""
        self.path = Path(path)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise ModelLoadError(
                f"model file {self.path} does not exist; run 'backline models' to list "
                "the installed models"
            ) from None
        except OSError as exc:
            raise ModelLoadError(f"cannot read model file {self.path}: {exc.strerror}") from None
        requested = choose_providers(device)
        try:
            self.session = _open_session(data, requested)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(
                f"{self.path} is not a loadable ONNX model ({first_line[:160]}); "
                "re-export it with 'backline export' or reinstall Backline"
            ) from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ModelLoadError(
                f"{self.path} is an ONNX model but not a Backline generator (no "
                f"'{METADATA_KEY}' metadata); export it with 'backline export'"
            )
        try:
            self.spec = GeneratorSpec.from_json(meta[METADATA_KEY])
        except SpecError as exc:
            raise ModelLoadError(f"{self.path}: {exc}") from None
        self.provider = self.session.get_providers()[0]
        if requested[0] != self.provider:
            log.info(
                "%s: %s could not start (are its CUDA libraries installed? "
                "pip install 'onnxruntime-gpu[cuda,cudnn]'); running on %s",
                self.spec.name, requested[0], self.provider,
            )
        if announce:
            log.info("model %s runs on %s", self.spec.name, self.provider)
        self._check_signature()

    def _check_signature(self) -> None:
        spec = self.spec
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        expected_melody = [spec.bars, spec.steps_per_bar, spec.n_pitches]
        if "melody" not in inputs or "z" not in inputs or list(inputs["melody"][1:]) != expected_melody:
            raise ModelLoadError(
                f"{self.path}: its inputs {inputs} do not match its metadata "
                f"(melody [batch, {', '.join(map(str, expected_melody))}], z); re-export it"
            )
        if outputs[:2] != ["accompaniment", "onsets"]:
            raise ModelLoadError(f"{self.path}: outputs {outputs} are not accompaniment, onsets")

    def draw_z(self, seed: int, batch: int) -> np.ndarray:
        """Noise for `batch` windows; the same seed gives the same noise."""
        rng = np.random.default_rng(seed)
        return rng.standard_normal((batch, self.spec.z_dim)).astype(np.float32)

    def run(self, melody: np.ndarray, z: np.ndarray) -> Probabilities:
        """melody: `[batch, window_steps, n_pitches]` 0/1. Returns probabilities with the
        bar axis folded back into time: `[batch, n_tracks, window_steps, n_pitches]`."""
        spec = self.spec
        batch = melody.shape[0]
        shaped = melody.astype(np.float32, copy=False).reshape(
            batch, spec.bars, spec.steps_per_bar, spec.n_pitches
        )
        frames, onsets = self.session.run(
            ["accompaniment", "onsets"], {"melody": shaped, "z": z.astype(np.float32, copy=False)}
        )
        shape = (batch, spec.n_tracks, spec.window_steps, spec.n_pitches)
        return Probabilities(frames.reshape(shape), onsets.reshape(shape))


def binarise(
    frames: np.ndarray,
    onsets: np.ndarray,
    spec: GeneratorSpec,
    *,
    threshold: float | None = None,
    sample_seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities `[n_tracks, time, n_pitches]` -> boolean frames and onsets.

    By threshold (the model's default unless given), or by Bernoulli sampling seeded with
    `sample_seed`. A polyphonic track keeps every cell that passes. A monophonic track is
    read note by note (`_monophonic_notes`).
    """
    threshold = spec.threshold if threshold is None else threshold
    rng = np.random.default_rng(sample_seed) if sample_seed is not None else None

    def decide(p: np.ndarray, cut: float) -> np.ndarray:
        if rng is None:
            return p >= cut
        return rng.random(p.shape) < p

    out_frames = np.zeros(frames.shape, dtype=bool)
    out_onsets = np.zeros(frames.shape, dtype=bool)
    for k, track in enumerate(spec.tracks):
        p, q = frames[k], onsets[k]
        if track.monophonic:
            _monophonic_notes(p, q, out_frames[k], out_onsets[k], decide, threshold,
                              spec.onset_threshold, rng)
        else:
            out_frames[k] = decide(p, threshold)
            out_onsets[k] = out_frames[k] & decide(q, spec.onset_threshold)
    return out_frames, out_onsets


def _monophonic_notes(p, q, out_frames, out_onsets, decide, threshold, onset_threshold, rng) -> None:
    """Read one voice as a sequence of notes, writing into out_frames/out_onsets `[T, P]`.

    The voice sounds where its `MONOPHONIC_TOP_K` likeliest pitches together pass the test:
    a model unsure between two neighbouring notes still plays one, while the faint mass
    spread over every other pitch cannot add up to a note. A note starts where the voice
    starts sounding or where an onset passes (the likeliest pitch's onset); it lasts until
    the next start, and its pitch is the one most probable over its whole length (sampled
    from those probabilities when sampling). Choosing the pitch per note, not per step, is
    what keeps a wavering model from breaking a quarter note into flickering fragments.
    """
    top = np.sort(p, axis=1)[:, -MONOPHONIC_TOP_K:].sum(axis=1)
    sounding = decide(np.clip(top, 0.0, 1.0), threshold)
    onset_here = decide(q.max(axis=1), onset_threshold)
    previous = np.concatenate([[False], sounding[:-1]])
    starts = np.flatnonzero(sounding & (~previous | onset_here))
    for i, start in enumerate(starts):
        end = start + 1
        limit = starts[i + 1] if i + 1 < len(starts) else len(sounding)
        while end < limit and sounding[end]:
            end += 1
        weight = p[start:end].sum(axis=0)
        if rng is None:
            pitch = int(weight.argmax())
        else:
            pitch = int(rng.choice(len(weight), p=weight / weight.sum()))
        out_frames[start:end, pitch] = True
        out_onsets[start, pitch] = True
