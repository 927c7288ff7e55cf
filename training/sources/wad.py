"""Music lumps from Doom WAD files (freedoom and freedm ship their music this way).

A WAD is one file of named data blocks ("lumps"). All integers are little-endian:

    header, 12 bytes, at offset 0:
        4 bytes   magic, b"IWAD" (a main game file) or b"PWAD" (an add-on)
        int32     number of lumps
        int32     offset of the directory
    directory, 16 bytes per lump, in lump order:
        int32     offset of the lump's data
        int32     size of the lump's data in bytes
        8 bytes   name, ASCII, padded with NUL bytes

Music lumps are named D_<song> (D_E1M1, D_RUNNIN, ...). Their data is either a Standard
MIDI File (starts with b"MThd"; all of freedoom's and freedm's music) or id Software's
DMX MUS format (starts with b"MUS\\x1a"), which is not read here. Every lump whose data is
a MIDI file is returned, whatever its name; D_* lumps that are not are listed as skipped.
Zero-size lumps (level and section markers) are never checked against the file size.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from backline.models.errors import BacklineError

HEADER = struct.Struct("<4sii")
ENTRY = struct.Struct("<ii8s")
MAGICS = (b"IWAD", b"PWAD")
MIDI_MAGIC = b"MThd"
MUS_MAGIC = b"MUS\x1a"

_HINT = "replace it with an intact copy or remove it from the data folder"


class WadError(BacklineError, ValueError):
    """A WAD file is damaged or not a WAD file; the message is one line."""


def read_wad_music(
    path: str | os.PathLike[str],
) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    """The MIDI lumps of a WAD file and the music lumps skipped.

    Returns ([(lump name, MIDI file bytes), ...], [(lump name, why it was skipped), ...]),
    both in lump order. Identical lumps under several names are all returned. Raises
    WadError for a file that cannot be read or whose header, directory or lumps are
    damaged.
    """
    label = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise WadError(
            f"{label} could not be read ({exc.strerror or exc}); check that the file is "
            "readable"
        ) from None
    if len(data) < HEADER.size:
        raise WadError(
            f"{label} is truncated ({len(data)} bytes, shorter than a WAD header); {_HINT}"
        )
    magic, n_lumps, dir_offset = HEADER.unpack_from(data, 0)
    if magic not in MAGICS:
        raise WadError(
            f"{label} is not a Doom WAD file (it starts with {magic!r}, not b'IWAD' or "
            f"b'PWAD'); {_HINT}"
        )
    if n_lumps < 0 or dir_offset < 0 or dir_offset + n_lumps * ENTRY.size > len(data):
        raise WadError(
            f"{label} is damaged or truncated: its directory of {n_lumps} lumps at byte "
            f"{dir_offset} lies outside the {len(data)}-byte file; {_HINT}"
        )

    music: list[tuple[str, bytes]] = []
    skipped: list[tuple[str, str]] = []
    for index in range(n_lumps):
        offset, size, raw_name = ENTRY.unpack_from(data, dir_offset + index * ENTRY.size)
        # Names end at the first NUL; some tools leave junk after it.
        name = raw_name.split(b"\0", 1)[0].decode("ascii", "replace")
        if size < 0 or (size > 0 and (offset < 0 or offset + size > len(data))):
            raise WadError(
                f"{label} is damaged or truncated: lump {index} ({name!r}, {size} bytes at "
                f"byte {offset}) lies outside the {len(data)}-byte file; {_HINT}"
            )
        lump = data[offset:offset + size] if size > 0 else b""
        if lump.startswith(MIDI_MAGIC):
            music.append((name, lump))
        elif name.upper().startswith("D_"):
            if lump.startswith(MUS_MAGIC):
                reason = ("DMX MUS music is not supported; convert it to MIDI (e.g. with "
                          "mus2mid) to use it")
            elif not lump:
                reason = "the lump is empty"
            else:
                reason = "not a MIDI file (no MThd header)"
            skipped.append((name, reason))
    return music, skipped
