"""Which track of a multi-track file is the melody.

None of the game MIDIs we train on labels its melody, so the rule is written down here,
logged for every file, and overridable (`--melody-track`):

1. `--melody-track NAME|INDEX`: the track with that name (ignoring case; else the first
   whose name contains it), or that 0-based index in the file's track list.
2. Otherwise tracks whose name says melody, lead, vocal, voice, solo, soprano or tune
   (non-drum, with notes): the highest of them by mean pitch.
3. Otherwise the highest (by mean pitch) track that is neither drums nor bass (GM 32-39),
   is mostly monophonic (two or more pitches at once on under 20 % of its sounding
   16th-note steps) and plays in at least a quarter of the piece's bars.
4. Otherwise the top line (at each note start, the highest note starting there) of the
   highest track that is neither drums nor bass and plays in a quarter of the bars: a
   piano's right hand playing the tune in chords. The notes under the top line stay in
   that track's role, so the melody is still never also accompaniment.
5. No such track: the piece is skipped ("no melody candidate").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backline.models.midi import MidiScore, MidiTrack
from backline.models.notes import Note

NAME_HINTS = ("melody", "lead", "vocal", "voice", "solo", "soprano", "tune")
MAX_CHORD_SHARE = 0.2
MIN_BAR_SHARE = 0.25


class NoMelody(Exception):
    """No track qualifies as the melody; the message says why."""


@dataclass(frozen=True)
class MelodyChoice:
    index: int  # in score.tracks
    rule: str  # "override", "name", "register", "top line"

    @property
    def top_line(self) -> bool:
        return self.rule == "top line"

    def describe(self, score: MidiScore) -> str:
        track = score.tracks[self.index]
        return f"track {self.index} {track.name!r} (program {track.program}, by {self.rule})"


def _is_bass(track: MidiTrack) -> bool:
    return 32 <= track.program <= 39


def chord_share(notes: list[Note], steps_per_beat: int = 4) -> float:
    """Share of the sounding steps at which two or more of the notes sound."""
    if not notes:
        return 0.0
    end = int(np.ceil(max(n.end for n in notes) * steps_per_beat)) + 1
    count = np.zeros(end, dtype=np.int32)
    for n in notes:
        a = int(round(n.start * steps_per_beat))
        b = max(a + 1, int(round(n.end * steps_per_beat)))
        count[a:b] += 1
    sounding = (count > 0).sum()
    return float((count >= 2).sum() / sounding) if sounding else 0.0


def bar_share(notes: list[Note], total_bars: int, beats_per_bar: float) -> float:
    bars = {int(n.start // beats_per_bar) for n in notes}
    return len(bars) / max(total_bars, 1)


def choose_melody(score: MidiScore, override: str | None = None, beats_per_bar: float = 4.0) -> MelodyChoice:
    """The melody track of `score` by the rule above; NoMelody when none qualifies."""
    tracks = score.tracks
    if override is not None:
        return MelodyChoice(_override_index(score, override), "override")
    melodic = [i for i, t in enumerate(tracks) if t.notes and not t.is_drum]
    named = [i for i in melodic if any(h in tracks[i].name.casefold() for h in NAME_HINTS)]
    if named:
        return MelodyChoice(max(named, key=lambda i: tracks[i].mean_pitch), "name")
    total_bars = int(np.ceil(score.length_beats / beats_per_bar))
    candidates = [
        i for i in melodic
        if not _is_bass(tracks[i])
        and chord_share(tracks[i].notes) < MAX_CHORD_SHARE
        and bar_share(tracks[i].notes, total_bars, beats_per_bar) >= MIN_BAR_SHARE
    ]
    if candidates:
        return MelodyChoice(max(candidates, key=lambda i: (tracks[i].mean_pitch, len(tracks[i].notes))), "register")
    present = [i for i in melodic if not _is_bass(tracks[i])
               and bar_share(tracks[i].notes, total_bars, beats_per_bar) >= MIN_BAR_SHARE]
    if present:
        return MelodyChoice(max(present, key=lambda i: (tracks[i].mean_pitch, len(tracks[i].notes))), "top line")
    raise NoMelody(
        "no track other than drums and bass plays in a quarter of the bars "
        "(name the melody with --melody-track)"
    )


def split_top_line(notes: list[Note]) -> tuple[list[Note], list[Note]]:
    """(top line, the rest): at each start time the highest note starting there is the
    top line's, unless a higher top-line note is still sounding."""
    top: list[Note] = []
    rest: list[Note] = []
    by_start: dict[float, list[Note]] = {}
    for note in notes:
        by_start.setdefault(round(note.start, 4), []).append(note)
    for start in sorted(by_start):
        group = sorted(by_start[start], key=lambda n: n.pitch)
        highest = group[-1]
        if top and top[-1].end > start + 1e-6 and top[-1].pitch > highest.pitch:
            rest += group
            continue
        if top and top[-1].end > start + 1e-6:  # the new top note cuts the last one short
            top[-1] = top[-1]._replace(duration=start - top[-1].start)
        top.append(highest)
        rest += group[:-1]
    return [n for n in top if n.duration > 0], rest


def _override_index(score: MidiScore, override: str) -> int:
    tracks = score.tracks
    text = override.strip()
    if text.isdigit():
        index = int(text)
        if index >= len(tracks):
            raise NoMelody(f"--melody-track {index}: the file has {len(tracks)} tracks with notes (0..{len(tracks) - 1})")
        if tracks[index].is_drum:
            raise NoMelody(f"--melody-track {index}: track {tracks[index].name!r} is drums (MIDI channel 10); "
                           "name a melodic track")
        return index
    wanted = text.casefold()
    for match in (lambda t: t.name.casefold() == wanted, lambda t: wanted in t.name.casefold()):
        for i, t in enumerate(tracks):
            if match(t) and not t.is_drum:
                return i
    names = ", ".join(repr(t.name) for t in tracks)
    raise NoMelody(f"--melody-track {override!r} names no melodic track (tracks: {names})")
