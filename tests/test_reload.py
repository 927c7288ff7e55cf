"""Hot reload of models: a real `backline serve` whose model folder ($BACKLINE_MODELS) the
test changes under it, and the reload thread driven poll by poll in-process.

Two fixed models (tests/fake_models.py) tell the models apart in the output: A holds
pitch 48 and restrikes 55, B holds 50 and restrikes 57."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from pythonosc.osc_message import OscMessage

from backline.models.notes import Note
from backline.models.spec import GeneratorSpec
from backline.training.export import _to_onnx

from .fake_models import FixedPattern, fixed_spec
from .test_bridge_osc import Client, Server, accompaniment

A_PITCHES = (48, 55)
B_PITCHES = (50, 57)
MELODY = [Note(68 + (i % 5), float(i), 1.0) for i in range(16)]  # 16 beats: two 8-beat windows


def write_shifted_model(path: Path, shift: int) -> GeneratorSpec:
    """The fixed model with every pitch moved up by `shift` semitones."""
    spec = fixed_spec(path.stem)
    module = FixedPattern(spec).eval()
    with torch.no_grad():
        module.frames.copy_(torch.roll(module.frames, shift, dims=-1))
        module.onsets.copy_(torch.roll(module.onsets, shift, dims=-1))
    _to_onnx(module, spec, path)
    return spec


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("variants")
    write_shifted_model(folder / "fixed.onnx", 0)
    a = (folder / "fixed.onnx").read_bytes()
    write_shifted_model(folder / "fixed.onnx", 2)
    return {"A": a, "B": (folder / "fixed.onnx").read_bytes()}


@pytest.fixture
def models_dir(tmp_path, monkeypatch, variants) -> Path:
    """$BACKLINE_MODELS holding fixed.onnx = A; HOME moved so no user model gets in."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "fixed.onnx").write_bytes(variants["A"])
    monkeypatch.setenv("BACKLINE_MODELS", str(folder))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return folder


def start(tmp_path: Path, *extra: str) -> tuple[Server, Client]:
    server = Server("fixed", tmp_path / "serve.log", "--midi-api", "none", *extra)
    return server, Client(server.port)


def pitches(messages) -> tuple[int, ...]:
    """(held pitch, restruck pitch) of one complete reply; fails on a mixed or short reply."""
    assert messages[-1].address == "/backline/accomp/end", [(m.address, m.params[:3]) for m in messages]
    tracks = accompaniment(messages)
    assert sum(len(n) for n in tracks.values()) == messages[-1].params[1]  # complete
    found = []
    for index in (0, 1):
        used = {n.pitch for n in tracks[index]}
        assert len(used) == 1, f"track {index} mixes models: {used}"
        found.append(used.pop())
    return tuple(found)


def clip(client: Client, clip_id: str) -> tuple[int, ...]:
    return pitches(client.clip(clip_id, MELODY, 16.0))


def wait_for_log(server: Server, text: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in (log := server.stderr()):
            return log
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in the log:\n{server.stderr()}")


def slow_copy(data: bytes, target: Path, pieces: int = 5, pause: float = 0.3) -> None:
    """Write the file as a slow copy would: in pieces, half-written for over a second."""
    step = len(data) // pieces + 1
    with target.open("wb") as handle:
        for i in range(0, len(data), step):
            handle.write(data[i:i + step])
            handle.flush()
            time.sleep(pause)


# --------------------------------------------------------------------------- the watcher


def test_a_changed_model_file_is_swapped_in(models_dir, tmp_path, variants):
    server, client = start(tmp_path)
    try:
        assert clip(client, "before") == A_PITCHES
        slow_copy(variants["B"], models_dir / "fixed.onnx")  # not atomic: half a file for a while
        got = client.receive_until(lambda m: m.address in ("/backline/model/loaded", "/backline/error"), timeout=20)
        assert (got[-1].address, got[-1].params) == ("/backline/model/loaded", ["fixed", "CPUExecutionProvider"])
        log = wait_for_log(server, "model fixed reloaded from")
        assert "refused" not in log  # the half-copied file was never read
        assert clip(client, "after") == B_PITCHES
        assert client.ping_after() == []
    finally:
        client.close()
        server.stop()


def test_clips_sent_during_a_swap_all_get_complete_replies(models_dir, tmp_path, variants):
    server, client = start(tmp_path)
    replies: dict[str, list] = {}
    sent: list[str] = []
    try:
        deadline = time.monotonic() + 30
        swapped_at = None
        i = 0
        while time.monotonic() < deadline:
            clip_id = f"c{i}"
            client.send("/backline/clip/begin", clip_id, 16.0)
            client.send_notes(clip_id, MELODY)
            client.send("/backline/clip/end", clip_id)
            sent.append(clip_id)
            i += 1
            if i == 10:  # an atomic replace, as `backline export` or `cp x.tmp; mv` does
                (models_dir / ".fixed.onnx.tmp").write_bytes(variants["B"])
                (models_dir / ".fixed.onnx.tmp").replace(models_dir / "fixed.onnx")
            time.sleep(0.02)
            client.sock.settimeout(0)
            try:
                while True:
                    msg = OscMessage(client.sock.recvfrom(65535)[0])
                    if msg.address.startswith("/backline/accomp/") or msg.address == "/backline/error":
                        replies.setdefault(msg.params[0], []).append(msg)
                    if msg.address == "/backline/model/loaded" and swapped_at is None:
                        swapped_at = i
            except (BlockingIOError, OSError):
                pass
            if swapped_at is not None and i >= swapped_at + 10:
                break
        assert swapped_at is not None, server.stderr()
        # Collect the rest.
        def finished(c: str) -> bool:
            return bool(replies.get(c)) and replies[c][-1].address in ("/backline/accomp/end", "/backline/error")

        while not all(finished(c) for c in sent):
            for msg in client.receive_until(lambda m: True, timeout=20):
                replies.setdefault(msg.params[0], []).append(msg)
        outcomes = [pitches(replies[c]) for c in sent]  # every clip complete, none mixed
        assert set(outcomes) == {A_PITCHES, B_PITCHES}
        first_b = outcomes.index(B_PITCHES)
        assert outcomes[first_b:] == [B_PITCHES] * (len(sent) - first_b)  # once swapped, always B
        assert outcomes[:first_b] == [A_PITCHES] * first_b
    finally:
        client.close()
        server.stop()


def test_a_broken_model_file_is_refused_and_the_old_model_keeps_serving(models_dir, tmp_path, variants):
    server, client = start(tmp_path)
    try:
        assert clip(client, "first") == A_PITCHES  # the client is known: it hears announcements
        for n, broken in enumerate([b"this is not an ONNX model" * 100, variants["B"][: len(variants["B"]) // 2]]):
            (models_dir / "fixed.onnx").write_bytes(broken)
            got = client.receive_until(lambda m: m.address in ("/backline/model/loaded", "/backline/error"), timeout=20)
            assert got[-1].address == "/backline/error", got[-1].params
            assert got[-1].params[:2] == ["", "model_rejected"]
            assert "model fixed: changed file refused, the loaded model keeps serving" in got[-1].params[2]
            assert clip(client, f"still-{n}") == A_PITCHES
        log = server.stderr()
        assert log.count("file refused") == 2 and "Traceback" not in log
        # A good file afterwards is taken.
        (models_dir / "fixed.onnx").write_bytes(variants["B"])
        got = client.receive_until(lambda m: m.address in ("/backline/model/loaded", "/backline/error"), timeout=20)
        assert got[-1].address == "/backline/model/loaded"
        assert clip(client, "fixed-again") == B_PITCHES
    finally:
        client.close()
        server.stop()


def test_a_new_model_file_is_loaded_and_ready(models_dir, tmp_path, variants):
    server, client = start(tmp_path)
    try:
        client.ping_after()  # known to the server: hears the announcement
        (models_dir / "other.onnx").write_bytes(variants["B"])
        got = client.receive_until(lambda m: m.address == "/backline/model/loaded", timeout=20)
        assert got[-1].params == ["other", "CPUExecutionProvider"]
        assert "model other loaded (new)" in server.stderr()
        client.send("/backline/clip/begin", "o", 16.0, "other")
        client.send_notes("o", MELODY)
        client.send("/backline/clip/end", "o")
        assert pitches(client.receive_until(lambda m: m.address in ("/backline/accomp/end", "/backline/error"))) == B_PITCHES
        assert clip(client, "default-unchanged") == A_PITCHES
    finally:
        client.close()
        server.stop()


# --------------------------------------------------------------------------- OSC load / list


def answer(client: Client, *args) -> tuple[str, list]:
    client.send("/backline/model/load", *args)
    msg = client.receive_until(lambda m: m.address in ("/backline/model/loaded", "/backline/error"))[-1]
    return msg.address, msg.params


def test_model_load_over_osc(models_dir, tmp_path, variants):
    server, client = start(tmp_path, "--no-reload")
    try:
        (models_dir / "fixed.onnx").write_bytes(variants["B"])
        time.sleep(2.5)
        assert clip(client, "not-watched") == A_PITCHES  # --no-reload: nothing watches the folder
        assert answer(client, "fixed") == ("/backline/model/loaded", ["fixed", "CPUExecutionProvider"])
        assert clip(client, "loaded") == B_PITCHES
        # Unchanged file: reloaded all the same.
        assert answer(client, "fixed") == ("/backline/model/loaded", ["fixed", "CPUExecutionProvider"])
        # A broken file: refused, the loaded model keeps serving.
        (models_dir / "fixed.onnx").write_bytes(b"\x08\x01garbage" * 50)
        address, params = answer(client, "fixed")
        assert (address, params[:2]) == ("/backline/error", ["", "model_load"])
        assert "refused, the loaded model keeps serving" in params[2]
        assert clip(client, "still-b") == B_PITCHES
        assert "file refused" in server.stderr()
    finally:
        client.close()
        server.stop()


@pytest.mark.parametrize("name", ["../fixed", "..", "a..b", "sub/fixed", "/etc/passwd", "..\\fixed",
                                  "C:\\models\\fixed", "fixed.onnx", "", 7])
def test_model_load_never_takes_a_path(shared_server, name):
    client = Client(shared_server.port)
    try:
        address, params = answer(client, name)
        assert (address, params[:2]) == ("/backline/error", ["", "model_load"])
        assert "is not a model name" in params[2]
        assert client.ping_after() == []
    finally:
        client.close()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory, variants):
    folder = tmp_path_factory.mktemp("shared-models")
    (folder / "fixed.onnx").write_bytes(variants["A"])
    (folder / "other.onnx").write_bytes(variants["B"])
    patch = pytest.MonkeyPatch()
    patch.setenv("BACKLINE_MODELS", str(folder))
    patch.setenv("HOME", str(folder / "home"))
    try:
        server = Server("fixed", folder / "serve.log", "--midi-api", "none")
    finally:
        patch.undo()
    yield server
    server.stop()


def test_model_load_of_an_unknown_name(shared_server):
    client = Client(shared_server.port)
    try:
        address, params = answer(client, "nosuch")
        assert (address, params[:2]) == ("/backline/error", ["", "model_load"])
        assert "no model named 'nosuch'" in params[2] and "other" in params[2]
    finally:
        client.close()


def test_model_list(shared_server):
    client = Client(shared_server.port)
    try:
        client.send("/backline/model/list")
        reply = client.receive_until(lambda m: m.address == "/backline/model/list/reply")[-1]
        assert {"fixed", "other", "bach"} <= set(reply.params)
        assert reply.params == sorted(reply.params)
        assert answer(client, "other") == ("/backline/model/loaded", ["other", "CPUExecutionProvider"])
    finally:
        client.close()


# --------------------------------------------------------------------------- in-process


def test_reloader_polls_swap_and_tell_listeners(models_dir, variants):
    from backline.bridge.serving.engine import Engine
    from backline.bridge.serving.reload import Reloader

    engine = Engine(str(models_dir / "fixed.onnx"), device="cpu")  # by path: cached under path and name
    old = engine.generator(None)
    swaps, results = [], []
    engine.on_swap(lambda name, generator: swaps.append((name, generator)))
    reloader = Reloader(engine, dirs=lambda: [models_dir])
    reloader.on_result(results.append)
    try:
        assert reloader.poll() == []
        (models_dir / "fixed.onnx").write_bytes(variants["B"])
        assert reloader.poll() == []  # changed: wait one poll for it to hold still
        [result] = reloader.poll()
        assert result.ok and result.name == "fixed" and results == [result]
        new = engine.generator(None)
        assert new is result.generator and new is not old
        assert engine.loaded(str(models_dir / "fixed.onnx")) is new  # every alias moved
        assert swaps == [("fixed", new)]
        assert reloader.poll() == []  # acted on once

        (models_dir / "fixed.onnx").write_bytes(b"junk")
        reloader.poll()
        [refused] = reloader.poll()
        assert not refused.ok and "refused" in refused.error
        assert engine.generator(None) is new and len(swaps) == 1  # no swap for a broken file
    finally:
        engine.close()


def test_swap_adds_an_unknown_name_and_a_listener_can_unsubscribe(tiny_or_fixed):
    from backline.bridge.serving.engine import Engine
    from backline.models.runtime import Generator

    engine = Engine(str(tiny_or_fixed), device="cpu")
    heard = []
    unsubscribe = engine.on_swap(lambda name, generator: heard.append(name))
    try:
        other = Generator(tiny_or_fixed, device="cpu", announce=False)
        assert engine.swap("extra", other) == ["extra"]
        assert engine.loaded("extra") is other and engine.loaded(None) is not other
        unsubscribe()
        engine.swap("extra", Generator(tiny_or_fixed, device="cpu", announce=False))
        assert heard == ["extra"]
    finally:
        engine.close()


@pytest.fixture
def tiny_or_fixed(tmp_path, variants) -> Path:
    path = tmp_path / "fixed.onnx"
    path.write_bytes(variants["A"])
    return path
