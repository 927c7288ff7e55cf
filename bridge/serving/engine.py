"""The models and the generation worker.

Generation runs on one worker thread fed by a bounded queue, so the network thread only
parses and queues: a slow clip never stops the server from receiving (or answering ping).
One worker is enough: ONNX Runtime already uses several cores per run, and it keeps clips
from one client in order. Models are loaded once, by name, and kept.

Micro-batching: a job that is a `BatchJob` (a clip) takes the jobs of its kind queued right
behind it, up to `max_batch`, and they run together (bridge/clip/generate.py puts their windows
through one model call). The worker takes what is queued already; it waits up to
`batch_window_ms` for more only when that is set above 0, so a lone client never waits.
Jobs keep their queue order: a batch stops at the first job of another kind, which runs
next.

Hot reload (bridge/serving/reload.py) replaces a model with `swap`: the cache entry changes
atomically, and a clip already running keeps the Generator object it started with, so no
clip is dropped or generated half by one model and half by the other. Listeners
registered with `on_swap` (the live engine) hear of each swap and apply it when they can.
"""

from __future__ import annotations

import abc
import logging
import queue
import threading
import time
from typing import Callable, Sequence

from backline.models import registry
from backline.models.errors import BacklineError
from backline.models.notes import Note
from backline.models.runtime import Generator

log = logging.getLogger("backline.bridge")

Job = Callable[[], None]
SwapListener = Callable[[str, Generator], None]
MAX_QUEUED = 64
MAX_MODELS = 8
# Chosen by measurement (`backline bench --compare-windows 1,3`, docs/PERFORMANCE.md):
# waiting 1 or 3 ms for more clips raised throughput at 4 and 16 concurrent clients by
# nothing the runs could tell from noise, and a lone client pays the whole wait.
DEFAULT_BATCH_WINDOW_MS = 0.0
DEFAULT_MAX_BATCH = 16  # clips per batch: sixteen 4-bar clips fill one model call (MAX_RUN_WINDOWS)


class BatchJob(abc.ABC):
    """A job that can run together with the jobs of its own class queued behind it."""

    @classmethod
    @abc.abstractmethod
    def run_batch(cls, jobs: Sequence["BatchJob"]) -> None:
        """Run `jobs` (in queue order) together; report every failure, raise nothing."""

    def __call__(self) -> None:
        type(self).run_batch([self])


class Engine:
    def __init__(self, default_model: str, device: str = "auto", *,
                 batch_window_ms: float = DEFAULT_BATCH_WINDOW_MS, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if batch_window_ms < 0 or max_batch < 1:
            raise ValueError("batch_window_ms must be >= 0 and max_batch >= 1")
        self.device = device
        self.batch_window_s = batch_window_ms / 1000
        self.max_batch = max_batch
        generator = registry.load(default_model, device=device)
        warm_up(generator)
        self.default = generator.spec.name
        # Under both the name it was asked by (maybe a path) and its own name.
        self._models: dict[str, Generator] = {default_model: generator, self.default: generator}
        self._pinned = set(self._models)  # never evicted
        self._lock = threading.Lock()  # guards _models and _listeners: swaps come from other threads
        self._listeners: list[SwapListener] = []
        self._jobs: queue.Queue[Job | None] = queue.Queue(MAX_QUEUED)
        self._held: list[Job | None] = []  # taken from the queue but not batched: runs next
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="backline-generate", daemon=True)
        self._thread.start()

    @property
    def provider(self) -> str:
        return self._models[self.default].provider

    def loaded(self, name: str | None) -> Generator | None:
        """The model if it is loaded already (safe from any thread)."""
        return self._models.get(name or self.default)

    def check_name(self, name: str) -> None:
        """ModelLoadError unless a model of this name is installed (no loading)."""
        if name not in self._models:
            registry.resolve(name)

    def generator(self, name: str | None) -> Generator:
        """The model, loaded and warmed on first use. Worker thread only."""
        name = name or self.default
        generator = self._models.get(name)
        if generator is None:
            generator = registry.load(name, device=self.device)
            warm_up(generator)
            with self._lock:
                if name in self._models:  # swapped in by a reload meanwhile: that one is newer
                    return self._models[name]
                self._add(name, generator)
        return generator

    def _add(self, name: str, generator: Generator) -> None:
        """A new cache entry, evicting the oldest unpinned one past MAX_MODELS. Under _lock."""
        evictable = [k for k in self._models if k not in self._pinned]
        if len(evictable) >= MAX_MODELS:
            del self._models[evictable[0]]  # the oldest loaded
        self._models[name] = generator

    def models(self) -> dict[str, Generator]:
        """A snapshot of the cache: every name a model is loaded under (safe from any thread)."""
        with self._lock:
            return dict(self._models)

    def swap(self, name: str, generator: Generator) -> list[str]:
        """Serve `generator` as model `name` from now on (safe from any thread).

        Every name the old model was loaded under (the default is cached under the name it
        was asked by and its own name) moves to the new one at once; a name not loaded yet
        is added. A clip already running finishes with the model it started with. Then each
        on_swap listener is called with (name, generator). Returns the names replaced.
        """
        with self._lock:
            old = self._models.get(name)
            names = [k for k, g in self._models.items() if k == name or (old is not None and g is old)]
            if not names:
                self._add(name, generator)
                names = [name]
            for key in names:
                self._models[key] = generator
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(name, generator)
            except Exception as exc:  # a listener's bug must not undo or stop the swap
                log.error("model swap listener %r failed: %s: %s", listener, type(exc).__name__, exc)
        return names

    def on_swap(self, listener: SwapListener) -> Callable[[], None]:
        """Call listener(name, generator) after each swap (on the swapping thread; keep it
        short: hand the generator over, apply it later). Returns a function that unsubscribes."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def submit(self, job: Job) -> bool:
        """Queue a job; False when the queue is full (the caller answers 'busy')."""
        try:
            self._jobs.put_nowait(job)
            return True
        except queue.Full:
            return False

    def close(self, timeout: float = 10.0) -> None:
        """Finish the running job, drop the queued ones, stop the worker."""
        self._closing = True  # a job the worker took but did not start is dropped too
        drop_waiting(self._jobs)
        self._jobs.put(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        while (job := self._next()) is not None:
            try:
                if isinstance(job, BatchJob):
                    type(job).run_batch(self._batch(job))
                else:
                    job()
            except Exception as exc:  # jobs report their own errors; this is the last guard
                log.error("generation worker: unexpected %s: %s", type(exc).__name__, exc)

    def _next(self) -> Job | None:
        if self._closing:
            return None
        return self._held.pop() if self._held else self._jobs.get()

    def _batch(self, first: BatchJob) -> list[BatchJob]:
        """`first` and the jobs of its class queued behind it, up to max_batch; waits for
        more up to the batch window (none by default). Stops at a job of another kind."""
        batch = [first]
        deadline = time.monotonic() + self.batch_window_s
        while len(batch) < self.max_batch:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    job = self._jobs.get(timeout=left)
                except queue.Empty:
                    break
            if type(job) is not type(first):  # another kind (or close's None): it runs next
                self._held.append(job)
                break
            batch.append(job)
        return batch


def drop_waiting(jobs: queue.Queue) -> None:
    """Empty a worker's queue without waiting (on shutdown: what waits is not run)."""
    while True:
        try:
            jobs.get_nowait()
        except queue.Empty:
            return


def warm_up(generator: Generator) -> None:
    """One dummy generation, so the first real clip does not pay for ONNX Runtime's setup."""
    from backline.models.accompaniment import accompany

    low, high = generator.spec.melody_range
    try:
        accompany(generator, [Note((low + high) // 2, 0.0, 1.0)], seed=0)
    except BacklineError as exc:  # a model whose metadata rejects the probe still serves
        log.info("warm-up of %s skipped: %s", generator.spec.name, exc)
