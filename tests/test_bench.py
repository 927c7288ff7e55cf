"""`backline bench` runs end to end and prints its table (a sanity test: no timing thresholds)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from .conftest import run_backline
from .fake_models import write_fixed_model

NUMBER = r"(\d+\.\d+)"


def test_bench_prints_every_row_with_numbers(tmp_path):
    model = tmp_path / "fixed.onnx"
    write_fixed_model(model)
    figures = tmp_path / "bench.json"
    result = run_backline("bench", "--runs", "5", "--model", model, "--parts", "latency,clients", "--device", "cpu",
                          "--clients", "1,2", "--level-seconds", "0.5", "--json", figures)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("backline bench: model fixed on CPUExecutionProvider; 4-bar clip (15 notes, 16 beats")
    assert "5 runs each" in lines[0]
    assert lines[1] == "inference: skipped"
    assert re.fullmatch(r"\s+p50\s+p99\s+max", lines[2])
    rows = {}
    for label, unit in (("bare model call (accompany)", "ms"), ("clip round trip (OSC, loopback)", "ms"),
                        ("ratio round trip / bare call", "x"), ("clip round trip, batching off", "ms"),
                        ("ratio batching on / off", "x")):
        line = next(line for line in lines if line.startswith(label))
        match = re.fullmatch(re.escape(label) + rf"\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{unit}", line)
        assert match, line
        p50, p99, top = map(float, match.groups())
        assert p50 > 0 and p99 > 0 and top > 0
        if unit == "ms":  # a ratio of percentiles need not grow from p50 to max
            assert p50 <= p99 <= top
        rows[label] = p50
    # The concurrency table: a row per level and batching mode, then a summary per mode.
    header = lines.index(next(line for line in lines if line.startswith("concurrent clients")))
    assert "replies as OSC bundles (--reply bundle)" in lines[header]  # the default
    assert lines[header + 1].split() == ["clients", "batching", "sent", "replies", "errors", "busy", "lost",
                                         "p50", "p99", "max", "clips/s", "vs", "1st", "srv", "ms", "cli", "ms", "cpu"]
    level_rows = [line.split() for line in lines[header + 2:header + 6]]
    assert [(r[0], r[1]) for r in level_rows] == [("1", "on"), ("1", "off"), ("2", "on"), ("2", "off")]
    for r in level_rows:
        sent, replies, errors, busy, lost = map(int, r[2:7])
        assert sent > 0 and sent == replies + errors + busy + lost
        p50, p99, top, rate = map(float, r[7:11])
        assert 0 < p50 <= p99 <= top and rate > 0 and r[11].endswith("x")
        server_ms, client_ms, busy_share = float(r[12]), float(r[13]), float(r[14].rstrip("%"))
        assert server_ms > 0 and client_ms > 0 and 0 < busy_share <= 100  # /proc is there on Linux
    assert lines[header + 6].strip().startswith("(srv ms / cli ms: CPU ms the server / all clients used per reply")
    bound = re.fullmatch(r"model-only bound \(16 clips per batched call, (\d+) windows each, in-process, same cores, "
                         r"the mean of a reading before and after the levels\): "
                         rf"generator calls {NUMBER} clips/s \({NUMBER} and {NUMBER}\); "
                         rf"with layout and decoding, no OSC {NUMBER} clips/s \({NUMBER} and {NUMBER}\)",
                         lines[header + 7])
    assert bound, lines[header + 7]
    calls, first, second, path, path_first, path_second = map(float, bound.groups()[1:])
    assert calls > 0 and path > 0
    assert abs(calls - (first + second) / 2) <= 0.11 and abs(path - (path_first + path_second) / 2) <= 0.11
    # The bridge's share of the bound: only the levels of 16 and 64 clients have one (here: none).
    summary = lines[header + 8:header + 10]
    assert [line.split(":")[0] for line in summary] == ["batching on", "batching off"]
    assert all("throughput at saturation" in line and "clips/s" in line for line in summary)
    assert lines[-2:] == ["live: skipped", "delivery: skipped"]
    saved = json.loads(figures.read_text())
    latency = saved["latency"]
    assert saved["runs"] == 5 and latency["round_trip_ms"]["runs"] == 5 and latency["round_trip_ms"]["failed"] == 0
    assert latency["round_trip_unbatched_ms"]["runs"] == 5 and latency["round_trip_unbatched_ms"]["failed"] == 0
    assert latency["bare_call_ms"]["p50"] > 0 and saved["live"]["available"] is False
    assert abs(latency["ratio_round_trip_over_bare"]["p50"] - rows["ratio round trip / bare call"]) < 0.01
    clients = saved["clients"]
    assert clients["levels"] == [1, 2] and set(clients["batching"]) == {"on", "off"} and clients["reply"] == "bundle"
    assert len(clients["model_bound"]["calls_readings"]) == 2 and len(clients["model_bound"]["path_readings"]) == 2
    for mode, levels in clients["batching"].items():
        assert [level["clients"] for level in levels] == [1, 2]
        assert clients[f"saturation_{mode}"]["clips_per_s"] == max(level["clips_per_s"] for level in levels)
        assert all(level["server_cpu_ms_per_clip"] > 0 and 0 < level["cpu_busy"] <= 1 for level in levels)


def test_bench_parts_can_be_skipped(tmp_path):
    figures = tmp_path / "bench.json"
    model = tmp_path / "fixed.onnx"
    write_fixed_model(model)
    result = run_backline("bench", "--parts", "clients", "--clients", "1", "--level-seconds", "0.3", "--no-unbatched",
                          "--reply", "messages", "--model", model, "--device", "cpu", "--json", figures)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("concurrent clients") and "replies as single messages (--reply messages)" in line
               for line in lines)
    assert {"inference: skipped", "latency: skipped", "training: skipped", "live: skipped",
            "delivery: skipped"} <= set(lines)
    assert [line.split()[:2] for line in lines if line.strip().startswith("1 ")] == [["1", "on"]]
    saved = json.loads(figures.read_text())
    assert saved["latency"] == {"available": False, "reason": "skipped"}
    assert list(saved["clients"]["batching"]) == ["on"]
    assert saved["clients"]["reply"] == "messages"
    assert all(level["replies"] > 0 for level in saved["clients"]["batching"]["on"])  # read as single messages


def test_bench_compares_onnxruntime_with_pytorch_and_times_training(tiny_model, tmp_path):
    """Parts (a) and (d) on a real exported U-Net: the PyTorch twin matches ONNX Runtime,
    both batch sizes get a ratio, and training gives windows per second."""
    figures = tmp_path / "bench.json"
    result = run_backline("bench", "--parts", "inference,training", "--runs", "3", "--training-seconds", "1",
                          "--model", tiny_model, "--device", "cpu", "--json", figures)
    assert result.returncode == 0, result.stderr
    assert "ONNX Runtime vs PyTorch eager: model tiny" in result.stdout
    assert "training throughput:" in result.stdout
    saved = json.loads(figures.read_text())
    inference, training = saved["inference"], saved["training"]
    assert inference["available"] is True and inference["max_abs_diff"] < 1e-4
    assert [row["batch"] for row in inference["batches"]] == [1, 32]
    assert all(row["ratio_torch_over_onnxruntime"]["p50"] > 0 for row in inference["batches"])
    assert training["available"] is True and training["samples_per_s"] > 0


def test_bench_says_why_a_model_has_no_pytorch_twin(tmp_path):
    model = tmp_path / "fixed.onnx"
    write_fixed_model(model)
    result = run_backline("bench", "--parts", "inference", "--runs", "2", "--model", model, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "ONNX Runtime vs PyTorch: not available (" in result.stdout


def test_bench_options_are_checked():
    for option, value, text in (("--clients", "4,1", "is not a list of rising client counts 1..256"),
                                ("--clients", "0", "is not a list of rising client counts 1..256"),
                                ("--parts", "latency,speed", "give parts from inference,latency,clients,training,live,delivery")):
        result = run_backline("bench", option, value)
        assert result.returncode == 2 and text in result.stderr.splitlines()[-1], result.stderr


def test_level_figures_account_for_every_clip():
    """Hand-made clips (outcome, sent s, done s, ms) from two clients over a 2 s level."""
    from backline.bridge.bench import suite as bench
    warm = bench.LEVEL_WARMUP_S
    one = [("ok", 0.1, 0.2, 100.0), ("ok", warm, warm + 0.5, 500.0), ("busy", warm + 0.5, warm + 0.6, 1.0),
           ("ok", warm + 0.6, warm + 2.5, 1900.0)]  # done after the window: timed, not counted as throughput
    two = [("ok", warm + 0.1, warm + 0.3, 200.0), ("lost", warm + 0.3, warm + 10.3, 10000.0),
           ("short", warm + 0.4, warm + 0.5, 100.0), ("error", warm + 0.5, warm + 0.6, 100.0)]
    figures = bench.level_figures([one, two], 2.0)
    assert {k: figures[k] for k in ("clients", "sent", "replies", "errors", "busy", "short", "lost")} == {
        "clients": 2, "sent": 8, "replies": 4, "errors": 1, "busy": 1, "short": 1, "lost": 1}
    assert figures["round_trip_ms"]["runs"] == 3 and figures["round_trip_ms"]["max"] == 1900.0
    assert figures["clips_per_s"] == 1.0  # 2 replies done inside the 2 s window


def test_bench_clients_import_no_model_runtime():
    """The client processes stay light: python-osc and numpy, no ONNX Runtime, no torch."""
    import subprocess
    import sys

    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))  # nobody answers here: the client pings, gives up, exits 1
        code = ("import sys, runpy; sys.argv = ['bench', '--client', '--worker', '--ports', "
                f"'{s.getsockname()[1]}', '--notes', '[[60, 0.0, 1.0, 100, 0]]']\n"
                "try:\n    runpy.run_module('backline.bridge.bench.suite', run_name='__main__')\n"
                "except SystemExit as exit:\n    assert exit.code == 1\n"
                "print(sorted(m for m in ('pythonosc', 'numpy', 'onnxruntime', 'torch', 'mido') if m in sys.modules))")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "no Backline bridge answered" in result.stderr
    assert result.stdout.strip() == "['numpy', 'pythonosc']"


def test_bench_live_reports_why_it_is_missing(monkeypatch):
    """Without the live engine (or JACK) the live part is one line, not a crash."""
    import sys

    from backline.bridge.bench import suite as bench
    monkeypatch.setitem(sys.modules, "backline.bridge.bench.live", None)  # import fails
    monkeypatch.delattr("backline.bridge.bench.live", raising=False)
    live = bench.live_timing(1.0, 180.0, "bach", "cpu")
    assert live["available"] is False and "no live engine" in live["reason"]
    assert bench._format_live(live)[0].startswith("live: not available (no live engine")


def test_bench_live_formats_the_figures(monkeypatch):
    import types

    from backline.bridge.bench import suite as bench
    fake = types.ModuleType("backline.bridge.bench.live")

    def measure_live_timing(seconds, tempo):
        return {"timing_error_ms": {"p50": 0.5, "p99": 1.25, "max": 2.0}, "min_beats_ahead": 1.5}

    fake.measure_live_timing = measure_live_timing
    monkeypatch.setitem(__import__("sys").modules, "backline.bridge.bench.live", fake)
    monkeypatch.setattr("backline.bridge.bench.live", fake, raising=False)
    live = bench.live_timing(2.0, 180.0, "bach", "cpu")
    assert live["available"] and live["min_beats_ahead"] == 1.5
    text = "\n".join(bench._format_live(live))
    assert "live: 180 BPM for 2 s" in text and "p99 1.250" in text and "min_beats_ahead" in text


def test_bench_client_survives_a_server_that_never_answers():
    """The client process alone, pointed at a port nobody listens on: one clear error."""
    from backline.bridge.bench import suite as bench
    from backline.models.errors import BacklineError

    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        try:
            bench.client_main([port], 1, bench.clip_melody())
        except BacklineError as exc:
            assert "no Backline bridge answered" in str(exc)
        else:
            raise AssertionError("expected an error")


def test_bench_melody_is_four_bars():
    from backline.bridge.bench.suite import CLIP_BEATS, clip_melody

    notes = clip_melody()
    assert CLIP_BEATS == 16.0 and len(notes) == 15
    assert max(n.end for n in notes) == 16.0 and notes[0].start == 0.0
    assert Path(__file__).parent.parent.joinpath("models", "examples", "ode-to-joy.mid").is_file()


def test_cpu_seconds_reads_this_process_and_figures_divide_by_replies():
    from backline.bridge.bench import suite as bench
    before = bench.cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # burn 0.2 s of CPU
        pass
    assert bench.cpu_seconds(os.getpid()) - before >= 0.15
    assert bench.cpu_seconds(2 ** 22 + 12345) is None  # no such process
    figures = bench.cpu_figures(0.5, 0.25, 100, 1.0)
    assert figures["server_cpu_ms_per_clip"] == 5.0 and figures["client_cpu_ms_per_clip"] == 2.5
    assert figures["cpu_busy"] == 0.75 / (os.cpu_count() or 1)
    assert bench.cpu_figures(None, 0.25, 100, 1.0)["cpu_busy"] is None
    assert bench.cpu_figures(0.5, 0.25, 0, 1.0)["server_cpu_ms_per_clip"] is None
