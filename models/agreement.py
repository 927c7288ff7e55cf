"""How a device and precision agree with fp32 on the CPU, for a model by name: the
figure `python -m backline.bridge.bench.inference` prints (the load-time check itself is
models/execution.py's, on the same probe windows)."""

from __future__ import annotations

import numpy as np

from . import registry
from .precision import PROBE_WINDOWS, Agreement, Run, agreement_of
from .runtime import Generator


def measure_agreement(model: str, device: str = "cpu:fp16", n_windows: int = PROBE_WINDOWS,
                      seed: int = 0) -> Agreement:
    """How `device` (e.g. cpu:fp16, cuda:fp16, tensorrt) agrees with fp32 on the CPU for
    `model` (a name or .onnx path), measured without the load-time refusal."""
    path = registry.resolve(model)
    reference = Generator(path, device="cpu", announce=False)
    candidate = Generator(path, device=device, announce=False, verify=False)

    def runner(generator: Generator) -> Run:
        def run(melodies: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            probs = generator.run(melodies, z)
            return probs.frames, probs.onsets
        return run

    return agreement_of(reference.spec, runner(reference), runner(candidate), n_windows, seed)
