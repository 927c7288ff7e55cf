"""Piano rolls from LPD / pypianoroll `.npz` files, read with numpy alone.

The Lakh Pianoroll Dataset (LPD) and pypianoroll's `save()` store a multitrack piano roll
as a NumPy `.npz` archive (a zip file) holding:

    info.json                 a plain zip entry (not an array):
                                pypianoroll 1.0: {"resolution": R, "name": ...,
                                                  "0": {"program", "is_drum", "name"}, ...}
                                pypianoroll 0.x (the LPD files): "beat_resolution" instead
                                of "resolution"; the per-track dicts are the same
    pianoroll_<i>_csc_data    track i's roll, shape [time steps, 128 pitches], as the
    pianoroll_<i>_csc_indices   parts of a scipy.sparse CSC matrix: column j (pitch j)
    pianoroll_<i>_csc_indptr    holds rows (steps) indices[indptr[j]:indptr[j+1]] with
    pianoroll_<i>_csc_shape     values data[...] (bool = on/off, else velocity)
    tempo                     optional: bpm per time step
    downbeat                  optional: bool per time step, True where a bar starts

Tracks are numbered "0", "1", ... in info.json, with no gaps. A roll has R steps per
quarter-note beat; a run of nonzero steps at one pitch is one note starting at step/R
beats. Its velocity is the roll's value at the first step, clipped to 1..127; a bool roll
gives velocity 100. A dense `pianoroll_<i>` array is accepted too.

Only the first tempo value is used (pypianoroll 1.0.4's `read()` fills the rest of the
array in a scrambled order); without one the tempo is 120 bpm. With a downbeat array, bar
lengths that are whole beats give time signatures n/4; otherwise 4/4 and none listed.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import numpy as np

from backline.models.errors import BacklineError
from backline.models.midi import DEFAULT_TEMPO_BPM, DRUM_CHANNEL, MidiScore, MidiTrack
from backline.models.notes import Note

BINARY_VELOCITY = 100
N_PITCHES = 128

_HINT = "write it again with pypianoroll's save() or remove it from the data folder"


class LpdError(BacklineError, ValueError):
    """An .npz file is not a usable LPD / pypianoroll file; the message is one line."""


def read_lpd(path: str | os.PathLike[str]) -> MidiScore:
    """Read an LPD / pypianoroll .npz file into a MidiScore (times in beats)."""
    label = str(path)
    try:
        if not zipfile.is_zipfile(path):  # np.load would try .npy and pickle formats
            raise LpdError(f"{label} is not an .npz (zip) file; {_HINT}")
        with np.load(path, allow_pickle=False) as archive:
            if "info.json" not in archive.files:
                raise LpdError(
                    f"{label} has no info.json, so it is not an LPD / pypianoroll file; "
                    f"{_HINT}"
                )
            info = json.loads(bytes(archive["info.json"]).decode("utf-8"))
            if not isinstance(info, dict):
                raise LpdError(f"{label} has an info.json that is not an object; {_HINT}")
            return _score(archive, info, label)
    except LpdError:
        raise
    except (OSError, ValueError, KeyError, IndexError, TypeError, EOFError,
            zipfile.BadZipFile, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LpdError(f"{label} could not be read as an .npz file ({reason}); {_HINT}") from None


def _score(archive: Any, info: dict[str, Any], label: str) -> MidiScore:
    resolution = info.get("resolution", info.get("beat_resolution"))
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution <= 0:
        raise LpdError(
            f"{label} has no valid resolution (steps per beat) in info.json; {_HINT}"
        )
    tracks: list[MidiTrack] = []
    melodic = 0
    index = 0
    while str(index) in info:
        meta = info[str(index)]
        if not isinstance(meta, dict):
            raise LpdError(f"{label}: track {index} in info.json is not an object; {_HINT}")
        is_drum = bool(meta.get("is_drum", False))
        if is_drum:
            channel = DRUM_CHANNEL
        else:  # channels 0-15 in turn, skipping the drum channel
            channel = melodic % 15
            channel += channel >= DRUM_CHANNEL
            melodic += 1
        notes = _notes(_roll_parts(archive, index, label), resolution, label)
        if notes:
            tracks.append(MidiTrack(
                name=str(meta.get("name") or f"Track {index + 1}"),
                program=min(127, max(0, int(meta.get("program") or 0))),
                channel=channel,
                is_drum=is_drum,
                notes=notes,
            ))
        index += 1
    if index == 0:
        raise LpdError(f"{label} lists no tracks in info.json; {_HINT}")
    if not tracks:
        raise LpdError(f"{label} contains no notes; remove it from the data folder")

    tempo_bpm = DEFAULT_TEMPO_BPM
    tempo_changes: list[tuple[float, float]] = []
    if "tempo" in archive.files:
        tempo = np.asarray(archive["tempo"], dtype=float).reshape(-1)
        if tempo.size and np.isfinite(tempo[0]) and tempo[0] > 0:
            tempo_bpm = round(float(tempo[0]), 3)
            tempo_changes = [(0.0, tempo_bpm)]
    time_signatures: list[tuple[float, int, int]] = []
    if "downbeat" in archive.files:
        time_signatures = _meters(np.asarray(archive["downbeat"]).reshape(-1), resolution)
    return MidiScore(
        tracks=tracks,
        tempo_bpm=tempo_bpm,
        time_signature=time_signatures[0][1:] if time_signatures else (4, 4),
        ticks_per_beat=resolution,
        tempo_changes=tempo_changes,
        time_signatures=time_signatures,
    )


def _roll_parts(archive: Any, index: int, label: str) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray, int]:
    """(rows, pitches, values, n_steps) of track `index`'s nonzero entries."""
    prefix = f"pianoroll_{index}"
    if f"{prefix}_csc_data" in archive.files:
        data = np.asarray(archive[f"{prefix}_csc_data"]).reshape(-1)
        rows = np.asarray(archive[f"{prefix}_csc_indices"]).reshape(-1).astype(np.int64)
        indptr = np.asarray(archive[f"{prefix}_csc_indptr"]).reshape(-1).astype(np.int64)
        shape = tuple(int(n) for n in np.asarray(archive[f"{prefix}_csc_shape"]).reshape(-1))
        if (len(shape) != 2 or shape[1] > N_PITCHES or len(indptr) != shape[1] + 1
                or len(rows) != len(data) or indptr[0] != 0 or indptr[-1] != len(data)
                or np.any(np.diff(indptr) < 0)
                or (len(rows) and (rows.min() < 0 or rows.max() >= shape[0]))):
            raise LpdError(
                f"{label}: track {index}'s sparse piano roll is inconsistent (shape "
                f"{shape}); {_HINT}"
            )
        pitches = np.repeat(np.arange(shape[1]), np.diff(indptr))
        return rows, pitches, data, shape[0]
    if prefix in archive.files:
        roll = np.asarray(archive[prefix])
        if roll.ndim != 2 or roll.shape[1] > N_PITCHES:
            raise LpdError(
                f"{label}: track {index}'s piano roll has shape {roll.shape}, not "
                f"[steps, {N_PITCHES}]; {_HINT}"
            )
        rows, pitches = np.nonzero(roll)
        return rows, pitches, roll[rows, pitches], roll.shape[0]
    raise LpdError(f"{label} lists track {index} but has no piano roll for it; {_HINT}")


def _notes(parts: tuple[np.ndarray, np.ndarray, np.ndarray, int], resolution: int,
           label: str) -> list[Note]:
    rows, pitches, values, _ = parts
    if values.dtype.kind not in "biuf":
        raise LpdError(f"{label} has a piano roll of {values.dtype} values; {_HINT}")
    sounding = values != 0
    if values.dtype.kind == "f":
        sounding &= ~np.isnan(values)
    rows, pitches, values = rows[sounding], pitches[sounding], values[sounding]
    if not len(rows):
        return []
    order = np.lexsort((rows, pitches))
    rows, pitches, values = rows[order], pitches[order], values[order]
    # A run ends where the pitch changes or a step is skipped.
    new = np.ones(len(rows), dtype=bool)
    new[1:] = (pitches[1:] != pitches[:-1]) | (rows[1:] != rows[:-1] + 1)
    starts = np.flatnonzero(new)
    lengths = np.diff(np.append(starts, len(rows)))
    if values.dtype.kind == "b":
        velocities = np.full(len(starts), BINARY_VELOCITY)
    else:
        velocities = np.clip(np.rint(values[starts].astype(float)), 1, 127).astype(int)
    notes = [
        Note(int(p), int(r) / resolution, int(n) / resolution, int(v))
        for p, r, n, v in zip(pitches[starts], rows[starts], lengths, velocities)
    ]
    return sorted(notes, key=lambda n: (n.start, n.pitch))


def _meters(downbeat: np.ndarray, resolution: int) -> list[tuple[float, int, int]]:
    """(beat, n, 4) wherever the bar length, a whole number n of beats, changes."""
    bars = np.flatnonzero(downbeat)
    meters: list[tuple[float, int, int]] = []
    for start, end in zip(bars[:-1], bars[1:]):
        beats, rest = divmod(int(end - start), resolution)
        if rest == 0 and (not meters or meters[-1][1] != beats):
            meters.append((int(start) / resolution, beats, 4))
    return meters
