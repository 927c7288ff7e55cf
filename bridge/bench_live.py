"""Live mode's timing against a real JACK server: how close to their beat positions the
notes land, measured by a third party.

Set-up: a JACK server (the one $JACK_DEFAULT_SERVER names if it runs, else a private
dummy-backend one), `jack_midi_clock -b TEMPO` as the host's clock (the transport rolls),
live mode in this process on real virtual ports (bridge/midi_ports), a melody played into
it as it goes, and a recorder (python-rtmidi MidiIn on JACK) connected to BOTH the clock's
output and 'backline out'. Every message reaches the recorder through the same JACK graph
and gets a timestamp there, so the clock ticks and the notes are measured on one time base:
a note-on due at beat B should arrive when the ticks say beat B is (interpolated between
the two ticks around it, 24 per beat). The error is reported in ms and in JACK periods:
JACK moves MIDI once per period, and python-rtmidi timestamps a whole period's events
together, so one period is the resolution of the measurement itself.

    python -m backline.bridge.bench_live --seconds 20 --tempo 180
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from backline.models.errors import BacklineError

from .jack import JackServer, missing_tool

TICKS_PER_BEAT = 24


# --------------------------------------------------------------------------- analysis


@dataclass
class Recording:
    """(time s, message) in the recorder's time base, in arrival order."""

    events: list[tuple[float, list[int]]] = field(default_factory=list)

    def ticks_after_start(self, fill_lost: bool = True) -> list[float]:
        """Times of the ticks since the last Start (tick 0 = beat 0).

        python-rtmidi's JACK input now and then loses a message under load (seen here about
        once in 300 ticks); a lost tick would shift every later beat by 1/24 beat. With
        `fill_lost`, a gap of about k tick spacings between ticks that are otherwise
        steady (the median of the 8 spacings around it) gets the k - 1 lost ticks back,
        interpolated. Only right for a steady clock (jack_midi_clock -B), as measured here."""
        starts = [i for i, (_, m) in enumerate(self.events) if m[0] == 0xFA]
        first = starts[-1] if starts else 0
        ticks = [t for t, m in self.events[first:] if m[0] == 0xF8]
        if not fill_lost or len(ticks) < 10:
            return ticks
        spacings = [b - a for a, b in zip(ticks, ticks[1:])]
        out = [ticks[0]]
        for i, gap in enumerate(spacings):
            around = sorted(spacings[max(0, i - 4):i] + spacings[i + 1:i + 5])
            usual = around[len(around) // 2]
            k = round(gap / usual)
            if k >= 2 and abs(gap - k * usual) < 0.5 * usual:
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


class Recorder:
    """A python-rtmidi JACK input that keeps everything it hears, on its own time base
    (the sum of rtmidi's delta times, which JACK's process cycles give)."""

    def __init__(self, client_name: str = "backline-recorder") -> None:
        import rtmidi

        self.recording = Recording()
        self._time = 0.0
        self._port = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name=client_name)
        self._port.ignore_types(sysex=True, timing=False, active_sense=True)
        self._port.set_callback(self._on)
        self._port.open_virtual_port("in")
        self.port = f"{client_name}:in"

    def _on(self, event, _data=None) -> None:
        message, delta = event
        self._time += delta
        self.recording.events.append((self._time, list(message)))

    def close(self) -> None:
        self._port.cancel_callback()
        self._port.close_port()
        self._port.delete()


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
                    while not stop.is_set() and clock.playing and time.monotonic() < clock.time_at(at):
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
                        commit_ahead: float = 2.0) -> dict[str, Any]:
    """Run live mode for `seconds` under jack_midi_clock at `tempo`; the figures."""
    from backline.models import registry

    from .clock import Clock
    from .live import LiveFrontend, LiveSession
    from .midi_ports import MidiPorts
    from .scheduler import Scheduler

    jack = _jack()
    clock_proc = None
    ports = recorder = session = scheduler = None
    stop = threading.Event()
    try:
        generator = registry.load(model, device=device)
        clock_proc = subprocess.Popen(["jack_midi_clock", "-b", f"{tempo:g}", "-B"], env=jack.env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        jack.wait_for_port("jack_midi_clock:mclk_out")
        ports = MidiPorts.open("jack", generator.spec.tracks, client_name="backline")
        clock = Clock(tempo=tempo)
        scheduler = Scheduler(clock, ports)
        session = LiveSession(clock, scheduler, generator, commit_ahead=commit_ahead)
        frontend = LiveFrontend(session, "midi", send=lambda *a: None, target_for=lambda s: s)
        ports.set_input_callback(frontend.on_midi)
        recorder = Recorder()
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
        expected = [(r.beat, r.channel, r.pitch) for r in list(scheduler.sent)]
        errors, missing = note_errors(recorder.recording, expected)
        commits = session.commit_stats()
        sends = scheduler.timing()
        hung = recorder.recording.hung_notes()
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
    return {
        "model": generator.spec.name,
        "notes": len(errors),
        "notes_missing": missing,  # sent but not recorded within 0.1 s of their beat
        "jack_period_ms": period_ms,
        "abs_error_ms": abs_ms,
        "abs_error_periods": {k: v / period_ms for k, v in abs_ms.items()},
        "signed_error_p50_ms": signed["p50"],
        "send_late_ms": {k: sends[k] for k in ("p50_ms", "p99_ms", "max_ms") if k in sends},
        "dropped_late": sends.get("dropped_late", 0),
        "bars_committed": commits.get("bars", 0),
        "min_beats_ahead_at_commit": commits.get("min_beats_ahead", float("nan")),
        "generate_p99_ms": commits.get("p99_generate_ms", float("nan")),
        "hung_notes": len(hung),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backline.bridge.bench_live",
                                     description="Live mode's timing under jack_midi_clock on a JACK server.")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--tempo", type=float, default=180.0)
    parser.add_argument("--model", default="bach")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    parser.add_argument("--commit-ahead", type=float, default=2.0)
    args = parser.parse_args(argv)
    try:
        figures = measure_live_timing(args.seconds, args.tempo, args.model, args.device, args.commit_ahead)
    except BacklineError as exc:
        print(f"bench_live: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
