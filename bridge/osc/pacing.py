"""Paced replies: no receiver is sent more than it can take in.

UDP has no flow control. A long clip's reply is hundreds of datagrams, and sent in one
burst it overflows the receiver's socket buffer (Linux gives a socket about 208 KiB), so
most of it is lost: a 20,000-note clip's 29,000 notes reached liblo's `oscdump` as 17,800.
Each reply target therefore gets a token bucket. A reply that fits in the bucket's burst
(every clip of ordinary length: 64 KiB is about 2,700 notes) goes out at once from the
caller's thread, with no added latency; the rest of a long reply is queued and sent by one
pacing thread at the target's rate, in order, while other targets' replies go out beside
it. docs/PROTOCOL.md gives the rate and what it means for a client.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, Hashable

DEFAULT_RATE = 4_000_000  # bytes per second to one target (`serve --reply-rate`, in MB/s)
DEFAULT_BURST = 64 << 10  # bytes sent at once before pacing starts
MAX_QUEUED = 64 << 20  # bytes waiting for one target; beyond it the oldest are dropped
_IDLE_TARGETS = 1024  # buckets kept for targets with nothing queued

SendNow = Callable[[Hashable, bytes], None]


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    queue: Deque[bytes] = field(default_factory=collections.deque)
    queued_bytes: int = 0


class ReplyPacer:
    """`send(target, data)` at most `rate` bytes/s per target after a `burst`; order kept.

    rate 0 turns pacing off (every datagram goes out at once). Thread-safe."""

    def __init__(self, send_now: SendNow, rate: float = DEFAULT_RATE, burst: int = DEFAULT_BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._send_now = send_now
        self.rate = float(rate)
        self.burst = float(max(burst, 1))
        self._clock = clock
        self._buckets: dict[Hashable, _Bucket] = {}
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.dropped = 0  # datagrams dropped because a target's queue was full

    def send(self, target: Hashable, data: bytes) -> None:
        if self.rate <= 0:
            self._send_now(target, data)
            return
        with self._lock:
            bucket = self._bucket(target)
            if not bucket.queue and bucket.tokens >= min(len(data), self.burst):
                bucket.tokens -= len(data)
                # Under the lock, so that a queued datagram for this target cannot overtake it.
                self._send_now(target, data)
                return
            if bucket.queued_bytes + len(data) > MAX_QUEUED:  # a receiver that takes nothing
                dropped = bucket.queue.popleft()
                bucket.queued_bytes -= len(dropped)
                self.dropped += 1
            bucket.queue.append(data)
            bucket.queued_bytes += len(data)
            self._start()
            self._lock.notify()

    def pending(self) -> int:
        """Datagrams waiting, over every target."""
        with self._lock:
            return sum(len(b.queue) for b in self._buckets.values())

    def flush(self, timeout: float) -> bool:
        """Wait until nothing is queued (True) or `timeout` seconds pass (False)."""
        deadline = self._clock() + timeout
        while self.pending():
            if self._clock() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self) -> None:
        """Stop the pacing thread; what is still queued is dropped."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    # ------------------------------------------------------------------ internals

    def _bucket(self, target: Hashable) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(target)
        if bucket is None:
            if len(self._buckets) >= _IDLE_TARGETS:
                self._forget_idle(now)
            bucket = self._buckets[target] = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        return bucket

    def _forget_idle(self, now: float) -> None:
        """Buckets with nothing queued that have refilled are the same as new ones."""
        for target in [t for t, b in self._buckets.items()
                       if not b.queue and b.tokens + (now - b.stamp) * self.rate >= self.burst]:
            del self._buckets[target]

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="backline-pacer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        with self._lock:
            while not self._closed:
                wait = None
                for target, bucket in list(self._buckets.items()):
                    if not bucket.queue:
                        continue
                    bucket = self._bucket(target)
                    while bucket.queue and bucket.tokens >= min(len(bucket.queue[0]), self.burst):
                        data = bucket.queue.popleft()
                        bucket.queued_bytes -= len(data)
                        bucket.tokens -= len(data)
                        self._send_now(target, data)
                    if bucket.queue:
                        need = min(len(bucket.queue[0]), self.burst) - bucket.tokens
                        wait = need / self.rate if wait is None else min(wait, need / self.rate)
                self._lock.wait(timeout=wait)
