"""`backline bench`: how long a clip takes, measured side by side in one run.

1. the bare model call: `accompany()` (the generator's ONNX Runtime run plus decoding)
   and the trimming the bridge does, in this process, for a 4-bar clip: the first 16
   beats of models/examples/ode-to-joy.mid;
2. the same clip's round trip over loopback: a `backline serve` subprocess on a free port,
   and a separate client process (`python -m backline.bridge.bench --client ...`) that
   sends the clip N times, one after the other, timing the send of /backline/clip/begin to
   the receipt of /backline/accomp/end; and the ratio round trip / bare call;
3. live mode's timing, from backline.bridge.bench_live.measure_live_timing when that
   module and a JACK server are there.

Figures only (p50/p99/max): nothing here passes or fails on speed (DESIGN.md §7).
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from backline.models.errors import BacklineError
from backline.models.notes import Note

CLIP_BEATS = 16.0
WARMUP_RUNS = 5
SERVE_START_S = 120.0


def clip_melody() -> list[Note]:
    """The first 4 bars (16 beats) of Ode to Joy, from the example shipped with the models."""
    from backline.models import registry
    from backline.models.midi import pick_melody_track, read_midi

    path = registry.SHIPPED_DIR / "examples" / "ode-to-joy.mid"
    melody = pick_melody_track(read_midi(path), None)
    return [n if n.end <= CLIP_BEATS else n._replace(duration=CLIP_BEATS - n.start)
            for n in melody.notes if n.start < CLIP_BEATS]


def percentiles(times_ms: Sequence[float]) -> dict[str, float]:
    values = np.asarray(times_ms, dtype=float)
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)),
            "max": float(values.max()), "runs": int(values.size)}


# --------------------------------------------------------------------------- 1. bare call


def bare_call(model: str, device: str, notes: list[Note], runs: int) -> tuple[dict[str, float], str, str]:
    """The model call as the bridge's worker makes it, timed in-process."""
    from backline.models import registry
    from backline.models.accompaniment import accompany

    from .generate import trim

    generator = registry.load(model, device=device)

    def once() -> None:
        for _, track_notes in accompany(generator, notes, seed=0).tracks:
            trim(track_notes, CLIP_BEATS)

    for _ in range(WARMUP_RUNS):
        once()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        once()
        times.append(1000 * (time.perf_counter() - started))
    return percentiles(times), generator.spec.name, generator.provider


# --------------------------------------------------------------------------- 2. round trip


class _Serve:
    """`backline serve` on a port the OS picks, stopped with SIGTERM."""

    def __init__(self, model: str, device: str) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", prefix="backline-bench-serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backline.bridge.cli", "serve", "--model", model, "--osc-port", "0",
             "--device", device, *_quiet_serve_options()],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        banner: list[str] = []
        reader = threading.Thread(target=lambda: banner.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(SERVE_START_S)
        match = re.search(r"listening on osc\.udp://([^\s,]+):(\d+)", banner[0] if banner else "")
        if match is None:
            self.stop()
            raise BacklineError(f"backline serve did not start for the benchmark: {self.errors()}")
        self.port = int(match.group(2))
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # drain the rest

    def errors(self) -> str:
        self.log.flush()
        lines = Path(self.log.name).read_text().strip().splitlines()
        return lines[-1] if lines else f"exit status {self.proc.poll()}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


def _quiet_serve_options() -> list[str]:
    """Serve with the clip path alone: no model watching, no MIDI ports, no live engine
    (each option only where this version of `serve` has it)."""
    import argparse as _argparse

    from .cli import build_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, _argparse._SubParsersAction))
    known = {o for a in subparsers.choices["serve"]._actions for o in a.option_strings}
    wanted = [("--no-reload",), ("--midi-api", "none"), ("--clock", "off")]
    return [word for option in wanted if option[0] in known for word in option]


def round_trip(model: str, device: str, runs: int) -> dict[str, Any]:
    """Serve in one process, the client in another; this process only starts them."""
    serve = _Serve(model, device)
    try:
        client = subprocess.run(
            [sys.executable, "-m", "backline.bridge.bench", "--client", "--port", str(serve.port),
             "--runs", str(runs)],
            capture_output=True, text=True, timeout=max(120, runs * 10),
        )
        if client.returncode != 0:
            last = (client.stderr.strip().splitlines() or ["no output"])[-1]
            raise BacklineError(f"the benchmark client failed: {last}")
        figures = json.loads(client.stdout)
    finally:
        serve.stop()
    result = percentiles(figures["times_ms"]) if figures["times_ms"] else {"runs": 0}
    result["failed"] = figures["failed"]
    return result


def client_main(port: int, runs: int, host: str = "127.0.0.1", timeout: float = 10.0) -> dict[str, Any]:
    """The client process: N clips one after the other; times from begin sent to end received."""
    from . import protocol
    from .send import BridgeClient

    notes = clip_melody()
    client = BridgeClient(host, port)
    times, failed = [], []
    try:
        client.ping()
        for i in range(-WARMUP_RUNS, runs):
            clip_id = f"bench-{os.getpid()}-{i}"
            datagrams = [protocol.message(protocol.CLIP_BEGIN, clip_id, CLIP_BEATS).dgram,
                         *(m.dgram for m in protocol.notes_messages(protocol.CLIP_NOTES, (clip_id,), notes)),
                         protocol.message(protocol.CLIP_END, clip_id).dgram]
            started = time.perf_counter()
            for data in datagrams:
                client.sock.sendto(data, client.server)
            try:
                client._collect(clip_id, time.monotonic() + timeout, timeout)
            except BacklineError as exc:
                if i >= 0:
                    failed.append(str(exc))
                continue
            if i >= 0:
                times.append(1000 * (time.perf_counter() - started))
    finally:
        client.close()
    return {"times_ms": times, "failed": len(failed), "errors": failed[:3]}


# --------------------------------------------------------------------------- 3. live


def live_timing(seconds: float, tempo: float, model: str, device: str) -> dict[str, Any]:
    """bench_live's figures, or {'available': False, 'reason': ...}."""
    try:
        from . import bench_live
    except ImportError as exc:
        return {"available": False, "reason": f"no live engine in this install ({exc})"}
    measure = getattr(bench_live, "measure_live_timing", None)
    if measure is None:
        return {"available": False, "reason": "bench_live has no measure_live_timing"}
    try:
        params = inspect.signature(measure).parameters
    except (TypeError, ValueError):
        params = {}
    extra = {k: v for k, v in (("model", model), ("device", device)) if k in params}
    try:
        figures = measure(seconds, tempo, **extra)
    except Exception as exc:  # JACK missing, no ports ...: a figure we cannot take, not a crash
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {"available": False, "reason": text}
    return {"available": True, "seconds": seconds, "tempo": tempo, **dict(figures)}


# --------------------------------------------------------------------------- the command


def _row(label: str, figures: dict[str, float], unit: str = "ms") -> str:
    return f"{label:<34s}" + "".join(f"{figures[k]:>10.2f}" for k in ("p50", "p99", "max")) + f"  {unit}"


def _format_live(live: dict[str, Any]) -> list[str]:
    if not live.get("available"):
        return [f"live: not available ({live.get('reason', 'unknown')})"]
    lines = [f"live: {live['tempo']:g} BPM for {live['seconds']:g} s"]
    for key, value in live.items():
        if key in ("available", "seconds", "tempo"):
            continue
        if isinstance(value, float):
            value = f"{value:.3f}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
        lines.append(f"  {key:<32s} {value}")
    return lines


def cmd_bench(args: argparse.Namespace) -> int:
    if args.runs < 1:
        raise BacklineError("--runs must be at least 1")
    notes = clip_melody()
    report: dict[str, Any] = {
        "date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "python": platform.python_version(), "clip": f"{len(notes)} notes, {CLIP_BEATS:g} beats (ode-to-joy)",
        "runs": args.runs,
    }
    bare, name, provider = bare_call(args.model, args.device, notes, args.runs)
    report.update(model=name, provider=provider, bare_call_ms=bare)
    trip = round_trip(args.model, args.device, args.runs)
    report["round_trip_ms"] = trip
    lines = [
        f"backline bench: model {name} on {provider}; 4-bar clip ({report['clip']}); "
        f"{args.runs} runs each; {report['machine']}; {report['date']}",
        f"{'':<34s}{'p50':>10s}{'p99':>10s}{'max':>10s}",
        _row("bare model call (accompany)", bare),
    ]
    if trip["runs"]:
        ratio = {k: trip[k] / bare[k] for k in ("p50", "p99", "max")}
        report["ratio_round_trip_over_bare"] = ratio
        lines += [_row("clip round trip (OSC, loopback)", trip), _row("ratio round trip / bare call", ratio, "x")]
    if trip["failed"]:
        lines.append(f"round trip: {trip['failed']} of {args.runs} clips got no complete reply")
    if args.no_live:
        report["live"] = {"available": False, "reason": "skipped (--no-live)"}
        lines.append("live: skipped (--no-live)")
    else:
        report["live"] = live_timing(args.seconds, args.tempo, args.model, args.device)
        lines += _format_live(report["live"])
    print("\n".join(lines), flush=True)
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        except OSError as exc:
            raise BacklineError(f"cannot write {args.json} ({exc.strerror or exc})") from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m backline.bridge.bench --client --port P --runs N`: the client process."""
    parser = argparse.ArgumentParser(prog="python -m backline.bridge.bench")
    parser.add_argument("--client", action="store_true", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args(argv)
    print(json.dumps(client_main(args.port, args.runs, args.host)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
