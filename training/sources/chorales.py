"""Music21's bundled Bach chorales (no download): the `bach` model's data, `--data chorales`.

The Bach model takes the Soprano as its melody and generates Alto, Tenor and Bass. This
module reads the corpus and puts every piece on the training grid (`data/grid.py`):

* Pieces: every chorale file under ``bach/`` in music21's corpus (one file per name; a
  ``.krn`` duplicate of an ``.mxl`` is ignored; ``.rntxt`` analyses are not scores). A
  piece is kept only when its parts are exactly Soprano, Alto, Tenor, Bass (chorales with
  extra instrumental parts are skipped) and its only meter is 4/4 or 3/4. Exact duplicates
  (the same music under two names) are kept once.
* Grid: 4 steps per beat, a beat is a quarter note, so a bar is 16 steps in 4/4 and 12 in
  3/4. A pickup (anacrusis) is KEPT: the start is padded with rests so that the pickup sits
  at the end of a full bar and every barline falls on a multiple of ``steps_per_bar``.
  Pieces whose full bars still do not line up with that grid are skipped. Repeats are not
  expanded (the notes are read as written).
* Notes: offsets from the flattened parts (``part.flatten().notes``; a chord gives all its
  pitches); tied notes are merged into one note; grace notes are dropped; rests are silence.
* Key: ``score.analyze('key')``; every piece is transposed by the shift in -6..+5 semitones
  that moves the tonic to C (major) or A (minor).

What happens next is `data/build.py`'s (the chorale section): windows of ``WINDOW_BEATS``
= 12 beats (3 bars of 4/4 or 4 bars of 3/4, whole bars in both), one starting on every
barline, only windows that lie fully inside the piece; the split by piece
(`data/split.py`: the hash bucket, pieces with the same Soprano line together); and the
cache of the converted pieces (`data/cache.py`).
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

from backline.models.keys import Key, normalising_shift
from backline.models.notes import Note, notes_to_roll

from ..data.grid import HIGHEST_PITCH, LOWEST_PITCH, N_PITCHES, STEPS_PER_BEAT, PieceRolls, SkipPiece, content_digest

# ---------------------------------------------------------------------------------------
# The bach model's layout

TRACK_NAMES: tuple[str, ...] = ("Soprano", "Alto", "Tenor", "Bass")
MELODY_TRACK = 0  # index of the melody (Soprano) in TRACK_NAMES
ACCOMPANIMENT_TRACKS: tuple[int, ...] = (1, 2, 3)  # Alto, Tenor, Bass

WINDOW_BEATS = 12  # 3 bars of 4/4 or 4 bars of 3/4
WINDOW_STEPS = WINDOW_BEATS * STEPS_PER_BEAT  # 48
METERS: dict[str, int] = {"4/4": 4, "3/4": 3}  # time signature -> beats per bar

# Key normalisation targets (pitch classes): C major, A minor.
TARGET_TONIC = {"major": 0, "minor": 9}

CORPUS_DIR = "bach"

# ---------------------------------------------------------------------------------------
# Corpus


def corpus_names() -> list[str]:
    """Corpus names (``bach/bwvNNN``) of the scores under music21's bundled ``bach`` folder.

    One name per file stem: where a chorale exists both as ``.mxl`` and ``.krn`` the
    MusicXML version is taken (that is also what ``corpus.parse(name)`` returns).
    ``.rntxt`` files are Roman-numeral analyses, not scores.
    """
    return sorted(_corpus_paths())


def _corpus_paths() -> dict[str, Path]:
    from music21 import corpus

    preference = {".mxl": 0, ".xml": 1, ".musicxml": 1, ".krn": 2}
    chosen: dict[str, Path] = {}
    for path in corpus.getComposer(CORPUS_DIR):
        path = Path(path)
        if path.suffix not in preference:
            continue
        name = f"{CORPUS_DIR}/{path.stem}"
        old = chosen.get(name)
        if old is None or preference[path.suffix] < preference[old.suffix]:
            chosen[name] = path
    return chosen


# ---------------------------------------------------------------------------------------
# One piece


def key_shift(tonic_pitch_class: int, mode: str) -> int:
    """Semitones in -6..+5 that move the tonic to C (major) or A (minor)."""
    return normalising_shift(Key(int(tonic_pitch_class), mode))


def _meter(score) -> int:
    """Beats per bar of the score's single 4/4 or 3/4 meter; SkipPiece otherwise."""
    from music21 import meter

    signatures = {ts.ratioString for ts in score.recurse().getElementsByClass(meter.TimeSignature)}
    if not signatures:
        raise SkipPiece("no time signature")
    if len(signatures) > 1:
        raise SkipPiece("meter change", ",".join(sorted(signatures)))
    (signature,) = signatures
    if signature not in METERS:
        raise SkipPiece("other meter", signature)
    return METERS[signature]


def _pickup_padding(part, bar_length: Fraction) -> Fraction:
    """Rests (quarter lengths) to put before the piece so barlines fall on the grid.

    The first measure at least a bar long fixes the grid: it must start on a barline.
    Every other measure that long must then start on a barline too (short measures come in
    pairs around repeat signs and fermatas; the last may be short), otherwise SkipPiece.
    """
    measures = list(part.getElementsByClass("Measure"))
    if not measures:
        raise SkipPiece("no measures")
    full = [m for m in measures if Fraction(m.duration.quarterLength) >= bar_length]
    if not full:
        raise SkipPiece("no full bar")
    padding = (-Fraction(full[0].offset)) % bar_length
    for m in full:
        if (Fraction(m.offset) + padding) % bar_length != 0:
            raise SkipPiece("bars off the grid", f"measure {m.number} at {m.offset}")
    return padding


def part_notes(part, offset: Fraction) -> list[Note]:
    """Notes of a part with ties merged, grace notes dropped, chords split into pitches."""
    events: list[tuple[Fraction, Fraction, int, str | None]] = []
    for element in part.flatten().notes:
        duration = Fraction(element.duration.quarterLength)
        if duration <= 0 or element.duration.isGrace:
            continue
        start = Fraction(element.offset) + offset
        if element.isChord:
            members = [(n.pitch.midi, (n.tie or element.tie)) for n in element.notes]
        else:
            members = [(element.pitch.midi, element.tie)]
        for midi, tie in members:
            events.append((start, duration, int(midi), tie.type if tie is not None else None))
    events.sort(key=lambda e: (e[0], e[2]))

    merged: list[list] = []  # [pitch, start, end]
    open_by_pitch: dict[int, list] = {}
    for start, duration, midi, tie_type in events:
        held = open_by_pitch.get(midi)
        if tie_type in ("stop", "continue") and held is not None and held[2] == start:
            held[2] = start + duration
            continue
        note = [midi, start, start + duration]
        merged.append(note)
        open_by_pitch[midi] = note
    return [Note(pitch=p, start=float(s), duration=float(e - s)) for p, s, e in merged]


def convert_piece(score, name: str) -> PieceRolls:
    """Convert one music21 score; raises SkipPiece when the piece does not qualify."""
    part_names = tuple((p.partName or "").strip() for p in score.parts)
    if part_names != TRACK_NAMES:
        raise SkipPiece("parts not exactly SATB", "/".join(n or "?" for n in part_names))
    beats_per_bar = _meter(score)
    bar_length = Fraction(beats_per_bar)  # quarter lengths; the beat is a quarter note
    padding = _pickup_padding(score.parts[0], bar_length)

    analysed = score.analyze("key")
    mode = analysed.mode
    if mode not in TARGET_TONIC:
        raise SkipPiece("key mode", str(mode))
    tonic = analysed.tonic.pitchClass
    shift = key_shift(tonic, mode)

    voices = [[n._replace(pitch=n.pitch + shift) for n in part_notes(p, padding)] for p in score.parts]
    if not voices[MELODY_TRACK]:
        raise SkipPiece("empty melody")
    for track, notes in zip(TRACK_NAMES, voices):
        for note in notes:
            if not LOWEST_PITCH <= note.pitch <= HIGHEST_PITCH:
                raise SkipPiece("pitch out of range", f"{track} {note.pitch}")

    end_beats = max(
        float(Fraction(score.highestTime) + padding),
        max((n.end for notes in voices for n in notes), default=0.0),
    )
    steps_per_bar = beats_per_bar * STEPS_PER_BEAT
    n_steps = int(round(end_beats * STEPS_PER_BEAT))
    n_steps = -(-n_steps // steps_per_bar) * steps_per_bar  # whole bars
    rolls = [
        notes_to_roll(notes, n_steps, STEPS_PER_BEAT, LOWEST_PITCH, N_PITCHES, clip=False)
        for notes in voices
    ]
    return PieceRolls(
        name=name,
        frames=np.stack([r.frames for r in rolls]),
        onsets=np.stack([r.onsets for r in rolls]),
        beats_per_bar=beats_per_bar,
        key_tonic=int(tonic),
        key_mode=str(mode),
        shift=int(shift),
    )


def piece_rolls(score, name: str) -> PieceRolls | None:
    """Convert one music21 score, or None when it is skipped (see `convert_piece`)."""
    try:
        return convert_piece(score, name)
    except SkipPiece:
        return None


def _convert_path(job: tuple[str, str]) -> tuple[str, PieceRolls | None, str, str]:
    """Pool worker: parse one corpus file and convert it."""
    name, path = job
    from music21 import converter

    try:
        score = converter.parse(path)
    except Exception as exc:  # a broken corpus file is skipped, not fatal
        return name, None, "parse error", repr(exc)
    try:
        return name, convert_piece(score, name), "", ""
    except SkipPiece as skip:
        return name, None, skip.reason, skip.detail


# ---------------------------------------------------------------------------------------
# The whole corpus


def read_corpus(
    progress: bool = True, workers: int | None = None, names: Sequence[str] | None = None
) -> tuple[list[PieceRolls], dict]:
    """Convert the corpus (or the chorales `names`); returns the kept pieces and build info
    (corpus counts, skips by reason). Slow: `data/build.py` caches the result."""
    from tqdm import tqdm

    paths = _corpus_paths()
    if names is not None:
        missing = [n for n in names if n not in paths]
        if missing:
            raise KeyError(f"not in music21's corpus: {missing}")
        paths = {n: paths[n] for n in names}
    jobs = [(name, str(path)) for name, path in sorted(paths.items())]
    if workers is None:
        workers = min(2, os.cpu_count() or 1)

    results = []
    bar = tqdm(total=len(jobs), desc="chorales", unit="piece", disable=not progress)
    try:
        if workers <= 1:
            for job in jobs:
                results.append(_convert_path(job))
                bar.update()
        else:
            import multiprocessing

            with multiprocessing.Pool(workers) as pool:
                for result in pool.imap_unordered(_convert_path, jobs, chunksize=2):
                    results.append(result)
                    bar.update()
    finally:
        bar.close()

    results.sort(key=lambda r: r[0])
    pieces = []
    seen: dict[bytes, str] = {}
    skipped: dict[str, list[str]] = {}
    for name, piece, reason, detail in results:
        if piece is not None:
            digest = content_digest(piece, range(len(TRACK_NAMES)))
            if digest in seen:
                piece, reason, detail = None, "duplicate", f"same music as {seen[digest]}"
            else:
                seen[digest] = name
                pieces.append(piece)
        if piece is None:
            skipped.setdefault(reason, []).append(f"{name} ({detail})" if detail else name)
    info = {
        "corpus_files": len(jobs),
        "kept": len(pieces),
        "skipped": skipped,
        "lowest_pitch": LOWEST_PITCH,
        "n_pitches": N_PITCHES,
    }
    return pieces, info

