"""Run an exported generator with ONNX Runtime (models/thresholds.py turns its
probabilities into rolls).

Where it runs: models/providers.py (devices, providers, session options); how a call
reaches the session: models/session.py (I/O binding, CUDA graphs); fallbacks and the fp16
check: models/execution.py. The provider in use is logged once, and a CPU-only machine
sees no error output from ONNX Runtime's own attempt to load CUDA.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import execution
from .errors import BacklineError
from .providers import CPU, Device, choose_providers, open_session
from .spec import METADATA_KEY, GeneratorSpec, SpecError

log = logging.getLogger("backline.models")

__all__ = ["Generator", "ModelLoadError", "Probabilities", "choose_providers"]


class ModelLoadError(BacklineError, RuntimeError):
    """A model file is missing, unreadable, or not a Backline generator."""


@dataclass
class Probabilities:
    """Generator output for a batch: `[batch, n_tracks, time, n_pitches]` each."""

    frames: np.ndarray
    onsets: np.ndarray


class Generator:
    """An exported accompaniment generator: its spec plus an ONNX Runtime session.

    `run` may be called from several threads: a lock per generator serialises the calls,
    since each reuses the same bound buffers."""

    def __init__(self, path: str | os.PathLike, device: "str | Device" = "auto", *,
                 announce: bool = True, verify: bool = True) -> None:
        """Load `path` on `device` (KIND[:PRECISION], see models/providers.py); `announce`
        logs the provider in use; `verify` measures fp16 / TensorRT against fp32 on the
        CPU and refuses them if the notes change (models/precision.py)."""
        self.path = Path(path)
        self.device = Device.parse(device)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise ModelLoadError(
                f"model file {self.path} does not exist; run 'backline models' to list "
                "the installed models"
            ) from None
        except OSError as exc:
            raise ModelLoadError(f"cannot read model file {self.path}: {exc.strerror}") from None
        try:
            # The fp32 CPU session comes first on every device: it holds the metadata, and
            # it is the reference that fp16 and TensorRT are checked against.
            reference = open_session(data, [CPU])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(
                f"{self.path} is not a loadable ONNX model ({first_line[:160]}); "
                "re-export it with 'backline export' or reinstall Backline"
            ) from None
        meta = reference.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ModelLoadError(
                f"{self.path} is an ONNX model but not a Backline generator (no "
                f"'{METADATA_KEY}' metadata); export it with 'backline export'"
            )
        try:
            self.spec = GeneratorSpec.from_json(meta[METADATA_KEY])
        except SpecError as exc:
            raise ModelLoadError(f"{self.path}: {exc}") from None
        self._check_signature(reference)
        self._lock = threading.Lock()
        try:
            self._execution = execution.start(data, reference, self.spec, self.device, verify=verify)
        except BacklineError as exc:
            raise ModelLoadError(f"{self.path}: {exc}") from None
        self.session = self._execution.session
        if self._execution.runner.device != "cpu":
            self.warm_up()
        if announce:
            log.info("model %s runs on %s", self.spec.name, self.provider)

    @property
    def provider(self) -> str:
        """What runs the model, as users see it: the execution provider, plus on a GPU
        what runs on it, e.g. 'CUDAExecutionProvider (I/O binding, CUDA graphs)'."""
        return self._execution.label

    @property
    def execution_provider(self) -> str:
        """ONNX Runtime's name of the provider, e.g. 'CPUExecutionProvider'."""
        return self._execution.provider

    def _check_signature(self, session) -> None:
        spec = self.spec
        inputs = {i.name: i.shape for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
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
        bar axis folded back into time: `[batch, n_tracks, window_steps, n_pitches]`.
        The arrays are the caller's own: a later call does not overwrite them."""
        spec = self.spec
        batch = melody.shape[0]
        shaped = melody.astype(np.float32, copy=False).reshape(
            batch, spec.bars, spec.steps_per_bar, spec.n_pitches
        )
        with self._lock:
            frames, onsets = self._execution.run({"melody": shaped, "z": z.astype(np.float32, copy=False)})
        shape = (batch, spec.n_tracks, spec.window_steps, spec.n_pitches)
        return Probabilities(frames.reshape(shape), onsets.reshape(shape))

    def warm_up(self, batches: tuple[int, ...] = (1,)) -> None:
        """Run silence once per batch size, so the first real call does not pay for
        buffer allocation, cuDNN's algorithm search or CUDA graph capture."""
        for batch in batches:
            silence = np.zeros((batch, self.spec.window_steps, self.spec.n_pitches), dtype=np.float32)
            self.run(silence, self.draw_z(0, batch))
