"""A `--data` value -> cached (train, validation) window sets, with a summary.

`--data` is `chorales` (music21's Bach chorales, the `bach` model's data, read by
`training/sources/chorales.py`), `quartets` (music21's string quartets,
`training/sources/quartets.py`), or one or more paths: MIDI files, Doom WADs, LPD /
pypianoroll `.npz` files, or folders of them read recursively
(`training/sources/discover.py`).

The chorales keep their own conversion (SATB parts, music21's key analysis) and their
own cache file; they are cut into 12-beat windows and split by the hash bucket alone (the
chorale section below). Everything else goes through the multi-track builder: every
file is converted by `pieces.convert_score`; a file that cannot be read or used is
reported with its reason and skipped, never fatal. Identical pieces (the same music
after key normalisation, e.g. one song in two WADs) are kept once. The split is by file:
every segment of a file, and every file with the same melody, lands on one side.

The converted pieces are cached in `$BACKLINE_CACHE` (default `~/.cache/backline`)
under a key made of the files' names, sizes and modification times, the genre and the
melody override, so a changed folder is rebuilt and an unchanged one loads in a second.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from backline.models.errors import BacklineError
from backline.models.midi import MidiScore

from ..sources import chorales
from .cache import FORMAT_VERSION, default_cache_dir, load_pieces_file, save_pieces
from .genres import Genre
from .grid import LOWEST_PITCH, N_PITCHES, STEPS_PER_BEAT, PieceRolls, SkipPiece, content_digest
from .pieces import convert_score
from .split import split_by_bucket, split_by_piece
from .windows import WindowDataset, windows_from_pieces

log = logging.getLogger("backline.training")

CACHE_VERSION = 1

# Package data we know, by a path fragment (DESIGN §4): the Debian package it comes
# from and its licence. A path of your own is yours: its licence is whatever your files
# carry (`--data-licence` records it).
KNOWN_PACKAGES = (
    ("games/doom/freedm", "freedm", "BSD-3-Clause-style (Freedoom project)"),
    ("games/doom/freedoom", "freedoom", "BSD-3-Clause-style (Freedoom project)"),
    ("simutrans/music", "simutrans-data", "Artistic-1.0 (simutrans-data)"),
    ("openttd/baseset/openmsx", "openttd-openmsx", "GPL-2 (OpenMSX, openttd-openmsx)"),
)


def _holds(path: str, fragment: str) -> bool:
    """Whether `path` is inside the package folder `fragment` names, or is a folder holding it."""
    resolved = Path(path).resolve()
    if fragment in str(resolved):
        return True
    return resolved.is_dir() and any(fragment in str(child) for child in resolved.glob("*"))


def packages_of(paths: Sequence[str]) -> list[str]:
    """The Debian packages that hold these paths, as far as we know them."""
    return sorted({package for fragment, package, _ in KNOWN_PACKAGES for p in paths if _holds(p, fragment)})


def code_version() -> str:
    """A digest of the code that converts files, so a changed rule rebuilds the cache."""
    here = Path(__file__).parent
    digest = hashlib.sha1()
    sources = here.parent / "sources"
    # quartets.py reads its parts with chorales.py's part_notes: both shape the quartet windows.
    for path in (here / "pieces.py", here / "melody.py", here / "genres.py", sources / "quartets.py",
                 sources / "chorales.py"):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


class DataError(BacklineError, ValueError):
    """No usable training data; the message lists why each file was skipped."""


@dataclass(frozen=True)
class Source:
    name: str
    load: Callable[[], MidiScore]
    melody_track: str | None = None


@dataclass
class BuildReport:
    files: int = 0
    kept: list[str] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> "name (detail)"
    melody: dict[str, str] = field(default_factory=dict)  # file -> the chosen track and rule
    skipped_bars: Counter = field(default_factory=Counter)  # meter -> bars
    dropped_notes: int = 0
    velocities: dict[str, list[float]] = field(default_factory=dict)
    bars: list[int] = field(default_factory=list)  # per track (melody first): bars with notes
    total_bars: int = 0

    def skip(self, reason: str, name: str, detail: str = "") -> None:
        self.skipped.setdefault(reason, []).append(f"{name} ({detail})" if detail else name)

    def to_info(self) -> dict:
        return {
            "files": self.files, "kept": len(self.kept), "skipped": self.skipped, "melody": self.melody,
            "skipped_bars": dict(self.skipped_bars), "dropped_notes": self.dropped_notes,
            "velocity": {k: float(np.mean(v)) for k, v in self.velocities.items() if v},
            "bars_with_notes": self.bars, "bars": self.total_bars,
        }


# --------------------------------------------------------------------------- sources


def named_sources(data: str) -> tuple[list[Source], str, str] | None:
    """(sources, description, licence) of a named corpus, or None for a path."""
    if data == "quartets":
        from ..sources.quartets import LICENCE, quartet_paths, read_quartet

        sources = [Source(name, (lambda p=path: read_quartet(p)), melody_track="0")
                   for name, path in quartet_paths()]
        return sources, "music21 string quartets (Beethoven, Haydn, Mozart), key-normalised", LICENCE
    return None


def path_sources(paths: Sequence[str]) -> tuple[list[Source], str, str]:
    from ..sources.discover import find_pieces

    sources = []
    for path in paths:
        prefix = Path(path).name + "/" if len(paths) > 1 and Path(path).is_dir() else ""
        sources += [Source(prefix + p.name, p.load) for p in find_pieces(path)]
    licences = sorted({licence for fragment, _, licence in KNOWN_PACKAGES for p in paths if _holds(p, fragment)})
    if len(paths) <= 3:
        where = ", ".join(str(p) for p in paths)
    else:  # a hand-picked list of files: say how many, and from which folders
        folders = sorted({str(Path(p).parent) for p in paths})
        where = f"{len(paths)} files from " + ", ".join(folders)
    description = f"MIDI from {where}, key-normalised"
    return sources, description, "; ".join(licences) or "the licence of the files given"


def fingerprint(paths: Sequence[str]) -> list:
    """Names, sizes and modification times of every file under the paths."""
    entries = []
    for path in paths:
        root = Path(path)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            st = f.stat()
            entries.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return entries


# --------------------------------------------------------------------------- building


def convert_sources(sources: Iterable[Source], genre: Genre, melody_track: str | None, report: BuildReport,
                    progress: bool = True) -> tuple[list[PieceRolls], list[str]]:
    """Every source converted; returns the kept segments and the file each came from."""
    from tqdm.auto import tqdm

    sources = list(sources)
    report.files = len(sources)
    pieces: list[PieceRolls] = []
    files: list[str] = []
    seen: dict[bytes, str] = {}
    for source in tqdm(sources, desc="reading", unit="file", disable=not progress):
        try:
            score = source.load()
            conversion = convert_score(score, source.name, genre, melody_track or source.melody_track)
        except SkipPiece as skip:
            report.skip(skip.reason, source.name, skip.detail)
            continue
        except (BacklineError, ValueError, OSError, EOFError, KeyError, IndexError) as exc:
            report.skip("unreadable", source.name, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
            continue
        digest = content_digest(conversion.segments[0], range(1 + len(genre.roles)))
        if digest in seen:
            report.skip("duplicate", source.name, f"same music as {seen[digest]}")
            continue
        seen[digest] = source.name
        report.kept.append(source.name)
        report.melody[source.name] = f"{conversion.melody_name!r} (by {conversion.melody.rule})"
        log.info("%s: melody %s", source.name, report.melody[source.name])
        report.skipped_bars.update(conversion.skipped_bars)
        report.dropped_notes += conversion.dropped_notes
        for key, value in conversion.velocities.items():
            report.velocities.setdefault(key, []).append(value)
        for segment in conversion.segments:
            per_bar = segment.frames.reshape(segment.frames.shape[0], segment.n_bars, -1).any(axis=2)
            counts = per_bar.sum(axis=1).tolist()
            report.bars = [a + b for a, b in zip(report.bars, counts)] if report.bars else counts
            report.total_bars += segment.n_bars
        pieces += conversion.segments
        files += [source.name] * len(conversion.segments)
    return pieces, files


def load_training_data(
    data: Sequence[str], genre: Genre, *, melody_track: str | None = None, licence: str | None = None,
    cache_dir: Path | None = None, rebuild: bool = False, progress: bool = True,
) -> tuple[WindowDataset, WindowDataset]:
    """(train, validation) windows for `genre` from `--data`, built once and cached."""
    data = list(data)
    named = named_sources(data[0]) if len(data) == 1 else None
    if named is None:
        for path in data:
            if not Path(path).exists():
                raise DataError(f"--data {path}: no such file or folder; give a MIDI file, a folder of MIDI, "
                                "a .wad, a folder of .npz, or one of: chorales, quartets")
    key_parts = {"version": CACHE_VERSION, "code": code_version(), "genre": genre.name, "melody_track": melody_track,
                 "data": data if named else fingerprint(data), "grid": [STEPS_PER_BEAT, N_PITCHES]}
    key = hashlib.sha1(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    cache = (Path(cache_dir) if cache_dir else default_cache_dir()) / f"multitrack-{genre.name}-{key}.npz"
    pieces: list[PieceRolls] | None = None
    if cache.exists() and not rebuild:
        try:
            pieces, info = load_pieces_file(cache)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("rebuilding unreadable cache %s (%s)", cache, exc)
    if pieces is None:
        sources, description, found_licence = named if named else path_sources(data)
        report = BuildReport()
        pieces, files = convert_sources(sources, genre, melody_track, report, progress)
        info = {**report.to_info(), "dataset": description, "licence": licence or found_licence,
                "genre": genre.name, "files_of_pieces": files}
        if not pieces:
            raise DataError(no_data_message(data, report))
        save_pieces(cache, pieces, info)
    elif licence:
        info["licence"] = licence
    train, val = split_by_piece(pieces, info["files_of_pieces"])
    if not val:
        raise DataError(f"{' '.join(data)} gives one usable piece ({info['kept']} file kept); training holds whole "
                        "pieces out for validation, so give it at least two files")
    window_steps = genre.window_beats * STEPS_PER_BEAT
    n_tracks = 1 + len(genre.roles)
    info = {**info, "cache": str(cache)}
    return (windows_from_pieces(train, window_steps, n_tracks, info),
            windows_from_pieces(val, window_steps, n_tracks, info))


def no_data_message(data: Sequence[str], report: BuildReport) -> str:
    reasons = "; ".join(f"{reason}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
                        for reason, names in sorted(report.skipped.items()))
    return (f"no usable music in {' '.join(data)} ({report.files} files; {reasons or 'none found'}); "
            "each piece needs a melody track and at least one accompanying track in a covered meter")


# --------------------------------------------------------------------------- summary


def data_summary(train: WindowDataset, val: WindowDataset, genre: Genre) -> str:
    """What went in: files kept and skipped with reasons, windows, and bars per role."""
    info = train.info
    skipped = info.get("skipped", {})
    lines = [f"data: {info.get('dataset', '?')} [{info.get('licence', '?')}]"]
    lines.append(
        f"files: {info.get('files', '?')}, kept {info.get('kept', '?')}, skipped "
        f"{sum(len(v) for v in skipped.values())}"
        + (" (" + ", ".join(f"{r}: {len(v)}" for r, v in sorted(skipped.items())) + ")" if skipped else "")
    )
    for reason, names in sorted(skipped.items()):
        lines.append(f"  skipped, {reason}: " + ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else ""))
    if info.get("skipped_bars"):
        lines.append("  bars skipped in meters the model does not cover: "
                     + ", ".join(f"{m} {b}" for m, b in sorted(info["skipped_bars"].items())))
    rules = Counter(v.rsplit("(by ", 1)[-1].rstrip(")") for v in info.get("melody", {}).values())
    if rules:
        lines.append("melody chosen by: " + ", ".join(f"{r} {c}" for r, c in sorted(rules.items())))
    for label, ds in (("train", train), ("validation", val)):
        pieces = len(np.unique(ds.piece_index))
        lines.append(f"{label}: {len(ds)} windows from {pieces} segments")
    names = [genre.melody.name, *(t.name for t in genre.tracks)]
    counts = info.get("bars_with_notes") or [0] * len(names)
    lines.append(f"bars: {info.get('bars', '?')}; with notes, per role: "
                 + ", ".join(f"{n} {c}" for n, c in zip(names, counts)))
    return "\n".join(lines)


# --------------------------------------------------------------------------- the chorales


def chorale_cache_name() -> str:
    return f"chorales-v{FORMAT_VERSION}-{LOWEST_PITCH}-{N_PITCHES}.npz"


def load_chorale_pieces(cache_dir: Path | None = None, rebuild: bool = False, progress: bool = True
                        ) -> tuple[list[PieceRolls], dict]:
    """The converted chorales, from the cache when there is one (built and cached if not)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / chorale_cache_name()
    if path.exists() and not rebuild:
        try:
            return load_pieces_file(path)
        except (OSError, ValueError, KeyError) as exc:
            if progress:
                print(f"chorales: rebuilding unreadable cache {path} ({exc})")
    pieces, info = chorales.read_corpus(progress=progress)
    save_pieces(path, pieces, info)
    return pieces, info


def chorale_windows(pieces: Sequence[PieceRolls], info: dict | None = None) -> WindowDataset:
    """Every 12-beat window of the chorales, one starting on each barline (hop = one bar)."""
    return windows_from_pieces(pieces, chorales.WINDOW_STEPS, len(chorales.TRACK_NAMES), info)


def split_chorales(pieces: Sequence[PieceRolls], info: dict | None = None) -> tuple[WindowDataset, WindowDataset]:
    """(train, validation) windows; the split is by piece (`split.split_by_bucket`)."""
    train, val = split_by_bucket(pieces)
    return chorale_windows(train, info), chorale_windows(val, info)


def load_chorales(cache_dir: Path | None = None, rebuild: bool = False, progress: bool = True
                  ) -> tuple[WindowDataset, WindowDataset]:
    """(train, validation) windows of the Bach chorales; the first call builds the cache."""
    pieces, info = load_chorale_pieces(cache_dir, rebuild=rebuild, progress=progress)
    return split_chorales(pieces, info)


def _note_name(midi: int) -> str:
    names = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
    return f"{names[midi % 12]}{midi // 12 - 1}"


def chorale_summary(train: WindowDataset, val: WindowDataset) -> str:
    """A short human-readable description of the chorales' (train, validation) pair."""
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
    for track, name in enumerate(chorales.TRACK_NAMES):
        found = [r for r in (train.pitch_range(track), val.pitch_range(track)) if r]
        if found:
            low, high = min(r[0] for r in found), max(r[1] for r in found)
            ranges.append(f"{name} {low}-{high} ({_note_name(low)}-{_note_name(high)})")
    lowest = train.lowest_pitch
    lines.append(
        f"pitch grid {lowest}-{lowest + train.n_pitches - 1}; ranges: " + ", ".join(ranges)
    )
    lines.append(
        f"window: {chorales.WINDOW_BEATS} beats = {chorales.WINDOW_STEPS} steps at {STEPS_PER_BEAT} steps/beat "
        f"(3 bars of 4/4 or 4 bars of 3/4), hop 1 bar"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- one entry point


def default_genre(data: Sequence[str]) -> str:
    """The genre a `--data` value trains when `--genre` is not given."""
    from .genres import DEFAULT_GENRE, DEFAULT_PATH_GENRE

    return DEFAULT_GENRE.get(data[0], DEFAULT_PATH_GENRE) if len(data) == 1 else DEFAULT_PATH_GENRE


def load_data(data: Sequence[str], genre_name: str, *, melody_track: str | None = None, licence: str | None = None,
              rebuild: bool = False, progress: bool = True, cache_dir: Path | None = None
              ) -> tuple[WindowDataset, WindowDataset]:
    """(train, validation) for any `--data` and genre: the chorales for `bach`, else the
    multi-track builder."""
    from .genres import get_genre

    data = list(data)
    if genre_name == "bach" or data == ["chorales"]:
        if genre_name != "bach" or data != ["chorales"]:
            raise DataError("the bach model trains on the chorales and the chorales train only the bach model: "
                            "use --data chorales with --genre bach (the default), or another --genre with your own --data")
        train, val = load_chorales(cache_dir, rebuild=rebuild, progress=progress)
        if licence:
            train.info["licence"] = val.info["licence"] = licence
        return train, val
    return load_training_data(data, get_genre(genre_name), melody_track=melody_track, licence=licence,
                              cache_dir=cache_dir, rebuild=rebuild, progress=progress)


def summary(train: WindowDataset, val: WindowDataset, genre_name: str) -> str:
    if genre_name == "bach":
        return chorale_summary(train, val)
    from .genres import get_genre

    return data_summary(train, val, get_genre(genre_name))
