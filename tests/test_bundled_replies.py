"""Clip replies as OSC bundles (`/backline/set bundle 1`, docs/PROTOCOL.md "Bundled replies").

protocol.packets and read_datagram on their own (byte for byte against python-osc's
bundle builder), the generation worker's packing in-process, then a real `backline serve`
over UDP: the same messages in the same order as single messages, in far fewer datagrams;
liblo's `oscdump` reading a bundled reply; a long reply complete and still paced; and
`backline send` and BridgeClient through a proxy that makes the server look older (it
answers the `bundle` setting with unknown_setting, as a server before 0.2.0 does)."""

from __future__ import annotations

import configparser
import queue
import re
import select
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message import OscMessage

from backline.bridge.bench.delivery import melody_of
from backline.bridge.clip.send import BridgeClient
from backline.bridge.osc import protocol
from backline.models.notes import Note
from backline.models.registry import SHIPPED_DIR

from .conftest import run_backline
from .test_bridge_osc import Server, bind_below_ephemeral, free_port, need
from .test_protocol_doc import type_tags

ROOT = Path(__file__).resolve().parents[1]
ODE = SHIPPED_DIR / "examples" / "ode-to-joy.mid"
REPLY_RATE_MB_S = 0.25  # the test server's --reply-rate: slow enough to see the pacing
BURST = 64 << 10


def content(messages) -> list[tuple[str, list]]:
    return [(m.address, m.params) for m in messages]


def unpacked(datagrams: list[bytes]) -> list[OscMessage]:
    return [m for data in datagrams for m in protocol.read_datagram(data)]


def notes_of(count: int, start: int = 0) -> list[Note]:
    return [Note(40 + i % 40, float(i), 0.5, 90) for i in range(start, start + count)]


# --------------------------------------------------------------------------- packets, read_datagram


def test_a_bundle_is_byte_for_byte_python_oscs():
    messages = [protocol.message("/backline/accomp/begin", "c1", 2, 16.0),
                *protocol.accomp_notes("c1", 0, notes_of(3)), protocol.message("/backline/accomp/end", "c1", 3)]
    builder = OscBundleBuilder(IMMEDIATELY)
    for message in messages:
        builder.add_content(message)
    [bundle] = protocol.packets(messages, True)
    assert bundle.dgram == builder.build().dgram
    assert bundle.dgram[8:16] == b"\0\0\0\0\0\0\0\1"  # time tag 1: immediately


def test_unbundled_packets_are_the_messages_themselves():
    messages = [protocol.message("/a", 1), protocol.message("/b", "x")]
    assert all(p is m for p, m in zip(protocol.packets(messages, False), messages, strict=True))


def test_packets_keep_every_message_in_order_in_as_few_bundles_as_fit():
    messages = []
    for clip in range(6):  # notes messages of 1 to 200 notes among short messages
        messages.append(protocol.message("/backline/accomp/track", f"c{clip}", clip, "Bass", 32, 1, 0))
        messages += protocol.accomp_notes(f"c{clip}", clip, notes_of(1 + 97 * clip, clip))
        messages.append(protocol.message("/backline/accomp/end", f"c{clip}", 1 + 97 * clip))
    bundles = protocol.packets(messages, True)
    assert all(b.dgram.startswith(b"#bundle\0") and len(b.dgram) <= protocol.MAX_BUNDLE_BYTES for b in bundles)
    assert content(unpacked([b.dgram for b in bundles])) == content(messages)
    # As few as fit: the first message of each bundle would not have fitted in the one before.
    firsts = [protocol.read_datagram(b.dgram)[0] for b in bundles[1:]]
    assert all(len(b.dgram) + 4 + len(m.dgram) > protocol.MAX_BUNDLE_BYTES for b, m in zip(bundles, firsts))
    assert len(bundles) < len(messages) / 2


def test_a_message_bigger_than_a_bundle_goes_alone():
    big = protocol.message("/backline/clip/midi", "m", b"x" * 10_000)
    small = [protocol.message("/a", i) for i in range(3)]
    bundles = protocol.packets([small[0], big, small[1], small[2]], True)
    assert [content(protocol.read_datagram(b.dgram)) for b in bundles] == [
        content(small[:1]), content([big]), content(small[1:])]


def test_read_datagram_reads_a_message_and_nested_bundles_in_order():
    inner = protocol.packets([protocol.message("/b", 2), protocol.message("/c", 3)], True)[0]
    builder = OscBundleBuilder(IMMEDIATELY)
    builder.add_content(protocol.message("/a", 1))
    builder.add_content(OscBundle(inner.dgram))
    builder.add_content(protocol.message("/d", 4))
    assert [m.address for m in protocol.read_datagram(builder.build().dgram)] == ["/a", "/b", "/c", "/d"]
    assert content(protocol.read_datagram(protocol.message("/e", "x").dgram)) == [("/e", ["x"])]


def test_receive_message_returns_a_bundles_messages_one_by_one():
    from backline.bridge.clip.send import receive_message

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as inbox, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as outbox:
        inbox.bind(("127.0.0.1", 0))
        messages = [protocol.message("/a", i) for i in range(3)]
        outbox.sendto(protocol.packets(messages, True)[0].dgram, inbox.getsockname())
        outbox.sendto(b"not OSC", inbox.getsockname())
        outbox.sendto(protocol.message("/b").dgram, inbox.getsockname())
        first = receive_message(inbox, time.monotonic() + 5)
        # What arrived in the bundle is still returned once the deadline has passed.
        got = [first, *(receive_message(inbox, time.monotonic()) for _ in range(2))]
        got.append(receive_message(inbox, time.monotonic() + 5))
        assert content(got) == content([*messages, protocol.message("/b")])
        assert receive_message(inbox, time.monotonic() + 0.05) is None


# --------------------------------------------------------------------------- the worker's packing


class Recorder:
    def __init__(self) -> None:
        self.sent: list[object] = []

    def __call__(self, target, packet) -> None:
        self.sent.append(packet)


def test_a_bundled_clip_is_its_headers_in_one_bundle_then_the_rest_packed(tmp_path):
    """In-process, through the generation worker's own code: a clip whose client asked for
    bundles gets begin and the headers as one bundle, then notes and end packed, and the
    next clip of its batch its headers, notes and end in one bundle; the messages are
    those an unbundled clip gets; errors stay single messages."""
    from backline.bridge.clip.generate import ClipJob, run_clips
    from backline.bridge.osc.clients import Settings
    from backline.bridge.serving.engine import Engine
    from backline.models.midi import pick_melody_track, read_midi

    melody = pick_melody_track(read_midi(ODE), None).notes
    engine = Engine("pop", device="cpu")
    try:
        replies = {}
        for bundled in (False, True):
            recorder = Recorder()
            jobs = [ClipJob(("127.0.0.1", 9), "a", Settings(seed=2, bundle=bundled), melody, 32.0),
                    ClipJob(("127.0.0.1", 9), "muted", Settings(bundle=bundled), [Note(60, 0.0, 1.0, mute=True)], 4.0),
                    ClipJob(("127.0.0.1", 9), "b", Settings(seed=3, bundle=bundled), melody[:8], 8.0)]
            run_clips(jobs, engine, recorder)
            replies[bundled] = recorder.sent
    finally:
        engine.close()
    plain, packed = replies[False], replies[True]
    assert not any(isinstance(p, protocol.Bundle) for p in plain)
    n_tracks = plain[1].params[1]  # plain[0]: the muted clip's error, found before anything runs
    assert content(protocol.read_datagram(packed[1].dgram)) == content(plain[1:2 + n_tracks])  # begin + headers
    assert packed[0].address == protocol.ERROR and packed[0].params[0] == "muted"  # single, first: found early
    unpacked = [m for p in packed[1:] for m in protocol.read_datagram(p.dgram)]
    assert content([packed[0], *unpacked]) == content(plain)
    assert all(isinstance(p, protocol.Bundle) and len(p.dgram) <= protocol.MAX_BUNDLE_BYTES for p in packed[1:])
    assert len(packed) - 1 < len(plain) - 1 and len(plain) > 2 * (2 + n_tracks + 1)
    last = protocol.read_datagram(packed[-1].dgram)  # clip b: the whole reply in one bundle
    assert [m.params[0] for m in last] == ["b"] * len(last) and last[0].address == protocol.ACCOMP_BEGIN
    assert last[-1].address == protocol.ACCOMP_END and len(last) == sum(m.params[0] == "b" for m in plain)


# --------------------------------------------------------------------------- a real serve


@pytest.fixture(scope="module")
def bach(tmp_path_factory):
    server = Server(SHIPPED_DIR / "bach.onnx", tmp_path_factory.mktemp("bundles") / "serve.log", "--midi-api",
                    "none", "--clock", "off", "--no-reload", "--reply-rate", str(REPLY_RATE_MB_S))
    yield server
    server.stop()


class Peer:
    """A bound socket that pins its replies to itself and keeps each datagram of them."""

    def __init__(self, port: int) -> None:
        self.server = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        bind_below_ephemeral(self.sock)  # its pin outlives it: keep it off oscsend's ports
        self.send(protocol.REPLY_TO)

    def close(self) -> None:
        self.sock.close()

    def send(self, address: str, *args) -> None:
        self.sock.sendto(protocol.message(address, *args).dgram, self.server)

    def clip(self, clip_id: str, notes: list[Note], seed: int = 0, as_request: bool = False
             ) -> list[tuple[bytes, float]]:
        """Every datagram of the clip's reply, with the time it arrived. The clip goes out as
        messages, or (`as_request`) as `protocol.clip_request` packs it, as clients send it."""
        if as_request:
            for packet in protocol.clip_request(clip_id, notes, max(n.end for n in notes), "", seed):
                self.sock.sendto(packet.dgram, self.server)
        else:
            self.send(protocol.CLIP_BEGIN, clip_id, max(n.end for n in notes), "", seed)
            for message in protocol.notes_messages(protocol.CLIP_NOTES, (clip_id,), notes):
                self.sock.sendto(message.dgram, self.server)
                time.sleep(0.001)
            self.send(protocol.CLIP_END, clip_id)
        got = []
        deadline = time.monotonic() + 60
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65535)
            except socket.timeout:
                break
            got.append((data, time.monotonic()))
            last = protocol.read_datagram(data)[-1]
            if last.address in (protocol.ACCOMP_END, protocol.ERROR) and last.params[0] == clip_id:
                return got
        raise AssertionError(f"no end for {clip_id}; got {len(got)} datagrams")


@pytest.fixture
def peer(bach):
    client = Peer(bach.port)
    yield client
    client.close()


def four_bars() -> list[Note]:
    from backline.bridge.bench.suite import clip_melody

    return clip_melody()


@pytest.mark.parametrize("melody", ["four bars", "300 notes"])
def test_a_bundled_reply_is_the_same_messages_in_far_fewer_datagrams(peer, melody):
    notes = four_bars() if melody == "four bars" else melody_of(300)
    single = [data for data, _ in peer.clip("same", notes, seed=7)]
    peer.send(protocol.SET, "bundle", 1)
    bundled = [data for data, _ in peer.clip("same", notes, seed=7)]
    peer.send(protocol.SET, "bundle", 0)
    assert not any(data.startswith(b"#bundle") for data in single)
    assert all(data.startswith(b"#bundle\0") and len(data) <= protocol.MAX_BUNDLE_BYTES for data in bundled)
    messages = unpacked(bundled)
    assert content(messages) == content(unpacked(single))
    assert messages[-1].address == protocol.ACCOMP_END
    # begin and the headers, then the rest in as few bundles as fit.
    n_headers = 1 + messages[0].params[1]
    assert content(protocol.read_datagram(bundled[0])) == content(messages[:n_headers])
    assert len(bundled) == 1 + len(protocol.packets(messages[n_headers:], True))
    if melody == "four bars":
        assert len(single) >= 8 and len(bundled) == 2, (len(single), len(bundled))
    else:  # a bundle holds at most one 200-note message (5 KB) and the short ones around it
        assert len(bundled) < len(single), (len(single), len(bundled))


def test_an_error_for_a_bundled_clip_is_a_single_message(peer):
    peer.send(protocol.SET, "bundle", 1)
    [(data, _)] = peer.clip("muted", [Note(70, 0.0, 4.0, 100, True)])
    assert OscMessage(data).address == protocol.ERROR
    assert OscMessage(data).params[:2] == ["muted", "bad_melody"]
    after = [data for data, _ in peer.clip("next", four_bars())]  # the next clip: bundled as before
    assert len(after) == 2 and all(data.startswith(b"#bundle\0") for data in after)


def oscdump_line(message: OscMessage) -> str:
    """The message as liblo's oscdump prints it, after the time tag."""
    shown = [f'"{v}"' if isinstance(v, str) else f"{v:f}" if isinstance(v, float) else str(v)
             for v in message.params]
    return " ".join([message.address, type_tags(message), *shown])


def test_oscdump_prints_every_message_of_a_bundled_reply(bach, peer):
    oscdump = need("oscdump")
    notes = melody_of(300)
    expected = unpacked([data for data, _ in peer.clip("dump", notes, seed=2)])
    dump_port = free_port()
    dump = subprocess.Popen([oscdump, "-L", str(dump_port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in dump.stdout], daemon=True).start()
    sender = Peer(bach.port)

    def printed_until(prefix: str) -> list[str]:
        seen = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                seen.append(lines.get(timeout=0.2).rstrip("\n").split(" ", 1)[1].rstrip())
            except queue.Empty:
                continue
            if seen[-1].startswith(prefix):
                return seen
        raise AssertionError(f"oscdump never printed {prefix!r}; it printed {seen[-5:]}")

    try:
        sender.send(protocol.REPLY_TO, "127.0.0.1", dump_port)
        sender.send(protocol.SET, "bundle", 1)
        sender.send(protocol.PING, "ready")
        printed_until('/backline/pong ssss "ready"')
        sender.send(protocol.CLIP_BEGIN, "dump", max(n.end for n in notes), "", 2)
        for message in protocol.notes_messages(protocol.CLIP_NOTES, ("dump",), notes):
            sender.sock.sendto(message.dgram, sender.server)
            time.sleep(0.001)
        sender.send(protocol.CLIP_END, "dump")
        printed = printed_until('/backline/accomp/end si "dump"')
    finally:
        sender.send(protocol.REPLY_TO, "127.0.0.1", 0)
        sender.close()
        dump.terminate()
        dump.wait(timeout=5)
    assert printed == [oscdump_line(m) for m in expected]


def test_a_2000_note_clip_arrives_whole_and_paced(peer):
    peer.send(protocol.SET, "bundle", 1)
    got = peer.clip("long", melody_of(2000))
    messages = unpacked([data for data, _ in got])
    sent = messages[-1]
    assert sent.address == protocol.ACCOMP_END, sent.params
    received = sum((len(m.params) - 2) // 5 for m in messages if m.address == protocol.ACCOMP_NOTES)
    assert received == sent.params[1] > 5_000
    assert all(data.startswith(b"#bundle\0") and len(data) <= protocol.MAX_BUNDLE_BYTES for data, _ in got)
    # After the headers, the notes go out at --reply-rate once the burst is spent.
    body = got[1:]
    paced = (sum(len(data) for data, _ in body) - BURST) / (REPLY_RATE_MB_S * 1e6)
    assert paced > 0.2 and body[-1][1] - body[0][1] >= 0.9 * paced, (paced, body[-1][1] - body[0][1])


# --------------------------------------------------------------------------- an older server, and `backline send`


class Proxy:
    """Between clients and a real server, passing datagrams both ways and keeping the
    server's. With `refuse_bundle` the server looks older than the `bundle` setting: the
    proxy answers `/backline/set bundle ...` itself, as docs/PROTOCOL.md says such a server does."""

    def __init__(self, server_port: int, refuse_bundle: bool) -> None:
        self.server = ("127.0.0.1", server_port)
        self.refuse_bundle = refuse_bundle
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.back.bind(("127.0.0.1", 0))
        self.port = self.front.getsockname()[1]
        self.client = None
        self.replies: list[bytes] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.front, self.back], [], [], 0.1)
            if self.front in ready:
                data, self.client = self.front.recvfrom(65535)
                self._from_client(data)
            if self.back in ready:
                data = self.back.recv(65535)
                self.replies.append(data)
                self.front.sendto(data, self.client)

    def _from_client(self, data: bytes) -> None:
        first = protocol.read_datagram(data)[0]
        if self.refuse_bundle and first.address == protocol.SET and first.params[0] == "bundle":
            self.refused += 1
            self.front.sendto(protocol.error("", "unknown_setting", "no setting 'bundle' (settings: model, seed, "
                                                                    "threshold, tempo, sample)").dgram, self.client)
            return
        self.back.sendto(data, self.server)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.front.close()
        self.back.close()


@pytest.fixture
def proxies(bach):
    made: list[Proxy] = []

    def make(refuse_bundle: bool) -> Proxy:
        made.append(Proxy(bach.port, refuse_bundle))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def test_send_writes_the_same_midi_from_bundles_and_from_an_older_server(proxies, tmp_path):
    outputs = {}
    for refuse in (False, True):
        proxy = proxies(refuse)
        out = tmp_path / f"refuse-{refuse}.mid"
        result = run_backline("send", ODE, "-o", out, "--port", proxy.port, "--seed", "5")
        assert result.returncode == 0, result.stderr
        bundles = [data for data in proxy.replies if data.startswith(b"#bundle")]
        assert (proxy.refused, bool(bundles)) == ((1, False) if refuse else (0, True))
        shown = result.stdout.replace(str(out), "OUT").replace(f"127.0.0.1:{proxy.port}", "PROXY")
        outputs[refuse] = (shown, out.read_bytes())
    assert outputs[False] == outputs[True]


def test_bridge_client_carries_on_when_the_server_refuses_bundles(proxies, bach):
    direct = BridgeClient("127.0.0.1", bach.port)
    old = proxies(True)
    through = BridgeClient("127.0.0.1", old.port)
    try:
        replies = []
        for client in (direct, through):
            client.ping()
            replies.append(client.accompany(four_bars(), 16.0, None, 3, 120.0, timeout=20))
    finally:
        direct.close()
        through.close()
    assert old.refused == 1 and not any(data.startswith(b"#bundle") for data in old.replies)
    assert replies[0] == replies[1] and replies[1].expected_notes == sum(map(len, replies[1].notes.values())) > 0


def test_the_doc_names_a_released_version_for_the_bundle_setting():
    """The version the doc names is the one in setup.cfg or an older one, in both places."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    current = tuple(map(int, config["metadata"]["version"].split(".")))
    doc = (ROOT / "docs" / "PROTOCOL.md").read_text()
    named = re.findall(r"`bundle`.*?since (?:\*\*)?Backline (\d+\.\d+\.\d+)", doc)
    assert len(named) == 2 and len(set(named)) == 1, named
    assert (0, 1, 0) < tuple(map(int, named[0].split("."))) <= current


def test_a_clip_request_is_one_bundle_where_it_fits_and_the_server_reads_it_as_the_messages(peer):
    short, long = four_bars(), melody_of(400)
    [bundle] = protocol.clip_request("c", short, 16.0, "", 7)
    assert isinstance(bundle, protocol.Bundle) and len(bundle.dgram) <= protocol.MAX_BUNDLE_BYTES
    assert content(protocol.read_datagram(bundle.dgram)) == content(
        [protocol.message(protocol.CLIP_BEGIN, "c", 16.0, "", 7),
         *protocol.notes_messages(protocol.CLIP_NOTES, ("c",), short), protocol.message(protocol.CLIP_END, "c")])
    assert not any(isinstance(p, protocol.Bundle) for p in protocol.clip_request("c", long, 400.0))
    as_messages = [protocol.read_datagram(data) for data, _ in peer.clip("same", short, seed=7)]
    as_bundle = [protocol.read_datagram(data) for data, _ in peer.clip("same", short, seed=7, as_request=True)]
    assert [content(m) for m in as_bundle] == [content(m) for m in as_messages]
    assert sum(len(m) for m in as_bundle) > 5
