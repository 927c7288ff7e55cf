"""After the notes are read off: each part in its instrument's range, and its dynamics.

Range. A part that strays out of its instrument's compass is moved by whole octaves a
phrase at a time (a phrase ends at a rest of a beat or more), by the octave that brings
most of the phrase's notes in, so a line keeps its shape; a note still outside after
that is folded in by octaves on its own. Drum notes off the GM drum map are dropped.

Order. Parts with an expected order (`voice_pairs`: a chorale's alto under its soprano,
a bass under the band) should cross no more often than in the music the model learned
from; octave moves into range can put a whole line above the part it belongs under (an
alto with one note below the violin's G3 goes up an octave, over the soprano). So the
ordered parts are placed together (`separate_voices`): each phrase at the octave, of
those that keep it in range, at which it crosses its neighbours least.

Dynamics. The band follows the melody's dynamics: each note takes the velocity of the
melody at its start (the melody note sounding then, or the last one before it), scaled
by the track's loudness in the training data relative to the melody's (`TrackSpec.velocity`
against the model melody's), and accented by metric position: downbeats a little louder,
16th-note off-beats a little softer.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from .notes import Note
from .spec import TrackSpec

# Multipliers by metric position: bar downbeat, beat, 8th off-beat, 16th off-beat.
ACCENTS = (1.1, 1.0, 0.92, 0.85)


def fit_range(pitch: np.ndarray, start: np.ndarray, length: np.ndarray, low: int, high: int,
              phrase_gap: int) -> np.ndarray:
    """Pitches moved into low..high by whole octaves, phrase by phrase (arrays in steps,
    sorted by start). Returns a new array; only out-of-range phrases change."""
    pitch = pitch.copy()
    outside = (pitch < low) | (pitch > high)
    if not outside.any():
        return pitch
    phrase = _phrases(start, length, phrase_gap)
    # Notes inside the range per phrase and octave move, [phrases, 9], for every phrase at once.
    inside = (pitch[:, None] + 12 * OCTAVES >= low) & (pitch[:, None] + 12 * OCTAVES <= high)
    per_phrase = np.zeros((phrase[-1] + 1, len(OCTAVES)), dtype=int)
    np.add.at(per_phrase, phrase, inside)
    move = 12 * OCTAVES[_best_octaves(per_phrase)]
    strays = np.zeros(len(per_phrase), dtype=bool)  # only phrases with a note outside move
    strays[phrase[outside]] = True
    pitch += np.where(strays, move, 0)[phrase]
    return _fold(pitch, low, high)


# The octave moves tried for a phrase, and their order of preference among equals: the
# smaller move first, then the upward one.
OCTAVES = np.arange(-4, 5)
_PREFERENCE = np.lexsort((-OCTAVES, np.abs(OCTAVES)))


def _best_octaves(inside: np.ndarray) -> np.ndarray:
    """Per row of `inside` (notes in range, [rows, 9] by OCTAVES): the index of the move
    that brings most notes in, the preferred one among equals."""
    ranked = inside[:, _PREFERENCE]
    return _PREFERENCE[np.argmax(ranked, axis=1)]


def _phrases(start: np.ndarray, length: np.ndarray, phrase_gap: int) -> np.ndarray:
    """Each note's phrase number (notes sorted by start)."""
    return np.cumsum(_phrase_heads(start, length, phrase_gap)) - 1


def _phrase_heads(start: np.ndarray, length: np.ndarray, phrase_gap: int) -> np.ndarray:
    """Bool per note (sorted by start): it starts a phrase, beginning a full gap after
    everything before it ended."""
    end = np.maximum.accumulate(start + length)
    new_phrase = np.ones(len(start), dtype=bool)
    new_phrase[1:] = start[1:] - end[:-1] >= phrase_gap
    return new_phrase


def _fold(pitch: np.ndarray, low: int, high: int) -> np.ndarray:
    """Each note outside low..high folded in by octaves on its own (a new array)."""
    pitch = pitch.copy()
    below, above = pitch < low, pitch > high
    pitch[below] += 12 * np.ceil((low - pitch[below]) / 12).astype(pitch.dtype)
    pitch[above] -= 12 * np.ceil((pitch[above] - high) / 12).astype(pitch.dtype)
    return pitch


# Two parts that are not both single lines are expected one above the other only where
# their instruments' range centres lie more than this far apart (a perfect fifth): a bass
# (centre 47.5) under a guitar (63); not a guitar under a piano (64.5), nor a brass
# section (58) under an alto sax (65).
ORDER_MARGIN = 7


def range_centre(track: TrackSpec) -> float:
    low, high = track.playable_range
    return (low + high) / 2


def voice_pairs(melody: TrackSpec, tracks: Sequence[TrackSpec]) -> list[tuple[int, int]]:
    """See `_voice_pairs`; the same spec gives the same pairs, so they are worked out once."""
    return list(_voice_pairs(melody, tuple(tracks)))


@functools.lru_cache(maxsize=64)
def _voice_pairs(melody: TrackSpec, tracks: tuple[TrackSpec, ...]) -> tuple[tuple[int, int], ...]:
    """The adjacent pairs of the parts' expected order, as (upper, lower) rows of
    `[melody, *tracks]`. Drums have no place in it.

    Part A is expected above part B where A's instrument range (`playable_range`: the
    track's own or its GM program's) is centred more than `ORDER_MARGIN` semitones higher,
    or, where both are single lines (the melody, or a `monophonic` track), where A's
    centre is higher, or the same and A comes first: two lines on one instrument are
    numbered from the top (soprano over an alto both on violin; Violin I over Violin II).
    The pairs returned are the adjacent ones: A above B with no part expected between.
    Bach: Soprano-Alto, Alto-Tenor, Tenor-Bass; the quartet: Violin I-Violin II,
    Violin II-Viola, Viola-Cello; the genre bands: each other pitched part above the Bass.
    """
    parts = [(0, melody, True)] + [(1 + k, t, t.monophonic) for k, t in enumerate(tracks) if not t.is_drum]
    above = set()
    for i, a, line_a in parts:
        for j, b, line_b in parts:
            if i == j:
                continue
            gap = range_centre(a) - range_centre(b)
            if gap > ORDER_MARGIN or (line_a and line_b and (gap > 0 or (gap == 0 and i < j))):
                above.add((i, j))
    rows = [i for i, _, _ in parts]
    return tuple(sorted((i, j) for i, j in above if not any((i, m) in above and (m, j) in above for m in rows)))


def melody_velocity_curve(melody: Sequence[Note], n_steps: int, steps_per_beat: int) -> np.ndarray:
    """Per step: the velocity of the melody note sounding there, or of the last one before."""
    curve = np.full(n_steps, np.nan)
    for note in sorted((n for n in melody if not n.mute), key=lambda n: n.start):
        at = int(round(note.start * steps_per_beat))
        if 0 <= at < n_steps:
            curve[at] = note.velocity
        elif at < 0:
            curve[0] = note.velocity
    valid = ~np.isnan(curve)
    if not valid.any():
        return np.full(n_steps, 90.0)
    index = np.where(valid, np.arange(n_steps), 0)
    np.maximum.accumulate(index, out=index)
    filled = curve[index]
    filled[: np.argmax(valid)] = curve[np.argmax(valid)]
    return filled


def accents(start: np.ndarray, steps_per_beat: int, steps_per_bar: int | np.ndarray,
            steps_per_felt_beat: int | np.ndarray | None = None) -> np.ndarray:
    """Velocity multiplier for notes starting at these steps (from a barline). The felt
    beat is the quarter unless given (a dotted quarter in 6/8: models/meter.py). The bar
    and beat may be given per note."""
    position = np.full(start.shape, 3)
    eighth = max(steps_per_beat // 2, 1)
    position[start % eighth == 0] = 2
    position[start % (steps_per_beat if steps_per_felt_beat is None else steps_per_felt_beat) == 0] = 1
    position[start % steps_per_bar == 0] = 0
    return np.asarray(ACCENTS)[position]


def voice_parts(melody: TrackSpec, tracks: Sequence[TrackSpec], track_of: np.ndarray, pitch: np.ndarray,
                start: np.ndarray, length: np.ndarray, phrase_gap: int,
                melody_top: np.ndarray | None = None) -> np.ndarray:
    """Every pitched part in its instrument's range, placed against its neighbours' crossings.

    Arrays as `note_runs` gives them (track, MIDI pitch, start and length in steps, sorted
    by track then start); `melody_top`: the melody's highest MIDI pitch at each step (-1
    where it rests, None if unknown), on the same steps. Returns new pitches; drums are
    left as they are. Parts without an expected order (`voice_pairs`) get `fit_range`;
    the ordered ones get `separate_voices`, which falls back on the same placement
    wherever moving would not lower their crossings.
    """
    pitch = np.array(pitch, copy=True)
    fitted = pitch.copy()
    for k, track in enumerate(tracks):
        mine = track_of == k
        if not track.is_drum and mine.any():
            low, high = track.playable_range
            fitted[mine] = fit_range(pitch[mine], start[mine], length[mine], low, high, phrase_gap)
    pairs = voice_pairs(melody, tracks)
    if not pairs or not len(pitch):
        return fitted
    return separate_voices(tracks, pairs, track_of, pitch, fitted, start, length, phrase_gap, melody_top)


def roll_top(frames: np.ndarray, lowest_pitch: int) -> np.ndarray:
    """Int [T]: the highest MIDI pitch sounding at each step of a roll `[T, P]` (column 0
    is `lowest_pitch`), -1 where nothing sounds."""
    frames = np.asarray(frames, dtype=bool)
    if frames.shape[1] == 0:
        return np.full(frames.shape[0], -1)
    highest = frames.shape[1] - 1 - np.argmax(frames[:, ::-1], axis=1) + lowest_pitch
    return np.where(frames.any(axis=1), highest, -1)


def _tops(pitch: np.ndarray, start: np.ndarray, length: np.ndarray, first: int, n_steps: int) -> np.ndarray:
    """Int [n_steps]: the highest of these notes sounding at each step from step `first`, -1 where none."""
    top = np.full(n_steps, -1)
    if len(pitch):
        note = np.repeat(np.arange(len(pitch)), length)
        step = start[note] - first + np.arange(len(note)) - np.repeat(np.cumsum(length) - length, length)
        inside = (step >= 0) & (step < n_steps)
        np.maximum.at(top, step[inside], pitch[note][inside])
    return top


def separate_voices(tracks: Sequence[TrackSpec], pairs: Sequence[tuple[int, int]], track_of: np.ndarray,
                    pitch: np.ndarray, fitted: np.ndarray, start: np.ndarray, length: np.ndarray,
                    phrase_gap: int, melody_top: np.ndarray | None = None) -> np.ndarray:
    """The ordered parts' phrases each at the octave that crosses their neighbours least.

    `pitch`: the decoded pitches; `fitted`: the same after `fit_range`; `pairs`: the
    (upper, lower) rows of `[melody, *tracks]` from `voice_pairs`. A crossing step of a
    pair is one where both sound and the part expected lower has its highest note above
    the highest note of the part expected higher (`voice_crossing_rate` in
    training/metrics.py). The melody is never moved.

    The parts are placed one at a time, nearest the melody first (`_placing_order`), each
    phrase (as in `fit_range`; `phrase_gap` is a beat of steps) once, against its
    neighbours as they then stand. The placements tried are the phrase's decoded notes
    moved as a whole by -4..+4 octaves, each note then still outside the range folded in
    by octaves on its own as `fit_range` folds it; one of them is `fit_range`'s own, which
    folds the fewest. Each costs its crossing steps plus a beat of steps for every note it
    folds (an octave leap inside the line is worth a beat of crossing). The cheapest wins
    where it costs less than `fit_range`'s placement (among equals, the smaller move).

    So every note ends in range; a phrase moves as a whole, but for notes folded as
    `fit_range` folds them; and each move strictly lowers the phrase's crossing steps
    with its neighbours (it cannot fold fewer notes than `fit_range`'s placement), so the
    sum of crossing steps over all pairs ends no higher than with `fit_range` alone. It
    does not promise the data's rate: where an instrument's range keeps a part above the
    one over it (a violin alto cannot go under G3), the crossing stays.
    """
    fitted = np.array(fitted, copy=True)
    n_steps = int((start + length).max()) if len(start) else 0
    if melody_top is not None:
        n_steps = max(n_steps, len(melody_top))
    tops = np.full((1 + len(tracks), n_steps), -1)
    if melody_top is not None:
        tops[0, :len(melody_top)] = melody_top
    for k in range(len(tracks)):
        mine = track_of == k
        tops[1 + k] = _tops(fitted[mine], start[mine], length[mine], 0, n_steps)
    for row in _placing_order(tracks, pairs):
        neighbours = [(u, True) for u, v in pairs if v == row] + [(v, False) for u, v in pairs if u == row]
        mine = np.flatnonzero(track_of == row - 1)
        if len(mine):
            _place_phrases(tops, row, neighbours, mine, tracks[row - 1].playable_range, pitch, fitted, start,
                           length, phrase_gap)
    return fitted


def _place_phrases(tops: np.ndarray, row: int, neighbours: Sequence[tuple[int, bool]], mine: np.ndarray,
                   playable: tuple[int, int], pitch: np.ndarray, fitted: np.ndarray, start: np.ndarray,
                   length: np.ndarray, phrase_gap: int) -> None:
    """Place one part's phrases (notes `mine`, sorted by start) as `separate_voices` says,
    updating `fitted` and the part's `tops[row]` in place.

    A phrase's placement changes only this row's tops, inside the phrase, and its
    neighbours' tops stay as they are while this row is placed, so the row's phrases are
    independent: all of them are weighed together, each placement's costs summed per
    phrase. Most phrases cross nothing where fit_range put them; only the others are weighed.
    """
    low, high = playable
    is_head = _phrase_heads(start[mine], length[mine], phrase_gap)
    phrase = np.cumsum(is_head) - 1
    heads = np.flatnonzero(is_head)
    firsts = start[mine][heads]
    lasts = np.maximum.reduceat(start[mine] + length[mine], heads)
    crossing = _crossing_steps(tops, row, neighbours)
    weighed = crossing[lasts] != crossing[firsts]  # per phrase
    if not weighed.any():
        return
    # The weighed phrases' notes, and their steps packed end to end (phrase spans do not
    # overlap): phrase w's step t is packed step span_at[w] + t - firsts[w].
    of_note = np.flatnonzero(weighed[phrase])
    notes = mine[of_note]
    which = (np.cumsum(weighed) - 1)[phrase[of_note]]  # each note's weighed phrase, counted from 0
    firsts, lasts = firsts[weighed], lasts[weighed]
    n_weighed = len(firsts)
    per_phrase = np.bincount(which, minlength=n_weighed)  # notes
    note_heads = np.cumsum(per_phrase) - per_phrase
    spans = lasts - firsts
    span_at = np.cumsum(spans) - spans
    steps = np.repeat(firsts - span_at, spans) + np.arange(spans.sum())  # packed -> time-line step
    # Every placement of every phrase: [9, notes] pitches, [9, packed steps] tops, [9, phrases] costs.
    moved = pitch[notes][None, :] + 12 * OCTAVES[:, None]
    folded = np.add.reduceat(((moved < low) | (moved > high)).astype(int), note_heads, axis=1)
    placed = _fold(moved, low, high)
    placed_tops = _tops_each(placed, start[notes] - firsts[which] + span_at[which], length[notes], int(spans.sum()))
    crossed = np.zeros(placed_tops.shape, dtype=int)
    for other_row, is_upper in neighbours:
        other = tops[other_row, steps]
        both = (placed_tops >= 0) & (other >= 0)
        crossed += both & ((placed_tops > other) if is_upper else (other > placed_tops))
    cost = np.add.reduceat(crossed, span_at, axis=1) + phrase_gap * folded  # a fold costs a beat of steps
    # fit_range's placement (where each phrase stands now) keeps its place unless another
    # costs strictly less; among equals the smaller move from it, then the lower octave.
    fit = _best_octaves((per_phrase - folded).T)
    distance = np.abs(OCTAVES[:, None] - OCTAVES[fit][None, :])
    best = np.argmin((cost * 16 + distance) * 16 + np.arange(len(OCTAVES))[:, None], axis=0)
    moves = cost[best, np.arange(n_weighed)] < cost[fit, np.arange(n_weighed)]
    if not moves.any():
        return
    moving = moves[which]
    fitted[notes[moving]] = placed[best[which], np.arange(len(notes))][moving]
    step_phrase = np.repeat(np.arange(n_weighed), spans)
    moving_steps = moves[step_phrase]
    tops[row, steps[moving_steps]] = placed_tops[best[step_phrase], np.arange(len(steps))][moving_steps]


def _tops_each(pitch: np.ndarray, start: np.ndarray, length: np.ndarray, n_steps: int) -> np.ndarray:
    """Int [C, n_steps]: `_tops` of each row of `pitch` ([C, notes], the same notes at C
    placements), from step 0; the notes' steps are expanded once for all rows."""
    note = np.repeat(np.arange(pitch.shape[1]), length)
    step = start[note] + np.arange(len(note)) - np.repeat(np.cumsum(length) - length, length)
    inside = (step >= 0) & (step < n_steps)
    note, step = note[inside], step[inside]
    top = np.full((pitch.shape[0], n_steps), -1)
    np.maximum.at(top, (np.arange(pitch.shape[0])[:, None], step[None, :]), pitch[:, note])
    return top


def _crossing_steps(tops: np.ndarray, row: int, neighbours: Sequence[tuple[int, bool]]) -> np.ndarray:
    """Int [n_steps + 1]: crossing steps of `tops[row]` with its neighbours, summed over the
    neighbours and accumulated from step 0 (so steps a..b cross `c[b] - c[a]` times)."""
    own = tops[row]
    count = np.zeros(tops.shape[1] + 1, dtype=int)
    for other_row, is_upper in neighbours:
        other = tops[other_row]
        both = (own >= 0) & (other >= 0)
        count[1:] += both & ((own > other) if is_upper else (other > own))
    return np.cumsum(count)


def _placing_order(tracks: Sequence[TrackSpec], pairs: Sequence[tuple[int, int]]) -> list[int]:
    """The ordered parts' rows, nearest the melody (in steps along `pairs`) first, then the
    higher range centre: a chorale from the soprano down, a band's bass before the parts
    above it."""
    distance, queue = {0: 0}, [0]
    for a in queue:  # breadth first from the melody; the queue grows as it goes
        for u, v in pairs:
            for b in ((v,) if u == a else (u,) if v == a else ()):
                if b not in distance:
                    distance[b] = distance[a] + 1
                    queue.append(b)
    rows = {r for pair in pairs for r in pair} - {0}
    return sorted(rows, key=lambda r: (distance.get(r, len(tracks) + 1), -range_centre(tracks[r - 1]), r))


def _outside(pitch: np.ndarray, low: int, high: int) -> int:
    return int(np.count_nonzero((pitch < low) | (pitch > high)))
