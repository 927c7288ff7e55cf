"""Inference figures, measured side by side in one run (figures only: nothing here passes
or fails on speed, DESIGN.md §7).

1. ONNX Runtime vs PyTorch eager on the same generator (`compare_ort_torch`): the shipped
   model is only an ONNX file, so the PyTorch generator is rebuilt from it: the U-Net or
   MuseGAN generator of training/networks with the ONNX file's weights (batch norm stays
   folded into the convolutions, as in the ONNX graph); the largest difference between the two engines'
   probabilities shows that both run the same generator. Both are timed from numpy
   windows in to numpy probabilities out, with the same number of intra-op threads.
2. I/O binding vs plain `session.run` on the same session (`compare_binding`).
3. How fp16 (or TensorRT) agrees with fp32 on the CPU (models/precision.py).

`python -m backline.bridge.bench.inference [--model bach] [--device cpu]` prints all three.
This module imports torch only inside `compare_ort_torch`; an install without the train
extra gets {"available": False, "reason": ...} from it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from backline.models.errors import BacklineError

WARMUP_RUNS = 5
SIDE_BY_SIDE_BLOCK = 10  # calls timed on one engine before the next takes its turn
SETTLE_S = 0.01  # pause before each block: longer than a thread pool's spin after its last call


class RebuildError(BacklineError, RuntimeError):
    """The ONNX file's weights do not map onto a generator of training/networks."""


def _percentiles(times_ms: list[float]) -> dict[str, float]:
    values = np.asarray(times_ms, dtype=float)
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99))}


def _time_side_by_side(engines: dict[str, Callable[[], object]], runs: int,
                       block: int = SIDE_BY_SIDE_BLOCK) -> dict[str, np.ndarray]:
    """Each engine WARMUP_RUNS times untimed, then the engines take turns in blocks of
    `block` calls until each has `runs`, the order rotating every round so that no engine
    always runs right after another. Before its block each engine gets one untimed call
    after a short pause: a thread pool spinning on after the other engine's last call
    (PyTorch's OpenMP threads do; ONNX Runtime's stop, models/providers.py) would
    otherwise slow the first timed call of every block.
    Returns each engine's times in ms, in the order taken."""
    for call in engines.values():
        for _ in range(WARMUP_RUNS):
            call()
    names = list(engines)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(-(-runs // block)):
        for name in names[i % len(names):] + names[: i % len(names)]:
            time.sleep(SETTLE_S)
            engines[name]()
            for _ in range(min(block, runs - len(times[name]))):
                started = time.perf_counter()
                engines[name]()
                times[name].append(1000 * (time.perf_counter() - started))
    return {name: np.asarray(values) for name, values in times.items()}


def _windows(spec, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """`batch` windows of real melody (models/precision.py's probe windows) and their noise."""
    from backline.models.precision import probe_windows

    melodies = probe_windows(spec, batch)
    z = np.random.default_rng(0).standard_normal((batch, spec.z_dim)).astype(np.float32)
    return melodies, z


# --------------------------------------------------------------------------- the PyTorch rebuild


def rebuild_torch_generator(path: Path, spec):
    """training/networks' generator (U-Net or MuseGAN, from the model's provenance) with
    the weights of the ONNX file at `path`.

    The exporter names each node after the module it came from ('/generator/down.0/
    down.0.3/down.0.3.0/Conv' is module down.0.3.0), and folds each batch norm into the
    convolution before it; so each Conv/ConvTranspose/Gemm's weights go to the module of
    its name, other parameters (MuseGAN's bar positions) come from the initializer of
    their own name, and the batch norms become identities."""
    import onnx
    import torch
    from onnx import numpy_helper
    from torch import nn

    from backline.training.networks import ARCHITECTURES, NetConfig, build_generator

    graph = onnx.load(str(path)).graph
    if any(node.op_type == "BatchNormalization" for node in graph.node):
        raise RebuildError(f"{path} keeps batch norm as separate nodes; export it in eval mode")
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    weights: dict[str, list[np.ndarray]] = {}
    for node in graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
            arrays = [initializers[name] for name in node.input[1:] if name in initializers]
            if node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute):
                arrays[0] = arrays[0].T
            weights[node.name.strip("/").split("/")[-2]] = arrays
    if "stem.0" not in weights:
        raise RebuildError(f"{path} is not a generator of training/networks (no stem convolution)")
    widths = [weights["stem.0"][0].shape[0]]
    while f"down.{len(widths) - 1}.0" in weights:
        widths.append(weights[f"down.{len(widths) - 1}.0"][0].shape[0])
    arch = {name: key for key, name in ARCHITECTURES.items()}.get(spec.provenance.get("architecture"), "unet")
    drums = tuple(k for k, t in enumerate(spec.tracks) if t.is_drum)
    columns: tuple[int, ...] = ()
    if drums:
        from backline.training.data.genres import DRUM_PITCHES

        columns = tuple(p - spec.lowest_pitch for p in DRUM_PITCHES)
    config = NetConfig(n_tracks=spec.n_tracks, window_steps=spec.window_steps, n_pitches=spec.n_pitches,
                       steps_per_beat=spec.steps_per_beat, z_dim=spec.z_dim, widths=tuple(widths), arch=arch,
                       steps_per_bar=spec.steps_per_bar, drum_tracks=drums, drum_columns=columns)
    net = build_generator(config)
    kinds = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    layers = {name: m for name, m in net.named_modules() if isinstance(m, kinds)}
    if set(layers) != set(weights):
        raise RebuildError(f"{path}: layers {sorted(set(layers) ^ set(weights))} are not in both the "
                           f"ONNX graph and training/networks' {arch} generator")
    with torch.no_grad():
        for name, layer in layers.items():
            weight, bias = weights[name]
            if tuple(layer.weight.shape) != weight.shape:
                raise RebuildError(f"{path}: {name} has weights {weight.shape}, the {arch} generator wants "
                                   f"{tuple(layer.weight.shape)}")
            layer.weight.copy_(torch.from_numpy(weight.copy()))
            layer.bias.copy_(torch.from_numpy(bias.copy()))
        owned = {f"{name}.{p}" for name in layers for p in ("weight", "bias")}
        for name, parameter in net.named_parameters():
            if name in owned or ".norm" in name or "_norm" in name:
                continue
            found = initializers.get(f"generator.{name}")
            if found is not None and found.shape == tuple(parameter.shape):
                parameter.copy_(torch.from_numpy(found.copy()))
    for name, module in list(net.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, child_name, nn.Identity())  # folded into the convolution before it
    return net.eval()


# --------------------------------------------------------------------------- 1. ONNX Runtime vs PyTorch


def compare_ort_torch(model: str = "bach", device: str = "cpu", batches: Sequence[int] = (1, 32),
                      runs: int = 200) -> dict[str, Any]:
    """ONNX Runtime (`Generator.run`) vs PyTorch eager on the same generator, per batch:
    p50/p99 of each and the ratio torch / ONNX Runtime; plus max |diff| of their outputs."""
    try:
        import onnx  # noqa: F401  (the rebuild reads the weights with it)
        import torch
    except ModuleNotFoundError as exc:
        return {"available": False,
                "reason": f"{exc.name} is not installed; run: pip install -e '.[train]'"}
    from backline.models import registry
    from backline.models.providers import CPU, intra_op_threads

    generator = registry.load(model, device=device)
    spec = generator.spec
    net = rebuild_torch_generator(generator.path, spec)
    on_gpu = generator.execution_provider != CPU
    torch_device = "cuda" if on_gpu and torch.cuda.is_available() else "cpu"
    net = net.to(torch_device)
    threads = intra_op_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # the same as ONNX Runtime's intra-op threads

    def torch_run(melodies: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            frames, onsets = net(torch.from_numpy(melodies).to(torch_device), torch.from_numpy(z).to(torch_device))
            return frames.cpu().numpy(), onsets.cpu().numpy()

    try:
        melodies, z = _windows(spec, 16)
        ort_out = generator.run(melodies, z)
        torch_out = torch_run(melodies, z)
        max_diff = max(float(np.abs(ort_out.frames - torch_out[0]).max()),
                       float(np.abs(ort_out.onsets - torch_out[1]).max()))
        rows = []
        for batch in batches:
            melodies, z = _windows(spec, batch)
            times = _time_side_by_side({"onnxruntime": lambda: generator.run(melodies, z),
                                        "torch": lambda: torch_run(melodies, z)}, runs)
            figures = {name: _percentiles(values) for name, values in times.items()}
            rows.append({"batch": batch, "onnxruntime_ms": figures["onnxruntime"], "torch_ms": figures["torch"],
                         "ratio_torch_over_onnxruntime": {k: figures["torch"][k] / figures["onnxruntime"][k]
                                                          for k in ("p50", "p99")}})
    finally:
        torch.set_num_threads(previous_threads)
    import onnxruntime

    return {"available": True, "model": spec.name, "provider": generator.provider, "torch_device": torch_device,
            "threads": threads, "runs": runs, "max_abs_diff": max_diff,
            "onnxruntime_version": onnxruntime.__version__, "torch_version": torch.__version__,
            "batches": rows}


def format_comparison(result: dict[str, Any]) -> list[str]:
    if not result.get("available"):
        return [f"ONNX Runtime vs PyTorch: not available ({result.get('reason', 'unknown')})"]
    lines = [
        f"ONNX Runtime vs PyTorch eager: model {result['model']}, ONNX Runtime on {result['provider']}, "
        f"PyTorch on {result['torch_device']}; {result['threads']} intra-op threads each; {result['runs']} runs",
        f"  same generator: PyTorch rebuilt from the ONNX weights, max |diff| {result['max_abs_diff']:.2e}",
        f"  {'batch':>5s}  {'ORT p50':>9s} {'ORT p99':>9s}  {'torch p50':>9s} {'torch p99':>9s}  "
        f"{'torch/ORT p50':>13s} {'p99':>6s}",
    ]
    for row in result["batches"]:
        ort, tor, ratio = row["onnxruntime_ms"], row["torch_ms"], row["ratio_torch_over_onnxruntime"]
        lines.append(f"  {row['batch']:>5d}  {ort['p50']:>9.3f} {ort['p99']:>9.3f}  {tor['p50']:>9.3f} "
                     f"{tor['p99']:>9.3f}  {ratio['p50']:>12.2f}x {ratio['p99']:>5.2f}x")
    lines.append("  (ms per call, numpy in to numpy out)")
    return lines


# --------------------------------------------------------------------------- 2. I/O binding


def compare_binding(model: str = "bach", device: str = "cpu", batches: Sequence[int] = (1, 32),
                    runs: int = 200) -> dict[str, Any]:
    """Plain `session.run` vs I/O binding on one session, and `Generator.run` (binding plus,
    on CUDA, graphs and the lock), per batch; all from numpy in to numpy out."""
    from backline.models import registry
    from backline.models.execution import OUTPUTS, io_shapes
    from backline.models.session import BoundRunner

    generator = registry.load(model, device=device)
    spec = generator.spec
    session = generator.session
    bound = BoundRunner(session, *io_shapes(spec), "cpu" if generator.execution_provider == "CPUExecutionProvider"
                        else "cuda")
    rows = []
    for batch in batches:
        melodies, z = _windows(spec, batch)
        shaped = melodies.reshape(batch, spec.bars, spec.steps_per_bar, spec.n_pitches)
        feeds = {"melody": shaped, "z": z}
        times = _time_side_by_side({"session.run": lambda: session.run(list(OUTPUTS), feeds),
                                    "io_binding": lambda: bound.run(feeds),
                                    "Generator.run": lambda: generator.run(melodies, z)}, runs)
        # Paired by round: the two calls of a round met the same load on a busy machine.
        paired = times["session.run"] / times["io_binding"]
        rows.append({"batch": batch, **{f"{k}_ms": _percentiles(v) for k, v in times.items()},
                     "paired_ratio_plain_over_binding_p50": float(np.median(paired)),
                     "binding_faster_share": float((paired > 1).mean())})
    return {"model": spec.name, "provider": generator.provider, "runs": runs, "batches": rows}


def format_binding(result: dict[str, Any]) -> list[str]:
    lines = [f"I/O binding vs session.run: model {result['model']} on {result['provider']}; {result['runs']} runs",
             f"  {'batch':>5s}  {'run p50':>9s} {'run p99':>9s}  {'bound p50':>9s} {'bound p99':>9s}  "
             f"{'Generator p50':>13s} {'p99':>9s}  {'run/bound':>9s} {'bound won':>9s}"]
    for row in result["batches"]:
        plain, bound, gen = row["session.run_ms"], row["io_binding_ms"], row["Generator.run_ms"]
        lines.append(f"  {row['batch']:>5d}  {plain['p50']:>9.3f} {plain['p99']:>9.3f}  {bound['p50']:>9.3f} "
                     f"{bound['p99']:>9.3f}  {gen['p50']:>13.3f} {gen['p99']:>9.3f}  "
                     f"{row['paired_ratio_plain_over_binding_p50']:>8.3f}x {row['binding_faster_share']:>8.0%}")
    lines.append("  (ms per call; run/bound: median of the per-round ratios; bound won: share of rounds "
                 "where binding was faster)")
    return lines


# --------------------------------------------------------------------------- 3. precision


def precision_agreement(model: str = "bach", device: str = "cpu:fp16") -> dict[str, Any]:
    """models/precision.py's measure, as figures; {'available': False, ...} where `device`
    cannot be prepared here."""
    from backline.models.precision import MAX_FLIPPED
    from backline.models.agreement import measure_agreement

    try:
        agreement = measure_agreement(model, device)
    except BacklineError as exc:
        return {"available": False, "device": device, "reason": str(exc)}
    return {"available": True, "device": device, "windows": agreement.n_windows,
            "flipped_fraction": agreement.flipped_fraction, "max_abs_diff": agreement.max_abs_diff,
            "allowed_flipped_fraction": MAX_FLIPPED, "accepted": agreement.ok()}


def format_precision(result: dict[str, Any]) -> list[str]:
    if not result.get("available"):
        return [f"{result['device']} vs fp32 on the CPU: not available ({result['reason']})"]
    verdict = "accepted" if result["accepted"] else "refused: the runtime falls back to fp32"
    return [f"{result['device']} vs fp32 on the CPU, {result['windows']} windows of the example melodies: "
            f"binarised cells that differ {result['flipped_fraction']:.2e} (allowed "
            f"{result['allowed_flipped_fraction']:.0e}), max |diff| {result['max_abs_diff']:.2e}; {verdict}"]


# --------------------------------------------------------------------------- command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backline.bridge.bench.inference",
                                     description="Print ONNX Runtime vs PyTorch, I/O binding vs session.run, "
                                                 "and fp16 agreement figures.")
    parser.add_argument("--model", default="bach")
    parser.add_argument("--device", default="cpu", help="KIND[:PRECISION], e.g. cpu, cuda, tensorrt (default cpu)")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--json", type=Path, default=None, metavar="FILE")
    args = parser.parse_args(argv)
    try:
        kind = args.device.split(":")[0]
        report = {
            "torch": compare_ort_torch(args.model, args.device, args.batches, args.runs),
            "binding": compare_binding(args.model, args.device, args.batches, args.runs),
            "precision": [precision_agreement(args.model, f"{kind}:fp16")]
            + ([precision_agreement(args.model, "tensorrt")] if kind == "tensorrt" else []),
        }
    except BacklineError as exc:
        print(f"backline: error: {exc}", file=sys.stderr)
        return 1
    lines = format_comparison(report["torch"]) + format_binding(report["binding"])
    for entry in report["precision"]:
        lines += format_precision(entry)
    print("\n".join(lines), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
