"""The shipped models, played every way a musician plays them: `backline accompany`, clip
mode with a model chosen per clip, and live mode on real JACK ports (drums on MIDI channel
10, one port per track with --per-track-ports). Every note lies in its instrument's range."""

from __future__ import annotations

import time
from pathlib import Path

import mido
import pytest

from backline.models import registry
from backline.models.midi import read_midi
from backline.models.spec import TrackSpec

from .conftest import run_backline
from .jack_server import require  # noqa: F401  (the jack fixture comes from conftest)
from .test_bridge_osc import Server
from .test_live import OscClient
from .test_midi_ports import Recorder

MODELS = Path(__file__).resolve().parents[1] / "models"
ODE = MODELS / "examples" / "ode-to-joy.mid"
GENRES = ("pop", "rock", "jazz", "symphony")


def test_backline_models_lists_all_five():
    shipped = [entry for entry in registry.list_models() if entry.path.parent == MODELS]
    assert sorted(entry.path.stem for entry in shipped) == ["bach", "jazz", "pop", "rock", "symphony"]
    assert all(entry.error is None and entry.spec.name == entry.path.stem for entry in shipped)
    assert all(entry.card is not None and entry.card.exists() for entry in shipped)
    result = run_backline("models")
    assert result.returncode == 0 and all(f"{name} " in result.stdout for name in [*GENRES, "bach"])


def in_range(track: TrackSpec, pitches) -> bool:
    low, high = track.playable_range
    return all(low <= p <= high for p in pitches)


@pytest.mark.parametrize("name", GENRES)
def test_accompany_writes_every_instrument_in_range_with_drums_on_channel_10(name, tmp_path):
    out = tmp_path / f"{name}.mid"
    result = run_backline("accompany", ODE, "-o", out, "--model", name)
    assert result.returncode == 0, result.stderr
    spec = registry.load(name, device="cpu").spec
    # Every instrument has its track, named and on its channel, even one that rests
    # throughout this melody (read with mido: read_midi leaves out tracks without notes).
    names = [next((m.name for m in t if m.type == "track_name"), "") for t in mido.MidiFile(out).tracks]
    assert [t.name for t in spec.tracks] == [n for n in names if n in {t.name for t in spec.tracks}]
    by_name = {t.name: t for t in read_midi(out).tracks}
    playing = [t for t in spec.tracks if t.name in by_name]
    assert len(playing) >= 2, f"{name}: only {[t.name for t in playing]} play"
    for track in playing:
        written = by_name[track.name]
        assert written.channel == track.channel and written.is_drum == track.is_drum
        assert in_range(track, [n.pitch for n in written.notes]), (name, track.name)
        if len(written.notes) > 4:
            assert len({n.velocity for n in written.notes}) > 1, f"{name} {track.name}: one flat velocity"
    drums = [t for t in spec.tracks if t.is_drum]
    assert [t.channel for t in drums] == ([9] if name != "symphony" else [])
    if drums:
        assert drums[0].name in by_name, f"{name}: the drummer never played"


@pytest.fixture(scope="module")
def bach_server(tmp_path_factory):
    srv = Server(MODELS / "bach.onnx", tmp_path_factory.mktemp("serve") / "serve.log", "--midi-api", "none")
    yield srv
    srv.stop()


@pytest.mark.parametrize("name", GENRES)
def test_clip_mode_plays_the_model_each_clip_asks_for(bach_server, name, tmp_path):
    out = tmp_path / "band.mid"
    result = run_backline("send", ODE, "-o", out, "--port", bach_server.port, "--model", name)
    assert result.returncode == 0, result.stderr
    spec = registry.load(name, device="cpu").spec
    score = read_midi(out)
    written = {t.name: t for t in score.tracks}
    for track in spec.tracks:
        if track.name in written:  # a track the model left silent has no notes to write
            assert written[track.name].channel == track.channel
            assert in_range(track, [n.pitch for n in written[track.name].notes])
    assert sum(len(t.notes) for n, t in written.items() if n in {t.name for t in spec.tracks}) > 0
    # The same bridge still answers with its own default model.
    default = run_backline("send", ODE, "-o", tmp_path / "bach.mid", "--port", bach_server.port)
    assert default.returncode == 0 and {"Alto", "Tenor", "Bass"} <= set(t.name for t in read_midi(tmp_path / "bach.mid").tracks)


def _play(client: OscClient, seconds: float) -> None:
    melody = [72, 74, 76, 77, 79, 77, 76, 74]
    end, i = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        client.send("/backline/live/note", melody[i % len(melody)], 100)
        time.sleep(0.2)
        client.send("/backline/live/note", melody[i % len(melody)], 0)
        time.sleep(0.05)
        i += 1


def test_live_mode_plays_the_drums_on_channel_10(jack, tmp_path):
    srv = Server(MODELS / "pop.onnx", tmp_path / "serve.log", "--no-reload", "--midi-api", "jack",
                 "--clock", "internal", "--tempo", "240", env=jack.env)
    recorder = None
    try:
        out_port = next(p for p in jack.ports() if p.endswith(":backline out"))
        recorder = Recorder(jack, out_port)
        client = OscClient(srv.port)
        _play(client, 4.0)
        client.close()
        messages = recorder.messages(1.0)
        note_ons = [m for m in messages if m[0] & 0xF0 == 0x90 and m[2] > 0]
        channels = {m[0] & 0x0F for m in note_ons}
        assert 9 in channels, f"no drums on MIDI channel 10; channels heard: {sorted(channels)}"
        spec = registry.load("pop", device="cpu").spec
        by_channel = {t.channel: t for t in spec.tracks}
        for status, pitch, _ in note_ons:
            assert in_range(by_channel[status & 0x0F], [pitch]), (status, pitch)
        assert len({m[2] for m in note_ons}) > 1, "every note at one velocity"
    finally:
        if recorder is not None:
            recorder.close()
        srv.stop()


def test_per_track_ports_give_the_drummer_a_port_of_its_own(jack, tmp_path):
    srv = Server(MODELS / "pop.onnx", tmp_path / "serve.log", "--no-reload", "--midi-api", "jack",
                 "--per-track-ports", "--clock", "internal", "--tempo", "240", env=jack.env)
    recorder = None
    try:
        midi = next(line for line in srv.startup if "virtual MIDI" in line)
        names = [n.split(":", 1)[1] for n in midi.strip().split(": ", 2)[2].split(", ")]
        assert names == ["backline in", "backline drums", "backline bass", "backline guitar", "backline piano",
                         "backline strings"], names
        drums = next(p for p in jack.ports() if p.endswith(":backline drums"))
        recorder = Recorder(jack, drums)
        client = OscClient(srv.port)
        _play(client, 4.0)
        client.close()
        note_ons = [m for m in recorder.messages(1.0) if m[0] & 0xF0 == 0x90 and m[2] > 0]
        assert note_ons and {m[0] & 0x0F for m in note_ons} == {9}
        assert all(35 <= m[1] <= 81 for m in note_ons)
    finally:
        if recorder is not None:
            recorder.close()
        srv.stop()
