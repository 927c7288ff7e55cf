"""Open the execution a device asks for, and fall back where it cannot run or would
change the notes.

Order of events: the providers for the device (models/providers.py); the model converted
to fp16 where asked (TensorRT converts by itself); one session with I/O binding; on the
CUDA provider, CUDA graphs (models/session.py); for fp16 and TensorRT, the agreement
check against fp32 on the CPU (models/precision.py). Each fallback is one log line:
  a GPU provider that cannot start      -> the provider that did start
  fp16 without a GPU (device auto:fp16) -> fp32 on the CPU
  refused by the agreement check        -> fp16 -> fp32 on the same provider;
                                           TensorRT fp32 -> CUDA fp32
"""

from __future__ import annotations

import logging

import numpy as np

from .precision import Agreement, agreement_of, to_fp16
from .providers import (CPU, CUDA, TENSORRT, TENSORRT_MAX_BATCH, Device, choose_providers,
                        cuda_graphs_wanted, open_session, provider_list)
from .session import BoundRunner, Execution, GraphRunner, Shapes
from .spec import GeneratorSpec

log = logging.getLogger("backline.models")

OUTPUTS = ("accompaniment", "onsets")


def io_shapes(spec: GeneratorSpec) -> tuple[Shapes, Shapes]:
    """Per-window input and output shapes of the generator contract (DESIGN §2)."""
    window = (spec.bars, spec.steps_per_bar, spec.n_pitches)
    return ({"melody": window, "z": (spec.z_dim,)},
            {name: (spec.n_tracks, *window) for name in OUTPUTS})


def start(model: bytes, reference, spec: GeneratorSpec, device: Device, *, verify: bool = True) -> Execution:
    """The execution for `device`. `reference` is the model's fp32 CPU session, already open."""
    inputs, outputs = io_shapes(spec)
    requested = choose_providers(device)
    if device.kind == "tensorrt" and requested[0] != TENSORRT:
        log.info("%s: TensorRT is not usable here (no GPU driver or no TensorRT libraries, libnvinfer); "
                 "trying %s", spec.name, requested[0])
    fp16 = device.precision == "fp16"
    if fp16 and requested[0] == CPU and device.kind != "cpu":
        log.info("%s: no GPU provider here, so no fp16: running fp32 on the CPU", spec.name)
        fp16 = False
    if requested[0] == CPU and not fp16:
        return Execution(reference, BoundRunner(reference, inputs, outputs, "cpu"))

    weights = to_fp16(model) if fp16 and requested[0] != TENSORRT else model
    session = open_session(weights, provider_list(requested, fp16=fp16, input_shapes=inputs, model=model))
    started = session.get_providers()[0]
    if started != requested[0]:
        hint = ("are the TensorRT libraries on LD_LIBRARY_PATH?" if requested[0] == TENSORRT else
                "are its CUDA libraries installed? pip install 'onnxruntime-gpu[cuda,cudnn]'")
        log.info("%s: %s could not start (%s); running on %s", spec.name, requested[0], hint, started)
        # fp16 goes on to CUDA but not to the CPU, where it is only slower.
        fallback = Device("cuda", device.precision) if started == CUDA else Device("cpu")
        return start(model, reference, spec, fallback, verify=verify)

    on_gpu = started != CPU
    graphs = None
    if started == CUDA and cuda_graphs_wanted():
        def open_fixed(size: int):
            return open_session(weights, provider_list([CUDA, CPU], cuda_graph=True), fixed_batch=size)
        graphs = GraphRunner(open_fixed, inputs, outputs, name=spec.name)
    execution = Execution(session, BoundRunner(session, inputs, outputs, "cuda" if on_gpu else "cpu"),
                          graphs=graphs, max_batch=TENSORRT_MAX_BATCH if started == TENSORRT else None,
                          fp16=fp16)
    if verify and (fp16 or started == TENSORRT):
        agreement = check(execution, reference, spec)
        if not agreement.ok():
            fallback = Device(device.kind, "fp32") if fp16 else Device("cuda", "fp32")
            log.info("%s: %s refused: %s; running %s instead", spec.name, execution.label, agreement, fallback)
            return start(model, reference, spec, fallback, verify=verify)
    return execution


def check(execution: Execution, reference, spec: GeneratorSpec) -> Agreement:
    """The execution's agreement with the fp32 CPU reference session (precision.agreement_of)."""
    folded = (spec.n_tracks, spec.window_steps, spec.n_pitches)

    def fold(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return tuple(a.reshape(a.shape[0], *folded) for a in arrays)  # type: ignore[return-value]

    def windows(melodies: np.ndarray) -> np.ndarray:
        return melodies.reshape(-1, spec.bars, spec.steps_per_bar, spec.n_pitches)

    def run_reference(melodies: np.ndarray, z: np.ndarray):
        return fold(reference.run(list(OUTPUTS), {"melody": windows(melodies), "z": z}))

    def run_candidate(melodies: np.ndarray, z: np.ndarray):
        return fold(execution.run({"melody": windows(melodies), "z": z}))

    return agreement_of(spec, run_reference, run_candidate)
