"""The string quartets bundled with music21 (Beethoven, Haydn, Mozart): the `symphony` data.

Every score under those composers' corpus folders with exactly four parts is read (the
first part is Violin I, the melody; then Violin II, Viola, Cello by score order, whatever
the parts are called), with ties merged and grace notes dropped as for the chorales. A
pickup is padded with rests so that barlines fall on the grid. A movement present in two
formats (`.mxl` and `.krn`) converts to the same music and is kept once by the builder's
de-duplication. The result is a `MidiScore`, so the quartets go through exactly the same
roles, meters, key normalisation and windows as any MIDI file.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from backline.models.midi import MidiScore, MidiTrack

from ..data.grid import SkipPiece
from .chorales import part_notes

COMPOSERS = ("beethoven", "haydn", "mozart")
PROGRAMS = (40, 40, 41, 42)  # Violin I, Violin II, Viola, Cello
PART_NAMES = ("Violin I", "Violin II", "Viola", "Cello")
SCORE_SUFFIXES = {".mxl", ".xml", ".musicxml", ".krn"}
LICENCE = "music21 corpus (BSD-3-Clause package; the scores are public-domain editions, see music21's corpus notes)"


# One movement in two formats is read once, from the first of these.
FORMAT_PREFERENCE = (".mxl", ".xml", ".musicxml", ".krn")


def quartet_paths() -> list[tuple[str, Path]]:
    """(name, path) of every score file of the quartet composers, sorted."""
    from music21 import corpus

    out = []
    for composer in COMPOSERS:
        for path in corpus.getComposer(composer):
            path = Path(path)
            if path.suffix in SCORE_SUFFIXES:
                out.append((f"{composer}/{path.parent.name}/{path.name}", path))
    return sorted(out)


def preferred_format(path: Path) -> Path | None:
    """The file of the same movement in a preferred format, if there is one."""
    for suffix in FORMAT_PREFERENCE[: FORMAT_PREFERENCE.index(path.suffix)]:
        other = path.with_suffix(suffix)
        if other.exists():
            return other
    return None


def read_quartet(path: Path) -> MidiScore:
    """One corpus score as a four-track MidiScore; SkipPiece for another part count, or
    for a second format of a movement that is read from its preferred one."""
    from music21 import converter, meter

    preferred = preferred_format(path)
    if preferred is not None:
        raise SkipPiece("duplicate", f"the same movement as {preferred.name}")
    score = converter.parse(str(path))
    parts = list(score.parts)
    if len(parts) != 4:
        raise SkipPiece("not a quartet", f"{len(parts)} parts, not 4")
    signatures = []
    for ts in parts[0].flatten().getElementsByClass(meter.TimeSignature):
        signatures.append((Fraction(ts.offset), ts.numerator, ts.denominator))
    first = signatures[0] if signatures else (Fraction(0), 4, 4)
    bar = Fraction(4 * first[1], first[2])
    measures = list(parts[0].getElementsByClass("Measure"))
    full = [m for m in measures if Fraction(m.duration.quarterLength) >= bar]
    padding = (-Fraction(full[0].offset)) % bar if full else Fraction(0)
    tracks = [
        MidiTrack(name, program, channel, False, part_notes(part, padding))
        for channel, (name, program, part) in enumerate(zip(PART_NAMES, PROGRAMS, parts))
    ]
    changes = [(float(beat + padding) if beat > 0 else 0.0, num, den) for beat, num, den in signatures]
    return MidiScore(tracks=tracks, tempo_bpm=120.0, time_signature=(first[1], first[2]),
                     ticks_per_beat=480, time_signatures=changes)
