"""Accompany a melody of any length with a generator.

The melody is cut into consecutive windows of the model's length (the last one padded
with silence), all windows run as one batch, and the probabilities are laid end to end
before binarising. Decoding the whole roll at once is what makes the joins seamless: a
note held across a join stays one note unless the model asks for a new onset there,
every step is covered by exactly one window (no gap), and one roll cannot hold two notes
of the same pitch at once (no doubled note).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .keys import Key, estimate_key, normalising_shift
from .notes import Note, Roll, notes_to_roll, roll_to_notes, transpose_notes
from .runtime import Generator, binarise
from .spec import GeneratorSpec, TrackSpec
from .errors import BacklineError


class MelodyError(BacklineError, ValueError):
    """The melody cannot be accompanied by this model; the message says why and what to do."""


@dataclass
class Accompaniment:
    tracks: list[tuple[TrackSpec, list[Note]]]
    key: Key | None  # the melody's estimated key (None for a model without key normalisation)
    shift: int  # semitones the melody was moved before generation


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


def accompany(
    generator: Generator,
    melody: Sequence[Note],
    *,
    seed: int = 0,
    threshold: float | None = None,
    sample: bool = False,
    velocity: int = 90,
) -> Accompaniment:
    """Generate the model's tracks for `melody` (times in beats from a barline)."""
    spec = generator.spec
    notes = [n for n in melody if not n.mute and n.duration > 0]
    if not notes:
        raise MelodyError("the melody has no notes to accompany; record or pick a track with notes")
    key, shift = melody_shift(notes, spec)
    length_beats = max(n.end for n in notes)
    n_steps = math.ceil(length_beats * spec.steps_per_beat - 1e-9)
    n_windows = max(1, math.ceil(n_steps / spec.window_steps))
    roll = notes_to_roll(
        transpose_notes(notes, shift), n_windows * spec.window_steps,
        spec.steps_per_beat, spec.lowest_pitch, spec.n_pitches, clip=False,
    )
    windows = roll.frames.reshape(n_windows, spec.window_steps, spec.n_pitches)
    probs = generator.run(windows.astype(np.float32), generator.draw_z(seed, n_windows))
    # [windows, K, T, P] -> [K, windows * T, P], cut to the melody's length
    frames = np.concatenate(list(probs.frames), axis=1)[:, :n_steps]
    onsets = np.concatenate(list(probs.onsets), axis=1)[:, :n_steps]
    out_frames, out_onsets = binarise(
        frames, onsets, spec, threshold=threshold, sample_seed=seed if sample else None
    )
    # The band comes in with the melody: nothing starts before its first note (a pickup
    # or a count-in of rests would otherwise get an accompaniment of its own).
    first = min(n.start for n in notes)
    tracks = []
    for k, track in enumerate(spec.tracks):
        track_roll = Roll(out_frames[k], out_onsets[k], spec.steps_per_beat, spec.lowest_pitch)
        played = transpose_notes(roll_to_notes(track_roll, velocity), -shift)
        # Moved back from a large shift (a very low or high melody), a note can leave MIDI's
        # 0..127; such a note cannot be written or played, so it is left out.
        tracks.append((track, [n for n in played if 0 <= n.pitch <= 127 and n.start >= first - 1e-9]))
    return Accompaniment(tracks, key, shift)
