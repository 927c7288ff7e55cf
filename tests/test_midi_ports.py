"""Virtual MIDI ports against a real JACK server (tests/jack_server.py): the ports appear
and connect, carry exactly the bytes sent, leave no note hanging, pass the host's clock
through, and `backline serve` copes with JACK missing or going away while it serves."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rtmidi

from backline.bridge.midi_ports import MidiPorts, MidiUnavailable, track_channel
from backline.models.spec import TrackSpec

from .fake_models import write_fixed_model
from backline.bridge.jack import JackServer

from .jack_server import require
from .test_bridge_osc import Server

TRACKS = (TrackSpec("Bass", 32, 1), TrackSpec("Drums", 0, 9, is_drum=True), TrackSpec("Alto Sax", 65, 2))


class Recorder:
    """A python-rtmidi input port on JACK that keeps everything it receives."""

    def __init__(self, jack: JackServer, source: str, name: str = "recorder") -> None:
        self.port = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name=name)
        self.port.ignore_types(sysex=True, timing=False, active_sense=True)
        self.messages: queue.Queue[list[int]] = queue.Queue()
        self.port.set_callback(lambda event, _: self.messages.put(event[0]))
        self.port.open_virtual_port("in")
        jack.wait_for_port(f"{name}:in")
        jack.connect(source, f"{name}:in")
        time.sleep(0.05)

    def take(self, n: int, timeout: float = 3.0) -> list[list[int]]:
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < n and (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
        return got

    def rest(self, wait: float = 0.2) -> list[list[int]]:
        time.sleep(wait)
        got = []
        while not self.messages.empty():
            got.append(self.messages.get())
        return got

    def close(self) -> None:
        self.port.close_port()
        self.port.delete()


@pytest.fixture
def ports(jack):
    p = MidiPorts.open("jack", TRACKS)
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
            assert rec.take(1) == [[0x91, 40, 100]]
            assert rec.rest() == []  # the drum note went to the drums port only
            # Another model: only a piano on channel 4. The bass note is silenced first.
            p.retarget([TrackSpec("Piano", 0, 3)])
            assert rec.take(2) == [[0x81, 40, 0], [0xB1, 123, 0]]
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
        assert rec.take(5) == [[0x91, 40, 100], [0x99, 36, 110], [0x91, 43, 90], [0x81, 40, 0], [0xC2, 65]]
        ports.notes_off()
        # Note-offs for the two notes still sounding, then All Notes Off on each used channel.
        assert rec.take(5) == [[0x81, 43, 0], [0x89, 36, 0], [0xB1, 123, 0], [0xB2, 123, 0], [0xB9, 123, 0]]
        assert rec.rest() == []
        ports.notes_off(channels=[9])  # nothing sounds any more: only the CC
        assert rec.take(1) == [[0xB9, 123, 0]]
        ports.send(2, [0x90, 70, 80])  # close() silences too, then the ports go
        ports.close()
        ports.close()  # idempotent
        assert rec.take(5, timeout=1.0) == [[0x92, 70, 80], [0x82, 70, 0],
                                              [0xB1, 123, 0], [0xB2, 123, 0], [0xB9, 123, 0]]
        assert ports.send(1, [0x90, 40, 100]) is False and not ports.healthy
    finally:
        rec.close()


def test_input_callback_gets_clock_transport_and_notes(jack, ports):
    got: queue.Queue[tuple[list[int], float]] = queue.Queue()
    ports.set_input_callback(lambda message, when: got.put((message, when)))
    sender = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="host")
    sender.open_virtual_port("clock")
    try:
        jack.wait_for_port("host:clock")
        jack.connect("host:clock", ports.port_names[0])
        time.sleep(0.05)
        sent = [[0xF2, 0, 0], [0xFA], [0xF8], [0xF8], [0x90, 72, 99], [0xF8], [0xFC], [0xFB], [0x80, 72, 0]]
        before = time.monotonic()
        for message in sent:
            sender.send_message(message)
        received = []
        deadline = time.monotonic() + 3
        while len(received) < len(sent) and time.monotonic() < deadline:
            try:
                received.append(got.get(timeout=0.1))
            except queue.Empty:
                pass
        assert [m for m, _ in received] == sent
        assert all(before <= t <= time.monotonic() for _, t in received)
    finally:
        sender.close_port()
        sender.delete()


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
        clock.terminate()
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
        assert all(m[0] & 0xF0 != 0x90 for m in rec.rest(0.3))
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
