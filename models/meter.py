"""The melody's meter, as the band reads it.

Every model works in quarter-note beats and was trained on music in simple duple and
triple time (4/4, 3/4, 2/4, 2/2): its windows hold a number of beats, not of bars, so a
bar of any whole number of quarters lines up with them. What the meter changes is where
the band leans: the accents on the bar's downbeat and on each felt beat.

- Simple meters of 2, 3 or 4 beats (2/4, 3/4, 4/4, 2/2, 3/2) are what the models learned.
- Compound meters (6/8, 9/8, 12/8) are read as 2, 3 or 4 beats of three eighths: the
  model plays on the same quarter-note grid, the accents fall on the dotted-quarter beats,
  and the output says so.
- Anything else (5/4, 7/8, 5/8, ...) is refused with one line that names the way out:
  `--meter 4/4` accompanies such a melody as if it were in 4/4.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from .errors import BacklineError

_SIMPLE = {(2, 4), (3, 4), (4, 4), (2, 2), (3, 2), (4, 2), (1, 4)}
_COMPOUND = {(6, 8), (9, 8), (12, 8), (6, 4), (6, 16), (12, 16)}


class MeterError(BacklineError, ValueError):
    """A meter the models cannot follow; the message says what to do."""


@dataclass(frozen=True)
class Meter:
    numerator: int = 4
    denominator: int = 4

    def __str__(self) -> str:
        return f"{self.numerator}/{self.denominator}"

    @property
    def compound(self) -> bool:
        return (self.numerator, self.denominator) in _COMPOUND

    @property
    def bar_beats(self) -> Fraction:
        """The bar's length in quarter notes."""
        return Fraction(4 * self.numerator, self.denominator)

    @property
    def beat_beats(self) -> Fraction:
        """The felt beat in quarter notes: a dotted note in compound time."""
        unit = Fraction(4, self.denominator)
        return 3 * unit if self.compound else unit

    def steps(self, steps_per_beat: int) -> tuple[int, int]:
        """(steps per bar, steps per felt beat) on a grid of `steps_per_beat` per quarter."""
        bar = self.bar_beats * steps_per_beat
        beat = self.beat_beats * steps_per_beat
        return max(int(bar), 1), max(int(beat), 1)

    def reading(self, model: str) -> str | None:
        """How the model reads this meter: None for one it learned, a sentence for one it
        plays by analogy; MeterError for one it cannot follow."""
        pair = (self.numerator, self.denominator)
        if pair in _SIMPLE:
            return None
        if pair in _COMPOUND:
            beats = self.numerator // 3
            return (f"the melody is in {self}, a meter model '{model}' did not learn; it is read as {beats} "
                    f"beats of three {_unit_name(self.denominator)}s: the band plays on the same grid, "
                    "accented on the dotted beats")
        raise MeterError(
            f"the melody is in {self}, and model '{model}' only follows meters of 2, 3 or 4 beats "
            "(2/4, 3/4, 4/4, 6/8, 12/8 ...); accompany it as if in another meter with --meter 4/4 "
            "(the band then accents 4/4 bars)"
        )


def parse_meter(text: str) -> Meter:
    """'6/8' -> Meter(6, 8); MeterError for anything else."""
    try:
        top, bottom = (int(part) for part in text.split("/"))
    except ValueError:
        raise MeterError(f"{text!r} is not a meter; write it like 4/4 or 6/8") from None
    if top < 1 or bottom not in (1, 2, 4, 8, 16, 32):
        raise MeterError(f"{text!r} is not a meter; write it like 4/4 or 6/8")
    return Meter(top, bottom)


def _unit_name(denominator: int) -> str:
    return {2: "half note", 4: "quarter", 8: "eighth", 16: "sixteenth"}.get(denominator, f"1/{denominator} note")
