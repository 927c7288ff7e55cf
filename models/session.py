"""How a call reaches an ONNX Runtime session: I/O binding with buffers preallocated per
batch size, CUDA graphs on top of it, and the `Execution` that ties them together.

I/O binding: each batch size gets its own input and output OrtValues (in host memory on
the CPU, in device memory on a GPU) bound once to an IOBinding; a call copies its inputs
into them, runs, and copies the outputs out. Nothing is allocated per call, and on a GPU
the copies are one host<->device transfer each.

CUDA graphs: ONNX Runtime can record a whole run on the CUDA provider as one graph and
replay it, which saves launching each kernel from Python's thread. A graph is fixed to
its buffers' addresses and shapes, so there is one session (its batch axis pinned) and
one set of buffers per size in GRAPH_BATCHES, opened and captured the first time a batch
needs it; a batch in between is padded with silent windows up to the next size (the
windows do not interact: batch norm is folded into the convolutions at export). A batch
above the largest size, or any failure to open or capture a graph, runs without graphs
(after one log line).

Not thread-safe: the Generator that owns a runner serialises calls with its lock.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Callable

import numpy as np

log = logging.getLogger("backline.models")

# Batch sizes kept bound at once; a new one evicts the least recently used.
MAX_CACHED_BATCHES = 8
GRAPH_BATCHES = (1, 2, 4, 8, 16, 32, 64)
# ONNX Runtime runs a graph-enabled session normally at first (to settle its memory) and
# captures on a later run; these runs, at the graph's creation, cover both.
GRAPH_WARMUP_RUNS = 3

Shapes = dict[str, tuple[int, ...]]  # per-window shape (batch axis left out), by tensor name


class _Buffers:
    """Preallocated OrtValues for one batch size, and the binding that points at them."""

    def __init__(self, session, inputs: Shapes, outputs: Shapes, batch: int, device: str) -> None:
        import onnxruntime as ort

        self.values = {
            name: ort.OrtValue.ortvalue_from_shape_and_type((batch, *shape), np.float32, device, 0)
            for name, shape in {**inputs, **outputs}.items()
        }
        self.binding = session.io_binding()
        for name in inputs:
            self.binding.bind_ortvalue_input(name, self.values[name])
        for name in outputs:
            self.binding.bind_ortvalue_output(name, self.values[name])


class BoundRunner:
    """Runs `session` through I/O binding. Outputs come back as arrays the caller owns."""

    def __init__(self, session, inputs: Shapes, outputs: Shapes, device: str = "cpu",
                 max_cached: int = MAX_CACHED_BATCHES) -> None:
        self.session = session
        self.inputs, self.outputs = inputs, outputs
        self.device = device
        self.max_cached = max_cached
        self._buffers: OrderedDict[int, _Buffers] = OrderedDict()

    def cached_batches(self) -> list[int]:
        return list(self._buffers)

    def _buffers_for(self, batch: int) -> _Buffers:
        buffers = self._buffers.get(batch)
        if buffers is None:
            if len(self._buffers) >= self.max_cached:
                self._buffers.popitem(last=False)
            buffers = self._buffers[batch] = _Buffers(self.session, self.inputs, self.outputs, batch, self.device)
        self._buffers.move_to_end(batch)
        return buffers

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """feeds: float32 arrays by input name, batch first. Returns the outputs in order."""
        batch = next(iter(feeds.values())).shape[0]
        buffers = self._buffers_for(batch)
        for name, array in feeds.items():
            # Copies into the bound buffer: its address stays put (CUDA graphs need that).
            buffers.values[name].update_inplace(np.ascontiguousarray(array, dtype=np.float32))
        self.session.run_with_iobinding(buffers.binding)
        # From the CPU, numpy() is a view of the bound buffer that the next call overwrites:
        # hand out a copy. From a GPU it is already a fresh host array.
        if self.device == "cpu":
            return [buffers.values[name].numpy().copy() for name in self.outputs]
        return [buffers.values[name].numpy() for name in self.outputs]


def _pad(array: np.ndarray, size: int) -> np.ndarray:
    """`array` with zero windows appended up to `size` along the batch axis."""
    if array.shape[0] == size:
        return array
    padded = np.zeros((size, *array.shape[1:]), dtype=np.float32)
    padded[: array.shape[0]] = array
    return padded


class GraphRunner:
    """One fixed-batch session and bound runner per size in `sizes`, made on first use.

    `open_fixed(size)` opens the session (with the CUDA provider's enable_cuda_graph on
    a GPU). `run` returns None where the caller must run the batch another way."""

    def __init__(self, open_fixed: Callable[[int], object], inputs: Shapes, outputs: Shapes, *,
                 device: str = "cuda", sizes: tuple[int, ...] = GRAPH_BATCHES, name: str = "model",
                 warmup_runs: int = GRAPH_WARMUP_RUNS) -> None:
        self.open_fixed = open_fixed
        self.inputs, self.outputs = inputs, outputs
        self.device = device
        self.sizes = tuple(sorted(sizes))
        self.name = name
        self.warmup_runs = warmup_runs
        self.failed: str | None = None  # why graphs were turned off, once they were
        self._runners: dict[int, BoundRunner] = {}

    @property
    def active(self) -> bool:
        return self.failed is None

    def captured_sizes(self) -> list[int]:
        return sorted(self._runners)

    def size_for(self, batch: int) -> int | None:
        """The graph a batch runs in: the smallest size that holds it."""
        return next((size for size in self.sizes if size >= batch), None)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray] | None:
        batch = next(iter(feeds.values())).shape[0]
        size = self.size_for(batch)
        if not self.active or size is None:
            return None
        try:
            runner = self._runners.get(size) or self._start(size)
            outputs = runner.run({name: _pad(array, size) for name, array in feeds.items()})
        except Exception as exc:  # onnxruntime raises its own Fail/RuntimeException types
            self._turn_off(exc)
            return None
        return [output[:batch] for output in outputs]

    def _start(self, size: int) -> BoundRunner:
        runner = BoundRunner(self.open_fixed(size), self.inputs, self.outputs, self.device, max_cached=1)
        silence = {name: np.zeros((size, *shape), dtype=np.float32) for name, shape in self.inputs.items()}
        for _ in range(self.warmup_runs):
            runner.run(silence)
        self._runners[size] = runner
        return runner

    def _turn_off(self, exc: Exception) -> None:
        text = str(exc).strip()
        self.failed = (text.splitlines()[0] if text else type(exc).__name__)[:160]
        self._runners.clear()
        log.info("%s: CUDA graphs turned off (%s); running without them", self.name, self.failed)


class Execution:
    """One way of running the model: its session, how calls reach it, and its name for
    users (`label`, shown by `backline serve` and /backline/pong)."""

    def __init__(self, session, runner: BoundRunner, *, graphs: GraphRunner | None = None,
                 max_batch: int | None = None, fp16: bool = False) -> None:
        self.session = session
        self.runner = runner
        self.graphs = graphs
        self.max_batch = max_batch
        self.fp16 = fp16

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    @property
    def label(self) -> str:
        """The provider, plus what runs on it beyond the plain CPU path: on a GPU
        'CUDAExecutionProvider (I/O binding, CUDA graphs, fp16)'."""
        extras = []
        if self.runner.device != "cpu":
            extras.append("I/O binding")
        if self.graphs is not None and self.graphs.active:
            extras.append("CUDA graphs")
        if self.fp16:
            extras.append("fp16")
        return f"{self.provider} ({', '.join(extras)})" if extras else self.provider

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        batch = next(iter(feeds.values())).shape[0]
        if self.max_batch is not None and batch > self.max_batch:
            chunks = [self.run({k: v[i:i + self.max_batch] for k, v in feeds.items()})
                      for i in range(0, batch, self.max_batch)]
            return [np.concatenate(parts) for parts in zip(*chunks)]
        if self.graphs is not None:
            outputs = self.graphs.run(feeds)
            if outputs is not None:
                return outputs
        return self.runner.run(feeds)
