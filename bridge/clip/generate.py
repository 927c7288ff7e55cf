"""Clips -> their streams of replies (runs on the engine's worker thread).

Clips queued together run as one batch (`ClipTask`, a BatchJob): each is checked and laid
out as model windows, the windows of every clip for the same model go through the model
together (models/accompaniment.run_calls: at most MAX_RUN_WINDOWS per call), the clips
each call finished are decoded together (models/accompaniment.decode_many), and each clip
is then streamed in queue order, so one client's clips keep their order. Each clip draws
its noise from its own seed and is decoded with its own settings, so a clip gets the same
notes in a batch as alone.

A clip's stream: begin and the track headers, then the notes track by track, then end with
the number of notes sent, so a client can tell a lost datagram from a quiet track. A
client that asked for bundles gets the same messages packed: the first clip of a batch its
headers in one bundle before the model runs, the notes and end in as few as fit; a later
clip its headers with its notes. Melody
problems are found before begin and answered with one /backline/error; any later failure
ends the stream with /backline/error instead of /backline/accomp/end. A failure in one
clip never reaches the others in its batch.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from pythonosc.osc_message import OscMessage

from backline.models.melody import MelodyError, PreparedMelody, prepare
from backline.models.accompaniment import (Accompaniment, DecodeRequest, WindowProbabilities, decode_many, run_calls,
                                           run_windows)
from backline.models.errors import BacklineError
from backline.models.meter import Meter, MeterError
from backline.models.midi import MidiError, pick_melody_track, read_midi_bytes
from backline.models.notes import Note
from backline.models.runtime import Generator, ModelLoadError
from backline.models.spec import GeneratorSpec, SpecError

from backline.bridge.osc import protocol
from backline.bridge.osc.clients import Address, Settings
from backline.bridge.serving.engine import BatchJob, Engine

log = logging.getLogger("backline.bridge")

Send = Callable[[Address, protocol.Packet], None]  # a message or a bundle: one datagram


@dataclass(frozen=True)
class ClipJob:
    target: Address
    clip_id: str | int
    settings: Settings
    notes: Sequence[Note] = ()
    length_beats: float = 0.0
    midi: bytes | None = None  # a whole .mid file (clip/midi) instead of notes
    track: str | None = None
    meter: Meter | None = None  # the notes' meter (clip/begin); None: 4/4. A MIDI blob has its own.


class ClipTask(BatchJob):
    """A clip on the engine's queue, with where its replies go; clips queued together run
    as one batch."""

    def __init__(self, job: ClipJob, engine: Engine, send: Send) -> None:
        self.job, self.engine, self.send = job, engine, send

    @classmethod
    def run_batch(cls, tasks: Sequence["ClipTask"]) -> None:
        # Every task of one server shares its engine and send; grouping keeps that a fact.
        for (engine, send), group in itertools.groupby(tasks, key=lambda t: (t.engine, t.send)):
            run_clips([t.job for t in group], engine, send)


def error_code(exc: BacklineError) -> str:
    if isinstance(exc, (MelodyError, MidiError, MeterError)):
        return "bad_melody"
    if isinstance(exc, (ModelLoadError, SpecError)):
        return "model"
    return "failed"


def run_clip(job: ClipJob, engine: Engine, send: Send) -> None:
    """Generate and stream one clip; every failure becomes /backline/error, never an exception."""
    run_clips([job], engine, send)


def run_clips(jobs: Sequence[ClipJob], engine: Engine, send: Send) -> None:
    """Generate and stream clips as one batch (see the module's doc); never raises."""
    started = time.perf_counter()
    ready = [clip for job in jobs if (clip := _checked(job, engine, send)) is not None]
    for _, group in itertools.groupby(ready, key=lambda clip: id(clip.generator)):
        _generate(list(group), send, started, len(jobs))


@dataclass
class _Clip:
    """A clip that passed its checks: its model and its melody laid out as windows."""

    job: ClipJob
    generator: Generator
    melody: PreparedMelody
    n_melody: int
    length: float


def _checked(job: ClipJob, engine: Engine, send: Send) -> _Clip | None:
    """The clip ready for its model, or None after answering /backline/error."""
    try:
        notes, length, meter = job.notes, job.length_beats, job.meter or Meter()
        if job.midi is not None:
            score = read_midi_bytes(job.midi, "the MIDI blob")
            melody = pick_melody_track(score, job.track)
            notes, length, meter = melody.notes, max(n.end for n in melody.notes), Meter(*score.time_signature)
        generator = engine.generator(job.settings.model)
        if not any(not n.mute for n in notes):
            raise MelodyError("the clip has no (unmuted) notes to accompany; send the melody's notes first")
        prepared = prepare(generator.spec, notes, meter)
        for notice in prepared.notices:
            log.info("clip %r: %s", job.clip_id, notice)
        return _Clip(job, generator, prepared, len(notes), length)
    except Exception as exc:
        _report(job, send, exc)
        return None


def _generate(clips: list[_Clip], send: Send, started: float, batch: int) -> None:
    """One model's clips: their windows through the model together, then the clips each
    model call finished decoded together (`decode_many`) and streamed in order. The first
    clip's begin and headers go out before the model runs (a lone clip hears at once that
    it is being generated); the others' just before their notes, so that no two streams
    interleave."""
    generator = clips[0].generator
    _send_headers(clips[0], send)
    inputs = [(clip.melody, generator.draw_z(clip.job.settings.seed or 0, clip.melody.n_windows))
              for clip in clips]
    done = 0
    try:
        for finished in run_calls(generator, inputs):
            _finish(clips[done:done + len(finished)], finished, send, started, batch, first=done == 0)
            done += len(finished)
    except Exception as exc:  # the shared model call failed: retry each clip left on its own
        if len(clips) - done == 1:
            _report(clips[done].job, send, exc)
            return
        log.warning("batch of %d clips failed (%s: %s); running them one by one", len(clips) - done,
                    type(exc).__name__, exc)
        for index in range(done, len(clips)):
            try:
                [probs] = run_windows(generator, [inputs[index]])
            except Exception as exc:
                _report(clips[index].job, send, exc)
                continue
            _finish([clips[index]], [probs], send, started, batch, first=index == 0)


def _send_headers(clip: _Clip, send: Send) -> None:
    _send_all(clip.job, send, _headers(clip))


def _headers(clip: _Clip) -> list[OscMessage]:
    """A clip's begin and track headers."""
    job, spec = clip.job, clip.generator.spec
    return [protocol.accomp_begin(job.clip_id, spec.n_tracks, clip.length)] + [
        protocol.accomp_track(job.clip_id, index, track.name, track.program, track.channel, track.is_drum)
        for index, track in enumerate(spec.tracks)]


def _send_all(job: ClipJob, send: Send, messages: Sequence[OscMessage]) -> None:
    """Part of a clip's reply, as single messages or, where its client asked for them
    (`/backline/set bundle 1`), packed into as few OSC bundles as fit (docs/PROTOCOL.md)."""
    for packet in protocol.packets(messages, bool(job.settings.bundle)):
        send(job.target, packet)


def _finish(clips: Sequence[_Clip], probs: Sequence[WindowProbabilities], send: Send, started: float, batch: int,
            first: bool = False) -> None:
    """Decode clips together and stream each one's begin and headers (unless sent already:
    the first clip's, when `first`), notes and end, or its error. A clip that cannot be
    decoded with the others is decoded alone, so that its failure stays its own."""
    if not clips:
        return
    spec = clips[0].generator.spec
    requests = [DecodeRequest(clip.melody, p, seed=clip.job.settings.seed or 0, threshold=clip.job.settings.threshold,
                              sample=bool(clip.job.settings.sample)) for clip, p in zip(clips, probs)]
    try:
        decoded: list[Accompaniment | Exception] = list(decode_many(spec, requests))
    except Exception:
        decoded = [_decode_alone(spec, request) for request in requests]
    for index, (clip, accompaniment) in enumerate(zip(clips, decoded)):
        _stream(clip, accompaniment, send, started, batch, [] if first and index == 0 else _headers(clip))


def _decode_alone(spec: GeneratorSpec, request: DecodeRequest) -> Accompaniment | Exception:
    try:
        return decode_many(spec, [request])[0]
    except Exception as exc:
        return exc


def _stream(clip: _Clip, accompaniment: Accompaniment | Exception, send: Send, started: float, batch: int,
            headers: Sequence[OscMessage] = ()) -> None:
    """One decoded clip's `headers` (begin and tracks, unless sent already), notes and
    end, or its headers and then its error. Sent together, a bundled reply is one datagram
    where it fits in one."""
    job = clip.job
    try:
        if isinstance(accompaniment, Exception):
            raise accompaniment
        messages: list[OscMessage] = list(headers)
        total = 0
        for index, (_, track_notes) in enumerate(accompaniment.tracks):
            inside = trim(track_notes, clip.length)
            messages += protocol.accomp_notes(job.clip_id, index, inside)
            total += len(inside)
        _send_all(job, send, [*messages, protocol.accomp_end(job.clip_id, total)])
    except Exception as exc:
        _send_all(job, send, headers)
        _report(job, send, exc)
        return
    log.info("clip %r for %s:%d: %d melody notes -> %d tracks, %d notes in %.0f ms%s", job.clip_id,
             *job.target, clip.n_melody, len(accompaniment.tracks), total, 1000 * (time.perf_counter() - started),
             f" (batch of {batch})" if batch > 1 else "")


def _report(job: ClipJob, send: Send, exc: Exception) -> None:
    """A failure as /backline/error to the clip's client; a bug also gets one log line."""
    if isinstance(exc, BacklineError):
        send(job.target, protocol.error(job.clip_id, error_code(exc), str(exc)))
        return
    log.error("clip %r: internal error %s: %s", job.clip_id, type(exc).__name__, exc)
    send(job.target, protocol.error(job.clip_id, "internal", f"internal error ({type(exc).__name__}); see the server log"))


def trim(notes: Sequence[Note], length: float) -> list[Note]:
    """The notes inside the clip [0, length): later ones dropped, the last ones cut at its end."""
    return [n if n.end <= length else n._replace(duration=length - n.start) for n in notes if n.start < length]
