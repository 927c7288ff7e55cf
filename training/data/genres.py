"""What a model plays, and how the tracks of a MIDI file map onto it.

Roles follow LPD-5 (Dong et al.): a non-drum track's role comes from its General MIDI
program family (program // 8), drums from MIDI channel 10. Tracks that share a role are
merged into one. The families, and where they go in the band genres:

| GM family (programs)            | role    |
|---------------------------------|---------|
| piano, chromatic perc., organ (0-23) | keys |
| guitar (24-31), ethnic plucked (104-111) | guitar |
| bass (32-39)                    | bass    |
| strings, ensemble, brass, reed, pipe, synth pad (40-79, 88-95) | pad (strings / horns) |
| synth lead (80-87), synth effects (96-103), percussive (112-119), sound effects (120-127) | dropped |
| any program on MIDI channel 10  | drums   |

Synth leads carry tunes, not accompaniment: such a track can be the melody, never a role.
The melody track is taken out before roles are assigned, so it is never also a role.

The string-quartet layout (`symphony`) maps by program instead: violin (40) -> Violin II
(the melody is Violin I), viola (41) -> Viola, cello and contrabass (42, 43) -> Cello.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from backline.models.spec import TrackSpec

DRUM_CHANNEL = 9

# The drum pitch set: every GM drum note is folded onto one of eight voices (as MuseGAN's
# drum track does with LPD's drums), so the drum track learns a small, dense vocabulary.
DRUM_VOICES: dict[int, int] = {
    35: 36, 36: 36,  # kick
    37: 38, 38: 38, 39: 38, 40: 38,  # snare, side stick, clap
    42: 42, 44: 42, 54: 42, 69: 42, 70: 42,  # closed hi-hat, pedal hat, shakers
    46: 46,  # open hi-hat
    41: 45, 43: 45, 45: 45,  # low toms
    47: 48, 48: 48, 50: 48,  # high toms
    49: 49, 52: 49, 55: 49, 57: 49,  # crashes, china, splash
    51: 51, 53: 51, 59: 51, 56: 51,  # rides, cowbell
}
DRUM_PITCHES: tuple[int, ...] = tuple(sorted(set(DRUM_VOICES.values())))  # 36 38 42 45 46 48 49 51


def family_role(program: int) -> str | None:
    """The band role of a non-drum GM program (0-based), or None where it is dropped."""
    family = program // 8
    if family in (0, 1, 2):
        return "keys"
    if family == 3 or family == 13:
        return "guitar"
    if family == 4:
        return "bass"
    if family in (5, 6, 7, 8, 9, 11):
        return "pad"
    return None


def quartet_role(program: int) -> str | None:
    return {40: "violin2", 41: "viola", 42: "cello", 43: "cello"}.get(program)


@dataclass(frozen=True)
class Role:
    key: str  # what the mapping function returns
    track: TrackSpec  # what the model's track is called and how it plays


@dataclass(frozen=True)
class Genre:
    name: str
    description: str
    melody: TrackSpec
    roles: tuple[Role, ...]
    map_program: Callable[[int], str | None]  # non-drum program -> role key
    window_beats: int  # the model's window; pieces in meters whose bar does not divide it are skipped
    default_arch: str
    beats_per_bar: int = 4  # the tensor's bar

    @property
    def tracks(self) -> tuple[TrackSpec, ...]:
        return tuple(r.track for r in self.roles)

    def role_index(self, program: int, is_drum: bool) -> int | None:
        """Which of this genre's roles a track plays, or None when it is dropped."""
        key = "drums" if is_drum else self.map_program(program)
        for index, role in enumerate(self.roles):
            if role.key == key:
                return index
        return None


def _band(name: str, description: str, programs: dict[str, tuple[str, int]]) -> Genre:
    """Drums, bass, guitar, keys and a pad, one MIDI channel each (drums on 10)."""
    order = [("drums", 9), ("bass", 1), ("guitar", 2), ("keys", 3), ("pad", 4)]
    roles = []
    for key, channel in order:
        label, program = programs[key]
        roles.append(Role(key, TrackSpec(label, program=program, channel=channel, is_drum=key == "drums")))
    return Genre(
        name=name, description=description,
        melody=TrackSpec("Melody", program=programs["melody"][1], channel=0),
        roles=tuple(roles), map_program=family_role, window_beats=16, default_arch="musegan",
    )


GENRES: dict[str, Genre] = {
    "pop": _band(
        "pop", "A pop band for your melody: drums, electric bass, clean guitar, piano and strings.",
        {"melody": ("Melody", 0), "drums": ("Drums", 0), "bass": ("Bass", 33), "guitar": ("Guitar", 27),
         "keys": ("Piano", 0), "pad": ("Strings", 48)},
    ),
    "rock": _band(
        "rock", "A rock band for your melody: drums, picked bass, overdriven guitar, organ and strings.",
        {"melody": ("Melody", 29), "drums": ("Drums", 0), "bass": ("Bass", 34), "guitar": ("Guitar", 29),
         "keys": ("Organ", 16), "pad": ("Strings", 48)},
    ),
    "jazz": _band(
        "jazz", "A jazz combo for your melody: drums, upright bass, jazz guitar, piano and horns.",
        {"melody": ("Melody", 65), "drums": ("Drums", 0), "bass": ("Bass", 32), "guitar": ("Guitar", 26),
         "keys": ("Piano", 0), "pad": ("Horns", 61)},
    ),
    "band": _band(
        "band", "A band trained on your own MIDI: drums, bass, guitar, keys and a pad.",
        {"melody": ("Melody", 0), "drums": ("Drums", 0), "bass": ("Bass", 33), "guitar": ("Guitar", 25),
         "keys": ("Keys", 0), "pad": ("Pad", 48)},
    ),
    "symphony": Genre(
        name="symphony",
        description="A string quartet after Haydn, Mozart and Beethoven: give it the first "
                    "violin's line, it adds second violin, viola and cello.",
        melody=TrackSpec("Violin I", program=40, channel=0),
        roles=(
            Role("violin2", TrackSpec("Violin II", program=40, channel=1)),
            Role("viola", TrackSpec("Viola", program=41, channel=2)),
            Role("cello", TrackSpec("Cello", program=42, channel=3)),
        ),
        map_program=quartet_role,
        # 12 beats: whole bars of 4/4, 3/4, 2/4, 6/8 (3 quarters) and 12/8 alike.
        window_beats=12,
        default_arch="musegan",
    ),
}

# The genre a named corpus trains by default, and the default for a path of your own.
DEFAULT_GENRE = {"chorales": "bach", "quartets": "symphony"}
DEFAULT_PATH_GENRE = "band"


def get_genre(name: str) -> Genre:
    from backline.models.errors import BacklineError

    try:
        return GENRES[name]
    except KeyError:
        raise BacklineError(f"no genre {name!r}; choose one of {', '.join(sorted(GENRES))}") from None
