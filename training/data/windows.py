"""Pieces -> the windows every model trains on: whole bars, one starting on every barline.

A `WindowDataset` holds `[N, 1 + K, T, P]` rolls, the melody first, and for each window
the piece it came from; the training loop, evaluation and export read nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from .grid import LOWEST_PITCH, N_PITCHES, STEPS_PER_BEAT, PieceRolls


@dataclass
class WindowDataset:
    """Windows of T steps cut from pieces.

    frames, onsets: bool ``[N, 1 + K, T, P]``: the melody, then the K generated tracks
    (for the chorales: Soprano, then Alto, Tenor, Bass).
    piece_index: int ``[N]``, index into `piece_names` / `piece_modes`.
    steps_per_bar: int ``[N]`` (16 for 4/4, 12 for 3/4).
    piece_modes: 'major' (music in C major) or 'minor' (A minor) after normalisation.
    window_start: int ``[N]``, the window's first step inside its piece.
    info: build information (corpus counts, skipped pieces by reason).
    """

    frames: np.ndarray
    onsets: np.ndarray
    piece_index: np.ndarray
    steps_per_bar: np.ndarray
    piece_names: list[str]
    piece_modes: list[str]
    window_start: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    lowest_pitch: int = LOWEST_PITCH
    steps_per_beat: int = STEPS_PER_BEAT
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def n_pitches(self) -> int:
        return int(self.frames.shape[-1])

    def subset(self, mask) -> "WindowDataset":
        """The windows selected by a boolean mask or an index array.

        Piece lists are kept whole, so `piece_index` keeps its meaning.
        """
        mask = np.asarray(mask)
        if mask.dtype == bool and mask.shape != (len(self),):
            raise ValueError(f"mask has shape {mask.shape}, expected ({len(self)},)")
        window_start = self.window_start
        if window_start.shape[0] == len(self):
            window_start = window_start[mask]
        return replace(
            self,
            frames=self.frames[mask],
            onsets=self.onsets[mask],
            piece_index=self.piece_index[mask],
            steps_per_bar=self.steps_per_bar[mask],
            piece_names=list(self.piece_names),
            piece_modes=list(self.piece_modes),
            window_start=window_start,
            info=dict(self.info),
        )

    def pitch_range(self, track: int) -> tuple[int, int] | None:
        """Lowest and highest MIDI pitch sounding on a track in any window (None if silent)."""
        columns = np.flatnonzero(self.frames[:, track].any(axis=(0, 1)))
        if columns.size == 0:
            return None
        return int(columns[0]) + self.lowest_pitch, int(columns[-1]) + self.lowest_pitch

    @property
    def melody_range(self) -> tuple[int, int] | None:
        """Lowest and highest melody pitch (track 0, after key normalisation)."""
        return self.pitch_range(0)


def windows_from_pieces(pieces: Sequence[PieceRolls], window_steps: int, n_tracks: int,
                        info: dict | None = None) -> WindowDataset:
    """Every window of `window_steps` that starts on a barline and lies inside its piece."""
    frames, onsets, index, spb, starts = [], [], [], [], []
    for i, piece in enumerate(pieces):
        if window_steps % piece.steps_per_bar:
            raise ValueError(f"{piece.name}: a {window_steps}-step window is not whole bars of "
                             f"{piece.steps_per_bar} steps")
        for start in piece.window_starts(window_steps):
            frames.append(piece.frames[:, start:start + window_steps])
            onsets.append(piece.onsets[:, start:start + window_steps])
            index.append(i)
            spb.append(piece.steps_per_bar)
            starts.append(start)
    empty = np.zeros((0, n_tracks, window_steps, N_PITCHES), dtype=bool)
    return WindowDataset(
        frames=np.stack(frames) if frames else empty,
        onsets=np.stack(onsets) if onsets else empty.copy(),
        piece_index=np.asarray(index, dtype=np.int64),
        steps_per_bar=np.asarray(spb, dtype=np.int64),
        piece_names=[p.name for p in pieces],
        piece_modes=[p.key_mode for p in pieces],
        window_start=np.asarray(starts, dtype=np.int64),
        info=dict(info or {}),
    )
