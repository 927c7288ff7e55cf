"""`backline bench` runs end to end and prints its table (a sanity test: no timing thresholds)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .conftest import run_backline
from .fake_models import write_fixed_model

NUMBER = r"(\d+\.\d+)"


def test_bench_prints_every_row_with_numbers(tmp_path):
    model = tmp_path / "fixed.onnx"
    write_fixed_model(model)
    figures = tmp_path / "bench.json"
    result = run_backline("bench", "--runs", "5", "--model", model, "--no-live", "--device", "cpu",
                          "--json", figures)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("backline bench: model fixed on CPUExecutionProvider; 4-bar clip (15 notes, 16 beats")
    assert "5 runs each" in lines[0]
    assert re.fullmatch(r"\s+p50\s+p99\s+max", lines[1])
    rows = {}
    for label, unit in (("bare model call (accompany)", "ms"), ("clip round trip (OSC, loopback)", "ms"),
                        ("ratio round trip / bare call", "x")):
        line = next(line for line in lines if line.startswith(label))
        match = re.fullmatch(re.escape(label) + rf"\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{unit}", line)
        assert match, line
        p50, p99, top = map(float, match.groups())
        assert p50 > 0 and p99 > 0 and top > 0
        if unit == "ms":  # a ratio of percentiles need not grow from p50 to max
            assert p50 <= p99 <= top
        rows[label] = p50
    assert lines[-1] == "live: skipped (--no-live)"
    saved = json.loads(figures.read_text())
    assert saved["runs"] == 5 and saved["round_trip_ms"]["runs"] == 5 and saved["round_trip_ms"]["failed"] == 0
    assert saved["bare_call_ms"]["p50"] > 0 and saved["live"]["available"] is False
    assert abs(saved["ratio_round_trip_over_bare"]["p50"] - rows["ratio round trip / bare call"]) < 0.01


def test_bench_live_reports_why_it_is_missing(monkeypatch):
    """Without the live engine (or JACK) the live part is one line, not a crash."""
    import sys

    from backline.bridge import bench

    monkeypatch.setitem(sys.modules, "backline.bridge.bench_live", None)  # import fails
    monkeypatch.delattr("backline.bridge.bench_live", raising=False)
    live = bench.live_timing(1.0, 180.0, "bach", "cpu")
    assert live["available"] is False and "no live engine" in live["reason"]
    assert bench._format_live(live)[0].startswith("live: not available (no live engine")


def test_bench_live_formats_the_figures(monkeypatch):
    import types

    from backline.bridge import bench

    fake = types.ModuleType("backline.bridge.bench_live")

    def measure_live_timing(seconds, tempo):
        return {"timing_error_ms": {"p50": 0.5, "p99": 1.25, "max": 2.0}, "min_beats_ahead": 1.5}

    fake.measure_live_timing = measure_live_timing
    monkeypatch.setitem(__import__("sys").modules, "backline.bridge.bench_live", fake)
    monkeypatch.setattr("backline.bridge.bench_live", fake, raising=False)
    live = bench.live_timing(2.0, 180.0, "bach", "cpu")
    assert live["available"] and live["min_beats_ahead"] == 1.5
    text = "\n".join(bench._format_live(live))
    assert "live: 180 BPM for 2 s" in text and "p99 1.250" in text and "min_beats_ahead" in text


def test_bench_client_survives_a_server_that_never_answers():
    """The client process alone, pointed at a port nobody listens on: one clear error."""
    from backline.bridge import bench
    from backline.models.errors import BacklineError

    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        try:
            bench.client_main(port, 1)
        except BacklineError as exc:
            assert "no Backline bridge answered" in str(exc)
        else:
            raise AssertionError("expected an error")


def test_bench_melody_is_four_bars():
    from backline.bridge.bench import CLIP_BEATS, clip_melody

    notes = clip_melody()
    assert CLIP_BEATS == 16.0 and len(notes) == 15
    assert max(n.end for n in notes) == 16.0 and notes[0].start == 0.0
    assert Path(__file__).parent.parent.joinpath("models", "examples", "ode-to-joy.mid").is_file()
