"""Hot reload: replace a model while `backline serve` keeps serving.

One thread (`Reloader`) does all loading, so reloads never run two at a time and never
hold up the network thread or the generation worker:

- it polls the model search folders (registry.search_dirs) and the files of the loaded
  models once a second (stat only; no extra dependency). A NAME.onnx that is new or has
  changed (mtime, size, inode) and then stays unchanged for one more poll -- so a file
  still being copied is not read half-written -- is loaded with `Generator(...,
  announce=False)` and validated (a run on silence must give finite probabilities of the
  declared shape, then the usual warm-up). A model in use is then swapped in with
  `Engine.swap` (clips already running finish with the old one); a new model is loaded
  and kept, ready for its first clip. A changed file of a model nobody has loaded is left
  for its first use.
- it serves `/backline/model/load NAME` requests from the network thread: the model is
  (re)loaded from the search path whether its file changed or not.

A file that fails either step is refused: one log line, the loaded model keeps serving,
and the result listeners (the OSC front end) hear of it, as they hear of every swap.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from backline.models import registry
from backline.models.runtime import Generator, ModelLoadError

from backline.bridge.serving.engine import Engine, drop_waiting, warm_up

log = logging.getLogger("backline.bridge")

POLL_S = 1.0
MAX_WATCHED_FILES = 1000  # a folder full of files must not make every poll slow

Signature = tuple[int, int, int]  # mtime_ns, size, inode


@dataclass(frozen=True)
class LoadResult:
    """What one load came to: `generator` on success, else `error` (one line)."""

    name: str
    path: Path | None
    generator: Generator | None = None
    error: str | None = None
    requested: bool = False  # by /backline/model/load, not by the watcher

    @property
    def ok(self) -> bool:
        return self.generator is not None


Reply = Callable[[LoadResult], None]


def validate(generator: Generator) -> None:
    """ModelLoadError unless the model runs: one window of silence must give finite
    probabilities of the shape its metadata declares. Then the usual warm-up run."""
    spec = generator.spec
    melody = np.zeros((1, spec.window_steps, spec.n_pitches), dtype=np.float32)
    try:
        probs = generator.run(melody, generator.draw_z(0, 1))
    except ModelLoadError:
        raise
    except Exception as exc:  # onnxruntime's own error types, a reshape that cannot fit ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"{generator.path}: the model fails to run ({first[:160]})") from None
    for what, values in (("note", probs.frames), ("onset", probs.onsets)):
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ModelLoadError(f"{generator.path}: its {what} probabilities are not all finite numbers in 0..1")
    warm_up(generator)


def load_checked(path: Path, device: str) -> Generator:
    generator = Generator(path, device=device, announce=False)
    validate(generator)
    return generator


def _signature(path: Path) -> Signature | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class Reloader:
    """The reload thread. `start()`, `stop()`; `request(name, reply)` from any thread;
    `on_result(listener)` hears every watcher-triggered load (success or refusal)."""

    def __init__(self, engine: Engine, *, watch: bool = True, poll_s: float = POLL_S,
                 dirs: Callable[[], list[Path]] = registry.search_dirs) -> None:
        self.engine = engine
        self.watch = watch
        self.poll_s = poll_s
        self.dirs = dirs
        self._requests: queue.Queue[tuple[str, Reply] | None] = queue.Queue(16)
        self._listeners: list[Reply] = []
        self._seen: dict[Path, Signature] = {}  # last observed
        self._done: dict[Path, Signature] = {}  # last acted upon
        self._thread: threading.Thread | None = None
        self._next_poll = 0.0
        if watch:
            self._seen = self._scan()
            self._done = dict(self._seen)

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        self._next_poll = time.monotonic() + self.poll_s
        self._thread = threading.Thread(target=self._run, name="backline-reload", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        drop_waiting(self._requests)
        self._requests.put(None)
        self._thread.join(timeout)
        self._thread = None

    def on_result(self, listener: Reply) -> None:
        self._listeners.append(listener)

    def request(self, name: str, reply: Reply) -> bool:
        """Queue an explicit (re)load of model `name` (a name, already checked to be one);
        reply(result) is called on the reload thread. False when too many are waiting."""
        try:
            self._requests.put_nowait((name, reply))
            return True
        except queue.Full:
            return False

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        while True:
            wait = max(0.0, self._next_poll - time.monotonic()) if self.watch else None
            try:
                item = self._requests.get(timeout=wait)
            except queue.Empty:
                item = ()
            if item is None:
                return
            try:
                if item:
                    self._explicit(*item)
                if self.watch and time.monotonic() >= self._next_poll:
                    self._next_poll = time.monotonic() + self.poll_s
                    self.poll()
            except Exception as exc:  # the last guard: the thread must outlive any bug
                log.error("model reload: unexpected %s: %s", type(exc).__name__, exc)

    def _scan(self) -> dict[Path, Signature]:
        """Every NAME.onnx in the search folders plus the loaded models' own files."""
        paths: list[Path] = []
        for folder in self.dirs():
            try:
                entries = sorted(folder.glob("*.onnx"))
            except OSError:
                continue
            paths += [p for p in entries if not p.name.startswith(".")]
        paths += [g.path for g in self.engine.models().values()]
        found = {}
        for path in paths[:MAX_WATCHED_FILES]:
            path = Path(os.path.abspath(path))
            if path not in found and (sig := _signature(path)) is not None:
                found[path] = sig
        return found

    def poll(self) -> list[LoadResult]:
        """One look at the files: act on each that changed and then held still for a poll."""
        now = self._scan()
        stable = []
        for path, sig in now.items():
            if self._seen.get(path) != sig:
                continue  # new or still changing: look again next poll
            if self._done.get(path) != sig:
                stable.append(path)
        for path in set(self._seen) - set(now):
            if path in self._done:
                log.info("%s was removed; a model loaded from it keeps serving", path)
                del self._done[path]
        new = {p for p in stable if p not in self._done}
        self._seen = now
        results = []
        for path in stable:
            self._done[path] = now[path]
            result = self._file_changed(path, path in new)
            if result is not None:
                results.append(result)
                for listener in self._listeners:
                    try:
                        listener(result)
                    except Exception as exc:
                        log.error("model reload listener failed: %s: %s", type(exc).__name__, exc)
        return results

    # ------------------------------------------------------------------ loading

    def _file_changed(self, path: Path, new: bool) -> LoadResult | None:
        loaded = self.engine.models()
        in_use = [k for k, g in loaded.items() if Path(os.path.abspath(g.path)) == path]
        stem = path.stem
        winner = self._winner(stem)
        if not in_use and stem in loaded and winner == path:
            in_use = [stem]  # a new file that now comes first in the search path for a loaded name
        if not in_use:
            if winner != path:
                log.info("%s is not used: model %s comes from %s", path, stem, winner)
                return None
            if not new:
                log.info("%s changed; model %s is not loaded, so its first use will read it", path, stem)
                return None
        # The name to swap: the server's default if the file is its model, else a plain name.
        names = [k for k in in_use if os.sep not in k and not k.endswith(".onnx")] or in_use or [stem]
        name = self.engine.default if self.engine.default in in_use else (stem if stem in names else names[0])
        what = "changed" if in_use else "new"
        return self._load(name, path, what)

    def _winner(self, stem: str) -> Path | None:
        try:
            return Path(os.path.abspath(registry.resolve(stem)))
        except ModelLoadError:
            return None

    def _load(self, name: str, path: Path, what: str, requested: bool = False) -> LoadResult:
        started = time.perf_counter()
        try:
            generator = load_checked(path, self.engine.device)
        except Exception as exc:  # ModelLoadError, or anything a damaged file provokes
            text = str(exc) if isinstance(exc, ModelLoadError) else f"{path}: {type(exc).__name__}: {exc}"
            message = f"model {name}: {what} file refused, the loaded model keeps serving: {text}"
            log.warning("%s", message)
            return LoadResult(name, path, error=message, requested=requested)
        replaced = self.engine.swap(name, generator)
        verb = "reloaded" if what == "changed" or requested else "loaded (new)"
        log.info("model %s %s from %s on %s in %.0f ms%s", name, verb, path, generator.provider,
                 1000 * (time.perf_counter() - started),
                 f" (serves as {', '.join(replaced)})" if len(replaced) > 1 else "")
        return LoadResult(name, path, generator=generator, requested=requested)

    def _explicit(self, name: str, reply: Reply) -> None:
        try:
            path = Path(os.path.abspath(registry.resolve(name)))
        except ModelLoadError as exc:
            result = LoadResult(name, None, error=str(exc), requested=True)
        else:
            result = self._load(name, path, "requested", requested=True)
            if (sig := _signature(path)) is not None:  # the watcher need not load it again
                self._seen[path] = self._done[path] = sig
        try:
            reply(result)
        except Exception as exc:
            log.error("model load reply failed: %s: %s", type(exc).__name__, exc)
