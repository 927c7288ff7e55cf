"""Live mode's timing against a real JACK server: how close to their beat positions the
notes land, measured by a third party, in JACK frames.

Set-up: a JACK server (the one $JACK_DEFAULT_SERVER names if it runs, else a private
dummy-backend one), `jack_midi_clock -b TEMPO -B` as the host's clock (the transport
rolls), live mode in this process on real virtual ports (bridge/midi_ports: the
frame-accurate JACK ports, or python-rtmidi's with `--backend rtmidi`), a melody played
into it as it goes, and a recorder connected to BOTH the clock's output and 'backline
out'. The recorder (`FrameRecorder`) is a JACK-Client program in a process of its own: in
its JACK process callback it stamps every event with the frame it sits at (the cycle's
first frame + the event's offset), so the clock's ticks and the notes are measured on the
host's own time line, exactly: a note-on due at beat B should sit at the frame where the
ticks put beat B (interpolated between the two ticks around it, 24 per beat). The error is
reported in ms and in JACK periods (the frame error / the period).

Why frames: the frame count of a JACK server does not keep step with the wall clock (each
late cycle makes it fall behind), so a recorder that stamps arrival times sees ticks
"lost" and notes "offset" by whole periods that the frame line does not have.

    python -m backline.bridge.bench.live --seconds 20 --tempo 180

The recorder needs the JACK-Client package (`pip install JACK-Client`, in the `test`
extra); it can miss a cycle on a busy machine, which loses that cycle's events for it
(counted in `recorder_missed_cycles`; a lost tick is put back from the frame gap).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from backline.models.errors import BacklineError

from backline.bridge.midi.jack_server import JackServer, missing_tool

TICKS_PER_BEAT = 24


# --------------------------------------------------------------------------- analysis


@dataclass
class Recording:
    """(time s, message) on the recorder's time line (JACK frames / rate), in order."""

    events: list[tuple[float, list[int]]] = field(default_factory=list)
    period_s: float = 0.0  # the JACK period the recording was made at
    missed_cycles: int = 0  # cycles the recorder's process callback did not see

    def ticks_after_start(self, fill_lost: bool = True) -> list[float]:
        """Times of the ticks since the last Start (tick 0 = beat 0).

        A tick the recorder did not get (it missed that cycle) would shift every later
        beat by 1/24 beat. With `fill_lost`, a gap of k tick spacings (to 2 %) between
        ticks at one steady tempo (the median of the 4 spacings before it and of the 4
        after agree) gets the k - 1 lost ticks back, interpolated: right on frame times,
        where a gap is exactly k spacings."""
        starts = [i for i, (_, m) in enumerate(self.events) if m[0] == 0xFA]
        first = starts[-1] if starts else 0
        ticks = [t for t, m in self.events[first:] if m[0] == 0xF8]
        if not fill_lost or len(ticks) < 10:
            return ticks
        if starts:  # ticks lost right after Start: beat 0's tick comes up to a period after it
            usual = sorted(b - a for a, b in zip(ticks[:9], ticks[1:10]))[4]
            count = (ticks[0] - self.events[first][0]) / usual
            lost = math.floor(count + 0.05)
            if 1 <= lost <= 3 and count - lost <= self.period_s / usual + 0.05 < 0.95:
                ticks = [ticks[0] - k * usual for k in range(lost, 0, -1)] + ticks
        spacings = [b - a for a, b in zip(ticks, ticks[1:])]
        out = [ticks[0]]
        for i, gap in enumerate(spacings):
            before = sorted(spacings[max(0, i - 4):i])
            after = sorted(spacings[i + 1:i + 5])
            if before and after:
                usual, next_usual = before[len(before) // 2], after[len(after) // 2]
                k = round(gap / usual)
                # Lost: a whole number of spacings (frame-exact), the same tempo on both
                # sides. (A host may leave one odd gap at a tempo change: not lost.)
                if k >= 2 and abs(gap - k * usual) < 0.02 * usual and abs(next_usual - usual) < 0.01 * usual:
                    out += [ticks[i] + j * gap / k for j in range(1, k)]
            out.append(ticks[i + 1])
        return out

    def note_ons(self) -> list[tuple[float, int, int]]:
        """(time, channel, pitch) of every note-on."""
        return [(t, m[0] & 0x0F, m[1]) for t, m in self.events
                if m[0] & 0xF0 == 0x90 and len(m) > 2 and m[2] > 0]

    def hung_notes(self) -> set[tuple[int, int]]:
        """(channel, pitch) still on at the end: on without a later off or All Notes Off."""
        on: set[tuple[int, int]] = set()
        for _, m in self.events:
            kind, channel = m[0] & 0xF0, m[0] & 0x0F
            if kind == 0x90 and len(m) > 2 and m[2] > 0:
                on.add((channel, m[1]))
            elif kind == 0x80 or (kind == 0x90 and len(m) > 2):
                on.discard((channel, m[1]))
            elif kind == 0xB0 and len(m) > 1 and m[1] in (120, 123):
                on = {n for n in on if n[0] != channel}
        return on


def time_of_beat(ticks: Sequence[float], beat: float) -> float | None:
    """When `beat` was, interpolated between the two ticks around it (None outside)."""
    x = beat * TICKS_PER_BEAT
    i = int(x)
    if i == len(ticks) - 1 and x == i:  # on the last tick itself
        return ticks[i]
    if i < 0 or i + 1 >= len(ticks):
        return None
    return ticks[i] + (x - i) * (ticks[i + 1] - ticks[i])


def note_errors(recording: Recording, expected: Sequence[tuple[float, int, int]],
                max_error_s: float = 0.1) -> tuple[list[float], int]:
    """(seconds each recorded note-on came after its beat, negative = early; the number of
    expected notes never recorded). `expected` holds (beat, channel, pitch) of the notes
    sent; each recorded note-on is matched to the nearest unmatched expected note of its
    channel and pitch within `max_error_s`."""
    ticks = recording.ticks_after_start()
    due: dict[tuple[int, int], list[float]] = {}
    for beat, channel, pitch in expected:
        t = time_of_beat(ticks, beat)
        if t is not None:
            due.setdefault((channel, pitch), []).append(t)
    errors = []
    for t, channel, pitch in recording.note_ons():
        candidates = due.get((channel, pitch))
        if not candidates:
            continue
        nearest = min(range(len(candidates)), key=lambda i: abs(t - candidates[i]))
        if abs(t - candidates[nearest]) <= max_error_s:
            errors.append(t - candidates.pop(nearest))
    return errors, sum(len(v) for v in due.values())


def percentiles(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return {"p50": pick(0.5), "p99": pick(0.99), "max": ordered[-1]}


# --------------------------------------------------------------------------- JACK


def _jack() -> JackServer:
    """The JACK server to measure on: the running one $JACK_DEFAULT_SERVER names, or a
    private dummy one."""
    if (problem := missing_tool("jack_midi_clock")) is not None:
        raise BacklineError(problem)
    server = JackServer.existing() or JackServer(f"backline-bench-{os.getpid()}").start()
    server.use_in_this_process()
    return server


class FrameRecorder:
    """A JACK MIDI input in a process of its own (`python -m backline.bridge.bench.live
    --record NAME`, JACK-Client) that keeps every event with its frame (JACK's frame count,
    the time line of bridge/jack_midi's ports). Connect sources to `port`; `recording` (or
    `stop()`) ends it and returns what it heard."""

    def __init__(self, client_name: str = "backline-recorder") -> None:
        if importlib.util.find_spec("jack") is None:
            raise BacklineError("the frame recorder needs the JACK-Client package: pip install JACK-Client "
                                "(part of backline's test extra)")
        self.port = f"{client_name}:in"
        self._recording: Recording | None = None
        self._process = subprocess.Popen([sys.executable, "-m", "backline.bridge.bench.live", "--record", client_name],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready = self._process.stdout.readline().split()
        if ready[:1] != ["ready"]:
            self._process.kill()
            error = self._process.communicate(timeout=5)[1].strip().splitlines()
            raise BacklineError(f"the frame recorder did not start: {error[-1] if error else 'no message'}")
        self.rate, self.period = int(ready[1]), int(ready[2])

    @property
    def period_s(self) -> float:
        return self.period / self.rate

    @property
    def recording(self) -> Recording:
        return self.stop()

    def stop(self) -> Recording:
        if self._recording is None:
            self._process.send_signal(signal.SIGINT)
            out, err = self._process.communicate(timeout=10)
            if self._process.returncode != 0:
                raise BacklineError(f"the frame recorder failed: {err.strip()[-300:]}")
            data = json.loads(out)
            events = [(frame / self.rate, list(bytes.fromhex(hexed))) for frame, hexed in data["events"]]
            self._recording = Recording(events, self.period_s, data["missed_cycles"])
        return self._recording

    def close(self) -> None:
        if self._recording is None and self._process.poll() is None:
            try:
                self.stop()
            except (BacklineError, subprocess.TimeoutExpired, ValueError):
                self._process.kill()
                self._process.wait()


def record(client_name: str) -> int:
    """The recorder process: events with their frames until SIGINT, then JSON on stdout."""
    import jack

    jack.set_error_function(lambda message: None)  # JACK's chatter would garble nothing, but is noise
    jack.set_info_function(lambda message: None)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    client = jack.Client(client_name, no_start_server=True)
    port = client.midi_inports.register("in")
    events: list[tuple[int, str]] = []
    state = {"last": None, "base": 0, "missed": 0}  # unwraps the 32-bit frame counter

    @client.set_process_callback
    def process(frames: int) -> None:
        raw = client.last_frame_time
        last = state["last"]
        if last is None:
            state["base"] = raw  # JACK's own frame numbers, as bridge/jack_midi counts them
        else:
            step = (raw - last) % (1 << 32)
            state["base"] += step
            if step > frames:
                state["missed"] += step // frames - 1
        state["last"] = raw
        for offset, data in port.incoming_midi_events():
            events.append((state["base"] + offset, bytes(data).hex()))

    with client:
        print("ready", client.samplerate, client.blocksize, flush=True)
        stop.wait()
    json.dump({"events": events, "missed_cycles": state["missed"]}, sys.stdout)
    return 0


def melody_player(session, clock, stop: threading.Event) -> threading.Thread:
    """A melody played into the live session as it goes (what a keyboard player does):
    a two-bar phrase of quarter and eighth notes around C5, over and over."""
    phrase = [(72, 1.0), (74, 0.5), (76, 0.5), (77, 1.0), (79, 1.0),
              (77, 0.5), (76, 0.5), (74, 1.0), (72, 2.0)]

    def play() -> None:
        beat = None
        while not stop.is_set():
            if not clock.playing:
                time.sleep(0.002)
                beat = None
                continue
            if beat is None:
                beat = float(int(clock.beat_at()) + 1)
            for pitch, duration in phrase:
                for at, on in ((beat, True), (beat + duration * 0.9, False)):
                    while not stop.is_set() and clock.playing and clock.now() < clock.time_at(at):
                        time.sleep(0.001)
                    if stop.is_set() or not clock.playing:
                        break
                    session.note_on(pitch, 100 if on else 0)
                beat += duration

    thread = threading.Thread(target=play, name="bench-melody", daemon=True)
    thread.start()
    return thread


# --------------------------------------------------------------------------- the measurement


def measure_live_timing(seconds: float, tempo: float, model: str = "bach", device: str = "cpu",
                        commit_ahead: float = 2.0, backend: str = "frames") -> dict[str, Any]:
    """Run live mode for `seconds` under jack_midi_clock at `tempo`; the figures. `backend`:
    'frames' (the frame-accurate JACK ports) or 'rtmidi' (python-rtmidi's JACK ports)."""
    from backline.models import registry

    from backline.bridge.live.clock import Clock
    from backline.bridge.live.session import LiveFrontend, LiveSession
    from backline.bridge.midi.ports import MidiPorts
    from backline.bridge.live.scheduler import Scheduler

    if backend not in ("frames", "rtmidi"):
        raise BacklineError(f"unknown backend {backend!r}: frames or rtmidi")
    jack = _jack()
    clock_proc = None
    ports = recorder = session = scheduler = None
    stop = threading.Event()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    try:
        generator = registry.load(model, device=device)
        recorder = FrameRecorder()
        clock_proc = subprocess.Popen(["jack_midi_clock", "-b", f"{tempo:g}", "-B"], env=jack.env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        jack.wait_for_port("jack_midi_clock:mclk_out")
        ports = MidiPorts.open("jack", generator.spec.tracks, client_name="backline", frames=backend == "frames")
        clock = Clock(tempo=tempo, now=ports.now)
        scheduler = Scheduler(clock, ports)
        session = LiveSession(clock, scheduler, generator, commit_ahead=commit_ahead)
        frontend = LiveFrontend(session, "midi", send=lambda *a: None, target_for=lambda s: s,
                                exact_times=ports.frame_accurate,
                                start_slack=ports.period_s if ports.frame_accurate else 0.0)
        ports.set_input_callback(frontend.on_midi)
        in_port, out_port = ports.port_names[0], ports.port_names[1]
        jack.wait_for_port(recorder.port)
        jack.connect("jack_midi_clock:mclk_out", in_port)
        jack.connect("jack_midi_clock:mclk_out", recorder.port)
        jack.connect(out_port, recorder.port)
        player = melody_player(session, clock, stop)
        jack.transport("play")
        time.sleep(seconds)
        jack.transport("stop")
        time.sleep(0.5)
        stop.set()
        player.join(2)
        recording = recorder.stop()
        expected = [(r.beat, r.channel, r.pitch) for r in list(scheduler.sent)]
        errors, missing = note_errors(recording, expected)
        commits = session.commit_stats()
        sends = scheduler.timing()
        hung = recording.hung_notes()
        lost_ticks = frontend.follower.lost_ticks
        port_stats = {k: getattr(ports, k) for k in ("missed_cycles", "late_events") if hasattr(ports, k)}
    finally:
        stop.set()
        if session is not None:
            session.close()
        if scheduler is not None:
            scheduler.close()
        if recorder is not None:
            recorder.close()
        if ports is not None:
            ports.close()
        if clock_proc is not None:
            clock_proc.send_signal(signal.SIGINT)  # SIGTERM hangs jackd (and leaks its registry slot)
            clock_proc.wait(5)
        jack.stop()
    if not errors:
        raise BacklineError("no notes were recorded (did the melody reach live mode?)")
    abs_ms = percentiles([abs(e) * 1000 for e in errors])
    signed = percentiles([e * 1000 for e in errors])
    period_ms = jack.period_s * 1000
    sent_key = "handed_to_ports_ms" if scheduler.timed else "send_late_ms"  # timed: negative, ahead of the beat
    return {
        "model": generator.spec.name,
        "backend": f"{backend} ({'timed by JACK frames' if ports.frame_accurate else 'arrival times'})",
        "load_average_1min": load,
        "notes": len(errors),
        "notes_missing": missing,  # sent but not recorded within 0.1 s of their beat
        "jack_period_ms": period_ms,
        "abs_error_ms": abs_ms,
        "abs_error_periods": {k: v / period_ms for k, v in abs_ms.items()},
        "signed_error_p50_ms": signed["p50"],
        sent_key: {k: sends[k] for k in ("p50_ms", "p99_ms", "max_ms") if k in sends},
        "dropped_late": sends.get("dropped_late", 0),
        "bars_committed": commits.get("bars", 0),
        "min_beats_ahead_at_commit": commits.get("min_beats_ahead", float("nan")),
        "generate_p99_ms": commits.get("p99_generate_ms", float("nan")),
        "hung_notes": len(hung),
        "clock_ticks_taken_as_lost": lost_ticks,
        **{f"ports_{k}": v for k, v in port_stats.items()},
        "recorder_missed_cycles": recording.missed_cycles,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backline.bridge.bench.live",
                                     description="Live mode's timing under jack_midi_clock on a JACK server.")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--tempo", type=float, default=180.0)
    parser.add_argument("--model", default="bach")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    parser.add_argument("--commit-ahead", type=float, default=2.0)
    parser.add_argument("--backend", choices=["frames", "rtmidi"], default="frames",
                        help="the bridge's JACK ports: frame-accurate (default) or python-rtmidi's")
    parser.add_argument("--record", metavar="CLIENT", help=argparse.SUPPRESS)  # the recorder's own process
    args = parser.parse_args(argv)
    if args.record:
        return record(args.record)
    try:
        figures = measure_live_timing(args.seconds, args.tempo, args.model, args.device, args.commit_ahead,
                                      args.backend)
    except BacklineError as exc:
        print(f"bench_live: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
