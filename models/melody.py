"""A melody laid out for a model: moved into the model's key and register, read in its
meter, and cut into the model's windows (the first of accompaniment's three steps).

`prepare` records what decoding needs to undo the layout (the shift, the first beat, the
melody's dynamics per step), and `notices`: what was done to fit a melody the model was
not trained for (an octave move, a meter read as another), in words for the user.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import BacklineError
from .keys import Key, estimate_key, normalising_shift
from .meter import Meter
from .notes import Note, notes_to_roll
from .spec import GeneratorSpec
from .voicing import melody_velocity_curve


class MelodyError(BacklineError, ValueError):
    """The melody cannot be accompanied by this model; the message says why and what to do."""


@dataclass(frozen=True)
class PreparedMelody:
    """A melody laid out for the model, with what decoding needs to undo the layout."""

    windows: np.ndarray  # float32 [n_windows, window_steps, n_pitches], 0/1
    n_steps: int  # the melody's length in steps (the last window is padded past it)
    first_beat: float  # where its first note starts
    key: Key | None
    shift: int
    # Per step of the melody: its velocity there (the band follows the melody's dynamics).
    velocity_curve: np.ndarray | None = None
    mean_velocity: float = 90.0
    meter: Meter = Meter()
    # What was done to fit the melody to the model (an octave moved, a meter read as
    # another), in words for the user; empty when nothing was.
    notices: tuple[str, ...] = ()

    @property
    def n_windows(self) -> int:
        return self.windows.shape[0]


def melody_shift(notes: Sequence[Note], spec: GeneratorSpec) -> tuple[Key | None, int]:
    """Semitones that bring the melody into the model's world: to C major / A minor for a
    key-normalised model, then by whole octaves towards the melody range it was trained on."""
    key = estimate_key(notes) if spec.key_normalised else None
    shift = normalising_shift(key) if key is not None else 0
    low = min(n.pitch for n in notes) + shift
    high = max(n.pitch for n in notes) + shift
    centre = (spec.melody_range[0] + spec.melody_range[1]) / 2
    octave = round((centre - (low + high) / 2) / 12)
    shift += 12 * octave
    low, high = low + 12 * octave, high + 12 * octave
    if low < spec.lowest_pitch or high > spec.highest_pitch:
        raise MelodyError(
            f"the melody spans {high - low + 1} semitones, more than model '{spec.name}' can "
            f"take ({spec.lowest_pitch}..{spec.highest_pitch}, {spec.n_pitches} pitches); "
            "give it a single melodic line (use --track to choose one)"
        )
    return key, shift


def prepare(spec: GeneratorSpec, melody: Sequence[Note], meter: Meter = Meter()) -> PreparedMelody:
    """The melody's windows for the model (MelodyError if it has no notes or too wide a
    range, MeterError for a meter the model cannot follow)."""
    notes = [n for n in melody if not n.mute and n.duration > 0]
    if not notes:
        raise MelodyError("the melody has no notes to accompany; record or pick a track with notes")
    notices = [text for text in (meter.reading(spec.name),) if text]
    key, shift = melody_shift(notes, spec)
    key_shift = normalising_shift(key) if key is not None else 0
    octaves = (shift - key_shift) // 12
    learned_low, learned_high = spec.melody_range
    if octaves and not learned_low <= min(n.pitch for n in notes) + key_shift <= max(n.pitch for n in notes) + key_shift <= learned_high:
        notices.append(register_notice(notes, spec, octaves))
    length_beats = max(n.end for n in notes)
    n_steps = math.ceil(length_beats * spec.steps_per_beat - 1e-9)
    n_windows = max(1, math.ceil(n_steps / spec.window_steps))
    roll = notes_to_roll(notes, n_windows * spec.window_steps, spec.steps_per_beat, spec.lowest_pitch,
                         spec.n_pitches, clip=False, shift=shift)
    windows = roll.frames.reshape(n_windows, spec.window_steps, spec.n_pitches).astype(np.float32)
    curve = melody_velocity_curve(notes, max(n_steps, 1), spec.steps_per_beat)
    mean_velocity = float(np.mean([n.velocity for n in notes]))
    return PreparedMelody(windows, n_steps, min(n.start for n in notes), key, shift, curve, mean_velocity,
                          meter, tuple(notices))


def register_notice(notes: Sequence[Note], spec: GeneratorSpec, octaves: int) -> str:
    """The octave move `melody_shift` made for a melody outside the register the model
    learned, in words (octaves > 0: the melody was moved up)."""
    low, high = min(n.pitch for n in notes), max(n.pitch for n in notes)
    count = abs(octaves)
    span = "an octave" if count == 1 else f"{count} octaves"
    where = "lower than" if octaves > 0 else "higher than"
    moved = "up" if octaves > 0 else "down"
    learned_low, learned_high = spec.melody_range
    return (f"the melody (MIDI {low}-{high}) sits {span} {where} the register model '{spec.name}' learned its "
            f"melodies in (about MIDI {learned_low}-{learned_high}); it was accompanied {span} {moved}, and every "
            "part was then kept in its instrument's range")
