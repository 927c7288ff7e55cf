"""Notes and piano rolls: the one representation of music inside Backline.

A `Note` is AbletonOSC's 5-tuple (pitch, start, duration, velocity, mute) with times in
beats. A piano roll is a pair of boolean arrays `[time, pitch]`: `frames` (the pitch
sounds at this step) and `onsets` (a note starts at this step). The onset roll is what
keeps two repeated notes apart where a frame roll alone would merge them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple

import numpy as np


class Note(NamedTuple):
    """One note; times in beats from the clip start."""

    pitch: int
    start: float
    duration: float
    velocity: int = 100
    mute: bool = False

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True)
class Roll:
    """A single-track piano roll on a step grid.

    frames, onsets: bool `[n_steps, n_pitches]`; column 0 is MIDI pitch `lowest_pitch`.
    """

    frames: np.ndarray
    onsets: np.ndarray
    steps_per_beat: int
    lowest_pitch: int

    @property
    def n_steps(self) -> int:
        return self.frames.shape[0]

    @property
    def n_pitches(self) -> int:
        return self.frames.shape[1]


def notes_to_roll(
    notes: Iterable[Note],
    n_steps: int,
    steps_per_beat: int,
    lowest_pitch: int,
    n_pitches: int,
    *,
    clip: bool = True,
    shift: int = 0,
) -> Roll:
    """Quantise notes (moved by `shift` semitones) to the step grid.

    Start and end snap to the nearest step; a note shorter than half a step still keeps one
    step. Notes outside the pitch range raise ValueError unless `clip` is true, in which
    case they are dropped. Notes past `n_steps` are cut at the end of the roll.
    """
    frames = np.zeros((n_steps, n_pitches), dtype=bool)
    onsets = np.zeros((n_steps, n_pitches), dtype=bool)
    for note in notes:
        if note.mute:
            continue
        column = int(note.pitch) + shift - lowest_pitch
        if not 0 <= column < n_pitches:
            if clip:
                continue
            raise ValueError(
                f"pitch {int(note.pitch) + shift} is outside {lowest_pitch}..{lowest_pitch + n_pitches - 1}"
            )
        start = int(round(note.start * steps_per_beat))
        end = max(start + 1, int(round(note.end * steps_per_beat)))
        if start >= n_steps or end <= 0:
            continue
        start = max(start, 0)
        end = min(end, n_steps)
        frames[start:end, column] = True
        onsets[start, column] = True
    return Roll(frames, onsets, steps_per_beat, lowest_pitch)


def roll_to_notes(roll: Roll, velocity: int = 100) -> list[Note]:
    """Turn runs of frames into notes; an onset inside a run starts a new note.

    An onset without a frame is ignored (the frame roll decides what sounds). Notes come
    out sorted by start, then pitch.
    """
    _, pitch, start, length = note_runs(roll.frames[None], roll.onsets[None])
    step_beats = 1.0 / roll.steps_per_beat
    return [
        Note(pitch=p + roll.lowest_pitch, start=b * step_beats, duration=d * step_beats, velocity=velocity)
        for p, b, d in zip(pitch.tolist(), start.tolist(), length.tolist())
    ]


def note_runs(frames: np.ndarray, onsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The notes of a stack of rolls `[K, T, P]`, as `roll_to_notes` reads each roll:
    arrays (roll, pitch column, start step, length in steps), sorted by roll, then start,
    then pitch. One pass over every roll at once, so a model's tracks cost one call."""
    frames = np.asarray(frames, dtype=bool)
    onsets = np.asarray(onsets, dtype=bool) & frames
    n_rolls, n_steps, n_pitches = frames.shape
    # A note starts where the pitch sounds and either did not sound one step before or
    # carries an onset. It ends at the first step after its start that is silent or starts
    # another note. Roll- and pitch-major rows with a silent step appended keep every note
    # inside its own pitch, so one search over the flattened rolls finds every end at once.
    previous = np.zeros_like(frames)
    previous[:, 1:] = frames[:, :-1]
    starts = frames & (~previous | onsets)
    padded = np.zeros((n_rolls, n_pitches, n_steps + 1), dtype=bool)
    padded[:, :, :n_steps] = frames.transpose(0, 2, 1)
    is_start = np.zeros_like(padded)
    is_start[:, :, :n_steps] = starts.transpose(0, 2, 1)
    start_at = np.flatnonzero(is_start)
    stops = np.flatnonzero(~padded | is_start)
    end_at = stops[np.searchsorted(stops, start_at, side="right")]
    row, start = np.divmod(start_at, n_steps + 1)
    roll, pitch = np.divmod(row, n_pitches)
    order = np.lexsort((pitch, start, roll))
    return roll[order], pitch[order], start[order], (end_at - start_at)[order]


def note_durations(roll: Roll) -> np.ndarray:
    """Durations in steps of every note in the roll (as `roll_to_notes` decodes them)."""
    return note_runs(roll.frames[None], roll.onsets[None])[3].astype(int)
