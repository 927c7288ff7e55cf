"""Where each General MIDI instrument can play, and how loud the band plays.

Ranges are the instruments' usual written compass (orchestration references; for the
electric instruments, a standard-tuned 4-string bass and 6-string guitar with 22 frets),
in MIDI numbers. A model track's range is the one of its GM program, unless the model
stores its own (`TrackSpec.pitch_range`). Drums use the GM drum map (35..81).
"""

from __future__ import annotations

GM_DRUM_RANGE = (35, 81)

# (first program, last program) -> (lowest, highest) MIDI pitch
_RANGES: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((0, 7), (21, 108)),  # pianos
    ((8, 15), (48, 96)),  # chromatic percussion: celesta, glockenspiel, vibraphone, marimba
    ((16, 23), (36, 96)),  # organs, accordion, harmonica
    ((24, 31), (40, 86)),  # guitars: E2 to D6
    ((32, 32), (28, 60)),  # acoustic (upright) bass: E1 to C4
    ((33, 39), (28, 67)),  # electric and synth basses: E1 to G4
    ((40, 40), (55, 103)),  # violin: G3 up
    ((41, 41), (48, 88)),  # viola: C3 up
    ((42, 42), (36, 76)),  # cello: C2 up
    ((43, 43), (28, 60)),  # contrabass: E1 up
    ((44, 45), (28, 103)),  # tremolo and pizzicato strings
    ((46, 46), (24, 103)),  # harp
    ((47, 47), (40, 57)),  # timpani
    ((48, 55), (28, 96)),  # string and choir ensembles
    ((56, 56), (52, 82)),  # trumpet
    ((57, 57), (40, 72)),  # trombone
    ((58, 58), (28, 58)),  # tuba
    ((59, 59), (52, 82)),  # muted trumpet
    ((60, 60), (34, 77)),  # French horn
    ((61, 63), (34, 82)),  # brass sections
    ((64, 64), (56, 87)),  # soprano sax
    ((65, 65), (49, 81)),  # alto sax
    ((66, 66), (44, 76)),  # tenor sax
    ((67, 67), (36, 69)),  # baritone sax
    ((68, 68), (58, 91)),  # oboe
    ((69, 69), (52, 81)),  # English horn
    ((70, 70), (34, 75)),  # bassoon
    ((71, 71), (50, 94)),  # clarinet
    ((72, 79), (60, 96)),  # flutes and pipes
    ((80, 127), (24, 108)),  # synths, ethnic, percussive, effects: wide
)


def playable_range(program: int, is_drum: bool = False) -> tuple[int, int]:
    """(lowest, highest) MIDI pitch that a GM program (0-based) plays."""
    if is_drum:
        return GM_DRUM_RANGE
    for (first, last), span in _RANGES:
        if first <= program <= last:
            return span
    raise ValueError(f"GM program {program} is outside 0..127")
