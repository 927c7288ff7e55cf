"""Reading melody MIDI files and writing accompaniment MIDI files.

Times are in beats (ticks / ticks_per_beat) everywhere, as in `Note`. Every problem with
an input file surfaces as a `MidiError` whose message says what is wrong and what to do.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import mido
from mido.midifiles.meta import KeySignatureError, build_meta_message

from .notes import Note
from .spec import TrackSpec
from .atomic import atomic_write
from .errors import BacklineError

DRUM_CHANNEL = 9
DEFAULT_TEMPO_BPM = 120.0
MELODY_NAME_HINTS = ("melody", "lead", "soprano", "vocal", "voice", "melodie", "tune")

_EXPORT_HINT = "export the clip from your DAW as a Standard MIDI File (.mid)"


class MidiError(BacklineError, ValueError):
    """A MIDI file cannot be used; the message is one line for the user."""


@dataclass
class MidiTrack:
    name: str
    program: int
    channel: int
    is_drum: bool
    notes: list[Note] = field(default_factory=list)

    @property
    def mean_pitch(self) -> float:
        return sum(n.pitch for n in self.notes) / len(self.notes) if self.notes else 0.0


@dataclass
class MidiScore:
    tracks: list[MidiTrack]
    tempo_bpm: float
    time_signature: tuple[int, int]
    ticks_per_beat: int
    tempo_changes: list[tuple[float, float]] = field(default_factory=list)  # (beat, bpm)
    # Every time-signature event, in time order: (beat, numerator, denominator).
    time_signatures: list[tuple[float, int, int]] = field(default_factory=list)

    @property
    def length_beats(self) -> float:
        """End of the last note, in beats (0 for a score without notes)."""
        return max((n.end for t in self.tracks for n in t.notes), default=0.0)

    def track_names(self) -> list[str]:
        return [t.name for t in self.tracks]


# --------------------------------------------------------------------------- reading


def read_midi(path: str | os.PathLike[str], *, lenient: bool = False) -> MidiScore:
    """Read a type 0 or type 1 MIDI file into tracks of notes.

    A track that holds several channels (always so in type 0 files) is split into one
    MidiTrack per channel. Raises MidiError for a missing, empty, corrupt or unusable file
    (no notes, only zero-length notes, only drums). `lenient` as in `read_midi_bytes`.
    """
    label = str(path)
    p = Path(path)
    if not p.exists():
        raise MidiError(f"{label} does not exist; check the path to the melody MIDI file")
    if p.is_dir():
        raise MidiError(f"{label} is a folder, not a MIDI file; give the path to a .mid file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise MidiError(
            f"{label} could not be read ({exc.strerror or exc}); check that the file is "
            "readable"
        ) from None
    return read_midi_bytes(data, label, lenient=lenient)


def read_midi_bytes(
    data: bytes, label: str = "the MIDI data", *, lenient: bool = False
) -> MidiScore:
    """Like `read_midi`, for a file's content (e.g. a blob received over OSC).

    lenient=True is for training data found in the wild rather than a user's own clip: it
    also reads files that mido rejects only for a malformed meta event (such as an
    impossible key signature), a truncated last track, or data bytes above 127 (clipped
    to 127). Anything mido still cannot parse is a MidiError in this mode.
    """
    if not data:
        raise MidiError(f"{label} is empty (0 bytes); {_EXPORT_HINT}")
    if not data.startswith(b"MThd"):
        raise MidiError(f"{label} is not a Standard MIDI File (bad header); {_EXPORT_HINT}")
    errors: tuple[type[Exception], ...] = (
        OSError, EOFError, ValueError, KeyError, IndexError, TypeError, KeySignatureError
    )
    if lenient:
        # Repair a copy of the bytes rather than patch mido (its state is global).
        data = _repair_midi_bytes(data)
    try:
        midi = mido.MidiFile(file=io.BytesIO(data), clip=lenient)
    except errors as exc:
        reason = "the file is truncated" if isinstance(exc, EOFError) else str(exc)
        raise MidiError(
            f"{label} is a damaged MIDI file ({reason}); {_EXPORT_HINT} again"
        ) from None
    return _score_from_midifile(midi, label)


def _score_from_midifile(midi: mido.MidiFile, label: str) -> MidiScore:
    tpb = midi.ticks_per_beat
    if tpb & 0x8000:  # negative division: SMPTE frames, no musical beats
        raise MidiError(
            f"{label} uses SMPTE time code instead of beats; export it with musical "
            "(bars and beats) timing"
        )
    if tpb <= 0:
        raise MidiError(f"{label} has 0 ticks per beat; {_EXPORT_HINT} again")

    # Programs set anywhere count for a channel that has none in its own track (some
    # files keep all program changes in a setup track).
    global_programs: dict[int, int] = {}
    tempos: list[tuple[int, float]] = []
    time_signature: tuple[int, int] | None = None
    time_signatures: list[tuple[int, int, int]] = []  # (tick, numerator, denominator)
    tracks: list[MidiTrack] = []
    n_raw_notes = 0
    n_drum_notes = 0

    for index, track in enumerate(midi.tracks):
        name: str | None = None
        programs: dict[int, int] = {}
        # (channel, pitch) -> (start tick, velocity)
        open_notes: dict[tuple[int, int], tuple[int, int]] = {}
        by_channel: dict[int, list[tuple[int, int, int, int]]] = {}  # pitch, start, end, vel
        tick = 0
        for msg in track:
            tick += msg.time
            kind = msg.type
            if kind == "note_on" and msg.velocity > 0:
                key = (msg.channel, msg.note)
                if key in open_notes:  # same pitch restruck: the earlier note ends here
                    start, velocity = open_notes.pop(key)
                    by_channel.setdefault(key[0], []).append((key[1], start, tick, velocity))
                open_notes[key] = (tick, msg.velocity)
                n_raw_notes += 1
                n_drum_notes += msg.channel == DRUM_CHANNEL
                by_channel.setdefault(msg.channel, [])
            elif kind == "note_off" or kind == "note_on":
                key = (msg.channel, msg.note)
                if key in open_notes:
                    start, velocity = open_notes.pop(key)
                    by_channel[key[0]].append((key[1], start, tick, velocity))
            elif kind == "program_change":
                programs.setdefault(msg.channel, msg.program)
                global_programs.setdefault(msg.channel, msg.program)
            elif kind == "track_name" and name is None:
                name = msg.name.strip() or None
            elif kind == "set_tempo":
                tempos.append((tick, mido.tempo2bpm(msg.tempo)))
            elif kind == "time_signature":
                time_signatures.append((tick, msg.numerator, msg.denominator))
                if time_signature is None:
                    time_signature = (msg.numerator, msg.denominator)
        for (channel, pitch), (start, velocity) in open_notes.items():
            by_channel[channel].append((pitch, start, tick, velocity))

        split = len(by_channel) > 1
        for channel in sorted(by_channel):
            if split or name is None:
                track_name = f"Channel {channel + 1}" if split else f"Track {index + 1}"
                if split and name:
                    track_name = f"{name} ({track_name})"
            else:
                track_name = name
            notes = [
                Note(pitch, start / tpb, (end - start) / tpb, velocity)
                for pitch, start, end, velocity in by_channel[channel]
            ]
            tracks.append(
                MidiTrack(
                    name=track_name,
                    program=programs.get(channel, -1),
                    channel=channel,
                    is_drum=channel == DRUM_CHANNEL,
                    notes=sorted(notes, key=lambda n: (n.start, n.pitch)),
                )
            )

    if n_raw_notes == 0:
        raise MidiError(
            f"{label} contains no notes; record or draw the melody in the clip before "
            "exporting it"
        )
    if n_drum_notes == n_raw_notes:
        raise MidiError(
            f"{label} only has drums (MIDI channel 10); Backline needs a melody on "
            "another channel"
        )
    for track in tracks:
        if track.program < 0:
            track.program = global_programs.get(track.channel, 0)
        track.notes = [n for n in track.notes if n.duration > 0]
    tracks = [t for t in tracks if t.notes]
    if not any(not t.is_drum for t in tracks):
        raise MidiError(
            f"{label} only has zero-length notes; give the melody notes a length before "
            "exporting it"
        )

    tempos.sort(key=lambda item: item[0])  # stable: file order within a tick
    # Tempi are stored in whole microseconds per beat: 90 bpm reads back as 89.99995.
    tempo_changes = [(tick / tpb, round(bpm, 3)) for tick, bpm in tempos]
    time_signatures.sort(key=lambda item: item[0])  # stable, as for tempi
    return MidiScore(
        tracks=tracks,
        tempo_bpm=tempo_changes[0][1] if tempo_changes else DEFAULT_TEMPO_BPM,
        time_signature=time_signature or (4, 4),
        ticks_per_beat=tpb,
        tempo_changes=tempo_changes,
        time_signatures=[(tick / tpb, num, den) for tick, num, den in time_signatures],
    )


def _repair_midi_bytes(data: bytes) -> bytes:
    """A copy of a MIDI file that mido can read, for `read_midi_bytes(lenient=True)`.

    Two repairs, both keeping every delta time where it is:
      - a meta event that mido cannot decode (e.g. FF 59 02 sf mi with an impossible key:
        mido raises KeySignatureError and gives up on the whole file) gets type 7F,
        sequencer-specific, which mido keeps as opaque bytes; the length is unchanged;
      - a last track cut short (the file ends before its declared length; mido raises
        EOFError) is trimmed to its last complete event and its length fixed. Only the
        last track: a file cut before that has lost whole parts and stays an error.
    The walk stops, leaving the rest as it is, at anything it does not understand, so
    mido still reports what is really damaged.
    """
    out = bytearray(data)
    if len(out) < 14:
        return data
    header_size = struct.unpack_from(">L", out, 4)[0]
    n_tracks = struct.unpack_from(">H", out, 10)[0]
    pos = 8 + header_size
    for index in range(n_tracks):
        if pos + 8 > len(out):
            break
        size = struct.unpack_from(">L", out, pos + 4)[0]
        start = pos + 8
        end = start + size
        complete = _walk_track(out, start, min(end, len(out)))
        if end > len(out) and index == n_tracks - 1:
            del out[complete:]
            struct.pack_into(">L", out, pos + 4, complete - start)
        pos = end
    return bytes(out)


def _walk_track(out: bytearray, start: int, end: int) -> int:
    """Retype undecodable meta events in out[start:end], walking events as mido does.

    Returns where the last complete event ends, or `end` where the walk stops early.
    """
    pos = start
    status: int | None = None  # running status; meta events leave it alone
    while pos < end:
        event = pos
        pos = _skip_varlen(out, pos, end) + 1  # past the delta time
        if pos >= end:
            return event
        byte = out[pos]
        if byte == 0xFF or byte in (0xF0, 0xF7):
            type_at = pos + 1  # the meta type byte (meta events only)
            pos += 2 if byte == 0xFF else 1
            length_at = pos
            pos = _skip_varlen(out, pos, end)
            if pos >= end:
                return event
            length = 0
            for b in out[length_at:pos + 1]:
                length = (length << 7) | (b & 0x7F)
            pos += 1 + length
            if pos > end:
                return event
            if byte == 0xFF and out[type_at] != 0x7F:
                try:
                    build_meta_message(out[type_at], list(out[pos - length:pos]))
                except Exception:  # whatever mido's decoder raises: make it opaque
                    out[type_at] = 0x7F
            elif byte != 0xFF:
                status = None  # mido would read running status after sysex oddly: stop there
        elif byte >= 0xF0:  # a system message mido does not read from files
            return end
        else:
            if byte & 0x80:
                status = byte
                pos += 1
            elif status is None:  # running status without a status byte
                return end
            pos += 1 if status & 0xF0 in (0xC0, 0xD0) else 2
            if pos > end:
                return event
    return pos


def _skip_varlen(out: bytearray, pos: int, end: int) -> int:
    """The position of the last byte of the variable-length integer at `pos`."""
    while pos < end and out[pos] & 0x80:
        pos += 1
    return pos


def pick_melody_track(score: MidiScore, name: str | None = None) -> MidiTrack:
    """Choose the track that carries the melody.

    With `name` (the --track option): the track whose name equals it, ignoring case, or
    else the first track whose name contains it; MidiError listing the track names if
    none does.

    Without a name, drum tracks and tracks without notes are ignored, then:
      1. exactly one track left: that track;
      2. tracks whose name contains melody, lead, soprano, vocal, voice, melodie or tune
         (ignoring case): the one of them with the highest mean pitch;
      3. otherwise the track with the highest mean pitch; on a tie the one with more
         notes, then the earlier one.
    Only drum tracks (or none) left: MidiError.
    """
    if name is not None:
        wanted = name.strip().casefold()
        match = next((t for t in score.tracks if t.name.casefold() == wanted), None)
        if match is None:
            match = next((t for t in score.tracks if wanted in t.name.casefold()), None)
        if match is None:
            available = ", ".join(repr(t.name) for t in score.tracks) or "none"
            raise MidiError(
                f"no track is named {name!r} (tracks: {available}); pass one of these "
                "names with --track"
            )
        if match.is_drum:
            raise MidiError(
                f"track {match.name!r} is a drum track (MIDI channel 10); pick a melodic "
                "track with --track"
            )
        return match

    candidates = [t for t in score.tracks if t.notes and not t.is_drum]
    if not candidates:
        if any(t.notes for t in score.tracks):
            raise MidiError(
                "the MIDI file only has drums (MIDI channel 10); Backline needs a melody "
                "on another channel"
            )
        raise MidiError(
            "the MIDI file contains no notes; record or draw the melody in the clip "
            "before exporting it"
        )
    if len(candidates) == 1:
        return candidates[0]
    named = [
        t for t in candidates if any(hint in t.name.casefold() for hint in MELODY_NAME_HINTS)
    ]
    pool = named or candidates
    # max() keeps the first of equal keys, so file order breaks the last tie.
    return max(pool, key=lambda t: (t.mean_pitch, len(t.notes)))


# --------------------------------------------------------------------------- writing


def midi_bytes(
    melody: tuple[TrackSpec, Sequence[Note]] | None,
    tracks: Sequence[tuple[TrackSpec, Sequence[Note]]],
    tempo_bpm: float = DEFAULT_TEMPO_BPM,
    time_signature: tuple[int, int] = (4, 4),
    ticks_per_beat: int = 480,
    tempo_changes: Sequence[tuple[float, float]] | None = None,
) -> bytes:
    """The type 1 MIDI file that `write_midi` writes, as bytes."""
    midi = _build_midi(melody, tracks, tempo_bpm, time_signature, ticks_per_beat, tempo_changes)
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()


def write_midi(
    path: str | os.PathLike[str],
    melody: tuple[TrackSpec, Sequence[Note]] | None,
    tracks: Sequence[tuple[TrackSpec, Sequence[Note]]],
    tempo_bpm: float = DEFAULT_TEMPO_BPM,
    time_signature: tuple[int, int] = (4, 4),
    ticks_per_beat: int = 480,
    tempo_changes: Sequence[tuple[float, float]] | None = None,
) -> None:
    """Write a type 1 MIDI file: a conductor track, then the melody (if given) and tracks.

    `tempo_bpm` holds from beat 0; `tempo_changes` are (beat, bpm) pairs after it (pairs
    at beat 0 or before are ignored, so a MidiScore's tempo_changes can be passed back).
    Muted notes are skipped. The file is written to a temporary file beside `path` and
    moved into place, so a failure leaves any existing file untouched.
    """
    data = midi_bytes(melody, tracks, tempo_bpm, time_signature, ticks_per_beat, tempo_changes)
    with atomic_write(path) as handle:
        handle.write(data)


def _build_midi(
    melody: tuple[TrackSpec, Sequence[Note]] | None,
    tracks: Sequence[tuple[TrackSpec, Sequence[Note]]],
    tempo_bpm: float,
    time_signature: tuple[int, int],
    ticks_per_beat: int,
    tempo_changes: Sequence[tuple[float, float]] | None,
) -> mido.MidiFile:
    midi = mido.MidiFile(type=1, ticks_per_beat=ticks_per_beat)

    conductor: list[tuple[int, int, mido.Message | mido.MetaMessage]] = [
        (0, 0, mido.MetaMessage("time_signature", numerator=time_signature[0],
                                denominator=time_signature[1])),
        (0, 0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo_bpm))),
    ]
    for beat, bpm in tempo_changes or ():
        tick = round(beat * ticks_per_beat)
        if tick > 0:
            conductor.append((tick, 0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))))
    midi.tracks.append(_to_track(conductor))

    for spec, notes in ([melody] if melody is not None else []) + list(tracks):
        channel = spec.channel
        events: list[tuple[int, int, mido.Message | mido.MetaMessage]] = [
            (0, -2, mido.MetaMessage("track_name", name=spec.name)),
            (0, -1, mido.Message("program_change", channel=channel, program=spec.program)),
        ]
        for note in notes:
            if note.mute:
                continue
            start = round(note.start * ticks_per_beat)
            end = max(start + 1, round(note.end * ticks_per_beat))
            # A note_on with velocity 0 would be read as a note off.
            velocity = min(127, max(1, int(note.velocity)))
            pitch = int(note.pitch)
            # At one tick, note offs (order 0) come before note ons (order 1), so a note
            # repeated right after itself stays two notes.
            events.append((end, 0, mido.Message("note_off", channel=channel, note=pitch)))
            events.append(
                (start, 1, mido.Message("note_on", channel=channel, note=pitch, velocity=velocity))
            )
        midi.tracks.append(_to_track(events))
    return midi


def _to_track(events: list[tuple[int, int, mido.Message | mido.MetaMessage]]) -> mido.MidiTrack:
    track = mido.MidiTrack()
    events.sort(key=lambda e: (e[0], e[1]))
    last = 0
    for tick, _, msg in events:
        track.append(msg.copy(time=tick - last))
        last = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    return track
