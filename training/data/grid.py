"""The grid every model trains on, and one piece of music on it.

- Time: `STEPS_PER_BEAT` = 4 steps per quarter-note beat.
- Pitch: `N_PITCHES` = 64 columns, column 0 is MIDI pitch `LOWEST_PITCH` = 28 (E1), so
  the grid covers 28..91 (E1..G6).

A `PieceRolls` is one piece (or one meter segment of a piece) converted onto that grid,
key-normalised, tracks melody first; every reader's conversion ends here, and the cache,
the split and the windows start here. `SkipPiece` is how a conversion says that a piece
does not go into the data set, and why.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

import numpy as np

STEPS_PER_BEAT = 4
LOWEST_PITCH = 28  # E1
N_PITCHES = 64  # 28..91 (E1..G6)
HIGHEST_PITCH = LOWEST_PITCH + N_PITCHES - 1


@dataclass
class PieceRolls:
    """One piece on the step grid, transposed to C major / A minor.

    frames, onsets: bool ``[1 + K, T, N_PITCHES]``, the melody first, then the K tracks
    the model generates (for the chorales: Soprano, Alto, Tenor, Bass); column 0 is MIDI
    pitch `LOWEST_PITCH`. ``T`` is a whole number of bars; step 0 is a barline (a pickup
    is preceded by rests). key_tonic / key_mode: the key found in the ORIGINAL music
    (tonic as a pitch class 0..11); shift: the semitones (-6..+5) that were added to every
    pitch, so the stored music is in C major or A minor.
    """

    name: str
    frames: np.ndarray
    onsets: np.ndarray
    beats_per_bar: int
    key_tonic: int
    key_mode: str
    shift: int

    @property
    def steps_per_bar(self) -> int:
        return self.beats_per_bar * STEPS_PER_BEAT

    @property
    def n_steps(self) -> int:
        return self.frames.shape[1]

    @property
    def n_bars(self) -> int:
        return self.n_steps // self.steps_per_bar

    def window_starts(self, window_steps: int) -> np.ndarray:
        """Steps where windows start: every barline whose window fits inside the piece."""
        return np.arange(0, self.n_steps - window_steps + 1, self.steps_per_bar, dtype=np.int64)


class SkipPiece(Exception):
    """A piece that does not go into the data set; `reason` says why."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def content_digest(piece: PieceRolls, tracks: Iterable[int]) -> bytes:
    """A digest of the piece's meter and the rolls of `tracks`: equal music, equal digest
    (used to keep duplicates once and to keep one melody on one side of the split)."""
    h = hashlib.sha1(str(piece.beats_per_bar).encode())
    for t in tracks:
        h.update(np.packbits(piece.frames[t]).tobytes())
        h.update(np.packbits(piece.onsets[t]).tobytes())
    return h.digest()
