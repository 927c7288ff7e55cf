"""Finding the pieces of music under a path given to `backline train --data PATH`.

PATH may be one file or a folder searched recursively (hidden files and folders are
skipped; files are taken in sorted order of their relative paths, so runs repeat):

    .mid .midi .kar .smf   a Standard MIDI File: one piece
    .wad                   a Doom WAD file: one piece per MIDI music lump
    .npz                   an LPD / pypianoroll piano roll: one piece

Suffixes are matched ignoring case; other files are ignored. Each piece is a
`PieceSource`: a name for reports (the path relative to the folder, or the file name for
a single file; "freedm.wad:D_RUNNIN" for a lump) and a `load` that reads it, raising a
BacklineError for a piece that cannot be used, so the caller can report and skip it.
MIDI is read leniently (see `read_midi_bytes`). A damaged WAD file, a WAD without MIDI
music and each music lump that is not MIDI (DMX MUS) also come out as a piece whose load
raises, so that nothing is dropped silently. Identical pieces are not merged here.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NoReturn

from backline.models.errors import BacklineError
from backline.models.midi import MidiScore, read_midi, read_midi_bytes

from .lpd import read_lpd
from .wad import WadError, read_wad_music

MIDI_SUFFIXES = (".mid", ".midi", ".kar", ".smf")
WAD_SUFFIX = ".wad"
LPD_SUFFIX = ".npz"
SUFFIXES = MIDI_SUFFIXES + (WAD_SUFFIX, LPD_SUFFIX)


class SourceError(BacklineError, ValueError):
    """The data path holds nothing to train on (or a piece is of no usable kind)."""


@dataclass(frozen=True)
class PieceSource:
    """One piece: `load()` returns its MidiScore or raises a BacklineError."""

    name: str
    load: Callable[[], MidiScore]


def describe_formats() -> str:
    """One line naming the accepted formats, for error messages."""
    return ("MIDI files (.mid, .midi, .kar, .smf), Doom WAD files with MIDI music (.wad) "
            "and LPD / pypianoroll piano rolls (.npz)")


def find_pieces(path: str | os.PathLike[str]) -> Iterator[PieceSource]:
    """The pieces under `path` (a file or a folder), in a fixed order.

    Raises SourceError at once for a path that does not exist, a file of another kind, or
    a folder without any supported file. WAD files are opened while iterating.
    """
    root = Path(path)
    if not root.exists():
        raise SourceError(f"{root} does not exist; give a folder or file of "
                          f"{describe_formats()}")
    if root.is_dir():
        files = [(rel, root / rel) for rel in _supported_files(root)]
        if not files:
            raise SourceError(f"{root} holds no {describe_formats()}; add some, or give "
                              "another folder")
    elif _is_supported(root.name):
        files = [(root.name, root)]
    else:
        raise SourceError(f"{root} is not one of {describe_formats()}; give such a file "
                          "or a folder of them")
    return _pieces(files)


def _is_supported(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


def _supported_files(root: Path) -> list[str]:
    """Relative POSIX paths of the supported, non-hidden files under `root`, sorted."""
    found: list[tuple[str, ...]] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(folder).relative_to(root).parts
        found.extend(rel + (name,) for name in names
                     if not name.startswith(".") and _is_supported(name)
                     and os.path.isfile(os.path.join(folder, name)))
    return ["/".join(parts) for parts in sorted(found)]


def _pieces(files: list[tuple[str, Path]]) -> Iterator[PieceSource]:
    for name, file in files:
        suffix = file.suffix.lower()
        if suffix in MIDI_SUFFIXES:
            yield PieceSource(name, functools.partial(read_midi, file, lenient=True))
        elif suffix == LPD_SUFFIX:
            yield PieceSource(name, functools.partial(read_lpd, file))
        else:
            yield from _wad_pieces(name, file)


def _wad_pieces(name: str, file: Path) -> Iterator[PieceSource]:
    try:
        music, skipped = read_wad_music(file)
    except WadError as exc:
        yield PieceSource(name, functools.partial(_raise, exc))
        return
    if not music and not skipped:
        error = SourceError(f"{file} has no music lumps; it is a WAD without MIDI music")
        yield PieceSource(name, functools.partial(_raise, error))
    seen: dict[str, int] = {}
    for lump, data in music:
        # A PWAD may repeat a lump name; number the repeats so names stay unique.
        seen[lump] = seen.get(lump, 0) + 1
        piece = f"{name}:{lump}" + (f"#{seen[lump]}" if seen[lump] > 1 else "")
        yield PieceSource(piece, functools.partial(read_midi_bytes, data, f"{file}:{lump}",
                                                   lenient=True))
    for lump, reason in skipped:
        error = SourceError(f"{file}:{lump} is skipped: {reason}")
        yield PieceSource(f"{name}:{lump}", functools.partial(_raise, error))


def _raise(error: BacklineError) -> NoReturn:
    raise error
