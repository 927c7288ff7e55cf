"""Readers that turn a user's music files into MidiScores for training.

One module per format (wad: Doom WAD music lumps, lpd: LPD / pypianoroll .npz piano
rolls; MIDI files are read by backline.models.midi) and `discover`, which walks a file or
folder and yields one PieceSource per piece.
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
