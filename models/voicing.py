"""After the notes are read off: each part in its instrument's range, and its dynamics.

Range. A part that strays out of its instrument's compass is moved by whole octaves a
phrase at a time (a phrase ends at a rest of a beat or more), by the octave that brings
most of the phrase's notes in, so a line keeps its shape; a note still outside after
that is folded in by octaves on its own. Drum notes off the GM drum map are dropped.

Dynamics. The band follows the melody's dynamics: each note takes the velocity of the
melody at its start (the melody note sounding then, or the last one before it), scaled
by the track's loudness in the training data relative to the melody's (`TrackSpec.velocity`
against the model melody's), and accented by metric position: downbeats a little louder,
16th-note off-beats a little softer.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .notes import Note

# Multipliers by metric position: bar downbeat, beat, 8th off-beat, 16th off-beat.
ACCENTS = (1.1, 1.0, 0.92, 0.85)


def fit_range(pitch: np.ndarray, start: np.ndarray, length: np.ndarray, low: int, high: int,
              phrase_gap: int) -> np.ndarray:
    """Pitches moved into low..high by whole octaves, phrase by phrase (arrays in steps,
    sorted by start). Returns a new array; only out-of-range phrases change."""
    pitch = pitch.copy()
    outside = (pitch < low) | (pitch > high)
    if not outside.any():
        return pitch
    end = np.maximum.accumulate(start + length)
    # A phrase starts where a note begins a full gap after everything before it ended.
    new_phrase = np.ones(len(pitch), dtype=bool)
    new_phrase[1:] = start[1:] - end[:-1] >= phrase_gap
    phrase = np.cumsum(new_phrase) - 1
    for p in np.unique(phrase[outside]):
        members = phrase == p
        notes = pitch[members]
        octaves = np.arange(-4, 5)
        inside = [(((notes + 12 * o) >= low) & ((notes + 12 * o) <= high)).sum() for o in octaves]
        best = max(zip(inside, -np.abs(octaves), octaves))[2]
        pitch[members] = notes + 12 * best
    below, above = pitch < low, pitch > high
    pitch[below] += 12 * np.ceil((low - pitch[below]) / 12).astype(pitch.dtype)
    pitch[above] -= 12 * np.ceil((pitch[above] - high) / 12).astype(pitch.dtype)
    return pitch


def melody_velocity_curve(melody: Sequence[Note], n_steps: int, steps_per_beat: int) -> np.ndarray:
    """Per step: the velocity of the melody note sounding there, or of the last one before."""
    curve = np.full(n_steps, np.nan)
    for note in sorted((n for n in melody if not n.mute), key=lambda n: n.start):
        at = int(round(note.start * steps_per_beat))
        if 0 <= at < n_steps:
            curve[at] = note.velocity
        elif at < 0:
            curve[0] = note.velocity
    valid = ~np.isnan(curve)
    if not valid.any():
        return np.full(n_steps, 90.0)
    index = np.where(valid, np.arange(n_steps), 0)
    np.maximum.accumulate(index, out=index)
    filled = curve[index]
    filled[: np.argmax(valid)] = curve[np.argmax(valid)]
    return filled


def accents(start: np.ndarray, steps_per_beat: int, steps_per_bar: int) -> np.ndarray:
    """Velocity multiplier for notes starting at these steps (from a barline)."""
    position = np.full(start.shape, 3)
    eighth = max(steps_per_beat // 2, 1)
    position[start % eighth == 0] = 2
    position[start % steps_per_beat == 0] = 1
    position[start % steps_per_bar == 0] = 0
    return np.asarray(ACCENTS)[position]


def velocities(start: np.ndarray, curve: np.ndarray, level: float, steps_per_beat: int, steps_per_bar: int
               ) -> np.ndarray:
    """MIDI velocities 1..127 for notes starting at `start` steps."""
    base = curve[np.clip(start, 0, len(curve) - 1)] * level
    return np.clip(np.rint(base * accents(start, steps_per_beat, steps_per_bar)), 1, 127).astype(int)
