"""Export a training checkpoint as a self-describing ONNX generator.

The file is written to a temporary path, loaded back with ONNX Runtime, compared with
PyTorch on the same inputs, and only then renamed into place: a failed export never
replaces a working model.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from backline.models.runtime import Generator
from backline.models.thresholds import binarise
from backline.models.spec import METADATA_KEY, GeneratorSpec

from .checkpoint import load_checkpoint
from .layout import bach_spec
from .networks import NetConfig, build_generator
from backline.models.atomic import atomic_write
from backline.models.errors import BacklineError

log = logging.getLogger("backline.training")

OPSET = 18
# ONNX Runtime 1.17+ reads IR version 9 (opset 18); newer onnx packages write higher IR
# versions by default that older runtimes refuse.
IR_VERSION = 9
# Largest |ONNX Runtime - PyTorch| allowed on any probability, and the share of
# binarised cells allowed to differ (cells sitting exactly at the threshold may flip).
PARITY_ATOL = 1e-4
PARITY_MAX_FLIPS = 1e-4


class ExportError(BacklineError, RuntimeError):
    pass


class ContractWrapper(nn.Module):
    """The generator behind the contract's tensor layout (DESIGN §2)."""

    def __init__(self, generator: nn.Module, spec: GeneratorSpec) -> None:
        super().__init__()
        self.generator = generator
        self.spec = spec

    def forward(self, melody: torch.Tensor, z: torch.Tensor):
        s = self.spec
        batch = melody.shape[0]
        frames, onsets = self.generator(melody.reshape(batch, s.window_steps, s.n_pitches), z)
        shape = (batch, s.n_tracks, s.bars, s.steps_per_bar, s.n_pitches)
        return frames.reshape(shape), onsets.reshape(shape)


@dataclass
class ParityReport:
    max_abs_diff: float
    flipped_fraction: float
    n_windows: int

    def ok(self) -> bool:
        return self.max_abs_diff <= PARITY_ATOL and self.flipped_fraction <= PARITY_MAX_FLIPS

    def __str__(self) -> str:
        return (
            f"ONNX Runtime vs PyTorch on {self.n_windows} windows: max |diff| "
            f"{self.max_abs_diff:.2e} (allowed {PARITY_ATOL:.0e}), binarised cells that differ "
            f"{self.flipped_fraction:.2e} (allowed {PARITY_MAX_FLIPS:.0e})"
        )


def spec_from_checkpoint(state: dict[str, Any], name: str, metrics: dict[str, Any] | None = None) -> GeneratorSpec:
    config = state["train_config"]
    data = state["data"]
    net = NetConfig.from_dict(state["net_config"])
    provenance = {
        "dataset": data["dataset"],
        "licence": data.get("licence", "music21 corpus (BSD-3-Clause package; public-domain scores)"),
        "data": list(config.get("data", ["chorales"])),
        "genre": config.get("genre", "bach"),
        "melody_track": config.get("melody_track"),
        "train_windows": data["train_windows"],
        "validation_windows": data["validation_windows"],
        "architecture": state["architecture"],
        "epochs": state["epoch"],
        "learning_rate": config["lr"],
        "update_ratio": config["update_ratio"],
        "batch_size": config["batch_size"],
        "recon_weight": config["recon_weight"],
        "gp_lambda": config["gp_lambda"],
        "seed": config["seed"],
        "command": config.get("command", ""),
        "out": config.get("out_dir", ""),
        "commit": state.get("commit", "unknown"),
        "wall_time_s": round(float(state["wall_time_s"]), 1),
        "machine": state.get("machine", ""),
    }
    if "spec" in data:  # the spec the run trained for: tracks, grid, velocities
        return replace(GeneratorSpec.from_json(data["spec"]), name=name, provenance=provenance,
                       metrics=metrics or {})
    return bach_spec(net, lowest_pitch=data["lowest_pitch"], monophonic=data["monophonic"],
                     melody_range=tuple(data["melody_range"]), name=name, provenance=provenance,
                     metrics=metrics or {})


def load_generator(state: dict[str, Any]) -> nn.Module:
    generator = build_generator(NetConfig.from_dict(state["net_config"]))
    try:
        generator.load_state_dict(state["generator"])
    except RuntimeError as exc:
        from .checkpoint import CheckpointError

        raise CheckpointError(f"checkpoint weights do not fit the generator ({str(exc).splitlines()[0]})") from None
    return generator.eval()


def _to_onnx(wrapper: ContractWrapper, spec: GeneratorSpec, path: Path) -> None:

    melody = torch.zeros(2, spec.bars, spec.steps_per_bar, spec.n_pitches)
    z = torch.zeros(2, spec.z_dim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (melody, z), str(path),
            input_names=["melody", "z"], output_names=["accompaniment", "onsets"],
            dynamic_axes={"melody": {0: "batch"}, "z": {0: "batch"},
                          "accompaniment": {0: "batch"}, "onsets": {0: "batch"}},
            opset_version=OPSET, dynamo=False,
        )
    write_metadata(path, spec)


def write_metadata(path: Path, spec: GeneratorSpec) -> None:
    """(Re)write the spec into the model's metadata_props."""
    import onnx

    model = onnx.load(str(path))
    model.ir_version = IR_VERSION
    model.producer_name = "backline"
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, spec.to_json()
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def check_parity(wrapper: ContractWrapper, runtime: Generator, melodies: np.ndarray, seed: int = 0) -> ParityReport:
    spec = runtime.spec
    z = runtime.draw_z(seed, melodies.shape[0])
    shaped = melodies.astype(np.float32).reshape(-1, spec.bars, spec.steps_per_bar, spec.n_pitches)
    with torch.no_grad():
        tf, to = (t.numpy() for t in wrapper(torch.from_numpy(shaped), torch.from_numpy(z)))
    probs = runtime.run(melodies, z)
    tf = tf.reshape(probs.frames.shape)
    to = to.reshape(probs.onsets.shape)
    diff = max(float(np.abs(tf - probs.frames).max()), float(np.abs(to - probs.onsets).max()))
    flips = cells = 0
    for i in range(melodies.shape[0]):
        a = binarise(tf[i], to[i], spec)
        b = binarise(probs.frames[i], probs.onsets[i], spec)
        flips += int((a[0] != b[0]).sum() + (a[1] != b[1]).sum())
        cells += a[0].size * 2
    return ParityReport(diff, flips / cells, melodies.shape[0])


def export(checkpoint: Path, out: Path, *, name: str | None = None,
           melodies: np.ndarray | None = None,
           calibrate: Callable[[Generator], dict[str, Any]] | None = None,
           evaluate: Callable[[Generator], dict[str, Any]] | None = None) -> tuple[GeneratorSpec, ParityReport]:
    """Write `out` from `checkpoint`; `melodies` `[N, T, P]` are the parity inputs.
    `calibrate` (if given) returns spec fields to set from the exported model (decoding
    thresholds); `evaluate` then measures it, and its figures go into the metadata."""
    state = load_checkpoint(checkpoint)
    name = name or out.stem
    spec = spec_from_checkpoint(state, name)
    wrapper = ContractWrapper(load_generator(state), spec).eval()
    if melodies is None:
        rng = np.random.default_rng(0)
        melodies = (rng.random((16, spec.window_steps, spec.n_pitches)) < 0.02).astype(np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="backline-export-") as work:
        tmp = Path(work) / out.name
        _to_onnx(wrapper, spec, tmp)
        runtime = Generator(tmp, device="cpu")
        report = check_parity(wrapper, runtime, melodies)
        if not report.ok():
            raise ExportError(f"exported model disagrees with PyTorch: {report}")
        if calibrate is not None:
            spec = runtime.spec = replace(spec, **calibrate(runtime))
        if evaluate is not None:
            spec = runtime.spec = replace(spec, metrics=evaluate(runtime))
        if calibrate is not None or evaluate is not None:
            write_metadata(tmp, spec)
        with atomic_write(out) as handle:
            handle.write(tmp.read_bytes())
    return spec, report
