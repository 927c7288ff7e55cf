"""Key finding and key normalisation (numpy only).

The key is found with the Krumhansl–Schmuckler algorithm: a duration-weighted
pitch-class histogram is correlated (Pearson) with the Krumhansl–Kessler major and minor
probe-tone profiles rotated to each of the 12 tonics, and the best of the 24 wins.

Pitch class 0 is C, so MIDI pitch p has pitch class p % 12.
"""

from __future__ import annotations

from typing import Iterable, Literal, NamedTuple

import numpy as np

from backline.models.notes import Note

Mode = Literal["major", "minor"]

PITCH_CLASS_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")

# Krumhansl & Kessler (1982) probe-tone ratings, index 0 = tonic.
KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])

# Scale degrees in semitones above the tonic.
MAJOR_DEGREES = (0, 2, 4, 5, 7, 9, 11)
NATURAL_MINOR_DEGREES = (0, 2, 3, 5, 7, 8, 10)
# Natural minor plus the raised 6th (9) and raised 7th (11) of melodic/harmonic minor.
MINOR_DEGREES = (0, 2, 3, 5, 7, 8, 9, 10, 11)


class Key(NamedTuple):
    """A key: tonic pitch class 0-11 (0 = C) and mode."""

    tonic: int
    mode: Mode

    @property
    def name(self) -> str:
        """E.g. 'Eb major', 'A minor'."""
        return f"{PITCH_CLASS_NAMES[self.tonic % 12]} {self.mode}"


def pitch_class_histogram(notes: Iterable[Note]) -> np.ndarray:
    """Float array [12]: total duration (beats) of the notes of each pitch class.

    Muted notes are skipped, as `notes_to_roll` skips them.
    """
    histogram = np.zeros(12, dtype=float)
    for note in notes:
        if note.mute:
            continue
        histogram[int(note.pitch) % 12] += max(float(note.duration), 0.0)
    return histogram


def _centred_profiles() -> np.ndarray:
    """[2, 12, 12]: [mode, tonic] -> the K–K profile rotated to that tonic, mean removed,
    scaled to unit length (computed once: key finding runs for every clip)."""
    rotated = np.stack([np.stack([np.roll(profile, tonic) for tonic in range(12)])
                        for profile in (KK_MAJOR, KK_MINOR)]).astype(float)
    rotated -= rotated.mean(axis=2, keepdims=True)
    return rotated / np.sqrt((rotated * rotated).sum(axis=2, keepdims=True))


def key_correlations(histogram: np.ndarray) -> np.ndarray:
    """Pearson correlations [2, 12] of `histogram` with the rotated K–K profiles.

    Row 0 is major, row 1 minor; column t is the profile with tonic t. A histogram with
    no variance (all 12 values equal) correlates with nothing: all 24 values are 0.
    """
    h = np.asarray(histogram, dtype=float).reshape(12)
    h = h - h.mean()
    h_norm = np.sqrt((h * h).sum())
    if h_norm == 0.0:
        return np.zeros((2, 12), dtype=float)
    return _PROFILES @ (h / h_norm)


_PROFILES = _centred_profiles()


def key_from_histogram(histogram: np.ndarray) -> Key:
    """Best of the 24 keys for a pitch-class histogram (Krumhansl–Schmuckler).

    Ties go to the first in the order C major .. B major, C minor .. B minor, so a flat
    histogram (no key information) gives C major. Raises ValueError if the histogram
    is all zero.
    """
    h = np.asarray(histogram, dtype=float).reshape(12)
    if not h.any():
        raise ValueError("cannot estimate a key from an empty pitch-class histogram")
    scores = key_correlations(h)
    row, tonic = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return Key(int(tonic), "major" if row == 0 else "minor")


def estimate_key(notes: Iterable[Note]) -> Key:
    """Krumhansl–Schmuckler key of the notes (duration-weighted histogram).

    Raises ValueError if there are no (unmuted, non-zero-length) notes.
    """
    histogram = pitch_class_histogram(notes)
    if not histogram.any():
        raise ValueError("cannot estimate the key of no notes")
    return key_from_histogram(histogram)


def scale_pitch_classes(key: Key) -> frozenset[int]:
    """Pitch classes that belong to the key.

    major: the 7 degrees of the major scale.
    minor: the natural minor scale plus the raised 6th and raised 7th degrees, i.e. the
    union of natural, harmonic and melodic minor (9 pitch classes). Tonal music in minor
    (Bach chorales in particular) uses the leading tone and the raised 6th as a matter of
    course, so counting them as out of key would penalise correct voice leading.
    """
    if key.mode not in ("major", "minor"):
        raise ValueError(f"unknown mode {key.mode!r}")
    degrees = MAJOR_DEGREES if key.mode == "major" else MINOR_DEGREES
    return frozenset((key.tonic + d) % 12 for d in degrees)


def normalising_shift(key: Key) -> int:
    """Semitones s in -6..+5 that move the key to C major (major) or A minor (minor).

    s is the representative in -6..+5 of (target - tonic) mod 12, target 0 (C) for
    major and 9 (A) for minor, so (tonic + s) % 12 == target. E.g. G major -> +5,
    F major -> -5, F# major -> -6, E minor -> +5, C minor -> -3.
    """
    if key.mode not in ("major", "minor"):
        raise ValueError(f"unknown mode {key.mode!r}")
    target = 0 if key.mode == "major" else 9
    return (target - key.tonic + 6) % 12 - 6
