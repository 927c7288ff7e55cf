"""One multi-track score -> key-normalised rolls of its melody and its genre's roles.

- Time: the grid counts quarter-note beats (4 steps each), so tempo changes, which move
  seconds but not beats, change nothing; the rolls are in beats like the bridge's clips.
- Meter: the piece is cut at every time-signature change. A stretch whose bar (in
  quarter notes) divides the genre's window (16 beats: 4/4, 2/4, 2/2; 12 beats for the
  quartets: also 3/4, 6/8, 12/8) becomes a segment of whole bars; other stretches are
  skipped and their bars counted under their meter. A file without a time signature is
  read as 4/4 (the MIDI default).
- Key: every piece is transposed to C major / A minor (Krumhansl-Schmuckler over all its
  pitched notes), by the shift in -6..+5 semitones; drums are not transposed. Key
  normalisation rather than transposition augmentation: the same music in 12 keys costs
  12 times the epochs on a 2-core machine, and the bridge already moves a melody into C or
  A and the band back (`models/accompaniment.py`).
- Register: a track is moved by whole octaves when that brings more of its notes onto the
  model's grid (MIDI 28..91); notes still off the grid are dropped and counted.
- Drums: every hit is one step long on one of eight drum voices (`genres.DRUM_VOICES`);
  other drum notes are dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from backline.models.keys import estimate_key, normalising_shift
from backline.models.midi import MidiScore
from backline.models.notes import Note, notes_to_roll

from .genres import DRUM_VOICES, Genre
from .grid import HIGHEST_PITCH, LOWEST_PITCH, N_PITCHES, STEPS_PER_BEAT, PieceRolls, SkipPiece
from .melody import MelodyChoice, NoMelody, choose_melody, split_top_line


@dataclass
class Conversion:
    """What one score gave: its segments and what was counted on the way."""

    segments: list[PieceRolls]
    melody: MelodyChoice
    melody_name: str
    skipped_bars: Counter = field(default_factory=Counter)  # meter -> bars not covered
    dropped_notes: int = 0  # pitched notes off the grid, drum notes off the drum set
    velocities: dict[str, float] = field(default_factory=dict)  # mean velocity: "melody" and per role


def meter_segments(score: MidiScore, end_beat: float) -> list[tuple[Fraction, Fraction, int, int]]:
    """(start beat, end beat, numerator, denominator) for each stretch of one meter."""
    changes = sorted(score.time_signatures, key=lambda c: c[0]) or [(0.0, 4, 4)]
    if changes[0][0] > 0:
        changes.insert(0, (0.0, 4, 4))
    out = []
    for i, (beat, num, den) in enumerate(changes):
        start = Fraction(beat).limit_denominator(960)
        stop = Fraction(changes[i + 1][0]).limit_denominator(960) if i + 1 < len(changes) else Fraction(end_beat)
        if stop > start:
            out.append((start, stop, num, den))
    # The same meter written twice in a row is one stretch.
    merged: list[tuple[Fraction, Fraction, int, int]] = []
    for seg in out:
        if merged and merged[-1][2:] == seg[2:] and merged[-1][1] == seg[0]:
            merged[-1] = (merged[-1][0], seg[1], seg[2], seg[3])
        else:
            merged.append(seg)
    return merged


def _fit_register(notes: list[Note]) -> tuple[list[Note], int]:
    """Move a track by the octave that keeps the most notes on the grid; drop the rest."""
    if not notes:
        return notes, 0
    pitches = np.array([n.pitch for n in notes])
    best = max(range(-3, 4), key=lambda o: (
        int(((pitches + 12 * o >= LOWEST_PITCH) & (pitches + 12 * o <= HIGHEST_PITCH)).sum()), -abs(o)))
    moved = [n._replace(pitch=n.pitch + 12 * best) for n in notes]
    kept = [n for n in moved if LOWEST_PITCH <= n.pitch <= HIGHEST_PITCH]
    return kept, len(notes) - len(kept)


def _drum_hits(notes: list[Note]) -> tuple[list[Note], int]:
    step = 1.0 / STEPS_PER_BEAT
    hits = [Note(DRUM_VOICES[n.pitch], n.start, step, n.velocity) for n in notes if n.pitch in DRUM_VOICES]
    return hits, len(notes) - len(hits)


def _window_bar(num: int, den: int, window_beats: int) -> int | None:
    """Bar length in quarter notes when whole bars fill the window, else None."""
    bar = Fraction(4 * num, den)
    if bar.denominator != 1 or bar <= 0 or window_beats % int(bar):
        return None
    return int(bar)


def convert_score(score: MidiScore, name: str, genre: Genre, melody_track: str | None = None) -> Conversion:
    """Rolls `[1 + roles, T, P]` (melody first) per covered meter segment; SkipPiece with the
    reason when nothing of the piece can be used."""
    try:
        choice = choose_melody(score, melody_track)
    except NoMelody as exc:
        raise SkipPiece("no melody candidate", str(exc)) from None
    melody_track_ = score.tracks[choice.index]
    melody_notes, under_melody = melody_track_.notes, []
    if choice.top_line:
        melody_notes, under_melody = split_top_line(melody_track_.notes)
    per_role: list[list[Note]] = [[] for _ in genre.roles]
    velocity_sums: dict[str, list[float]] = {"melody": [float(np.mean([n.velocity for n in melody_notes]))]}
    for i, track in enumerate(score.tracks):
        role = genre.role_index(track.program, track.is_drum)
        if role is not None:
            per_role[role].extend(under_melody if i == choice.index else track.notes)
    if not any(per_role):
        raise SkipPiece("no accompaniment", "no track maps to a role of " + genre.name)
    for role, notes in zip(genre.roles, per_role):
        if notes:
            velocity_sums.setdefault(role.key, []).append(float(np.mean([n.velocity for n in notes])))

    pitched = list(melody_notes) + [n for r, notes in zip(genre.roles, per_role)
                                                  if not r.track.is_drum for n in notes]
    key = estimate_key(pitched)
    shift = normalising_shift(key)
    dropped = 0
    voices: list[list[Note]] = []
    for notes, is_drum in [(melody_notes, False)] + [(n, r.track.is_drum) for r, n in zip(genre.roles, per_role)]:
        if is_drum:
            notes, lost = _drum_hits(notes)
        else:
            notes, lost = _fit_register([n._replace(pitch=n.pitch + shift) for n in notes])
        dropped += lost
        voices.append(sorted(notes, key=lambda n: n.start))

    end_beat = max(n.end for notes in voices for n in notes) if any(voices) else 0.0
    segments: list[PieceRolls] = []
    skipped_bars: Counter = Counter()
    for start, stop, num, den in meter_segments(score, end_beat):
        bar = _window_bar(num, den, genre.window_beats)
        n_bars = int((stop - start) // Fraction(4 * num, den)) if Fraction(4 * num, den) > 0 else 0
        if bar is None:
            skipped_bars[f"{num}/{den}"] += n_bars
            continue
        if n_bars * bar < genre.window_beats:
            continue  # too short for one window
        rolls = _segment_rolls(voices, float(start), n_bars * bar)
        if not rolls[0][0].any():
            continue
        label = name if start == 0 else f"{name}@{float(start):g}"
        segments.append(PieceRolls(label, rolls[0], rolls[1], bar, key.tonic, key.mode, shift))
    if not segments:
        reason = "meter not covered" if skipped_bars else "too short"
        raise SkipPiece(reason, ", ".join(f"{m}: {b} bars" for m, b in skipped_bars.items()))
    velocities = {k: float(np.mean(v)) for k, v in velocity_sums.items()}
    return Conversion(segments, choice, melody_track_.name, skipped_bars, dropped, velocities)


def _segment_rolls(voices: list[list[Note]], start: float, length_beats: int) -> tuple[np.ndarray, np.ndarray]:
    n_steps = length_beats * STEPS_PER_BEAT
    end = start + length_beats
    frames, onsets = [], []
    for notes in voices:
        inside = [Note(n.pitch, n.start - start, min(n.end, end) - n.start, n.velocity)
                  for n in notes if start - 1e-9 <= n.start < end - 1e-9]
        roll = notes_to_roll(inside, n_steps, STEPS_PER_BEAT, LOWEST_PITCH, N_PITCHES, clip=True)
        frames.append(roll.frames)
        onsets.append(roll.onsets)
    return np.stack(frames).astype(bool), np.stack(onsets).astype(bool)
