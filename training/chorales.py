"""Training data for the Bach model: the four-part chorales bundled with music21.

The Bach model takes the Soprano as its melody and generates Alto, Tenor and Bass. This
module turns music21's bundled corpus (no network) into piano-roll windows:

* Pieces: every chorale file under ``bach/`` in music21's corpus (one file per name; a
  ``.krn`` duplicate of an ``.mxl`` is ignored; ``.rntxt`` analyses are not scores). A
  piece is kept only when its parts are exactly Soprano, Alto, Tenor, Bass (chorales with
  extra instrumental parts are skipped) and its only meter is 4/4 or 3/4.
* Grid: 4 steps per beat, a beat is a quarter note, so a bar is 16 steps in 4/4 and 12 in
  3/4. A pickup (anacrusis) is KEPT: the start is padded with rests so that the pickup sits
  at the end of a full bar and every barline falls on a multiple of ``steps_per_bar``.
  Pieces whose full bars still do not line up with that grid are skipped. Repeats are not
  expanded (the notes are read as written).
* Notes: offsets from the flattened parts (``part.flatten().notes``; a chord gives all its
  pitches); tied notes are merged into one note; grace notes are dropped; rests are silence.
* Key: ``score.analyze('key')``; every piece is transposed by the shift in -6..+5 semitones
  that moves the tonic to C (major) or A (minor).
* Windows: ``WINDOW_BEATS`` = 12 beats (3 bars of 4/4 or 4 bars of 3/4, whole bars in both),
  one starting on every barline, only windows that lie fully inside the piece.
* Split: by piece, never by window. A piece goes to validation when
  ``zlib.crc32(name) % 10 == VALIDATION_BUCKET`` (about 10 %); see `is_validation`. Pieces
  with the same Soprano line (one chorale melody harmonised twice) share the split of the
  first of their names, so no validation melody is seen in training. Exact duplicates (the
  same music under two names) are kept once.
* Cache: the converted pieces (not the windows) are stored in one compressed ``.npz`` in
  ``$BACKLINE_CACHE`` or ``~/.cache/backline``; later loads read it.
"""

from __future__ import annotations

import json
import os
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from backline.models.atomic import atomic_write
from backline.models.keys import Key, normalising_shift
from backline.models.notes import Note, notes_to_roll

# ---------------------------------------------------------------------------------------
# Layout constants (the exporter and the training code read these)

TRACK_NAMES: tuple[str, ...] = ("Soprano", "Alto", "Tenor", "Bass")
MELODY_TRACK = 0  # index of the melody (Soprano) in TRACK_NAMES
ACCOMPANIMENT_TRACKS: tuple[int, ...] = (1, 2, 3)  # Alto, Tenor, Bass

STEPS_PER_BEAT = 4
LOWEST_PITCH = 28  # E1
N_PITCHES = 64  # 28..91 (E1..G6)
WINDOW_BEATS = 12  # 3 bars of 4/4 or 4 bars of 3/4
WINDOW_STEPS = WINDOW_BEATS * STEPS_PER_BEAT  # 48
METERS: dict[str, int] = {"4/4": 4, "3/4": 3}  # time signature -> beats per bar

# Key normalisation targets (pitch classes): C major, A minor.
TARGET_TONIC = {"major": 0, "minor": 9}

CORPUS_DIR = "bach"
CACHE_VERSION = 2
VALIDATION_MODULUS = 10
# Bucket 1, not 0: crc32 bucket 0 happens to hold none of the 36 chorales in 3/4, bucket 1
# holds 4 of them (33 pieces in all, 9 %), so validation covers both meters.
VALIDATION_BUCKET = 1


def cache_name() -> str:
    return f"chorales-v{CACHE_VERSION}-{LOWEST_PITCH}-{N_PITCHES}.npz"


# ---------------------------------------------------------------------------------------
# Data classes


@dataclass
class PieceRolls:
    """One chorale on the step grid, transposed to C major / A minor.

    frames, onsets: bool ``[4, T, N_PITCHES]`` (tracks in `TRACK_NAMES` order; column 0 is
    MIDI pitch `LOWEST_PITCH`). ``T`` is a whole number of bars; step 0 is a barline (a
    pickup is preceded by rests). key_tonic / key_mode: the key music21 found in the
    ORIGINAL score (tonic as a pitch class 0..11); shift: the semitones (-6..+5) that were
    added to every pitch, so the stored music is in C major or A minor.
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

    def window_starts(self, window_steps: int = WINDOW_STEPS) -> np.ndarray:
        """Steps where windows start: every barline whose window fits inside the piece."""
        return np.arange(0, self.n_steps - window_steps + 1, self.steps_per_bar, dtype=np.int64)


@dataclass
class ChoraleDataset:
    """Windows of `WINDOW_STEPS` steps cut from chorales.

    frames, onsets: bool ``[N, 4, 48, P]`` (tracks Soprano, Alto, Tenor, Bass).
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

    def subset(self, mask) -> "ChoraleDataset":
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
        """Lowest and highest Soprano pitch (after key normalisation)."""
        return self.pitch_range(MELODY_TRACK)


class SkipPiece(Exception):
    """A corpus piece that does not go into the data set; `reason` says why."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


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


def _part_notes(part, offset: Fraction) -> list[Note]:
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

    voices = [[n._replace(pitch=n.pitch + shift) for n in _part_notes(p, padding)] for p in score.parts]
    if not voices[MELODY_TRACK]:
        raise SkipPiece("empty melody")
    highest = N_PITCHES - 1 + LOWEST_PITCH
    for track, notes in zip(TRACK_NAMES, voices):
        for note in notes:
            if not LOWEST_PITCH <= note.pitch <= highest:
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
# Building, splitting, windowing


def _build(
    progress: bool = True, workers: int | None = None, names: Sequence[str] | None = None
) -> tuple[list[PieceRolls], dict]:
    """Convert the corpus; returns the kept pieces and build info (skips by reason)."""
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
            digest = _content_digest(piece, range(len(TRACK_NAMES)))
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


def build_pieces(progress: bool = True, workers: int | None = None) -> list[PieceRolls]:
    """Convert every qualifying chorale of music21's corpus (slow; see `load_pieces`)."""
    return _build(progress=progress, workers=workers)[0]


def _content_digest(piece: PieceRolls, tracks: Iterable[int]) -> bytes:
    import hashlib

    h = hashlib.sha1(str(piece.beats_per_bar).encode())
    for t in tracks:
        h.update(np.packbits(piece.frames[t]).tobytes())
        h.update(np.packbits(piece.onsets[t]).tobytes())
    return h.digest()


def is_validation(name: str) -> bool:
    """Whether a piece belongs to the validation split (stable across runs and machines)."""
    return zlib.crc32(name.encode("utf-8")) % VALIDATION_MODULUS == VALIDATION_BUCKET


def split_keys(pieces: Sequence[PieceRolls]) -> list[str]:
    """The name whose hash decides each piece's split.

    A piece's own name, except that pieces with an identical Soprano line (after key
    normalisation) all use the alphabetically first of their names, so they land together.
    """
    first: dict[bytes, str] = {}
    digests = [_content_digest(p, [MELODY_TRACK]) for p in pieces]
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


def windows_from_pieces(
    pieces: Sequence[PieceRolls], window_steps: int = WINDOW_STEPS, info: dict | None = None
) -> ChoraleDataset:
    """Cut every piece into windows starting on each barline (hop = one bar)."""
    from .data.windows import windows_from_pieces as cut

    return cut(pieces, window_steps, len(TRACK_NAMES), info)


def split_dataset(
    pieces: Sequence[PieceRolls], info: dict | None = None
) -> tuple[ChoraleDataset, ChoraleDataset]:
    """(train, validation) windows; the split is by piece (`is_validation` of `split_keys`)."""
    in_val = [is_validation(key) for key in split_keys(pieces)]
    train = [p for p, v in zip(pieces, in_val) if not v]
    val = [p for p, v in zip(pieces, in_val) if v]
    return windows_from_pieces(train, info=info), windows_from_pieces(val, info=info)


# ---------------------------------------------------------------------------------------
# Cache


def default_cache_dir() -> Path:
    env = os.environ.get("BACKLINE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "backline"


def save_pieces(path: Path, pieces: Sequence[PieceRolls], info: dict | None = None) -> None:
    """Write pieces to one compressed .npz (bool rolls bit-packed), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.asarray([p.n_steps for p in pieces], dtype=np.int64)
    if pieces:
        frames = np.concatenate([p.frames for p in pieces], axis=1)
        onsets = np.concatenate([p.onsets for p in pieces], axis=1)
    else:
        frames = onsets = np.zeros((len(TRACK_NAMES), 0, N_PITCHES), dtype=bool)
    meta = {
        "version": CACHE_VERSION,
        "lowest_pitch": LOWEST_PITCH,
        "n_pitches": N_PITCHES,
        "steps_per_beat": STEPS_PER_BEAT,
        "shape": list(frames.shape),
        "info": info or {},
    }
    arrays = dict(
        frames=np.packbits(frames, axis=-1),
        onsets=np.packbits(onsets, axis=-1),
        lengths=lengths,
        names=np.asarray([p.name for p in pieces], dtype=str),
        beats_per_bar=np.asarray([p.beats_per_bar for p in pieces], dtype=np.int64),
        key_tonic=np.asarray([p.key_tonic for p in pieces], dtype=np.int64),
        key_mode=np.asarray([p.key_mode for p in pieces], dtype=str),
        shift=np.asarray([p.shift for p in pieces], dtype=np.int64),
        meta=np.asarray(json.dumps(meta)),
    )
    with atomic_write(path) as handle:
        np.savez_compressed(handle, **arrays)


def load_pieces_file(path: Path) -> tuple[list[PieceRolls], dict]:
    """Read pieces written by `save_pieces`; returns (pieces, build info)."""
    with np.load(Path(path), allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        if (
            meta.get("version") != CACHE_VERSION
            or meta.get("lowest_pitch") != LOWEST_PITCH
            or meta.get("n_pitches") != N_PITCHES
        ):
            raise ValueError(f"{path} was written for another layout: {meta}")
        n_pitches = meta["n_pitches"]
        frames = np.unpackbits(data["frames"], axis=-1, count=n_pitches).astype(bool)
        onsets = np.unpackbits(data["onsets"], axis=-1, count=n_pitches).astype(bool)
        bounds = np.concatenate([[0], np.cumsum(data["lengths"])])
        pieces = [
            PieceRolls(
                name=str(data["names"][i]),
                frames=frames[:, bounds[i] : bounds[i + 1]],
                onsets=onsets[:, bounds[i] : bounds[i + 1]],
                beats_per_bar=int(data["beats_per_bar"][i]),
                key_tonic=int(data["key_tonic"][i]),
                key_mode=str(data["key_mode"][i]),
                shift=int(data["shift"][i]),
            )
            for i in range(len(data["lengths"]))
        ]
    return pieces, meta.get("info", {})


def load_pieces(
    cache_dir: Path | None = None, rebuild: bool = False, progress: bool = True
) -> tuple[list[PieceRolls], dict]:
    """The converted chorales, from the cache when there is one (built and cached if not)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / cache_name()
    if path.exists() and not rebuild:
        try:
            return load_pieces_file(path)
        except (OSError, ValueError, KeyError) as exc:
            if progress:
                print(f"chorales: rebuilding unreadable cache {path} ({exc})")
    pieces, info = _build(progress=progress)
    save_pieces(path, pieces, info)
    return pieces, info


def load_dataset(
    cache_dir: Path | None = None, rebuild: bool = False, progress: bool = True
) -> tuple[ChoraleDataset, ChoraleDataset]:
    """(train, validation) windows of the Bach chorales; the first call builds the cache."""
    pieces, info = load_pieces(cache_dir, rebuild=rebuild, progress=progress)
    return split_dataset(pieces, info)


# ---------------------------------------------------------------------------------------
# Summary


def _note_name(midi: int) -> str:
    names = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
    return f"{names[midi % 12]}{midi // 12 - 1}"


def dataset_summary(train: ChoraleDataset, val: ChoraleDataset) -> str:
    """A short human-readable description of a (train, validation) pair."""
    lines = []
    info = train.info or val.info
    if info:
        skipped = info.get("skipped", {})
        n_skipped = sum(len(v) for v in skipped.values())
        lines.append(
            f"corpus files: {info.get('corpus_files', '?')}, kept {info.get('kept', '?')}, "
            f"skipped {n_skipped}"
            + (
                " (" + ", ".join(f"{r}: {len(v)}" for r, v in sorted(skipped.items())) + ")"
                if skipped
                else ""
            )
        )
    for label, ds in (("train", train), ("validation", val)):
        used = np.unique(ds.piece_index)
        meters = Counter()
        modes = Counter()
        for i in used:
            modes[ds.piece_modes[i]] += 1
        for i in used:
            spb = ds.steps_per_bar[ds.piece_index == i][0]
            meters["3/4" if spb == 12 else "4/4"] += 1
        lines.append(
            f"{label}: {len(ds.piece_names)} pieces ({len(used)} with windows; "
            + ", ".join(f"{m} {c}" for m, c in sorted(meters.items()))
            + "; "
            + ", ".join(
                f"{'C major' if m == 'major' else 'A minor'} {c}" for m, c in sorted(modes.items())
            )
            + f"), {len(ds)} windows ("
            + f"{int((ds.steps_per_bar == 12).sum())} in 3/4)"
        )
    ranges = []
    for track, name in enumerate(TRACK_NAMES):
        found = [r for r in (train.pitch_range(track), val.pitch_range(track)) if r]
        if found:
            low, high = min(r[0] for r in found), max(r[1] for r in found)
            ranges.append(f"{name} {low}-{high} ({_note_name(low)}-{_note_name(high)})")
    lowest = train.lowest_pitch
    lines.append(
        f"pitch grid {lowest}-{lowest + train.n_pitches - 1}; ranges: " + ", ".join(ranges)
    )
    lines.append(
        f"window: {WINDOW_BEATS} beats = {WINDOW_STEPS} steps at {STEPS_PER_BEAT} steps/beat "
        f"(3 bars of 4/4 or 4 bars of 3/4), hop 1 bar"
    )
    return "\n".join(lines)
