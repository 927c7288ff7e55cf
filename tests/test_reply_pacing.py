"""Paced replies (bridge/osc/pacing.py): a long clip's reply reaches a real receiver whole.

The pacer on its own: order kept, a short reply sent at once from the caller's thread, a
long one spread at the rate. Then a real `backline serve` and liblo's `oscdump`: every
note of a 20,000-note clip's reply is printed by oscdump (bench_delivery counts them)."""

from __future__ import annotations

import threading
import time

from backline.bridge.bench.delivery import count_dump, deliver, melody_of
from backline.bridge.osc.pacing import ReplyPacer
from backline.models.registry import SHIPPED_DIR

from .test_bridge_osc import Server, need


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[object, bytes, float, str]] = []
        self.lock = threading.Lock()

    def __call__(self, target, data: bytes) -> None:
        with self.lock:
            self.sent.append((target, data, time.monotonic(), threading.current_thread().name))


def test_a_short_reply_goes_out_at_once_from_the_callers_thread():
    recorder = Recorder()
    pacer = ReplyPacer(recorder, rate=1000, burst=10_000)
    try:
        for i in range(9):
            pacer.send(("a", 1), bytes([i]) * 1000)
        assert [data[0] for _, data, _, _ in recorder.sent] == list(range(9))
        assert {thread for *_, thread in recorder.sent} == {threading.current_thread().name}
        assert pacer.pending() == 0
    finally:
        pacer.close()


def test_a_long_reply_is_spread_at_the_rate_in_order():
    recorder = Recorder()
    rate, burst, size, count = 200_000, 20_000, 5_000, 40  # 200 KB: 180 KB beyond the burst
    pacer = ReplyPacer(recorder, rate=rate, burst=burst)
    try:
        started = time.monotonic()
        for i in range(count):
            pacer.send(("a", 1), i.to_bytes(2, "big") * (size // 2))
        assert pacer.flush(timeout=10.0)
        assert [int.from_bytes(d[:2], "big") for _, d, _, _ in recorder.sent] == list(range(count))
        # No faster than the rate allows after the burst (the bucket cannot be beaten).
        last = recorder.sent[-1][2] - started
        assert last >= (size * count - burst) / rate * 0.95, last
    finally:
        pacer.close()


def test_one_slow_reply_does_not_hold_up_another_target():
    recorder = Recorder()
    pacer = ReplyPacer(recorder, rate=100_000, burst=10_000)
    try:
        for _ in range(20):  # 100 KB to a: a second's worth beyond its burst
            pacer.send(("a", 1), b"x" * 5_000)
        pacer.send(("b", 2), b"ping")  # b's bucket is full: out at once
        to_b = [t for t, *_ in recorder.sent].index(("b", 2))
        assert to_b < 20 and pacer.pending() > 0
    finally:
        pacer.close()


def test_pacing_off_sends_everything_at_once():
    recorder = Recorder()
    pacer = ReplyPacer(recorder, rate=0)
    for _ in range(50):
        pacer.send(("a", 1), b"x" * 5_000)
    assert len(recorder.sent) == 50 and pacer.pending() == 0


def test_count_dump_reads_oscdump_lines():
    text = "\n".join([
        'e1.1 /backline/accomp/begin sif "c" 3 8.000000',
        'e1.2 /backline/accomp/notes siiffiiiffii "c" 0 48 0.000000 1.000000 90 0 50 1.000000 1.000000 80 0',
        'e1.3 /backline/accomp/end si "c" 2',
    ])
    assert count_dump(text) == (2, 2, None)


def test_every_note_of_a_20000_note_clip_reaches_oscdump(tmp_path):
    need("oscdump")
    server = Server(SHIPPED_DIR / "bach.onnx", tmp_path / "serve.log", "--midi-api", "none", "--clock", "off",
                    "--no-reload")
    try:
        result = deliver(server.port, melody_of(20_000), "long")
    finally:
        server.stop()
    assert result["error"] is None, result["error"]
    assert result["sent"] and result["sent"] > 20_000, result
    assert result["delivered"] == result["sent"], result
