"""Pieces -> windows of whole bars, split into training and validation by piece."""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from ..chorales import ChoraleDataset, N_PITCHES, PieceRolls, is_validation, split_keys

# The window set every model trains on: `[N, 1 + K, T, P]` rolls, melody first, with the
# piece each window came from. (The chorales were its first user, hence the class name.)
WindowDataset = ChoraleDataset


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


def split_by_piece(pieces: Sequence[PieceRolls], split_names: Sequence[str] | None = None
                   ) -> tuple[list[PieceRolls], list[PieceRolls]]:
    """(train, validation): a piece and every piece with the same melody go to one side.

    `split_names`: the name each piece is split by (segments of one file share their
    file's name, so no file is on both sides); defaults to the pieces' own names."""
    keys = split_keys(pieces)
    if split_names is not None:
        # The file of the first piece with the same melody decides.
        file_of = dict(zip((p.name for p in pieces), split_names))
        keys = [file_of[k] for k in keys]
    held_out = validation_keys(sorted(set(keys)))
    train, val = [], []
    for piece, key in zip(pieces, keys):
        (val if key in held_out else train).append(piece)
    return train, val


def validation_keys(keys: Sequence[str]) -> set[str]:
    """The split keys that go to validation: the chorales' hash bucket (about 10 %), topped
    up by lowest hash to a tenth of the keys (at least one, from 2 keys on), since in a
    collection of 20 songs the bucket alone may hold none. A single key stays in training
    (the builder then says that one piece cannot be both trained on and held out)."""
    chosen = {k for k in keys if is_validation(k)} if len(keys) >= 2 else set()
    wanted = max(1, round(len(keys) / 10)) if len(keys) >= 2 else 0
    by_hash = sorted(keys, key=lambda k: zlib.crc32(k.encode("utf-8")))
    for key in by_hash:
        if len(chosen) >= wanted:
            break
        chosen.add(key)
    if keys and len(chosen) == len(keys):  # two or three keys, all in the bucket: train on the rest
        chosen = {by_hash[0]}
    return chosen
