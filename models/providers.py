"""Where a generator runs: the device a user asks for, the ONNX Runtime execution
providers that serve it, and the options each session is opened with.

A device is written KIND[:PRECISION]:

  auto      CUDA where a GPU and ONNX Runtime's CUDA libraries are both present, else the CPU
  cpu       the CPU provider
  cuda      the CUDA provider (falls back to the CPU, with one log line, if it cannot start)
  tensorrt  the TensorRT provider, then CUDA, then the CPU; its engines are cached on disk
  :fp16     half precision (`cuda:fp16`, `tensorrt:fp16`); the runtime measures it against
            fp32 on the CPU when the model loads and refuses it if the notes change
            (models/precision.py). The default is fp32.

CUDA graphs are used on the CUDA provider unless BACKLINE_CUDA_GRAPHS=0 (models/session.py).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import BacklineError

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
DEVICE_KINDS = ("auto", "cpu", "cuda", "tensorrt")
PRECISIONS = ("fp32", "fp16")
# TensorRT builds one engine for a range of batch sizes; larger batches run in chunks.
TENSORRT_MAX_BATCH = 64
TENSORRT_CACHE = Path.home() / ".cache" / "backline" / "tensorrt"


class DeviceError(BacklineError, ValueError):
    """A device string that is not KIND[:PRECISION]."""


@dataclass(frozen=True)
class Device:
    kind: str = "auto"
    precision: str = "fp32"

    @classmethod
    def parse(cls, text: "str | Device") -> "Device":
        """'cuda', 'cuda:fp16', 'tensorrt:fp32' ... -> Device; DeviceError if malformed."""
        if isinstance(text, Device):
            return text
        kind, _, precision = str(text).strip().lower().partition(":")
        precision = precision or "fp32"
        if kind not in DEVICE_KINDS or precision not in PRECISIONS:
            raise DeviceError(
                f"unknown device {text!r}; use one of {', '.join(DEVICE_KINDS)}, optionally "
                "with a precision, e.g. cuda:fp16"
            )
        return cls(kind, precision)

    def __str__(self) -> str:
        return self.kind if self.precision == "fp32" else f"{self.kind}:{self.precision}"


def _loadable(*names: str) -> bool:
    for name in names:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def gpu_driver_present() -> bool:
    """Whether an NVIDIA driver is loadable, without asking ONNX Runtime (which logs
    errors when it cannot find CUDA)."""
    return _loadable("libcuda.so.1", "libcuda.so", "nvcuda.dll")


def tensorrt_present() -> bool:
    """Whether the TensorRT libraries are loadable: ONNX Runtime's Python layer prints a
    multi-line error of its own when they are not, so it is not asked then."""
    return _loadable("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so", "nvinfer_10.dll", "nvinfer.dll")


def choose_providers(device: "str | Device" = "auto") -> list[str]:
    """Execution providers to ask for, best first."""
    import onnxruntime as ort

    kind = Device.parse(device).kind
    if kind == "cpu":
        return [CPU]
    available = ort.get_available_providers()
    # auto never picks TensorRT: its first start builds engines for minutes.
    if (kind == "tensorrt" and TENSORRT in available and CUDA in available
            and gpu_driver_present() and tensorrt_present()):
        return [TENSORRT, CUDA, CPU]
    wants_cuda = kind in ("cuda", "tensorrt") or (kind == "auto" and gpu_driver_present())
    if wants_cuda and CUDA in available:
        return [CUDA, CPU]
    return [CPU]


def cuda_graphs_wanted() -> bool:
    """CUDA graphs are on by default on the CUDA provider; BACKLINE_CUDA_GRAPHS=0 turns them off."""
    return os.environ.get("BACKLINE_CUDA_GRAPHS", "1").strip().lower() not in ("0", "off", "false", "no")


def provider_list(providers: list[str], *, cuda_graph: bool = False, fp16: bool = False,
                  input_shapes: dict[str, tuple[int, ...]] | None = None,
                  model: bytes = b"") -> list:
    """`providers` with their options, as InferenceSession takes them.

    input_shapes (per-window shapes, batch left out) and model (for the engine cache's
    folder) are needed for TensorRT only."""
    out: list = []
    for name in providers:
        if name == CUDA:
            # use_tf32 off: fp32 on CUDA stays fp32, so it needs no agreement check.
            options = {"device_id": "0", "use_tf32": "0"}
            if cuda_graph:
                options["enable_cuda_graph"] = "1"
            out.append((name, options))
        elif name == TENSORRT:
            out.append((name, tensorrt_options(input_shapes or {}, fp16=fp16, model=model)))
        else:
            out.append(name)
    return out


def tensorrt_options(input_shapes: dict[str, tuple[int, ...]], *, fp16: bool, model: bytes) -> dict[str, str]:
    """One optimisation profile for batches 1..TENSORRT_MAX_BATCH (tuned for 1: live mode),
    so no new batch size ever triggers an engine rebuild mid-performance."""

    def profile(batch: int) -> str:
        return ",".join(f"{name}:{'x'.join(map(str, (batch, *shape)))}" for name, shape in input_shapes.items())

    # TensorRT's cache key ignores the weights: a retrained model of the same shape would
    # pick up a stale engine, so each model's content gets its own folder.
    folder = TENSORRT_CACHE / f"{hashlib.sha256(model).hexdigest()[:16]}-{'fp16' if fp16 else 'fp32'}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        cache = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(folder),
                 "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(folder)}
    except OSError:  # a read-only home: build the engines at every start instead
        cache = {}
    return {
        "device_id": "0",
        "trt_fp16_enable": "True" if fp16 else "False",
        **cache,
        "trt_profile_min_shapes": profile(1),
        "trt_profile_opt_shapes": profile(1),
        "trt_profile_max_shapes": profile(TENSORRT_MAX_BATCH),
    }


def intra_op_threads() -> int:
    """ONNX Runtime's default spins one thread per core; for our small generator two
    intra-op threads are as fast and leave the other cores to the DAW."""
    return min(2, os.cpu_count() or 1)



def open_session(model: bytes, providers: list, *, fixed_batch: int | None = None):
    """An InferenceSession on `providers` (names or (name, options) pairs).

    fixed_batch pins the 'batch' axis, so ONNX Runtime folds every shape computation
    into constants: a graph with static shapes that runs wholly on the GPU, as CUDA
    graph capture requires."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = intra_op_threads()
    # The intra-op threads spin between the operators of a call (waking a sleeping thread
    # per operator costs more than the operator), but stop when the call returns: spinning
    # on after it took a core from decoding, the network and the DAW. Measured with
    # `backline bench --parts latency`: round-trip p99 5.1-5.9 ms against 6.0-6.8 ms, and
    # a lone client's clips 5 instead of 7-10 core-ms of server CPU each.
    options.add_session_config_entry("session.force_spinning_stop", "1")
    if fixed_batch is not None:
        options.add_free_dimension_override_by_name("batch", fixed_batch)
    first = providers[0] if isinstance(providers[0], str) else providers[0][0]
    if first == CPU:
        return ort.InferenceSession(model, options, providers=providers)
    # A failed GPU start is reported by the caller; silence ONNX Runtime's own multi-line
    # error for it.
    ort.set_default_logger_severity(4)
    try:
        return ort.InferenceSession(model, options, providers=providers)
    finally:
        ort.set_default_logger_severity(2)
