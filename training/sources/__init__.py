"""Where training music comes from: readers for every `--data` value.

For paths, one module per format (wad: Doom WAD music lumps, lpd: LPD / pypianoroll .npz
piano rolls; MIDI files are read by backline.models.midi) and `discover`, which walks a
file or folder and yields one PieceSource per piece; each gives a MidiScore.

For the corpora bundled with music21 (read on demand, not imported here):
- `chorales`: `--data chorales`, the Bach chorales, converted straight onto the training
  grid by their own rules (SATB parts, music21's key analysis) for the `bach` model.
- `quartets`: `--data quartets`, the string quartets, as MidiScores like any MIDI file.
"""

from .discover import PieceSource, SourceError, describe_formats, find_pieces
from .lpd import LpdError, read_lpd
from .wad import WadError, read_wad_music

__all__ = [
    "LpdError",
    "PieceSource",
    "SourceError",
    "WadError",
    "describe_formats",
    "find_pieces",
    "read_lpd",
    "read_wad_music",
]
