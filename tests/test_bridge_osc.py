"""The OSC clip mode of `backline serve`, against real processes and real peers: the
server runs as a subprocess, `backline send` as another, liblo's `oscsend`/`oscdump` as
an OSC client and server nobody here wrote, and plain sockets for what no client would
ever send. After every kind of bad input the server must still answer ping."""

from __future__ import annotations

import math
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import mido
import pytest
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import build_msg

from backline.bridge.osc import protocol
from backline.models.midi import midi_bytes, read_midi, write_midi
from backline.models.notes import Note
from backline.models.spec import TrackSpec

from .conftest import run_backline

# The fixed model (tests/fake_models.py): 8-beat windows; track 0 holds pitch 48 as one
# note over the whole melody, track 1 restrikes pitch 55 at every window, track 2 is silent.
MELODY_30 = [Note(68 + (i % 5), float(i), 1.0) for i in range(30)]  # centred on the trained range


# The band follows the melody's dynamics (models/voicing.py): these melodies play at
# velocity 100, and every note here starts on a downbeat (accent 1.1).
ACCENTED = 110


def held(length: float) -> list[Note]:
    return [Note(48, 0.0, length, ACCENTED)]


def restruck(length: float) -> list[Note]:
    starts = range(0, math.ceil(length), 8)
    return [Note(55, float(s), min(8.0, length - s), ACCENTED) for s in starts]


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bind_below_ephemeral(sock: socket.socket) -> None:
    """Bind to a free loopback port below the kernel's ephemeral range. The server keeps a
    client's `reply_to` pin after its socket closes; oscsend sends from an ephemeral port,
    and one that happened to reuse a closed test client's port would have its replies
    routed by that client's stale pin instead of the liblo session's reply_to."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    rng = random.Random()
    for _ in range(200 if low > 11000 else 0):
        try:
            sock.bind(("127.0.0.1", rng.randrange(10000, low)))
            return
        except OSError:
            continue
    sock.bind(("127.0.0.1", 0))


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} not found: install the Debian package liblo-tools (apt-get install liblo-tools)")
    return path


class Server:
    """`backline serve` in its own process, ready once it prints where it listens."""

    def __init__(self, model: Path, log: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backline.bridge.cli", "serve", "--model", str(model),
             "--osc-port", str(self.port), "--device", "cpu", *extra],
            stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stdout], daemon=True).start()
        self.startup: list[str] = []  # everything printed up to and including the banner
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.proc.poll() is None, f"serve exited: {self.stderr()}"
                continue
            self.startup.append(line)
            if "listening" in line:
                self.banner = line
                return
        raise AssertionError(f"serve did not start: {self.stderr()}")

    def stderr(self) -> str:
        return self.log.read_text()

    def ping(self) -> None:
        client = Client(self.port)
        try:
            client.ping_after("alive")
        finally:
            client.close()

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM must end it cleanly: exit 0, 'backline: stopped', no traceback."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=timeout) == 0, self.stderr()
        rest = []
        while not self.lines.empty():
            rest.append(self.lines.get())
        assert "backline: stopped\n" in rest
        assert "Traceback" not in self.stderr(), self.stderr()


class Client:
    """A bound UDP socket: what a DAW script would use."""

    def __init__(self, port: int) -> None:
        self.server = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        bind_below_ephemeral(self.sock)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    def send(self, address: str, *args) -> None:
        self.sock.sendto(build_msg(address, list(args)).dgram, self.server)

    def raw(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def send_notes(self, clip_id, notes, per_message: int = 200) -> None:
        for i in range(0, len(notes), per_message):
            self.send("/backline/clip/notes", clip_id, *(v for n in notes[i:i + per_message]
                                                         for v in (n.pitch, float(n.start), float(n.duration), n.velocity, int(n.mute))))
            time.sleep(0.0005)

    def receive_until(self, done, timeout: float = 10.0) -> list[OscMessage]:
        """Messages up to and including the first for which done(msg) holds."""
        got = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                msg = OscMessage(self.sock.recvfrom(65535)[0])
            except socket.timeout:
                break
            got.append(msg)
            if done(msg):
                return got
        raise AssertionError(f"timed out; received {[(m.address, m.params[:3]) for m in got]}")

    def ping_after(self, tag: str = "after") -> list[OscMessage]:
        """Everything that arrives before the pong of a fresh ping: proves the server lives."""
        self.send("/backline/ping", tag)
        got = self.receive_until(lambda m: m.address == "/backline/pong" and m.params[0] == tag)
        return got[:-1]

    def clip(self, clip_id, notes, length: float) -> list[OscMessage]:
        self.send("/backline/clip/begin", clip_id, float(length))
        self.send_notes(clip_id, notes)
        self.send("/backline/clip/end", clip_id)
        return self.receive_until(lambda m: m.address in ("/backline/accomp/end", "/backline/error")
                                  and m.params[0] == clip_id)

    def close(self) -> None:
        self.sock.close()


def accompaniment(messages: list[OscMessage]) -> dict[int, list[Note]]:
    out: dict[int, list[Note]] = {}
    for m in messages:
        if m.address == "/backline/accomp/notes":
            v = m.params[2:]
            out.setdefault(m.params[1], []).extend(
                Note(v[i], v[i + 1], v[i + 2], v[i + 3], bool(v[i + 4])) for i in range(0, len(v), 5))
    return out


def errors(messages: list[OscMessage]) -> list[tuple]:
    return [tuple(m.params[:2]) for m in messages if m.address == "/backline/error"]


@pytest.fixture(scope="module")
def server(fixed_model, tmp_path_factory):
    srv = Server(fixed_model, tmp_path_factory.mktemp("serve") / "serve.log")
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    c = Client(server.port)
    yield c
    c.close()


# --------------------------------------------------------------------------- serve + send


def test_serve_says_where_it_listens(server):
    assert server.banner == f"backline: listening on osc.udp://127.0.0.1:{server.port}, model fixed on CPUExecutionProvider\n"


def test_send_writes_the_melody_and_the_models_tracks(server, tmp_path):
    melody = tmp_path / "tune.mid"
    write_midi(melody, None, [(TrackSpec("Lead", 73, 0), MELODY_30)], tempo_bpm=100, time_signature=(3, 4))
    out = tmp_path / "out.mid"
    result = run_backline("send", melody, "-o", out, "--port", server.port, "--seed", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out}: melody 'Lead' (30 notes), Held 1, Restruck 4, Silent 0 notes")
    raw = [(next((m.name for m in t if m.type == "track_name"), ""),
            next((m.program for m in t if m.type == "program_change"), None),
            {m.channel for m in t if m.type in ("note_on", "program_change")}) for t in mido.MidiFile(out).tracks]
    assert raw[1:] == [("Lead", 73, {0}), ("Held", 32, {1}), ("Restruck", 48, {2}), ("Silent", 0, {3})]
    score = read_midi(out)
    assert score.tempo_bpm == pytest.approx(100) and score.time_signature == (3, 4)
    notes = {t.name: t.notes for t in score.tracks}
    assert notes["Lead"] == [n._replace(velocity=100) for n in MELODY_30]
    assert notes["Held"] == held(30)
    # Stitched at 8, 16, 24: no gap, no doubled note. `send` names the file's 3/4, so the
    # accents follow 3/4 bars: beats 0 and 24 are downbeats (x1.1), 8 and 16 plain beats.
    assert notes["Restruck"] == [n._replace(velocity=ACCENTED if n.start % 3 == 0 else 100) for n in restruck(30)]


def test_send_without_a_bridge_fails_in_one_line(tmp_path):
    melody = tmp_path / "tune.mid"
    write_midi(melody, None, [(TrackSpec("Lead", 0, 0), MELODY_30)])
    port = free_port()
    result = run_backline("send", melody, "-o", tmp_path / "out.mid", "--port", port)
    assert result.returncode == 1
    assert result.stderr == (f"backline: error: no Backline bridge answered at 127.0.0.1:{port} within 2 s; "
                             "start one with: backline serve\n")
    assert not (tmp_path / "out.mid").exists()


def test_send_reports_the_bridges_error_in_one_line(server, tmp_path):
    melody = tmp_path / "tune.mid"
    write_midi(melody, None, [(TrackSpec("Lead", 0, 0), MELODY_30)])
    result = run_backline("send", melody, "-o", tmp_path / "out.mid", "--port", server.port, "--model", "nosuch")
    assert result.returncode == 1
    assert result.stderr.startswith("backline: error: the bridge answered model: no model named 'nosuch'")
    assert result.stderr.count("\n") == 1 and not (tmp_path / "out.mid").exists()


def test_a_second_serve_on_the_same_port_fails_clearly(server, fixed_model):
    result = run_backline("serve", "--model", fixed_model, "--osc-port", server.port)
    assert result.returncode == 1
    assert result.stderr == (f"backline: error: port {server.port} is in use (another backline serve?); "
                             "pick another with --osc-port\n")


def test_midi_api_none_opens_no_ports(fixed_model, tmp_path):
    # Virtual MIDI itself is tested against a real JACK server in test_midi_ports.py.
    srv = Server(fixed_model, tmp_path / "serve.log", "--midi-api", "none")
    srv.stop()
    assert "virtual MIDI" not in srv.stderr()


# --------------------------------------------------------------------------- liblo


def test_oscsend_session_is_answered_to_oscdump(fixed_model, tmp_path):
    oscsend, oscdump = need("oscsend"), need("oscdump")
    srv = Server(fixed_model, tmp_path / "serve.log")
    dump_port = free_port()
    dump = subprocess.Popen([oscdump, "-L", str(dump_port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in dump.stdout], daemon=True).start()

    def osc(*args) -> None:
        subprocess.run([oscsend, "127.0.0.1", str(srv.port), *map(str, args)], check=True, timeout=10)

    def wait_for(text: str) -> list[str]:
        seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                seen.append(lines.get(timeout=0.2).rstrip("\n"))
            except queue.Empty:
                continue
            if text in seen[-1]:
                return seen
        raise AssertionError(f"oscdump never printed {text!r}; it printed {seen}")

    try:
        # Each oscsend is a new process with a new source port: reply_to routes them all.
        osc("/backline/reply_to", "si", "127.0.0.1", dump_port)
        osc("/backline/ping", "s", "p1")
        pong = wait_for("/backline/pong")
        assert pong[-1].split(" ", 1)[1] == f'/backline/pong ssss "p1" "{protocol.version()}" "fixed" "CPUExecutionProvider"'
        osc("/backline/set", "si", "seed", 7)
        osc("/backline/clip/begin", "sf", "c1", 12.0)
        osc("/backline/clip/notes", "siffiiiffii", "c1", 70, 0.0, 4.0, 100, 0, 72, 4.0, 4.0, 100, 0)
        osc("/backline/clip/notes", "siffii", "c1", 68, 8.0, 4.0, 100, 0)
        osc("/backline/clip/end", "s", "c1")
        stream = [line.split(" ", 1)[1] for line in wait_for("/backline/accomp/end")]
        assert stream == [
            '/backline/accomp/begin sif "c1" 3 12.000000',
            '/backline/accomp/track sisiii "c1" 0 "Held" 32 1 0',
            '/backline/accomp/track sisiii "c1" 1 "Restruck" 48 2 0',
            '/backline/accomp/track sisiii "c1" 2 "Silent" 0 3 0',
            '/backline/accomp/notes siiffii "c1" 0 48 0.000000 12.000000 110 0',
            '/backline/accomp/notes siiffiiiffii "c1" 1 55 0.000000 8.000000 110 0 55 8.000000 4.000000 110 0',
            '/backline/accomp/end si "c1" 3',
        ]
        osc("/backline/clip/end", "s", "c1")  # again: it is gone
        assert wait_for("/backline/error")[-1].split(" ", 1)[1].startswith(
            '/backline/error sss "c1" "unknown_clip"')
        osc("/backline/reply_to", "si", "127.0.0.1", 0)  # the redirect can be removed
    finally:
        dump.terminate()
        dump.wait(timeout=5)
        srv.stop()


# --------------------------------------------------------------------------- bad input

BAD = {
    "id of the wrong type": ([("/backline/clip/begin", 1.5, 8.0)], [("", "bad_args")]),
    "length of the wrong type": ([("/backline/clip/begin", "t1", "eight")], [("t1", "bad_args")]),
    "setting of the wrong type": ([("/backline/set", "seed", "x")], [("", "bad_args")]),
    "ping without id": ([("/backline/ping",)], [("", "bad_args")]),
    "begin without length": ([("/backline/clip/begin", "t2")], [("t2", "bad_args")]),
    "reply_to without port": ([("/backline/reply_to", "127.0.0.1")], [("", "bad_args")]),
    "reply_to a host name": ([("/backline/reply_to", "example.com", 9000)], [("", "bad_args")]),
    "unknown address": ([("/nope", 1)], [("", "unknown_address")]),
    "OSC pattern is not expanded": ([("/backline/*", "x")], [("", "unknown_address")]),
    "unknown setting": ([("/backline/set", "volume", 3)], [("", "unknown_setting")]),
    "model as a path": ([("/backline/set", "model", "../../etc/passwd")], [("", "bad_args")]),
    "model not installed": ([("/backline/set", "model", "nosuch")], [("", "model")]),
    "threshold out of range": ([("/backline/set", "threshold", 1.5)], [("", "bad_args")]),
    "end without begin": ([("/backline/clip/end", "never")], [("never", "unknown_clip")]),
    "notes without begin": ([("/backline/clip/notes", "never", 60, 0.0, 1.0, 100, 0)], [("never", "unknown_clip")]),
    "duplicate id": ([("/backline/clip/begin", "d", 8.0), ("/backline/clip/begin", "d", 8.0),
                      ("/backline/clip/cancel", "d")], [("d", "duplicate_id")]),
    "int id echoed as int": ([("/backline/clip/end", 42)], [(42, "unknown_clip")]),
}
NOTE_OK = (60, 0.0, 1.0, 100, 0)
BAD_NOTES = {
    "negative start": (60, -1.0, 1.0, 100, 0),
    "huge start": (60, 1e6, 1.0, 100, 0),
    "nan start": (60, float("nan"), 1.0, 100, 0),
    "zero duration": (60, 0.0, 0.0, 100, 0),
    "huge duration": (60, 0.0, 20000.0, 100, 0),
    "pitch 128": (128, 0.0, 1.0, 100, 0),
    "negative pitch": (-1, 0.0, 1.0, 100, 0),
    "float pitch": (60.0, 0.0, 1.0, 100, 0),
    "velocity 0": (60, 0.0, 1.0, 0, 0),
    "velocity 200": (60, 0.0, 1.0, 200, 0),
    "mute 2": (60, 0.0, 1.0, 100, 2),
    "string in a note": (60, "zero", 1.0, 100, 0),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_message_is_answered_and_the_server_goes_on(client, case):
    messages, expected = BAD[case]
    for address, *args in messages:
        client.send(address, *args)
    assert errors(client.ping_after()) == expected


@pytest.mark.parametrize("case", BAD_NOTES, ids=list(BAD_NOTES))
def test_bad_note_drops_its_clip_with_one_error(client, case):
    client.send("/backline/clip/begin", "n", 8.0)
    client.send("/backline/clip/notes", "n", *NOTE_OK, *BAD_NOTES[case])
    client.send("/backline/clip/notes", "n", *NOTE_OK)  # the rest of a dropped clip: ignored
    client.send("/backline/clip/end", "n")
    got = client.ping_after()
    assert errors(got) == [("n", "bad_note")] and len(got) == 1
    assert "note 2" in got[0].params[2] and "was dropped" in got[0].params[2]


def test_notes_not_in_fives_are_refused(client):
    client.send("/backline/clip/begin", "f", 8.0)
    client.send("/backline/clip/notes", "f", 60, 0.0, 1.0, 100)
    client.send("/backline/clip/end", "f")
    assert errors(client.ping_after()) == [("f", "bad_args")]


def test_too_many_notes(client):
    notes = [Note(68 + i % 5, i * 0.25, 0.25, 100) for i in range(20_001)]
    client.send("/backline/clip/begin", "big", 6000.0)
    client.send_notes("big", notes)  # 100 full messages, then 1 note too many
    client.send("/backline/clip/end", "big")
    got = client.ping_after()
    assert errors(got) == [("big", "too_many_notes")] and len(got) == 1
    # 20,000 is allowed, and the id can be used again.
    stream = client.clip("big", notes[:20_000], 5000.0)
    assert stream[-1].address == "/backline/accomp/end"
    assert accompaniment(stream)[0] == held(5000)


def test_melody_out_of_the_models_reach_is_one_error_before_any_reply(client):
    got = client.clip("wide", [Note(30, 0.0, 1.0, 100), Note(100, 1.0, 1.0, 100)], 2.0)
    assert [m.address for m in got] == ["/backline/error"]
    assert errors(got) == [("wide", "bad_melody")] and "semitones" in got[0].params[2]


def test_non_osc_datagrams_are_answered_and_ignored(client, server):
    client.raw(b"hello, this is not OSC")
    client.raw(b"")
    client.raw(b"/backline/ping\x00\x00,s\x00\x00")  # a string argument that is not there
    client.raw(b"#bundle\x00\x00\x00\x00")  # a bundle cut short
    client.raw(os.urandom(3000))
    got = client.ping_after()
    assert all(code in ("malformed", "bad_args") for _, code in errors(got))
    assert errors(got)[0] == ("", "malformed") and len(got) >= 3
    assert "not OSC" in server.stderr()


def test_clip_as_a_midi_blob(client, tmp_path):
    blob = midi_bytes(None, [(TrackSpec("Lead", 0, 0), MELODY_30)])
    client.send("/backline/clip/midi", "m", blob)
    got = client.receive_until(lambda m: m.address in ("/backline/accomp/end", "/backline/error"))
    assert got[0].params == ["m", 3, 30.0]
    assert accompaniment(got) == {0: held(30), 1: restruck(30)}
    client.send("/backline/clip/midi", "junk", b"MThd not really")
    got = client.receive_until(lambda m: m.address == "/backline/error")  # from the worker: after ping
    assert errors(got) == [("junk", "bad_melody")] and "damaged MIDI file" in got[0].params[2]
    assert client.ping_after() == []


def test_per_client_settings_and_ping(client):
    client.send("/backline/set", "seed", 3)
    client.send("/backline/set", "model", "fixed")
    client.send("/backline/ping", 17)
    pong = client.receive_until(lambda m: m.address == "/backline/pong")
    assert pong[-1].params == [17, protocol.version(), "fixed", "CPUExecutionProvider"]


def test_a_client_that_vanishes_mid_stream_does_not_hurt(server):
    leaver = Client(server.port)
    leaver.send("/backline/clip/begin", "gone", 4000.0)
    leaver.send_notes("gone", [Note(68 + i % 5, float(i), 1.0, 100) for i in range(4000)])
    leaver.send("/backline/clip/end", "gone")
    leaver.close()  # before the replies come
    other = Client(server.port)
    try:
        assert other.ping_after() == []
        stream = other.clip("stay", MELODY_30, 30.0)
        assert accompaniment(stream) == {0: held(30), 1: restruck(30)}
    finally:
        other.close()
    assert server.proc.poll() is None


def test_two_clients_at_once_each_get_only_their_own_replies(server):
    a, b = Client(server.port), Client(server.port)
    try:
        # The same clip id from both, interleaved: clients are kept apart by address.
        a.send("/backline/clip/begin", "same", 16.0)
        b.send("/backline/clip/begin", "same", 24.0)
        a.send_notes("same", MELODY_30[:16])
        b.send_notes("same", MELODY_30[:24])
        b.send("/backline/clip/end", "same")
        a.send("/backline/clip/end", "same")
        a.send("/backline/clip/begin", "only-a", 8.0)
        a.send_notes("only-a", MELODY_30[:8])
        a.send("/backline/clip/end", "only-a")
        def done(clip_id):
            return lambda m: m.address == "/backline/accomp/end" and m.params[0] == clip_id

        got_b = b.receive_until(done("same"))
        got_a = a.receive_until(done("same")) + a.receive_until(done("only-a"))
        assert errors(got_a) == errors(got_b) == []
        assert [m.params for m in got_a if m.address == "/backline/accomp/begin"] == [["same", 3, 16.0], ["only-a", 3, 8.0]]
        assert [m.params for m in got_b if m.address == "/backline/accomp/begin"] == [["same", 3, 24.0]]
        assert accompaniment(got_b) == {0: held(24), 1: restruck(24)}
        assert accompaniment([m for m in got_a if m.params[0] == "same"]) == {0: held(16), 1: restruck(16)}
        assert b.ping_after() == []  # nothing of a's arrived at b
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------- in-process


def test_the_bridge_never_imports_torch(fixed_model):
    code = (
        "import sys\n"
        "import backline.bridge.cli, backline.bridge.serve, backline.bridge.clip.send\n"
        "from backline.bridge.serving.engine import Engine\n"
        "from backline.bridge.clip.generate import ClipJob, run_clip\n"
        "from backline.bridge.osc.clients import Settings\n"
        "from backline.models.notes import Note\n"
        f"engine = Engine({str(fixed_model)!r}, device='cpu')\n"
        "out = []\n"
        "run_clip(ClipJob(('127.0.0.1', 9), 'x', Settings(), [Note(70, 0.0, 4.0)], 4.0), engine,\n"
        "         lambda target, msg: out.append(msg.address))\n"
        "engine.close()\n"
        "assert out[-1] == '/backline/accomp/end', out\n"
        "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules)\n"
        "assert 'backline.training' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_clips_expire_when_idle():
    from backline.bridge.clip.clips import ClipAssembler
    from backline.bridge.osc.protocol import Begin, ProtocolError

    now = [0.0]
    clips = ClipAssembler(clock=lambda: now[0], max_open=2)
    clips.begin(Begin("a", 8.0))
    clips.begin(Begin("b", 8.0))
    with pytest.raises(ProtocolError) as exc:
        clips.begin(Begin("c", 8.0))
    assert exc.value.code == "too_many_clips"
    now[0] = 30.0
    clips.add("b", [Note(60, 0.0, 1.0)])
    now[0] = 61.0
    assert clips.expire() == ["a"]  # b was touched at 30 s
    clips.add("a", [Note(60, 0.0, 1.0)])  # the rest of an expired clip is ignored quietly
    assert clips.end("a") is None and clips.end("b").notes == [Note(60, 0.0, 1.0)]


def test_reply_routing():
    from backline.bridge.osc.clients import Clients

    clients = Clients()
    a, b, sender = ("127.0.0.1", 5000), ("127.0.0.1", 5001), ("127.0.0.1", 40000)
    assert clients.target_for(a) == a
    clients.reply_to(sender, ("127.0.0.1", 9000))
    # oscsend: every message from a new port of the same host follows the redirect ...
    assert clients.target_for(("127.0.0.1", 40001)) == ("127.0.0.1", 9000)
    assert clients.client(("127.0.0.1", 40002)) is clients.client(("127.0.0.1", 40003))
    # ... except a socket that pinned its replies to itself, and other hosts.
    clients.reply_to(b, None)
    assert clients.target_for(b) == b
    assert clients.target_for(("10.0.0.2", 40001)) == ("10.0.0.2", 40001)
    clients.reply_to(("127.0.0.1", 40004), ("127.0.0.1", 0))
    assert clients.target_for(a) == a


def test_a_pin_is_forgotten_after_its_sender_idles_and_kept_while_it_talks():
    """A bare reply_to outlives its socket; after 10 idle minutes it no longer catches a
    later sender on the same port (an oscsend of a liblo session), which then follows
    the host's redirect."""
    from backline.bridge.osc.clients import CLIENT_IDLE_S, Clients

    now = [0.0]
    clients = Clients(clock=lambda: now[0])
    pinned, talking, dump = ("127.0.0.1", 40010), ("127.0.0.1", 40011), ("127.0.0.1", 9000)
    clients.reply_to(pinned, None)
    clients.reply_to(talking, None)
    clients.reply_to(("127.0.0.1", 40012), dump)  # the liblo session's redirect for the host
    for step in range(1, 12):  # `talking` sends a message a minute; `pinned` has gone quiet
        now[0] = 60.0 * step
        clients.client(talking)
        clients.expire()
        assert clients.target_for(talking) == talking
    assert now[0] - 0.0 > CLIENT_IDLE_S
    assert clients.target_for(pinned) == dump  # the old pin is gone: the host's redirect applies
    now[0] += 1.0
    clients.reply_to(pinned, None)  # pinned again, it is its own target again
    assert clients.target_for(pinned) == pinned
