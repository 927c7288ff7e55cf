"""One clip -> its stream of replies (runs on the engine's worker thread).

begin and the track headers go out as soon as the model is known, then the notes track
by track, then end with the number of notes sent, so a client can tell a lost datagram
from a quiet track. Melody problems are found before begin; any later failure ends the
stream with /backline/error instead of /backline/accomp/end.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from pythonosc.osc_message import OscMessage

from backline.models.accompaniment import MelodyError, accompany, melody_shift
from backline.models.errors import BacklineError
from backline.models.midi import MidiError, pick_melody_track, read_midi_bytes
from backline.models.notes import Note
from backline.models.runtime import ModelLoadError
from backline.models.spec import SpecError

from . import protocol
from .clients import Address, Settings
from .engine import Engine

log = logging.getLogger("backline.bridge")

Send = Callable[[Address, OscMessage], None]


@dataclass(frozen=True)
class ClipJob:
    target: Address
    clip_id: str | int
    settings: Settings
    notes: Sequence[Note] = ()
    length_beats: float = 0.0
    midi: bytes | None = None  # a whole .mid file (clip/midi) instead of notes
    track: str | None = None


def error_code(exc: BacklineError) -> str:
    if isinstance(exc, (MelodyError, MidiError)):
        return "bad_melody"
    if isinstance(exc, (ModelLoadError, SpecError)):
        return "model"
    return "failed"


def run_clip(job: ClipJob, engine: Engine, send: Send) -> None:
    """Generate and stream; every failure becomes /backline/error, never an exception."""
    started = time.perf_counter()
    try:
        n_melody, n_tracks, n_notes = _stream(job, engine, send)
    except BacklineError as exc:
        send(job.target, protocol.error(job.clip_id, error_code(exc), str(exc)))
        return
    except Exception as exc:  # a bug: one log line, the client hears 'internal', we go on
        log.error("clip %r: internal error %s: %s", job.clip_id, type(exc).__name__, exc)
        send(job.target, protocol.error(job.clip_id, "internal", f"internal error ({type(exc).__name__}); see the server log"))
        return
    log.info("clip %r for %s:%d: %d melody notes -> %d tracks, %d notes in %.0f ms", job.clip_id,
             *job.target, n_melody, n_tracks, n_notes, 1000 * (time.perf_counter() - started))


def _stream(job: ClipJob, engine: Engine, send: Send) -> tuple[int, int, int]:
    notes, length = job.notes, job.length_beats
    if job.midi is not None:
        melody = pick_melody_track(read_midi_bytes(job.midi, "the MIDI blob"), job.track)
        notes, length = melody.notes, max(n.end for n in melody.notes)
    generator = engine.generator(job.settings.model)
    spec = generator.spec
    # Melody errors before begin, so that a failed clip is one error and nothing else.
    playable = [n for n in notes if not n.mute]
    if not playable:
        raise MelodyError("the clip has no (unmuted) notes to accompany; send the melody's notes first")
    melody_shift(playable, spec)
    send(job.target, protocol.accomp_begin(job.clip_id, spec.n_tracks, length))
    for index, track in enumerate(spec.tracks):
        send(job.target, protocol.accomp_track(job.clip_id, index, track.name, track.program,
                                               track.channel, track.is_drum))
    result_tracks = accompany(
        generator, notes, seed=job.settings.seed or 0, threshold=job.settings.threshold,
        sample=bool(job.settings.sample),
    ).tracks
    total = 0
    for index, (_, track_notes) in enumerate(result_tracks):
        inside = trim(track_notes, length)
        for message in protocol.accomp_notes(job.clip_id, index, inside):
            send(job.target, message)
        total += len(inside)
    send(job.target, protocol.accomp_end(job.clip_id, total))
    return len(notes), len(result_tracks), total


def trim(notes: Sequence[Note], length: float) -> list[Note]:
    """The notes inside the clip [0, length): later ones dropped, the last ones cut at its end."""
    return [n if n.end <= length else n._replace(duration=length - n.start) for n in notes if n.start < length]
