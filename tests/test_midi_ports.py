"""Virtual MIDI ports against a real JACK server (tests/jack_server.py): the ports appear
and connect, carry exactly the bytes sent, leave no note hanging, pass the host's clock
through, and `backline serve` copes with JACK missing or going away while it serves."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backline.bridge.bench.live import FrameRecorder
from backline.bridge.midi.ports import MidiPorts
from backline.bridge.midi.common import MidiUnavailable, Routes, channel_message, output_plan, track_channel
from backline.models.spec import TrackSpec

from .fake_models import write_fixed_model
from backline.bridge.midi.jack_server import JackServer

from .jack_server import require
from .test_bridge_osc import Server

TRACKS = (TrackSpec("Bass", 32, 1), TrackSpec("Drums", 0, 9, is_drum=True), TrackSpec("Alto Sax", 65, 2))


class Recorder:
    """Everything a port sends, heard by a JACK client in a process of its own (bench_live's
    FrameRecorder). The peers live outside the test process: a python-rtmidi JACK client
    holds the GIL while it waits for the server, which stalls the frame-accurate ports'
    process callback in the same process (bridge/jack_midi)."""

    def __init__(self, jack: JackServer, source: str, name: str = "recorder") -> None:
        self.recorder = FrameRecorder(name)
        jack.wait_for_port(self.recorder.port)
        jack.connect(source, self.recorder.port)
        time.sleep(0.05)

    def messages(self, wait: float = 0.2) -> list[list[int]]:
        """Stop listening after `wait` seconds; every message heard, in order."""
        time.sleep(wait)
        return [m for _, m in self.recorder.stop().events]

    def close(self) -> None:
        self.recorder.close()


class Sender:
    """A python-rtmidi JACK output `host:clock` in a process of its own: `send(messages)`."""

    SCRIPT = ("import sys, rtmidi\n"
              "out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name='host')\n"
              "out.open_virtual_port('clock')\n"
              "print('ready', flush=True)\n"
              "for line in sys.stdin:\n"
              "    if line.strip() == 'quit':\n"
              "        break\n"
              "    for message in line.split(';'):\n"
              "        out.send_message(list(bytes.fromhex(message)))\n"
              "    print('sent', flush=True)\n"
              "out.close_port()\n"
              "out.delete()  # closes the JACK client: a client that just vanishes stalls jackd's shutdown\n")

    def __init__(self, jack: JackServer) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", self.SCRIPT], env=jack.env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.process.stdout.readline().strip() == "ready"
        self.port = "host:clock"

    def send(self, messages: list[list[int]]) -> None:
        self.process.stdin.write(";".join(bytes(m).hex() for m in messages) + "\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "sent"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
            self.process.wait(timeout=10)


@pytest.fixture(params=["frames", "rtmidi"])
def ports(jack, request):
    """Both JACK backends: the frame-accurate ports (bridge/midi/jack_ports.py) and python-rtmidi's."""
    p = MidiPorts.open("jack", TRACKS, frames=request.param == "frames")
    assert p.frame_accurate == (request.param == "frames")
    yield p
    p.close()


# --------------------------------------------------------------------------- the ports


def test_one_input_and_one_output_port_appear_in_jack(jack, ports):
    assert len(ports.port_names) == 2
    port_in, port_out = ports.port_names
    assert port_in.endswith(":backline in") and port_out.endswith(":backline out")
    assert port_in.startswith("backline") and port_out.startswith("backline")
    jack.wait_for_port(port_in)
    jack.wait_for_port(port_out)
    assert ports.healthy and ports.channels == [1, 9, 2]


def test_per_track_ports_one_output_per_track_and_retarget(jack):
    p = MidiPorts.open("jack", TRACKS, per_track_ports=True)
    try:
        shorts = [name.split(":", 1)[1] for name in p.port_names]
        assert shorts == ["backline in", "backline bass", "backline drums", "backline alto sax"]
        for name in p.port_names:
            jack.wait_for_port(name)
        bass = p.port_names[1]
        rec = Recorder(jack, bass)
        try:
            assert p.send(1, [0x90, 40, 100]) and p.send(9, [0x90, 36, 100])
            assert p.send(5, [0x90, 50, 100]) is False  # no track on channel 6
            time.sleep(0.1)
            # Another model: only a piano on channel 4. The bass note is silenced first.
            p.retarget([TrackSpec("Piano", 0, 3)])
            # (the drum note went to the drums port only)
            assert rec.messages() == [[0x91, 40, 100], [0x81, 40, 0], [0xB1, 123, 0]]
        finally:
            rec.close()
        assert [name.split(":", 1)[1] for name in p.port_names] == ["backline in", "backline piano"]
        jack.wait_for_port(p.port_names[1])
        assert bass not in jack.ports()
    finally:
        p.close()


def test_send_carries_exact_bytes_and_notes_off_silences_what_sounds(jack, ports):
    rec = Recorder(jack, ports.port_names[1])
    try:
        ports.send(1, [0x90, 40, 100])
        ports.send(track_channel(TRACKS[1]), [0x90, 36, 110])  # status channel is set by `channel`
        ports.send(1, [0x90, 43, 90])
        ports.send(1, [0x80, 40, 0])
        ports.send(2, [0xC0, 65])
        ports.notes_off()
        ports.notes_off(channels=[9])  # nothing sounds any more: only the CC
        ports.send(2, [0x90, 70, 80])  # close() silences too, then the ports go
        ports.close()
        ports.close()  # idempotent
        assert ports.send(1, [0x90, 40, 100]) is False and not ports.healthy
        assert rec.messages() == [
            [0x91, 40, 100], [0x99, 36, 110], [0x91, 43, 90], [0x81, 40, 0], [0xC2, 65],
            # Note-offs for the two notes still sounding, then All Notes Off on each used channel.
            [0x81, 43, 0], [0x89, 36, 0], [0xB1, 123, 0], [0xB2, 123, 0], [0xB9, 123, 0],
            [0xB9, 123, 0],
            [0x92, 70, 80], [0x82, 70, 0], [0xB1, 123, 0], [0xB2, 123, 0], [0xB9, 123, 0]]
    finally:
        rec.close()


def test_input_callback_gets_clock_transport_and_notes(jack, ports):
    got: queue.Queue[tuple[list[int], float]] = queue.Queue()
    ports.set_input_callback(lambda message, when: got.put((message, when)))
    sender = Sender(jack)
    try:
        jack.wait_for_port(sender.port)
        jack.connect(sender.port, ports.port_names[0])
        time.sleep(0.05)
        sent = [[0xF2, 0, 0], [0xFA], [0xF8], [0xF8], [0x90, 72, 99], [0xF8], [0xFC], [0xFB], [0x80, 72, 0]]
        before = ports.now()  # input times are on the ports' own time line
        sender.send(sent)
        received = []
        deadline = time.monotonic() + 3
        while len(received) < len(sent) and time.monotonic() < deadline:
            try:
                received.append(got.get(timeout=0.1))
            except queue.Empty:
                pass
        assert [m for m, _ in received] == sent
        # On JACK's frame line the time is the frame the message was written at, which can
        # lie a little before the frame JACK estimated for the moment of sending (the cycle
        # that carries it covers the period just gone); 0.1 s allows a late cycle on top.
        assert all(before - 0.1 <= t <= ports.now() for _, t in received), (before, received)
        assert [t for _, t in received] == sorted(t for _, t in received)
    finally:
        sender.close()


def test_jack_midi_clock_start_and_clock_arrive(jack, ports):
    clock_tool = require("jack_midi_clock", "jack-midi-clock")
    got: queue.Queue[int] = queue.Queue()
    ports.set_input_callback(lambda message, when: got.put(message[0]))
    clock = subprocess.Popen([clock_tool, "-b", "240", ports.port_names[0]], env=jack.env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not any("backline in" in c for c in _connections(jack, ports.port_names[0])):
            assert time.monotonic() < deadline, "jack_midi_clock did not connect"
            time.sleep(0.05)
        subprocess.run([require("jack_transport", "jackd2")], input="play\nquit\n", env=jack.env,
                       capture_output=True, text=True, timeout=5)
        statuses = []
        deadline = time.monotonic() + 5
        while statuses.count(0xF8) < 6 and time.monotonic() < deadline:
            try:
                statuses.append(got.get(timeout=0.1))
            except queue.Empty:
                pass
        assert 0xFA in statuses and statuses.count(0xF8) >= 6, statuses
    finally:
        clock.send_signal(signal.SIGINT)  # SIGTERM hangs jackd (and leaks its registry slot)
        clock.wait(timeout=5)


def _connections(jack: JackServer, port: str) -> list[str]:
    return [line for line in jack.run("jack_lsp", "-c", port).stdout.splitlines()]


def test_no_jack_server_is_one_quick_helpful_error(monkeypatch):
    monkeypatch.setenv("JACK_DEFAULT_SERVER", f"backline-none-{os.getpid()}")
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    start = time.monotonic()
    with pytest.raises(MidiUnavailable) as error:
        MidiPorts.open("jack", TRACKS)
    assert time.monotonic() - start < 3
    assert str(error.value).startswith("no JACK server is running")
    assert "start one (jackd -d alsa / qjackctl) or use --midi-api alsa" in str(error.value)


def test_an_api_this_platform_lacks_is_a_clear_error():
    if sys.platform == "darwin":
        pytest.skip("CoreMIDI exists on macOS")
    with pytest.raises(MidiUnavailable, match="python-rtmidi has no CoreMIDI support"):
        MidiPorts.open("coremidi", TRACKS)


# --------------------------------------------------------------------------- backline serve


@pytest.fixture(scope="module")
def fixed_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fixed") / "fixed.onnx"
    write_fixed_model(path)  # tracks Held (ch 1), Restruck (ch 2), Silent (ch 3)
    return path


def midi_server(model: Path, log: Path, env: dict[str, str], *extra: str) -> Server:
    """`backline serve --midi-api ...` in its own process, with the given environment."""
    return Server(model, log, "--no-reload", *extra, env=env)


def test_serve_opens_the_ports_and_closes_them_on_sigterm(jack, fixed_model, tmp_path):
    srv = midi_server(fixed_model, tmp_path / "serve.log", jack.env, "--midi-api", "jack")
    try:
        midi = [line for line in srv.startup if "virtual MIDI" in line]
        assert len(midi) == 1 and midi[0].startswith("backline: virtual MIDI (jack): "), srv.startup
        names = midi[0].strip().split(": ", 2)[2].split(", ")
        assert [n.split(":", 1)[1] for n in names] == ["backline in", "backline out"]
        for name in names:
            jack.wait_for_port(name)
        rec = Recorder(jack, names[1])
        srv.ping()
    finally:
        srv.stop()
    try:
        # Nothing was played, so nothing may sound: at most All Notes Off, never a note-on.
        assert all(m[0] & 0xF0 != 0x90 for m in rec.messages(0.3))
        assert not any(name in jack.ports() for name in names)
    finally:
        rec.close()
    assert "JACK" not in srv.stderr()


def test_serve_per_track_ports(jack, fixed_model, tmp_path):
    srv = midi_server(fixed_model, tmp_path / "serve.log", jack.env, "--midi-api", "jack", "--per-track-ports")
    try:
        midi = next(line for line in srv.startup if "virtual MIDI" in line)
        names = midi.strip().split(": ", 2)[2].split(", ")
        assert [n.split(":", 1)[1] for n in names] == ["backline in", "backline held", "backline restruck",
                                                        "backline silent"]
        for name in names:
            jack.wait_for_port(name)
    finally:
        srv.stop()


def test_serve_without_a_jack_server_says_so_once_and_serves_osc(fixed_model, tmp_path):
    env = {**os.environ, "JACK_DEFAULT_SERVER": f"backline-none-{os.getpid()}", "JACK_NO_START_SERVER": "1"}
    srv = midi_server(fixed_model, tmp_path / "serve.log", env, "--midi-api", "jack")
    try:
        srv.ping()
    finally:
        srv.stop()
    # One line about it (other front ends may say their own), and none of JACK's own chatter.
    lines = [line for line in srv.stderr().splitlines() if "MIDI" in line or "jack" in line.lower()]
    assert lines == [f"backline: virtual MIDI unavailable (no JACK server is running (server "
                     f"'backline-none-{os.getpid()}'); start one (jackd -d alsa / qjackctl) or use "
                     "--midi-api alsa); running with OSC only"], lines
    assert not any("virtual MIDI" in line for line in srv.startup)


def test_serve_survives_the_jack_server_going_away(jack, fixed_model, tmp_path):
    srv = midi_server(fixed_model, tmp_path / "serve.log", jack.env, "--midi-api", "jack")
    try:
        assert any("virtual MIDI (jack)" in line for line in srv.startup)
        jack.stop()
        deadline = time.monotonic() + 5
        while "JACK server went away" not in srv.stderr():
            assert time.monotonic() < deadline, srv.stderr()
            time.sleep(0.05)
        srv.ping()
        srv.ping()
    finally:
        start = time.monotonic()
        srv.stop()
    assert time.monotonic() - start < 5
    for leftover in Path("/dev/shm").glob(f"jack_sem.*_{jack.name}_*"):  # the clients never closed
        leftover.unlink(missing_ok=True)
    gone = [line for line in srv.stderr().splitlines() if "JACK" in line]
    assert gone == ["backline: the JACK server went away; virtual MIDI is off (OSC still serves); "
                    "restart backline serve once JACK runs again"], srv.stderr()


# --------------------------------------------------------------------------- frame-accurate ports


def test_frame_ports_write_each_message_at_its_frame_and_time_input_by_frame(jack):
    """bridge/jack_midi: a message sent with `at` sits at exactly that frame (checked by a
    JACK-Client recorder that reads frames itself), and input is timed by the frame the
    sender wrote it at (the recorder and the ports see jack_midi_clock's ticks at the same
    frames)."""
    clock_tool = require("jack_midi_clock", "jack-midi-clock")
    ports = MidiPorts.open("jack", TRACKS)
    recorder = FrameRecorder("frame-recorder")
    clock = subprocess.Popen([clock_tool, "-b", "180", "-B"], env=jack.env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    got: queue.Queue[tuple[list[int], float]] = queue.Queue()
    try:
        assert ports.timed and ports.frame_accurate
        ports.set_input_callback(lambda message, when: got.put((message, when)))
        jack.wait_for_port("jack_midi_clock:mclk_out")
        jack.wait_for_port(recorder.port)
        jack.connect(ports.port_names[1], recorder.port)
        jack.connect("jack_midi_clock:mclk_out", recorder.port)
        jack.connect("jack_midi_clock:mclk_out", ports.port_names[0])
        start = ports.now() + 0.2
        times = [start + i * 0.0371 for i in range(8)]  # off the period grid on purpose
        for i, at in enumerate(times):
            assert ports.send(1, [0x90, 60 + i, 100], at=at)
        jack.transport("play")
        time.sleep(0.6)
        jack.transport("stop")
        time.sleep(0.2)
        rec = recorder.stop()
        rate = ports.rate
        ons = {m[1]: t for t, m in rec.events if m[0] == 0x91}
        assert [round(ons[60 + i] * rate) for i in range(8)] == [round(at * rate) for at in times]
        heard = []
        while not got.empty():
            message, when = got.get()
            if message == [0xF8]:
                heard.append(round(when * rate))
        recorded = [round(t * rate) for t, m in rec.events if m == [0xF8]]
        assert len(heard) >= 10 and heard == recorded[:len(heard)], (heard[:5], recorded[:5])
    finally:
        recorder.close()
        ports.close()
        clock.send_signal(signal.SIGINT)  # SIGTERM hangs jackd
        clock.wait(5)


def test_frame_ports_notes_off_drops_what_is_not_out_yet(jack):
    """A panic must not be followed by notes handed over before it: notes_off() drops the
    timed messages still waiting, then silences what sounds."""
    ports = MidiPorts.open("jack", TRACKS)
    rec = Recorder(jack, ports.port_names[1])
    try:
        assert ports.send(1, [0x90, 40, 100])  # sounds at once
        assert ports.send(1, [0x90, 41, 100], at=ports.now() + 0.3)  # not out yet
        time.sleep(0.1)
        ports.notes_off()
        # The note-on at +0.3 s never came, and needed no note-off.
        assert rec.messages(0.5) == [[0x91, 40, 100], [0x81, 40, 0], [0xB1, 123, 0]]
    finally:
        rec.close()
        ports.close()


def test_routes_send_each_channel_to_its_track_port_and_strays_only_to_a_shared_one():
    tracks = [TrackSpec("Alto", 40, 0), TrackSpec("Alto", 41, 1), TrackSpec("Bass", 42, 1)]
    shared = Routes(output_plan("backline", tracks, False), False)
    assert shared.channels() == [0, 1]
    assert shared.port(0) == shared.port(1) == shared.port(9) == "backline out"
    per_track = Routes(output_plan("backline", tracks, True), True)
    assert per_track.channels() == [0, 1]
    assert (per_track.port(0), per_track.port(1)) == ("backline alto", "backline alto'")  # the first track wins
    assert per_track.port(9) is None
    assert Routes().port(0) is None and Routes().channels() == []


def test_channel_message_stamps_voice_messages_and_leaves_system_ones():
    assert channel_message(9, [0x90, 36, 100]) == [0x99, 36, 100]
    assert channel_message(2, [0x8F, 60, 0]) == [0x82, 60, 0]  # the given channel wins
    assert channel_message(5, [0xF8]) == [0xF8]  # clock: no channel
    assert channel_message(0, [0x1B0, 123, 0]) == [0xB0, 123, 0]  # bytes masked to 8 bits
    for channel, message in ((16, [0x90, 60, 1]), (-1, [0x90, 60, 1]), (0, [])):
        with pytest.raises(ValueError, match="bad MIDI channel"):
            channel_message(channel, message)
