"""`backline bench`: how long a clip takes and how many clips the bridge serves, measured
side by side in one run. Each part is a function that returns a dict of figures plus a
formatter for its lines of the table (PARTS); `--parts` picks them, `--json` saves them all.

latency   1. the bare model call: `accompany()` (the generator's ONNX Runtime run plus
             decoding) and the trimming the bridge does, in this process, for a 4-bar clip:
             the first 16 beats of models/examples/ode-to-joy.mid;
          2. the same clip's round trip over loopback from one client process
             (`python -m backline.bridge.bench.suite --client ...`), timing the send of
             /backline/clip/begin to the receipt of /backline/accomp/end, against two
             `backline serve` subprocesses running side by side, one batching (the
             defaults) and one not (--max-batch 1), the servers taking turns in blocks of
             20 clips; and the ratios round trip / bare call and on / off.
clients   the round trip with 1, 4, 16, 64 concurrent client PROCESSES against one server,
          each sending the clip over and over, closed loop (the next clip only after the
          reply): p50/p99/max, throughput (completed clips/s) and every clip accounted for
          (sent = replies + errors + busy + lost). The clients are started once, wait until
          all are ready, and are released together for each level; they import python-osc
          and numpy only. They ask for their replies as OSC bundles (`--reply bundle`, the
          default) or as single messages (`--reply messages`), in both parts above.
inference ONNX Runtime vs PyTorch eager on the same generator (PyTorch rebuilt from the ONNX
          weights), batch 1 and 32, side by side, as a ratio (bridge/bench/inference.py);
training  training windows per second with the real training steps
          (backline.training.throughput); on a GPU with --device cuda;
live      live mode's timing, from backline.bridge.bench.live.measure_live_timing when that
          module and a JACK server are there.

Figures only (p50/p99/max, clips/s): nothing here passes or fails on speed (DESIGN.md §7).
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from backline.models.errors import BacklineError
from backline.models.notes import Note

from backline.bridge.bench.serve import Serve

CLIP_BEATS = 16.0
WARMUP_RUNS = 5
LATENCY_BLOCK = 20  # clips timed on one server before the next takes its turn
CLIENTS_READY_S = 180.0  # 64 Python processes starting on two busy cores take a while
REPLY_TIMEOUT_S = 10.0
LEVEL_WARMUP_S = 0.5  # clips in the first half second of a level are counted, not timed
BATCHING_OFF = ("--max-batch", "1")


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
    if not values.size:
        return {"runs": 0}
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)),
            "max": float(values.max()), "runs": int(values.size)}


# --------------------------------------------------------------------------- the bare call


def bare_call(model: str, device: str, notes: list[Note], runs: int) -> tuple[dict[str, float], str, str]:
    """The model call as the bridge's worker makes it, timed in-process."""
    from backline.models import registry
    from backline.models.accompaniment import accompany

    from backline.bridge.clip.generate import trim

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


# --------------------------------------------------------------------------- serve


class _Servers:
    """Several servers at once, by mode ("on": the defaults, "off": batching off, ...), so
    that every comparison between them is taken on the same machine at the same time."""

    def __init__(self, model: str, device: str, modes: dict[str, Sequence[str]]) -> None:
        self.serves: dict[str, Serve] = {}
        try:
            for mode, extra in modes.items():
                self.serves[mode] = Serve(model, device, *extra)
        except BaseException:
            self.stop()
            raise

    def port(self, mode: str) -> int:
        return self.serves[mode].port

    def stop(self) -> None:
        for serve in self.serves.values():
            serve.stop()


# --------------------------------------------------------------------------- the client side
# Runs in the client processes: python-osc and numpy only (no model, no ONNX Runtime).


class _ClipClient:
    """One bound UDP socket sending the clip and reading its reply stream, as single
    messages or (`bundle`, asked for after each ping) OSC bundles."""

    def __init__(self, notes: Sequence[Note], host: str = "127.0.0.1", bundle: bool = True) -> None:
        self.notes = list(notes)
        self.host = host
        self.bundle = bundle
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((host, 0))
        self.count = 0

    def close(self) -> None:
        self.sock.close()

    def ping(self, port: int, timeout: float = 2.0) -> None:
        from backline.bridge.osc import protocol

        ping_id = f"bench-ping-{os.getpid()}-{port}"
        self.sock.sendto(protocol.message(protocol.PING, ping_id).dgram, (self.host, port))
        if self._wait(ping_id, time.monotonic() + timeout, protocol.PONG) is None:
            raise BacklineError(f"no Backline bridge answered at {self.host}:{port} within {timeout:g} s; "
                                "start one with: backline serve")
        if self.bundle:
            self.sock.sendto(protocol.message(protocol.SET, "bundle", 1).dgram, (self.host, port))

    def clip(self, port: int, timeout: float = REPLY_TIMEOUT_S) -> tuple[str, float]:
        """Send the clip, wait for its stream; (outcome, round trip in ms). Outcomes: ok,
        short (end came but notes were lost), busy, error (any other /backline/error), lost."""
        from backline.bridge.osc import protocol

        self.count += 1
        clip_id = f"bench-{os.getpid()}-{self.count}"
        datagrams = [p.dgram for p in protocol.clip_request(clip_id, self.notes, CLIP_BEATS)]  # as backline send
        started = time.perf_counter()
        for data in datagrams:
            self.sock.sendto(data, (self.host, port))
        outcome = self._wait(clip_id, time.monotonic() + timeout)
        return outcome or "lost", 1000 * (time.perf_counter() - started)

    def _wait(self, wanted_id: str, deadline: float, until: str | None = None) -> str | None:
        """Read replies for `wanted_id` until its stream ends (or `until` arrives); None at the deadline."""
        from backline.bridge.osc import protocol

        notes = 0
        while (messages := self._receive(deadline)) is not None:
            for message in messages:
                args = message.params
                if not args or args[0] != wanted_id:
                    continue  # e.g. the rest of a clip that timed out before
                if message.address == until:
                    return "ok"
                if message.address == protocol.ACCOMP_NOTES:
                    notes += (len(args) - 2) // 5
                elif message.address == protocol.ACCOMP_END:
                    return "ok" if args[1] == notes else "short"
                elif message.address == protocol.ERROR:
                    return "busy" if args[1] == "busy" else "error"
        return None

    def _receive(self, deadline: float) -> list | None:
        """The messages of the next datagram (a bundle's, or the one message); [] for one
        that is not OSC; None at the deadline. A stream ends with its last datagram, so
        nothing after a stream's end is left unread in one."""
        from backline.bridge.osc import protocol

        left = deadline - time.monotonic()
        if left <= 0:
            return None
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65535)
        except (socket.timeout, ConnectionError):
            return []
        try:
            return protocol.read_datagram(data)
        except Exception:  # not a message of ours
            return []


def client_main(ports: Sequence[int], runs: int, notes: Sequence[Note] | None = None,
                bundle: bool = True) -> dict[str, Any]:
    """The single client: N clips one after the other on each port, the ports taking
    turns in blocks; times from begin sent to end received, per port."""
    client = _ClipClient(notes if notes is not None else clip_melody(), bundle=bundle)
    times: dict[int, list[float]] = {port: [] for port in ports}
    failed: dict[int, int] = {port: 0 for port in ports}
    try:
        for port in ports:
            client.ping(port)
        for port in ports:
            for _ in range(WARMUP_RUNS):
                client.clip(port)
        # The servers take turns in blocks of clips, so that a slow spell of the machine
        # falls on all of them alike. (ONNX Runtime's threads stop spinning when a call
        # returns, models/providers.py, so one server's idle spin no longer taxes the next.)
        for first in range(0, runs, LATENCY_BLOCK):
            for port in ports:
                for _ in range(min(LATENCY_BLOCK, runs - first)):
                    outcome, ms = client.clip(port)
                    if outcome == "ok":
                        times[port].append(ms)
                    else:
                        failed[port] += 1
    finally:
        client.close()
    return {"times_ms": {str(p): t for p, t in times.items()}, "failed": {str(p): n for p, n in failed.items()}}


def worker_main(ports: Sequence[int], notes: Sequence[Note], commands=sys.stdin, out=sys.stdout,
                bundle: bool = True) -> None:
    """A concurrency client: says 'ready', then for each `run PORT T0 SECONDS` line sends
    the clip closed loop from monotonic time T0 until T0 + LEVEL_WARMUP_S + SECONDS and
    prints one JSON line: every clip's (outcome, start, end, round trip ms). `quit` ends."""
    client = _ClipClient(notes, bundle=bundle)
    try:
        for port in ports:
            client.ping(port)
        print("ready", file=out, flush=True)
        for line in commands:
            words = line.split()
            if not words or words[0] == "quit":
                break
            port, start, seconds = int(words[1]), float(words[2]), float(words[3])
            time.sleep(max(0.0, start - time.monotonic()))
            end = start + LEVEL_WARMUP_S + seconds
            clips = []
            while (sent := time.monotonic()) < end:
                outcome, ms = client.clip(port)
                clips.append((outcome, sent, time.monotonic(), ms))
            print(json.dumps(clips), file=out, flush=True)
    finally:
        client.close()




def _client_command(reply: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "backline.bridge.bench.suite", "--client", "--reply", reply, *args]


def _notes_arg(notes: Sequence[Note]) -> str:
    return json.dumps([list(n) for n in notes])


# --------------------------------------------------------------------------- part: latency


def measure_latency(args: argparse.Namespace) -> dict[str, Any]:
    """The bare call, then the single-client round trip with batching on and off, side by side."""
    notes = clip_melody()
    bare, name, provider = bare_call(args.model, args.device, notes, args.runs)
    result: dict[str, Any] = {"model": name, "provider": provider, "runs": args.runs, "reply": args.reply,
                              "clip": f"{len(notes)} notes, {CLIP_BEATS:g} beats (ode-to-joy)", "bare_call_ms": bare}
    servers = _Servers(args.model, args.device, {"on": (), "off": BATCHING_OFF})
    try:
        ports = [servers.port("on"), servers.port("off")]
        client = subprocess.run(_client_command(args.reply, "--ports", ",".join(map(str, ports)),
                                                "--runs", str(args.runs), "--notes", _notes_arg(notes)),
                                capture_output=True, text=True, timeout=max(120, args.runs * 20))
        if client.returncode != 0:
            last = (client.stderr.strip().splitlines() or ["no output"])[-1]
            raise BacklineError(f"the benchmark client failed: {last}")
        figures = json.loads(client.stdout)
    finally:
        servers.stop()
    for key, port in (("round_trip_ms", ports[0]), ("round_trip_unbatched_ms", ports[1])):
        result[key] = {**percentiles(figures["times_ms"][str(port)]), "failed": figures["failed"][str(port)]}
    trip, off = result["round_trip_ms"], result["round_trip_unbatched_ms"]
    if trip["runs"]:
        result["ratio_round_trip_over_bare"] = {k: trip[k] / bare[k] for k in ("p50", "p99", "max")}
    if trip["runs"] and off["runs"]:
        result["ratio_batching_on_over_off"] = {k: trip[k] / off[k] for k in ("p50", "p99", "max")}
    return result


def _row(label: str, figures: dict[str, float], unit: str = "ms") -> str:
    return f"{label:<34s}" + "".join(f"{figures[k]:>10.2f}" for k in ("p50", "p99", "max")) + f"  {unit}"


def format_latency(latency: dict[str, Any]) -> list[str]:
    lines = [f"{'':<34s}{'p50':>10s}{'p99':>10s}{'max':>10s}", _row("bare model call (accompany)", latency["bare_call_ms"])]
    rows = (("round_trip_ms", "clip round trip (OSC, loopback)"), ("ratio_round_trip_over_bare", "ratio round trip / bare call"),
            ("round_trip_unbatched_ms", "clip round trip, batching off"), ("ratio_batching_on_over_off", "ratio batching on / off"))
    for key, label in rows:
        if key in latency and latency[key].get("runs", 1):
            lines.append(_row(label, latency[key], "x" if key.startswith("ratio") else "ms"))
    for key, what in (("round_trip_ms", "round trip"), ("round_trip_unbatched_ms", "round trip, batching off")):
        if latency[key]["failed"]:
            lines.append(f"{what}: {latency[key]['failed']} of {latency['runs']} clips got no complete reply")
    return lines


# --------------------------------------------------------------------------- part: clients


class _ClientPool:
    """`count` client processes, started together and kept for every level."""

    def __init__(self, count: int, ports: Sequence[int], notes: Sequence[Note], reply: str) -> None:
        self.log = tempfile.TemporaryFile("w+")
        command = _client_command(reply, "--worker", "--ports", ",".join(map(str, ports)), "--notes", _notes_arg(notes))
        self.procs: list[subprocess.Popen] = []
        try:
            for _ in range(count):
                self.procs.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                   stderr=self.log, text=True, bufsize=1))
            deadline = time.monotonic() + CLIENTS_READY_S
            for proc in self.procs:
                if self._line(proc, deadline) != "ready":
                    raise BacklineError(f"a benchmark client did not start: {self.errors()}")
        except BaseException:
            self.stop()
            raise

    def _line(self, proc: subprocess.Popen, deadline: float) -> str:
        got: list[str] = []
        reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(max(0.0, deadline - time.monotonic()))
        return got[0].strip() if got else ""

    def errors(self) -> str:
        self.log.seek(0)
        lines = self.log.read().strip().splitlines()
        return lines[-1] if lines else "no output"

    def pids(self, clients: int) -> list[int]:
        return [proc.pid for proc in self.procs[:clients]]

    def run(self, clients: int, port: int, seconds: float) -> list[list]:
        """Release the first `clients` together on `port`; every clip each of them sent."""
        start = time.monotonic() + 0.2  # every client has its command by then
        for proc in self.procs[:clients]:
            proc.stdin.write(f"run {port} {start} {seconds}\n")
            proc.stdin.flush()
        deadline = start + LEVEL_WARMUP_S + seconds + REPLY_TIMEOUT_S + 30
        clips = []
        for proc in self.procs[:clients]:
            line = self._line(proc, deadline)
            if not line:
                raise BacklineError(f"a benchmark client gave no figures: {self.errors()}")
            clips.append([(outcome, sent - start, done - start, ms) for outcome, sent, done, ms in json.loads(line)])
        return clips

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    proc.stdin.write("quit\n")
                    proc.stdin.close()
                except OSError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.log.close()


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far, from /proc; None where there is
    no /proc (macOS) or the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_total(pids: Sequence[int]) -> float | None:
    times = [cpu_seconds(pid) for pid in pids]
    return None if any(t is None for t in times) else sum(times)


def cpu_figures(server_s: float | None, clients_s: float | None, replies: int, wall_s: float) -> dict[str, Any]:
    """Where the CPU went in a level: server and client CPU ms per reply, and the share of
    all the machine's cores that server and clients kept busy (None where not measured)."""
    if server_s is None or clients_s is None or replies == 0 or wall_s <= 0:
        return {"server_cpu_ms_per_clip": None, "client_cpu_ms_per_clip": None, "cpu_busy": None}
    return {"server_cpu_ms_per_clip": 1000 * server_s / replies, "client_cpu_ms_per_clip": 1000 * clients_s / replies,
            "cpu_busy": (server_s + clients_s) / (wall_s * (os.cpu_count() or 1))}


def level_figures(clips_per_client: list[list], seconds: float) -> dict[str, Any]:
    """One level's figures from every client's clips (times from the level's start):
    every clip sent is counted once as a reply, error, busy, short or lost; round trips
    and throughput are taken after the warm-up."""
    clips = [clip for client in clips_per_client for clip in client]
    counts = {kind: sum(1 for c in clips if c[0] == kind) for kind in ("ok", "error", "busy", "short", "lost")}
    timed = [ms for outcome, sent, _, ms in clips if outcome == "ok" and sent >= LEVEL_WARMUP_S]
    window_end = LEVEL_WARMUP_S + seconds
    completed = sum(1 for outcome, _, done, _ in clips if outcome == "ok" and LEVEL_WARMUP_S <= done < window_end)
    return {"clients": len(clips_per_client), "sent": len(clips), "replies": counts["ok"], "errors": counts["error"],
            "busy": counts["busy"], "short": counts["short"], "lost": counts["lost"],
            "round_trip_ms": percentiles(timed), "clips_per_s": completed / seconds}


def client_modes(args: argparse.Namespace) -> dict[str, tuple[str, ...]]:
    """The servers the concurrency levels run against: the defaults ("on"), batching off
    unless --no-unbatched, and one per --compare-windows value ("wait N ms")."""
    modes: dict[str, tuple[str, ...]] = {"on": ()}
    if not args.no_unbatched:
        modes["off"] = BATCHING_OFF
    for ms in args.compare_windows or ():
        modes[f"wait {ms:g}ms"] = ("--batch-window-ms", f"{ms:g}")
    return modes


def model_bound(model: str, device: str, notes: list[Note], batch: int, seconds: float) -> dict[str, Any]:
    """What the model alone does with the same clips on the same cores, in this process:
    `batch` clips at a time, as the bridge's worker batches them. Two figures: the
    generator calls alone (the clips laid out once beforehand), and the whole clip path
    without OSC (lay out, one batched call, decode the call's clips together, trim each)."""
    from backline.models import registry
    from backline.models.accompaniment import DecodeRequest, decode_many, run_calls, run_windows
    from backline.models.melody import prepare

    from backline.bridge.clip.generate import trim

    generator = registry.load(model, device=device)
    spec = generator.spec
    prepared = prepare(spec, notes)
    inputs = [(prepared, generator.draw_z(seed, prepared.n_windows)) for seed in range(batch)]

    def calls_only() -> None:
        for _ in run_windows(generator, inputs):
            pass

    def clip_path() -> None:  # as bridge/clip/generate.py does it
        melodies = [prepare(spec, notes) for _ in range(batch)]
        ready = [(m, generator.draw_z(seed, m.n_windows)) for seed, m in enumerate(melodies)]
        done = 0
        for finished in run_calls(generator, ready):
            requests = [DecodeRequest(m, probs, seed=done + i) for i, (m, probs) in
                        enumerate(zip(melodies[done:done + len(finished)], finished))]
            for accompaniment in decode_many(spec, requests):
                for _, track_notes in accompaniment.tracks:
                    trim(track_notes, CLIP_BEATS)
            done += len(finished)

    def rate(work: Callable[[], None]) -> float:
        for _ in range(WARMUP_RUNS):
            work()
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            work()
            done += batch
        return done / (time.perf_counter() - started)

    return {"batch": batch, "windows_per_clip": prepared.n_windows,
            "calls_clips_per_s": rate(calls_only), "path_clips_per_s": rate(clip_path)}


def _max_batch() -> int:
    from backline.bridge.serving.engine import DEFAULT_MAX_BATCH  # not at the top: the client processes import this module

    return DEFAULT_MAX_BATCH


def measure_clients(args: argparse.Namespace) -> dict[str, Any]:
    """The concurrency sweep: each level against every server of client_modes, the levels
    in turn, the servers one after the other within a level."""
    levels = args.clients
    modes = client_modes(args)
    notes = clip_melody()
    # The bound is taken before the servers start and after they stop (nothing else runs
    # then), and the two averaged: on a shared machine one reading alone swings by a third.
    bounds = [model_bound(args.model, args.device, notes, _max_batch(), args.level_seconds)]
    servers = _Servers(args.model, args.device, modes)
    try:
        pool = _ClientPool(max(levels), [servers.port(m) for m in modes], notes, args.reply)
        try:
            results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
            for clients in levels:
                for mode in modes:
                    # The CPU that server and clients use over the whole level, per reply.
                    pids = [servers.serves[mode].proc.pid, *pool.pids(clients)]
                    before, started = [_cpu_total(pids[:1]), _cpu_total(pids[1:])], time.monotonic()
                    clips = pool.run(clients, servers.port(mode), args.level_seconds)
                    after, wall = [_cpu_total(pids[:1]), _cpu_total(pids[1:])], time.monotonic() - started
                    figures = level_figures(clips, args.level_seconds)
                    used = [b - a if a is not None and b is not None else None for a, b in zip(before, after)]
                    figures.update(cpu_figures(*used, figures["replies"], wall))
                    results[mode].append(figures)
        finally:
            pool.stop()
    finally:
        servers.stop()
    report: dict[str, Any] = {"levels": levels, "level_seconds": args.level_seconds, "warmup_s": LEVEL_WARMUP_S,
                              "reply": args.reply, "batching": results}
    bounds.append(model_bound(args.model, args.device, notes, _max_batch(), args.level_seconds))
    report["model_bound"] = {**bounds[0], **{key: sum(b[key] for b in bounds) / len(bounds)
                                             for key in ("calls_clips_per_s", "path_clips_per_s")},
                             "calls_readings": [b["calls_clips_per_s"] for b in bounds],
                             "path_readings": [b["path_clips_per_s"] for b in bounds]}
    for mode, rows in results.items():
        best = max(rows, key=lambda r: r["clips_per_s"])
        report[f"saturation_{mode}"] = {"clips_per_s": best["clips_per_s"], "clients": best["clients"]}
        by_level = {r["clients"]: r["clips_per_s"] for r in rows}
        if 1 in by_level and 16 in by_level and by_level[1] > 0:
            report[f"throughput_16_over_1_{mode}"] = by_level[16] / by_level[1]
        bound = report["model_bound"]["calls_clips_per_s"]
        report[f"share_of_bound_{mode}"] = {n: by_level[n] / bound for n in (16, 64) if n in by_level and bound > 0}
    return report


_REPLY_WORDS = {"messages": "single messages", "bundle": "OSC bundles"}


def format_clients(report: dict[str, Any]) -> list[str]:
    lines = [f"concurrent clients (separate processes, closed loop, replies as {_REPLY_WORDS[report['reply']]} "
             f"(--reply {report['reply']}), {report['level_seconds']:g} s per level after "
             f"{report['warmup_s']:g} s warm-up; batching off = serve {' '.join(BATCHING_OFF)}, "
             "wait N ms = serve --batch-window-ms N):",
             f"{'clients':>7s}  {'batching':<10s}{'sent':>7s}{'replies':>8s}{'errors':>7s}{'busy':>6s}{'lost':>6s}"
             f"{'p50':>9s}{'p99':>9s}{'max':>9s}{'clips/s':>9s}{'vs 1st':>8s}{'srv ms':>8s}{'cli ms':>8s}{'cpu':>6s}"]
    firsts = {mode: rows[0]["clips_per_s"] for mode, rows in report["batching"].items()}
    by_level = sorted(((r, mode) for mode, rows in report["batching"].items() for r in rows),
                      key=lambda item: item[0]["clients"])  # stable: on before off within a level
    for r, mode in by_level:
        trip = r["round_trip_ms"]
        times = "".join(f"{trip[k]:>9.2f}" for k in ("p50", "p99", "max")) if trip["runs"] else f"{'-':>9s}" * 3
        ratio = f"{r['clips_per_s'] / firsts[mode]:>7.2f}x" if firsts[mode] > 0 else f"{'-':>8s}"
        if r.get("cpu_busy") is not None:
            cpu = f"{r['server_cpu_ms_per_clip']:>8.2f}{r['client_cpu_ms_per_clip']:>8.2f}{r['cpu_busy']:>6.0%}"
        else:
            cpu = f"{'-':>8s}{'-':>8s}{'-':>6s}"
        lines.append(f"{r['clients']:>7d}  {mode:<10s}{r['sent']:>7d}{r['replies']:>8d}{r['errors']:>7d}{r['busy']:>6d}"
                     f"{r['lost'] + r['short']:>6d}{times}{r['clips_per_s']:>9.1f}{ratio}{cpu}")
    lines.append("  (srv ms / cli ms: CPU ms the server / all clients used per reply; cpu: share of all "
                 f"{os.cpu_count()} cores they kept busy)")
    bound = report.get("model_bound")
    if bound:
        def readings(key: str) -> str:
            return " and ".join(f"{value:.1f}" for value in bound[key])

        lines.append(f"model-only bound ({bound['batch']} clips per batched call, {bound['windows_per_clip']} "
                     f"windows each, in-process, same cores, the mean of a reading before and after the levels): "
                     f"generator calls {bound['calls_clips_per_s']:.1f} clips/s ({readings('calls_readings')}); "
                     f"with layout and decoding, no OSC {bound['path_clips_per_s']:.1f} clips/s "
                     f"({readings('path_readings')})")
    for mode in report["batching"]:
        shares = report.get(f"share_of_bound_{mode}") or {}
        if shares:
            lines.append(f"batching {mode}: bridge throughput / model-only bound (generator calls): "
                         + ", ".join(f"{n} clients {share:.0%}" for n, share in shares.items()))
    for mode in report["batching"]:
        every = all(r["sent"] == r["replies"] for r in report["batching"][mode])
        best = report[f"saturation_{mode}"]
        ratio = report.get(f"throughput_16_over_1_{mode}")
        lines.append(f"batching {mode}: every reply arrived: {'yes' if every else 'NO'}; throughput at saturation "
                     f"{best['clips_per_s']:.1f} clips/s (the best level, {best['clients']} clients)"
                     + (f"; 16 clients / 1 client {ratio:.2f}x" if ratio is not None else ""))
    return lines


# --------------------------------------------------------------------------- part: live


def live_timing(seconds: float, tempo: float, model: str, device: str) -> dict[str, Any]:
    """bench_live's figures, or {'available': False, 'reason': ...}."""
    try:
        from backline.bridge.bench import live as bench_live
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


def measure_live(args: argparse.Namespace) -> dict[str, Any]:
    return live_timing(args.seconds, args.tempo, args.model, args.device)


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


# --------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class Part:
    """One part of the benchmark: figures as a dict, and its lines of the table."""

    name: str
    measure: Callable[[argparse.Namespace], dict[str, Any]]
    format: Callable[[dict[str, Any]], list[str]]


# --------------------------------------------------------------------------- inference and training


def measure_inference(args: argparse.Namespace) -> dict[str, Any]:
    """(a) ONNX Runtime vs PyTorch eager on the same generator, batch 1 and 32."""
    from backline.bridge.bench.inference import RebuildError, compare_ort_torch

    try:
        return compare_ort_torch(args.model, device=args.device, runs=args.runs)
    except RebuildError as exc:  # a model not built by training/networks has no PyTorch twin
        return {"available": False, "reason": str(exc)}


def format_inference(result: dict[str, Any]) -> list[str]:
    from backline.bridge.bench.inference import format_comparison

    return format_comparison(result)


def training_device(device: str) -> str:
    """The torch device for a `--device` string such as 'auto', 'cpu' or 'cuda:fp16'."""
    kind = device.split(":")[0]
    return {"tensorrt": "cuda"}.get(kind, kind)


def measure_training(args: argparse.Namespace) -> dict[str, Any]:
    """(d) training windows per second on this machine (the GPU's with --device cuda)."""
    try:
        from backline.training.throughput import measure_training_throughput
    except ModuleNotFoundError as exc:  # the base install has no torch
        return {"available": False, "reason": f"{exc.name} is not installed; run: pip install -e '.[train]'"}
    result = measure_training_throughput(args.training_seconds, device=training_device(args.device))
    return {"available": True, **result}


def format_training(result: dict[str, Any]) -> list[str]:
    if not result.get("available"):
        return [f"training throughput: not available ({result.get('reason', 'unknown')})"]
    from backline.training.throughput import format_training_throughput

    return format_training_throughput(result)


# A new part is one line here (and its measure/format functions). The order is the table's.
PARTS = [
    Part("inference", measure_inference, format_inference),
    Part("latency", measure_latency, format_latency),
    Part("clients", measure_clients, format_clients),
    Part("training", measure_training, format_training),
    Part("live", measure_live, _format_live),
    Part("delivery", lambda args: _delivery().measure_delivery(args), lambda r: _delivery().format_delivery(r)),
]


def _delivery():
    from backline.bridge.bench import delivery as bench_delivery

    return bench_delivery


def parse_clients(text: str) -> list[int]:
    """'1,4,16,64' -> [1, 4, 16, 64] (argparse type)."""
    try:
        levels = [int(word) for word in text.split(",")]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1 or max(levels) > 256 or levels != sorted(set(levels)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of rising client counts 1..256, e.g. 1,4,16,64")
    return levels


def parse_parts(text: str) -> list[str]:
    """'latency,clients' -> the parts to run (argparse type)."""
    names = [word.strip() for word in text.split(",") if word.strip()]
    known = [p.name for p in PARTS]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: give parts from {','.join(known)}, separated by commas")
    return names


def cmd_bench(args: argparse.Namespace) -> int:
    wanted = set(args.parts or [p.name for p in PARTS]) - ({"live"} if args.no_live else set())
    report: dict[str, Any] = {
        "date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "python": platform.python_version(), "model": args.model, "runs": args.runs,
    }
    lines = [f"backline bench: model {args.model}; 4-bar clip (the first {CLIP_BEATS:g} beats of ode-to-joy); "
             f"{args.runs} runs each; {report['machine']}; {report['date']}"]
    for part in PARTS:
        if part.name not in wanted:
            report[part.name] = {"available": False, "reason": "skipped"}
            lines.append(f"{part.name}: skipped")
            continue
        report[part.name] = part.measure(args)
        lines += part.format(report[part.name])
    latency = report["latency"]
    if latency.get("provider") and "clip" in latency:  # the header names what ran, once the first part knows it
        report["model"] = latency["model"]
        lines[0] = (f"backline bench: model {latency['model']} on {latency['provider']}; 4-bar clip ({latency['clip']}); "
                    f"{args.runs} runs each; {report['machine']}; {report['date']}")
    print("\n".join(lines), flush=True)
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        except OSError as exc:
            raise BacklineError(f"cannot write {args.json} ({exc.strerror or exc})") from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The client processes: `python -m backline.bridge.bench.suite --client --ports P[,P] --runs N`
    (one client, clips one after the other) or `... --client --worker --ports P[,P]` (a
    concurrency client driven through its stdin)."""
    from backline.bridge.osc import protocol

    parser = argparse.ArgumentParser(prog="python -m backline.bridge.bench.suite")
    parser.add_argument("--client", action="store_true", required=True)
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--ports", required=True, help="comma-separated UDP ports of the servers")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--notes", default=None, help="the clip as JSON [[pitch, start, duration, velocity, mute], ...]")
    parser.add_argument("--reply", choices=protocol.REPLY_FORMS, default="bundle",
                        help="ask for the replies as OSC bundles or as single messages (default bundle)")
    args = parser.parse_args(argv)
    ports = [int(p) for p in args.ports.split(",")]
    notes = [Note(*n) for n in json.loads(args.notes)] if args.notes else clip_melody()
    bundle = args.reply == "bundle"
    try:
        if args.worker:
            worker_main(ports, notes, bundle=bundle)
        else:
            print(json.dumps(client_main(ports, args.runs, notes, bundle)))
    except BacklineError as exc:
        print(f"backline bench client: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
