"""Micro-batching of concurrent clips: batched replies equal the unbatched ones, a bad clip
fails alone, one client's clips keep their order, and the server's options are checked.

In-process tests drive the real Engine and generate.run_clips with the shipped bach model
(its notes depend on the melody and the noise, unlike the fixed test model); the rest run
real clients over UDP against a `backline serve` subprocess."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from backline.bridge.osc.clients import Settings
from backline.bridge.serving.engine import Engine
from backline.bridge.clip.generate import ClipJob, ClipTask, run_clips, trim
from backline.bridge.osc import protocol
from backline.models import accompaniment, registry
from backline.models.accompaniment import accompany
from backline.models.midi import midi_bytes, pick_melody_track, read_midi
from backline.models.notes import Note
from backline.models.spec import TrackSpec

from .conftest import run_backline
from .test_bridge_osc import Client, Server, accompaniment as reply_notes, errors

TARGET = ("127.0.0.1", 9)


def ode(beats: float = 16.0, shift: int = 0) -> list[Note]:
    """The first `beats` of the shipped Ode to Joy, moved by `shift` semitones."""
    melody = pick_melody_track(read_midi(registry.SHIPPED_DIR / "examples" / "ode-to-joy.mid"), None)
    return [n._replace(pitch=n.pitch + shift, duration=min(n.duration, beats - n.start))
            for n in melody.notes if n.start < beats]


def job(clip_id, notes, length=None, **settings) -> ClipJob:
    return ClipJob(TARGET, clip_id, Settings(**settings), notes, length or max(n.end for n in notes))


class Recorder:
    """A send function that keeps every reply, per clip id, as (address, params)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, list]] = []
        self.lock = threading.Lock()

    def __call__(self, target, message) -> None:
        with self.lock:
            self.log.append((message.address, message.params))

    def streams(self) -> dict:
        out: dict = {}
        for address, params in self.log:
            out.setdefault(params[0], []).append((address, params))
        return out

    def ends(self) -> list:
        return [p[0] for a, p in self.log if a in (protocol.ACCOMP_END, protocol.ERROR)]


@pytest.fixture(scope="module")
def engine():
    eng = Engine("bach", device="cpu")
    yield eng
    eng.close()


def varied_jobs() -> list[ClipJob]:
    """Clips of different lengths, keys, seeds and settings, one as a MIDI file."""
    chorale = pick_melody_track(read_midi(registry.SHIPPED_DIR / "examples" / "chorale-bwv286-soprano.mid"), None)
    midi = midi_bytes(None, [(TrackSpec("Tune", 0, 0), ode(24, shift=2))])
    return [
        job("ode", ode()),
        job("ode-seed-3", ode(), seed=3),
        job(7, ode(12, shift=-3), seed=11, threshold=0.3),
        job("chorale", chorale.notes, seed=5),
        job("sampled", ode(16, shift=1), seed=2, sample=True),
        ClipJob(TARGET, "midi", Settings(seed=4), midi=midi),
        job("one-note", [Note(67, 0.0, 1.0)]),
        job("cut", ode(), length=10.0),  # the notes past 10 beats are trimmed
    ]


def alone(engine, jobs) -> dict:
    streams = {}
    for j in jobs:
        recorder = Recorder()
        run_clips([j], engine, recorder)
        streams.update(recorder.streams())
    return streams


def counting_runs(monkeypatch, generator) -> list[int]:
    """Patch the generator so each model call records its batch size (in windows)."""
    sizes: list[int] = []
    run = generator.run

    def counted(melody, z):
        sizes.append(len(melody))
        return run(melody, z)

    monkeypatch.setattr(generator, "run", counted)
    return sizes


# --------------------------------------------------------------------------- in-process


POISONED = [job("a", ode()), job("poison", ode(shift=1), seed=66), job("c", ode(shift=-1), seed=2)]


def only_the_poisoned_clip_fails(engine, expected) -> None:
    """Run POISONED as one batch: "a" and "c" get the replies they get alone (`expected`),
    "poison" ends with an internal /backline/error, in queue order."""
    recorder = Recorder()
    run_clips(POISONED, engine, recorder)
    streams = recorder.streams()
    assert {k: streams[k] for k in ("a", "c")} == expected
    assert streams["poison"][-1][0] == protocol.ERROR and streams["poison"][-1][1][1] == "internal"
    assert recorder.ends() == ["a", "poison", "c"]


def test_a_batch_gives_every_clip_the_replies_it_gets_alone(engine, monkeypatch):
    jobs = varied_jobs()
    expected = alone(engine, jobs)
    assert all(s[-1][0] == protocol.ACCOMP_END for s in expected.values()), expected
    sizes = counting_runs(monkeypatch, engine.generator(None))
    recorder = Recorder()
    run_clips(jobs, engine, recorder)
    assert recorder.streams() == expected
    assert recorder.ends() == [j.clip_id for j in jobs]  # queue order
    assert len(sizes) == 1 and sizes[0] > len(jobs)  # one model call for every window of every clip
    # ...and what the bridge sends is what accompany() makes of the clip, cut at its end.
    generator = engine.generator(None)
    direct = accompany(generator, ode(), seed=3).tracks
    sent = [[Note(*p[2:][i:i + 3], p[2:][i + 3], bool(p[2:][i + 4])) for i in range(0, len(p) - 2, 5)]
            for a, p in expected["ode-seed-3"] if a == protocol.ACCOMP_NOTES]
    assert sent == [trim(notes, 16.0) for _, notes in direct if trim(notes, 16.0)]
    assert sum(len(n) for n in sent) > 10


def test_model_calls_are_bounded_in_windows_and_change_no_note(engine, monkeypatch):
    jobs = varied_jobs()
    expected = alone(engine, jobs)
    monkeypatch.setattr(accompaniment, "MAX_RUN_WINDOWS", 3)
    sizes = counting_runs(monkeypatch, engine.generator(None))
    recorder = Recorder()
    run_clips(jobs, engine, recorder)
    assert recorder.streams() == expected
    assert max(sizes) == 3 and len(sizes) > 3  # clips split across calls and calls shared by clips


def test_a_long_melody_runs_in_bounded_calls(engine, monkeypatch):
    generator = engine.generator(None)
    melody = [Note(67 + (i % 5), float(i), 1.0) for i in range(400)]  # 34 windows of 12 beats
    one_call = accompany(generator, melody, seed=9).tracks
    sizes = counting_runs(monkeypatch, generator)
    monkeypatch.setattr(accompaniment, "MAX_RUN_WINDOWS", 8)
    assert accompany(generator, melody, seed=9).tracks == one_call
    assert sizes == [8, 8, 8, 8, 2]


@pytest.mark.parametrize("model", ["bach", "pop"])
def test_decode_many_gives_each_melody_the_notes_decode_gives_it_alone(model):
    """Melodies decoded together on one time line: pickups, meters, keys, registers,
    thresholds (0 among them, which cannot be joined), sampling and fixed velocities."""
    from backline.models.accompaniment import DecodeRequest, decode, decode_many, run_windows
    from backline.models.melody import prepare
    from backline.models.meter import Meter

    generator = registry.load(model, device="cpu")
    spec = generator.spec
    melodies = [
        (ode(), Meter(), {}),
        ([n._replace(start=n.start + 0.5) for n in ode(9, shift=-5)], Meter(3, 4), {"threshold": 0.3}),
        (ode(7, shift=3), Meter(6, 8), {"seed": 4}),
        ([Note(67, 2.0, 0.5)], Meter(), {"velocity": 64}),
        (ode(16, shift=24), Meter(), {"threshold": 0.3}),
        (ode(12, shift=1), Meter(), {"sample": True, "seed": 8}),
        (ode(16, shift=2), Meter(2, 4), {"threshold": 0.0}),
        (ode(13), Meter(), {}),
    ]
    requests = []
    for index, (notes, meter, options) in enumerate(melodies):
        prepared = prepare(spec, notes, meter)
        [probs] = run_windows(generator, [(prepared, generator.draw_z(index, prepared.n_windows))])
        requests.append(DecodeRequest(prepared, probs, **options))
    together = decode_many(spec, requests)
    for request, joint in zip(requests, together):
        single = decode(spec, request.melody, request.probs, seed=request.seed, threshold=request.threshold,
                        sample=request.sample, velocity=request.velocity)
        assert joint == single
    assert all(sum(len(n) for _, n in a.tracks) > 0 for a in together)
    assert {n.velocity for _, notes in together[3].tracks for n in notes} <= {64}


def test_a_clip_that_fails_to_decode_with_its_batch_fails_alone(engine, monkeypatch):
    """A decoding failure in a batch: the batch is decoded clip by clip, and only the clip
    that fails alone gets /backline/error."""
    from backline.bridge.clip import generate

    expected = alone(engine, [POISONED[0], POISONED[2]])
    decode_many = generate.decode_many

    def failing(spec, requests):
        if any(r.seed == 66 for r in requests):
            raise RuntimeError("decoding failed")
        return decode_many(spec, requests)

    monkeypatch.setattr(generate, "decode_many", failing)
    only_the_poisoned_clip_fails(engine, expected)


def test_bad_clips_in_a_batch_fail_alone(engine):
    good = [job("a", ode()), job("b", ode(shift=2), seed=1)]
    expected = alone(engine, good)
    bad = [
        job("wide", [Note(30, 0.0, 1.0), Note(100, 1.0, 1.0)]),
        job("muted", [Note(67, 0.0, 1.0, mute=True)]),
        job("nosuch", ode(), model="nosuch"),
        ClipJob(TARGET, "junk-midi", Settings(), midi=b"MThd not really"),
    ]
    recorder = Recorder()
    run_clips([good[0], *bad, good[1]], engine, recorder)
    streams = recorder.streams()
    assert {k: streams[k] for k in ("a", "b")} == expected
    codes = {p[0]: p[1] for a, p in recorder.log if a == protocol.ERROR}
    assert codes == {"wide": "bad_melody", "muted": "bad_melody", "nosuch": "model", "junk-midi": "bad_melody"}
    for clip_id in codes:
        assert [a for a, _ in streams[clip_id]] == [protocol.ERROR]  # the error instead of begin


def test_a_failed_shared_call_is_retried_clip_by_clip(engine, monkeypatch):
    """The model call fails for one clip's windows: that clip gets /backline/error, the
    others, retried on their own, the notes they get alone."""
    expected = alone(engine, [POISONED[0], POISONED[2]])
    generator = engine.generator(None)
    poison = generator.draw_z(66, 1)[0]
    run = generator.run

    def failing(melody, z):
        if np.any(np.all(z == poison, axis=1)):
            raise RuntimeError("the model failed on these windows")
        return run(melody, z)

    monkeypatch.setattr(generator, "run", failing)
    only_the_poisoned_clip_fails(engine, expected)


def test_the_worker_batches_what_is_queued_up_to_max_batch_and_keeps_order(monkeypatch):
    engine = Engine("bach", device="cpu", max_batch=3)
    try:
        sizes = counting_runs(monkeypatch, engine.generator(None))
        recorder = Recorder()
        gate = threading.Event()
        assert engine.submit(gate.wait)  # holds the worker while the clips queue up
        for i in range(4):
            assert engine.submit(ClipTask(job(f"t{i}", ode(), seed=i), engine, recorder))
        assert engine.submit(lambda: recorder(TARGET, protocol.message(protocol.ACCOMP_END, "plain", 0)))
        for i in range(4, 6):
            assert engine.submit(ClipTask(job(f"t{i}", ode(), seed=i), engine, recorder))
        gate.set()
        deadline = time.monotonic() + 60
        while len(recorder.ends()) < 7 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        engine.close()
    assert recorder.ends() == ["t0", "t1", "t2", "t3", "plain", "t4", "t5"]
    assert sizes == [6, 2, 4]  # 2 windows a clip: [t0 t1 t2] [t3] (the plain job stops it) [t4 t5]


def test_engine_rejects_a_negative_window():
    with pytest.raises(ValueError, match="batch_window_ms"):
        Engine("bach", device="cpu", batch_window_ms=-1)


def test_fast_note_messages_are_the_protocols_bytes():
    rng = np.random.default_rng(4)
    notes = [Note(int(rng.integers(0, 128)), float(rng.random() * 50), float(rng.random() * 4 + 0.01),
                  int(rng.integers(1, 128)), bool(rng.random() < 0.2)) for _ in range(450)]
    for clip_id in ("c", "abc", "four", "ünï-cødé", "x" * 256, 0, 5, 2**31 - 1, 2**31, -7, -2**31, 2**40):
        for count in (1, 200, 201, 450):
            fast = protocol.accomp_notes(clip_id, 2, notes[:count])
            slow = [protocol.message(protocol.ACCOMP_NOTES, clip_id, 2, *(v for n in group for v in n))
                    for group in protocol.chunks(notes[:count])]
            assert [m.dgram for m in fast] == [m.dgram for m in slow]
            assert [(m.address, m.params) for m in fast] == [(m.address, m.params) for m in slow]
    assert protocol.accomp_notes("c", 0, []) == []


# --------------------------------------------------------------------------- real processes


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory):
    """A server that waits up to 300 ms for more clips, so concurrent clips surely batch."""
    srv = Server(registry.SHIPPED_DIR / "bach.onnx", tmp_path_factory.mktemp("serve") / "serve.log",
                 "--batch-window-ms", "300", "--midi-api", "none", "--clock", "off", "--no-reload")
    yield srv
    srv.stop()


def send_clip(client: Client, clip_id: str, notes: list[Note], seed: int) -> None:
    client.send("/backline/clip/begin", clip_id, 16.0, "", seed)
    client.send_notes(clip_id, notes)
    client.send("/backline/clip/end", clip_id)


def finished(clip_id):
    return lambda m: m.address in ("/backline/accomp/end", "/backline/error") and m.params[0] == clip_id


def together(server, clips: list[tuple[str, list[Note], int]]) -> list[list]:
    """Every clip from its own client socket at the same moment; each client's replies."""
    clients = [Client(server.port) for _ in clips]
    replies: list[list] = [[] for _ in clips]
    barrier = threading.Barrier(len(clips))

    def one(i: int) -> None:
        clip_id, notes, seed = clips[i]
        barrier.wait()
        send_clip(clients[i], clip_id, notes, seed)
        replies[i] = clients[i].receive_until(finished(clip_id), timeout=30)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(clips))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for c in clients:
            c.close()
    return replies


def batches_in_log(server) -> list[int]:
    import re

    return [int(n) for n in re.findall(r"\(batch of (\d+)\)", server.stderr())]


def test_concurrent_clients_each_get_their_own_notes_as_when_alone(batching_server):
    clips = [(f"client-{i}", ode(shift=i - 2), 10 + i) for i in range(6)]
    alone_notes = {}
    client = Client(batching_server.port)
    try:
        for clip_id, notes, seed in clips:
            send_clip(client, clip_id, notes, seed)
            got = client.receive_until(finished(clip_id), timeout=30)
            assert got[-1].address == "/backline/accomp/end", got[-1].params
            alone_notes[clip_id] = reply_notes(got)
    finally:
        client.close()
    before = len(batches_in_log(batching_server))
    replies = together(batching_server, clips)
    for (clip_id, _, _), got in zip(clips, replies):
        assert {m.params[0] for m in got} == {clip_id}  # only its own replies, on its own socket
        assert [m.address for m in got][0] == "/backline/accomp/begin" and got[-1].address == "/backline/accomp/end"
        assert reply_notes(got) == alone_notes[clip_id]
        assert got[-1].params[1] == sum(len(n) for n in alone_notes[clip_id].values()) > 0
    assert any(n > 1 for n in batches_in_log(batching_server)[before:]), batching_server.stderr()[-2000:]


def test_a_bad_clip_among_concurrent_clients_fails_alone(batching_server):
    clips = [("fine-0", ode(), 1), ("too-wide", [Note(30, 0.0, 1.0), Note(100, 1.0, 1.0)], 0),
             ("fine-1", ode(shift=3), 2), ("fine-2", ode(shift=-2), 3)]
    replies = together(batching_server, clips)
    assert errors(replies[1]) == [("too-wide", "bad_melody")] and len(replies[1]) == 1
    for got in replies[:1] + replies[2:]:
        assert got[-1].address == "/backline/accomp/end" and not errors(got)
        assert sum(len(n) for n in reply_notes(got).values()) == got[-1].params[1] > 0
    batching_server.ping()


def test_one_clients_clips_come_back_in_order_and_unmixed(batching_server):
    client = Client(batching_server.port)
    ids = ["first", "second", "third"]
    try:
        alone_notes = {}
        for i, clip_id in enumerate(ids):
            send_clip(client, f"alone-{clip_id}", ode(shift=i), i)
            alone_notes[clip_id] = reply_notes(client.receive_until(finished(f"alone-{clip_id}"), timeout=30))
        for i, clip_id in enumerate(ids):  # back to back, no waiting: they queue and batch
            send_clip(client, clip_id, ode(shift=i), i)
        got = client.receive_until(finished(ids[-1]), timeout=30)
    finally:
        client.close()
    order = [m.params[0] for m in got]
    # Each stream whole and in turn: begin, tracks, notes, end of "first", then "second"...
    assert order == sorted(order, key=ids.index)
    for clip_id in ids:
        stream = [m for m in got if m.params[0] == clip_id]
        assert stream[0].address == "/backline/accomp/begin" and stream[-1].address == "/backline/accomp/end"
        assert reply_notes(stream) == alone_notes[clip_id]


@pytest.mark.parametrize("option, value, text", [
    ("--batch-window-ms", "-1", "'-1' is not a time in milliseconds >= 0, e.g. 2 (0 = no waiting)"),
    ("--batch-window-ms", "soon", "'soon' is not a time in milliseconds >= 0, e.g. 2 (0 = no waiting)"),
    ("--max-batch", "0", "'0' is not a whole number >= 1, e.g. 16 (1 = no batching)"),
])
def test_serve_checks_the_batching_options(option, value, text):
    result = run_backline("serve", option, value, "--osc-port", "0")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"backline: error: argument {option}: {text} (see: backline serve --help)"]
