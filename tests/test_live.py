"""Live mode: the prediction rule, the player (bridge/live/scheduler.py), the live session
(bridge/live/session.py), and `backline serve` in live mode against real peers: a real JACK
server, jack_midi_clock as the host's clock, jack_transport as the timebase master that
changes the tempo, and a python-rtmidi recorder that hears the clock and 'backline out'
on one time base.

Timing assertions here are about correctness (a note lands where its beat is, within
what JACK can resolve); the figures belong to `python -m backline.bridge.bench.live`."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import build_msg

from backline.bridge.bench.live import FrameRecorder, note_errors, time_of_beat
from backline.bridge.live.clock import Clock
from backline.bridge.midi.jack_ports import SCHEDULING_MARGIN_S
from backline.bridge.live.session import LiveSession, LiveSettings, generate_bar, predict, sample_seed, window_melody
from backline.bridge.live.scheduler import Scheduler, ScheduledNote
from backline.models.notes import Note
from backline.models.runtime import Generator

from .fake_models import write_fixed_model
from .jack_server import require
from .test_bridge_osc import Server

BACH = Path(__file__).resolve().parents[1] / "models" / "bach.onnx"


# --------------------------------------------------------------------------- fakes


class FakePorts:
    """Records what the player sends: (time, channel, message), and notes_off calls."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: list[tuple[float, int, list[int]]] = []
        self.offs: list[tuple[float, tuple | None]] = []

    def send(self, channel, message):
        with self.lock:
            self.sent.append((time.monotonic(), channel, list(message)))
        return True

    def notes_off(self, channels=None):
        with self.lock:
            self.offs.append((time.monotonic(), None if channels is None else tuple(channels)))

    def sounding(self) -> set[tuple[int, int]]:
        on = set()
        with self.lock:
            for _, channel, m in self.sent:
                if m[0] & 0xF0 == 0x90 and m[2] > 0:
                    on.add((channel, m[1]))
                elif m[0] & 0xF0 in (0x80, 0x90):
                    on.discard((channel, m[1]))
        return on

    def note_ons(self):
        with self.lock:
            return [(t, c, m[1]) for t, c, m in self.sent if m[0] & 0xF0 == 0x90 and m[2] > 0]


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def play_melody(session: LiveSession, playing: threading.Event, seconds_per_note: float = 0.1) -> None:
    """A melody played into the session as it goes, until `playing` is cleared."""
    i = 0
    while playing.is_set():
        pitch = (70, 72, 74, 72)[i % 4]
        session.note_on(pitch, 100)
        time.sleep(seconds_per_note * 0.8)
        session.note_on(pitch, 0)
        time.sleep(seconds_per_note * 0.2)
        i += 1


@pytest.fixture(scope="module")
def fixed_generator(tmp_path_factory) -> Generator:
    path = tmp_path_factory.mktemp("live") / "fixed.onnx"
    write_fixed_model(path)
    return Generator(path, device="cpu")


# --------------------------------------------------------------------------- the prediction rule


def test_prediction_repeats_the_last_period_heard():
    heard = [Note(60, 0.0, 1.0), Note(62, 1.0, 1.0), Note(64, 2.0, 1.0), Note(65, 3.0, 1.0),
             Note(67, 4.0, 1.0), Note(69, 5.0, 0.5)]
    # Heard up to beat 6 (two beats before the bar at 8); a bar (4 beats) is the period.
    predicted = predict(heard, 6.0, 12.0, 4.0)
    assert [(n.pitch, n.start) for n in predicted] == [(64, 6.0), (65, 7.0), (67, 8.0), (69, 9.0),
                                                       (64, 10.0), (65, 11.0)]
    # With a loop of 6 beats set, beat x repeats beat x - 6.
    looped = predict(heard, 6.0, 12.0, 6.0)
    assert [(n.pitch, n.start) for n in looped] == [(60, 6.0), (62, 7.0), (64, 8.0), (65, 9.0),
                                                    (67, 10.0), (69, 11.0)]
    assert predict([], 6.0, 12.0, 4.0) == [] and predict(heard, 6.0, 6.0, 4.0) == []


def test_window_melody_cuts_heard_notes_at_the_playhead_and_shifts_to_the_window():
    heard = [Note(60, 2.0, 1.0), Note(62, 5.5, 2.0)]  # the second is still sounding at 6
    window = window_melody(heard, 6.0, 0.0, 8.0, 4.0)
    assert Note(60, 2.0, 1.0) in window and Note(62, 5.5, 0.5) in window
    assert any(n.pitch == 62 and n.start == pytest.approx(6.0) for n in window) is False
    assert [n for n in window if n.start >= 6.0] == [Note(60, 6.0, 1.0)]  # beat 2 one bar on


# --------------------------------------------------------------------------- the player


@contextlib.contextmanager
def playing(ports: FakePorts | None = None):
    """A clock started at beat 0 at 600 BPM (a beat is 0.1 s) and a player on `ports`
    (fresh FakePorts unless given), as (clock, ports, player); the player is closed after."""
    ports = ports if ports is not None else FakePorts()
    clock = Clock(tempo=600.0)
    player = Scheduler(clock, ports)
    try:
        clock.start(0.0)
        yield clock, ports, player
    finally:
        player.close()


def test_scheduler_plays_in_order_and_silences_on_stop():
    with playing() as (clock, ports, player):
        t0 = clock.time_at(0.0)
        player.add([ScheduledNote(1, 60, 1.0, 2.0), ScheduledNote(2, 48, 1.0, 3.0),
                    ScheduledNote(1, 62, 2.0, 2.5), ScheduledNote(3, 40, 4.0, 40.0)])
        wait_until(lambda: len(ports.note_ons()) == 4)
        time.sleep(0.05)
        sent = [(c, m[0] & 0xF0, m[1]) for _, c, m in ports.sent]
        assert sent == [(1, 0x90, 60), (2, 0x90, 48), (1, 0x80, 60), (1, 0x90, 62), (1, 0x80, 62),
                        (2, 0x80, 48), (3, 0x90, 40)]
        for (t, channel, pitch), beat in zip(ports.note_ons(), (1.0, 1.0, 2.0, 4.0)):
            assert abs(t - (t0 + beat * 0.1)) < 0.01, (channel, pitch)  # generous: correctness only
        clock.stop()
        player.panic()  # what the live session does on stop
        assert ports.sounding() == set()
        assert ports.offs and ports.offs[-1][1] is None  # All Notes Off on every used channel
        assert player.pending() == 0


def test_scheduler_follows_a_tempo_change_while_waiting():
    with playing() as (clock, ports, player):
        player.add([ScheduledNote(1, 60, 3.0, 3.5)])
        time.sleep(0.1)  # at beat 1; the note was due 0.2 s from here
        changed = time.monotonic()
        clock.set_tempo(300.0, t=changed)  # now due 0.4 s from here
        wait_until(lambda: ports.note_ons())
        t, _, _ = ports.note_ons()[0]
        # Beat 3 was about 0.2 s away at 600 BPM; at 300 BPM it is twice that.
        assert t - changed > 0.3
        assert abs(t - clock.time_at(3.0)) < 0.005


def test_scheduler_sends_early_by_the_ports_output_latency():
    """JACK plays what is sent at the next period's start: the player sends that much early."""
    ports = FakePorts()
    ports.output_latency_s = 0.03
    with playing(ports) as (clock, ports, player):
        player.add([ScheduledNote(1, 60, 2.0, 2.5)])
        wait_until(lambda: ports.note_ons())
        t, _, _ = ports.note_ons()[0]
        assert abs(t - (clock.time_at(2.0) - 0.03)) < 0.005


class FakeTimedPorts(FakePorts):
    """Ports that place each message at its time themselves (like bridge/jack_midi)."""

    timed = True
    schedule_ahead_s = 0.05

    def __init__(self) -> None:
        super().__init__()
        self.handed: list[tuple[float, list[int], float | None]] = []  # (when handed, message, at)

    def send(self, channel, message, at=None):
        with self.lock:
            self.handed.append((time.monotonic(), list(message), at))
        return super().send(channel, message)


def test_scheduler_hands_timed_ports_each_note_ahead_with_its_time():
    with playing(FakeTimedPorts()) as (clock, ports, player):
        player.add([ScheduledNote(1, 60, 2.0, 2.5)])
        player.all_off_at(4.0, [1])
        wait_until(lambda: len(ports.handed) == 2 and ports.offs, timeout=5)
        (t_on, on, at_on), (t_off, off, at_off) = ports.handed
        assert on[0] & 0xF0 == 0x90 and at_on == pytest.approx(clock.time_at(2.0))
        assert off[0] & 0xF0 == 0x80 and at_off == pytest.approx(clock.time_at(2.5))
        # Handed over before its time, but not before schedule_ahead_s ahead of it.
        assert at_on - 0.05 - 1e-3 <= t_on < at_on
        # All Notes Off is never handed over ahead: it must not cut the notes before it short.
        t_all_off = ports.offs[0][0]
        assert t_all_off >= clock.time_at(4.0) - 1e-3


def test_scheduler_ties_a_note_on_and_ends_the_old_model_at_the_bar():
    with playing() as (clock, ports, player):
        player.add([ScheduledNote(1, 48, 1.0, 2.0)])
        assert player.tie(1, 48, 2.0, 3.0) and not player.tie(1, 48, 2.0, 4.0)
        retargeted = []
        player.all_off_at(3.0, [1], then=lambda: retargeted.append(time.monotonic()))
        player.add([ScheduledNote(5, 70, 3.0, 3.5)])
        wait_until(lambda: len(ports.note_ons()) == 2)
        time.sleep(0.1)
        ons = ports.note_ons()
        off = [t for t, c, m in ports.sent if m[0] & 0xF0 == 0x80 and m[1] == 48]
        assert len(off) == 1 and off[0] == pytest.approx(clock.time_at(3.0), abs=0.01)  # held 1 -> 3
        assert ports.offs[0][1] == (1,) and retargeted and retargeted[0] <= ons[1][0]


# --------------------------------------------------------------------------- the session


def test_live_session_commits_ahead_ties_and_silences(fixed_generator):
    clock = Clock(tempo=480.0)  # 0.125 s per beat, 0.5 s per bar
    ports = FakePorts()
    player = Scheduler(clock, ports)
    session = LiveSession(clock, player, fixed_generator, commit_ahead=2.0)
    try:
        clock.start(0.0)
        playing = threading.Event()
        playing.set()
        melody = threading.Thread(target=play_melody, args=(session, playing), daemon=True)
        melody.start()
        wait_until(lambda: any(r.bar >= 4 for r in session.commits), timeout=10)
        playing.clear()
        melody.join()
        ahead = [r for r in session.commits if not r.catch_up]
        assert ahead and all(r.beats_ahead > 1.0 for r in ahead)  # committed before due
        start, end, tracks = session.plan()
        assert end > start and len(tracks) == 3
        # The fixed model holds pitch 48 on track 0: tied across bar lines into one note.
        assert [n.pitch for n in tracks[0]] == [48] and tracks[0][0].end == end
        assert not tracks[2]
        wait_until(lambda: (1, 48) in ports.sounding())
        clock.stop()
        assert ports.sounding() == set() and ports.offs
        assert len([1 for _, c, p in ports.note_ons() if (c, p) == (1, 48)]) == 1  # held, not restruck
    finally:
        session.close()
        player.close()


def test_live_session_swaps_the_model_at_a_bar_line(fixed_generator, tmp_path):
    other_path = tmp_path / "other.onnx"
    write_fixed_model(other_path)
    other = Generator(other_path, device="cpu")
    clock = Clock(tempo=480.0)
    ports = FakePorts()
    player = Scheduler(clock, ports)
    session = LiveSession(clock, player, fixed_generator, commit_ahead=2.0)
    try:
        clock.start(0.0)
        session.note_on(72, 100)
        wait_until(lambda: len(session.commits) >= 2, timeout=10)
        session.swap_model(other)
        wait_until(lambda: any(c is not None for _, c in ports.offs), timeout=10)
        t_off, channels = next((t, c) for t, c in ports.offs if c is not None)
        assert channels == (1, 2, 3)
        bar = round(clock.beat_at(t_off) / 4)
        assert abs(t_off - clock.time_at(bar * 4.0)) < 0.02  # at a bar line
        wait_until(lambda: any(t > t_off for t, _, _ in ports.note_ons()), timeout=5)  # the new model plays
    finally:
        session.close()
        player.close()
    assert ports.sounding() == set()


# --------------------------------------------------------------------------- serve, real peers


class OscClient:
    def __init__(self, port: int) -> None:
        self.server = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.got: list[OscMessage] = []

    def send(self, address: str, *args) -> None:
        self.sock.sendto(build_msg(address, list(args)).dgram, self.server)

    def messages(self, seconds: float) -> Iterator[OscMessage]:
        """Every message that arrives in the next `seconds`, as it arrives."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data, _ = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            yield OscMessage(data)

    def receive(self, until: str, timeout: float = 5.0) -> list[OscMessage]:
        """Messages up to and including the first with address `until`."""
        out = []
        for message in self.messages(timeout):
            out.append(message)
            if message.address == until:
                return out
        raise AssertionError(f"no {until}; got {[m.address for m in out]}")

    def plan(self) -> tuple[tuple, dict[int, list[Note]]]:
        self.send("/backline/live/plan")
        messages = self.receive("/backline/live/plan/end")
        begin = next(m for m in messages if m.address == "/backline/live/plan/begin")
        tracks: dict[int, list[Note]] = {}
        for m in messages:
            if m.address == "/backline/live/plan/notes":
                values = m.params[1:]
                tracks.setdefault(m.params[0], []).extend(
                    Note(values[i], values[i + 1], values[i + 2], values[i + 3], bool(values[i + 4]))
                    for i in range(0, len(values), 5))
        return tuple(begin.params), tracks

    def close(self) -> None:
        self.sock.close()


def test_serve_internal_clock_over_osc(tmp_path):
    """No MIDI at all: the melody and the transport over OSC, the plan answered."""
    model = tmp_path / "fixed.onnx"
    write_fixed_model(model)
    server = Server(model, tmp_path / "serve.log", "--midi-api", "none", "--clock", "internal",
                    "--tempo", "240", "--no-reload")
    client = OscClient(server.port)
    try:
        for pitch in (70, 72, 74, 75, 77, 75):  # 1.5 s of melody at 240 BPM: six beats
            client.send("/backline/live/note", pitch, 100)
            time.sleep(0.2)
            client.send("/backline/live/note", pitch, 0)
            time.sleep(0.05)
        time.sleep(0.8)
        (start, end, n_tracks), tracks = client.plan()
        assert n_tracks == 3 and end > start
        assert [n.pitch for n in tracks.get(0, [])] == [48] and all(n.pitch == 55 for n in tracks.get(1, []))
        assert tracks[0][0].start <= start < tracks[0][0].end  # what sounds now, in absolute beats
        client.send("/backline/transport/tempo", 90.0)
        client.send("/backline/transport/position", 64.0)
        client.send("/backline/transport/tempo", "fast")
        error = client.receive("/backline/error")[-1]
        assert error.params[1] == "bad_args"
        (start, end, _), tracks = client.plan()
        assert 64.0 <= start < 66.0  # located; nothing heard there yet and at 90 BPM
        client.send("/backline/live/subscribe", 1)
        client.send("/backline/transport/play", 0.0)
        client.send("/backline/live/note", 70, 100)
        pushed = client.receive("/backline/live/plan/end", timeout=5)  # pushed at a commit
        assert pushed[0].address == "/backline/live/plan/begin"
        client.send("/backline/transport/stop")
        client.send("/backline/ping", "p")
        assert client.receive("/backline/pong")[-1].params[0] == "p"
    finally:
        client.close()
        server.stop()


def _out_port(jack_server, suffix: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [p for p in jack_server.ports() if p.endswith(":" + suffix)]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no JACK port ending in {suffix}: {jack_server.ports()}")


@contextlib.contextmanager
def _band_on_jack_clock(jack_server, tmp_path: Path, *clock_args: str):
    """`jack_midi_clock CLOCK_ARGS` driving `backline serve --clock midi` on JACK, a frame
    recorder hearing both the ticks and the band, and an OSC client subscribed to the
    plan: (server, client, recorder). Everything is stopped afterwards."""
    clock_proc = subprocess.Popen(["jack_midi_clock", *clock_args], env=jack_server.env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server(BACH, tmp_path / "serve.log", "--midi-api", "jack", "--clock", "midi", "--no-reload")
    client = OscClient(server.port)
    recorder = FrameRecorder("test-recorder")
    try:
        jack_server.wait_for_port("jack_midi_clock:mclk_out")
        backline_in, backline_out = _out_port(jack_server, "backline in"), _out_port(jack_server, "backline out")
        for source, destination in (("jack_midi_clock:mclk_out", backline_in),
                                    ("jack_midi_clock:mclk_out", recorder.port), (backline_out, recorder.port)):
            jack_server.connect(source, destination)
        client.send("/backline/live/subscribe", 1)
        yield server, client, recorder
    finally:
        recorder.close()
        client.close()
        server.stop()
        clock_proc.send_signal(signal.SIGINT)  # SIGTERM hangs jackd (and leaks its registry slot)
        clock_proc.wait(5)


def test_serve_follows_jack_midi_clock(jack, tmp_path):
    """jack_midi_clock drives `backline serve --clock midi`; the recorder hears the ticks
    and the band in JACK frames. Every note lands at its planned beat, within one JACK
    period (the ports write at the exact frame; a message handed over too late would go
    out at the next cycle's start, up to a period late); stop leaves nothing sounding.
    (A tempo change through JACK: the next test.)"""
    require("jack_midi_clock", "jack-midi-clock")
    with _band_on_jack_clock(jack, tmp_path, "-b", "120", "-B") as (server, client, recorder):
        subprocess.run(["jack_transport"], input="play\nquit\n", env=jack.env, text=True, capture_output=True,
                       timeout=10)
        planned: set[tuple[int, int, float]] = set()
        _play_and_collect(client, planned, 6.0)  # a melody over OSC; the plan pushed back at each commit
        subprocess.run(["jack_transport"], input="stop\nquit\n", env=jack.env, text=True, capture_output=True,
                       timeout=10)
        time.sleep(0.5)
        rec = recorder.recording
        assert any(m[0] == 0xFC for _, m in rec.events), "jack_midi_clock sent no Stop"
        stop_at = next(t for t, m in rec.events if m[0] == 0xFC)
        channels = {0: 1, 1: 2, 2: 3}  # the bach model's tracks
        expected = sorted((start, channels[k], pitch) for k, pitch, start in planned)
        errors, _ = note_errors(rec, expected, max_error_s=0.05)
        ons = [o for o in rec.note_ons() if o[0] < stop_at]
        assert len(ons) >= 8, f"too few notes played: {ons}"
        # Every note played was in the plan, at its beat (no wrong or stray notes).
        assert len(errors) == len(ons), (len(errors), len(ons))
        period = rec.period_s
        worst = sorted((round(e * 1000, 2) for e in errors), key=abs)[-5:]
        assert all(abs(e) <= period for e in errors), f"worst errors (ms): {worst}; a period is {period * 1000:.2f} ms"
        # Stop: All Notes Off, and nothing left sounding.
        after = [m for t, m in rec.events if t >= stop_at]
        assert any(m[0] & 0xF0 == 0xB0 and m[1] == 123 for m in after), after
        assert rec.hung_notes() == set()
        assert "Traceback" not in server.stderr()


MELODY = [72, 74, 76, 77, 79, 77, 76, 74]


def _play_and_collect(client: OscClient, planned: set[tuple[int, int, float]], seconds: float,
                      note_s: float = 0.3) -> None:
    """Play a melody over OSC (a note every `note_s`) for `seconds`, reading the plans
    pushed to the subscriber meanwhile: (track, pitch, start beat) into `planned`."""
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        pitch = MELODY[i % len(MELODY)]
        client.send("/backline/live/note", pitch, 100)
        for m in client.messages(note_s):
            if m.address == "/backline/live/plan/notes":
                v = m.params[1:]
                planned.update((m.params[0], v[j], round(v[j + 1], 6)) for j in range(0, len(v), 5))
        client.send("/backline/live/note", pitch, 0)
        i += 1


def test_a_tempo_change_through_jack_moves_the_notes_to_the_new_grid(jack, tmp_path):
    """jack_transport is the JACK timebase master; jack_midi_clock follows its tempo and
    drives `backline serve --clock midi`. Mid-run the master goes from 120 to 150 BPM. The
    recorder (JACK frames) hears the ticks and the band: every note-on after the change
    sits where the NEW ticks put its beat, and stop leaves nothing sounding.

    Tolerance, from the design: the follower notices a tempo change after 3 ticks off its
    line (jump_run) and has an exact line again from the fresh ticks 2 ticks later; notes
    handed to the port before that (schedule_ahead_s: 2 periods + a margin early) still
    follow the old line. Notes due after that window must land within one JACK period of
    their beat: the port writes at the exact frame, and a message handed over too late
    goes out at the start of the next cycle."""
    require("jack_midi_clock", "jack-midi-clock")
    require("jack_transport", "jackd2")
    with (contextlib.closing(jack.timebase_master(120)) as master,
          _band_on_jack_clock(jack, tmp_path, "-b", "120") as (server, client, recorder)):
        planned: set[tuple[int, int, float]] = set()
        master.play()
        _play_and_collect(client, planned, 4.0)
        master.tempo(150)
        _play_and_collect(client, planned, 4.5)
        master.stop()
        time.sleep(0.5)
        rec = recorder.recording
        assert any(m[0] == 0xFC for _, m in rec.events), "jack_midi_clock sent no Stop"
        ticks = rec.ticks_after_start()
        spacings = [b - a for a, b in zip(ticks, ticks[1:])]
        old, new = 60 / (120 * 24), 60 / (150 * 24)
        changed = next(i for i, s in enumerate(spacings) if abs(s - new) < 0.1 * new)
        assert all(abs(s - old) < 0.01 * old for s in spacings[:changed - 1]), "the clock was not steady at 120"
        assert all(abs(s - new) < 0.01 * new for s in spacings[changed + 1:]), "the clock was not steady at 150"
        period = rec.period_s
        settled = ticks[changed] + 5 * new + 2 * period + SCHEDULING_MARGIN_S  # 3 + 2 ticks, plus the hand-over lead
        channels = {0: 1, 1: 2, 2: 3}  # the bach model's tracks
        expected = [(start, channels[k], pitch) for k, pitch, start in planned]
        errors, _ = note_errors(rec, expected, max_error_s=0.05)
        stop_at = next(t for t, m in rec.events if m[0] == 0xFC)
        after = [o for o in rec.note_ons() if settled <= o[0] < stop_at]
        assert len(after) >= 8, f"too few notes after the change: {len(after)}"
        # Each note-on after the window, against its planned beat on the new ticks.
        due = {}
        for beat, channel, pitch in expected:
            at = time_of_beat(ticks, beat)
            if at is not None:
                due.setdefault((channel, pitch), []).append(at)
        misses = []
        for t, channel, pitch in after:
            nearest = min(due.get((channel, pitch), [float("inf")]), key=lambda d: abs(d - t))
            if abs(t - nearest) > period:
                misses.append((round(t - ticks[changed], 3), channel, pitch, round((t - nearest) * 1000, 2)))
        assert not misses, f"note-ons off the new grid by more than a period ({period * 1000:.2f} ms): {misses}"
        # A note d seconds after the change would be d * (old / new - 1) later on the old
        # grid: more than a period for every note checked, so the test tells the two apart.
        assert (settled - ticks[changed]) * (old / new - 1) > period
        assert changed / 24 > 4, "the tempo changed before the band had played a bar"
        # Every note played before the stop was planned, at its beat (no stray notes).
        assert len(errors) == len([o for o in rec.note_ons() if o[0] < stop_at])
        after_stop = [m for t, m in rec.events if t >= stop_at]
        assert any(m[0] & 0xF0 == 0xB0 and m[1] == 123 for m in after_stop), "no All Notes Off at stop"
        assert rec.hung_notes() == set()
        assert "Traceback" not in server.stderr()


# --------------------------------------------------------------------------- live settings


def test_live_session_takes_its_settings_at_the_next_commit(fixed_generator):
    """The session reads its settings at each commit: a new seed draws new noise there."""
    clock = Clock(tempo=480.0)
    player = Scheduler(clock, FakePorts())
    wanted = LiveSettings()
    session = LiveSession(clock, player, fixed_generator, settings_source=lambda: wanted)
    try:
        clock.start(0.0)
        session.note_on(72, 100)
        wait_until(lambda: len(session.commits) >= 1, timeout=10)
        assert session.settings == LiveSettings()
        wanted = LiveSettings(seed=5, threshold=0.7, sample=True)
        committed = len(session.commits)
        wait_until(lambda: len(session.commits) > committed + 1, timeout=10)
        assert session.settings == wanted
        assert np.array_equal(session._z, fixed_generator.draw_z(5, 1))
    finally:
        session.close()
        player.close()


def _bar_coverage(tracks: dict[int, list[Note]], bar: int, beats_per_bar: int = 4,
                  steps_per_beat: int = 4) -> dict[int, set[tuple[int, int]]]:
    """Per track, the (pitch, step) cells that sound in `bar`: the same whether a note was
    struck in the bar or tied over from the bar before."""
    start, end = bar * beats_per_bar, (bar + 1) * beats_per_bar
    cover: dict[int, set[tuple[int, int]]] = {}
    for k, notes in tracks.items():
        cells = set()
        for n in notes:
            first = max(n.start, start)
            last = min(n.start + n.duration, end)
            step = math.ceil((first - start) * steps_per_beat - 1e-6)
            while start + step / steps_per_beat < last - 1e-6:
                cells.add((n.pitch, step))
                step += 1
        cover[k] = cells
    return cover


class PlanWatcher:
    """A subscribed OscClient: the coverage of each bar as it is committed (from the pushed
    plans), and the errors that came back."""

    def __init__(self, client: OscClient) -> None:
        self.client = client
        self.bars: dict[int, dict[int, set[tuple[int, int]]]] = {}
        self.errors: list[tuple] = []
        self._begin: tuple | None = None
        self._tracks: dict[int, list[Note]] = {}

    def pump(self, seconds: float) -> None:
        for m in self.client.messages(seconds):
            if m.address == "/backline/error":
                self.errors.append(tuple(m.params))
            elif m.address == "/backline/live/plan/begin":
                self._begin, self._tracks = tuple(m.params), {}
            elif m.address == "/backline/live/plan/notes":
                v = m.params[1:]
                self._tracks.setdefault(m.params[0], []).extend(
                    Note(v[i], v[i + 1], v[i + 2], v[i + 3]) for i in range(0, len(v), 5))
            elif m.address == "/backline/live/plan/end" and self._begin is not None:
                _, to_beat, n_tracks = self._begin
                bar = round(to_beat / 4) - 1  # the bar just committed
                tracks = {k: self._tracks.get(k, []) for k in range(n_tracks)}
                self.bars[bar] = _bar_coverage(tracks, bar)

    def bars_after(self, seconds: float, skip: int = 2) -> list[int]:
        """Pump for `seconds`; the bars committed meanwhile, less the first `skip` (a
        setting applies from the next bar not committed yet)."""
        known = set(self.bars)
        self.pump(seconds)
        return sorted(b for b in self.bars if b not in known)[skip:]

    def wait_error(self, code: str, timeout: float = 3.0) -> tuple:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.errors if e[1] == code]
            if found:
                self.errors.clear()
                return found[0]
            self.pump(0.1)
        raise AssertionError(f"no /backline/error {code}; got {self.errors}")


def _expected_coverage(generator: Generator, seed: int, bar: int, sample: bool,
                       threshold: float | None) -> dict[int, set[tuple[int, int]]]:
    """What the fixed model (which ignores its input) plays in `bar` with these settings."""
    spec = generator.spec
    window_start = (bar + 1) * spec.beats_per_bar - spec.window_beats
    window = [Note(72, 0.0, 2.0, 100)]
    draws = sample_seed(seed, bar) if sample else None
    result = generate_bar(generator, window, window, window_start, generator.draw_z(seed, 1), threshold, draws)
    return _bar_coverage(dict(enumerate(result.tracks)), bar)


def test_live_mode_plays_with_the_settings_of_the_client_that_drives_it(tmp_path):
    """A real OSC client drives live mode (internal clock, melody over OSC). Its settings,
    by /backline/live/set and by plain /backline/set, change the planned bars from the next
    bar on: the model (bach -> fixed), the threshold, sampling with a seed. A bad value is
    answered with /backline/error and the session plays on unchanged; another client's
    settings do not touch live mode."""
    models = tmp_path / "models"
    models.mkdir()
    write_fixed_model(models / "fixed.onnx")  # Held: 48, Restruck: 55, both at p = 0.9; Silent
    fixed = Generator(models / "fixed.onnx", device="cpu")
    env = {**os.environ, "BACKLINE_MODELS": str(models)}
    server = Server(BACH, tmp_path / "serve.log", "--midi-api", "none", "--clock", "internal",
                    "--tempo", "240", "--no-reload", env=env)
    driver, other = OscClient(server.port), OscClient(server.port)
    watch = PlanWatcher(driver)
    try:
        driver.send("/backline/reply_to")  # replies to this socket, whatever else runs on the host
        other.send("/backline/reply_to")
        driver.send("/backline/live/subscribe", 1)
        driver.send("/backline/live/note", 72, 100)  # held throughout; this client now drives
        bach_bars = watch.bars_after(2.5, skip=1)
        assert bach_bars, "no bars committed"
        fixed_cells = {0: {(48, s) for s in range(16)}, 1: {(55, s) for s in range(16)}, 2: set()}
        assert all(watch.bars[b] != fixed_cells for b in bach_bars)  # bach plays something else

        driver.send("/backline/live/set", "model", "fixed")
        bars = watch.bars_after(3.0)
        assert bars and all(watch.bars[b] == fixed_cells for b in bars), [watch.bars[b] for b in bars]

        driver.send("/backline/set", "threshold", 0.95)  # above the fixed model's 0.9: silence
        bars = watch.bars_after(3.0)
        assert bars and all(watch.bars[b] == {0: set(), 1: set(), 2: set()} for b in bars)

        driver.send("/backline/live/set", "threshold", "")  # back to the model's own
        driver.send("/backline/live/set", "seed", 3)
        driver.send("/backline/live/set", "sample", 1)
        bars = watch.bars_after(3.0)
        assert bars
        for b in bars:  # drawn, with this seed, bar by bar
            assert watch.bars[b] == _expected_coverage(fixed, 3, b, True, None), b
        assert any(watch.bars[b] != fixed_cells for b in bars)  # the draws really left gaps

        driver.send("/backline/live/set", "threshold", 2.0)
        assert "threshold" in watch.wait_error("bad_args")[2]
        driver.send("/backline/live/set", "model", "nosuch")
        assert "nosuch" in watch.wait_error("model")[2]
        driver.send("/backline/live/set", "tempo", 100.0)
        assert "/backline/transport/tempo" in watch.wait_error("bad_args")[2]
        other.send("/backline/set", "seed", 9)  # not the driver: live mode does not follow it
        bars = watch.bars_after(3.0)
        assert bars
        for b in bars:  # still playing, with the last good settings
            assert watch.bars[b] == _expected_coverage(fixed, 3, b, True, None), b

        driver.send("/backline/live/set", "seed", 4)
        bars = watch.bars_after(3.0)
        assert bars and all(watch.bars[b] == _expected_coverage(fixed, 4, b, True, None) for b in bars)
        assert any(_expected_coverage(fixed, 4, b, True, None) != _expected_coverage(fixed, 3, b, True, None)
                   for b in bars)  # the seed made a difference the test can see
        assert "Traceback" not in server.stderr()
    finally:
        driver.close()
        other.close()
        server.stop()
