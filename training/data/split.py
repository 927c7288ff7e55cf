"""Which pieces are held out for validation: by piece, never by window, the same on every
machine and every run.

A piece goes to validation when ``zlib.crc32(key) % VALIDATION_MODULUS ==
VALIDATION_BUCKET`` (about 10 %; `is_validation`). Its key is its name, except that pieces
with the same melody (one chorale melody harmonised twice, one song in two files) share
the key of the first of them (`split_keys`), so no validation melody is seen in training.
The chorales split by the bucket alone; a folder of the user's files (`split_by_piece`)
is topped up to a tenth of its files (`validation_keys`), since in a collection of 20
songs the bucket alone may hold none.
"""

from __future__ import annotations

import zlib
from typing import Iterable, Sequence

from .grid import PieceRolls, content_digest

VALIDATION_MODULUS = 10
# Bucket 1, not 0: crc32 bucket 0 happens to hold none of the 36 chorales in 3/4, bucket 1
# holds 4 of them (33 pieces in all, 9 %), so validation covers both meters.
VALIDATION_BUCKET = 1


def is_validation(name: str) -> bool:
    """Whether a piece belongs to the validation split (stable across runs and machines)."""
    return zlib.crc32(name.encode("utf-8")) % VALIDATION_MODULUS == VALIDATION_BUCKET


def split_keys(pieces: Sequence[PieceRolls]) -> list[str]:
    """The name whose hash decides each piece's split.

    A piece's own name, except that pieces with an identical melody line (after key
    normalisation) all use the alphabetically first of their names, so they land together.
    """
    first: dict[bytes, str] = {}
    digests = [content_digest(p, [0]) for p in pieces]  # track 0 is the melody
    for digest, piece in zip(digests, pieces):
        if digest not in first or piece.name < first[digest]:
            first[digest] = piece.name
    return [first[d] for d in digests]


def split_names(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """(train, validation) names; a name is in exactly one of them."""
    train, val = [], []
    for name in names:
        (val if is_validation(name) else train).append(name)
    return train, val


def split_by_bucket(pieces: Sequence[PieceRolls]) -> tuple[list[PieceRolls], list[PieceRolls]]:
    """(train, validation) pieces by the hash bucket of their `split_keys` (the chorales)."""
    in_val = [is_validation(key) for key in split_keys(pieces)]
    train = [p for p, v in zip(pieces, in_val) if not v]
    val = [p for p, v in zip(pieces, in_val) if v]
    return train, val


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
