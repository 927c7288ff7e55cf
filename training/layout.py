"""Which instruments a trained model plays, and the spec it exports with.

The Bach chorales are sung, but a DAW user wants instruments: the four voices become a
string quartet (violin, violin, viola, cello), one MIDI channel each.
"""

from __future__ import annotations

from typing import Any

from backline.models.spec import GeneratorSpec, TrackSpec

from .networks import NetConfig

BACH_MELODY = TrackSpec("Soprano", program=40, channel=0)  # Violin
BACH_TRACKS = (
    TrackSpec("Alto", program=40, channel=1),  # Violin
    TrackSpec("Tenor", program=41, channel=2),  # Viola
    TrackSpec("Bass", program=42, channel=3),  # Cello
)
BACH_BEATS_PER_BAR = 4  # the tensor's own meter: 12 beats = 3 bars of 4/4 (or 4 of 3/4)


def bach_spec(
    net: NetConfig,
    *,
    lowest_pitch: int,
    monophonic: list[bool],
    melody_range: tuple[int, int],
    name: str = "bach",
    threshold: float = 0.5,
    provenance: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> GeneratorSpec:
    tracks = tuple(
        TrackSpec(t.name, t.program, t.channel, t.is_drum, bool(mono))
        for t, mono in zip(BACH_TRACKS, monophonic)
    )
    description = ("Four-part chorale harmony after J. S. Bach: give it a soprano line, it adds "
                   "alto, tenor and bass (played as a string quartet).")
    return _spec(net, "bach", description, BACH_MELODY, tracks, BACH_BEATS_PER_BAR, lowest_pitch=lowest_pitch,
                 melody_range=melody_range, name=name, threshold=threshold, provenance=provenance, metrics=metrics)


def _spec(net: NetConfig, genre: str, description: str, melody: TrackSpec, tracks: tuple[TrackSpec, ...],
          beats_per_bar: int, *, lowest_pitch: int, melody_range: tuple[int, int], name: str, threshold: float,
          provenance: dict[str, Any] | None, metrics: dict[str, Any] | None) -> GeneratorSpec:
    """A key-normalised model's spec: the grid from the network, the rest as given."""
    return GeneratorSpec(
        name=name,
        genre=genre,
        description=description,
        melody=melody,
        tracks=tracks,
        bars=net.window_steps // (beats_per_bar * net.steps_per_beat),
        beats_per_bar=beats_per_bar,
        steps_per_beat=net.steps_per_beat,
        lowest_pitch=lowest_pitch,
        n_pitches=net.n_pitches,
        z_dim=net.z_dim,
        threshold=threshold,
        onset_threshold=0.5,
        key_normalised=True,
        melody_range=melody_range,
        provenance=provenance or {},
        metrics=metrics or {},
    )


def genre_spec(
    genre_name: str,
    net: NetConfig,
    *,
    lowest_pitch: int,
    monophonic: list[bool],
    melody_range: tuple[int, int],
    velocities: dict[str, float] | None = None,
    name: str | None = None,
    threshold: float = 0.5,
    provenance: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> GeneratorSpec:
    """The spec of a model of `genre_name` (`bach` or a key of data.genres.GENRES).

    Each track carries its mean velocity in the training data, and the melody its own,
    so the decoder plays every part as loud relative to the melody as the data did."""
    if genre_name == "bach":
        return bach_spec(net, lowest_pitch=lowest_pitch, monophonic=monophonic, melody_range=melody_range,
                         name=name or "bach", threshold=threshold, provenance=provenance, metrics=metrics)
    from dataclasses import replace

    from .data.genres import get_genre

    genre = get_genre(genre_name)
    velocities = velocities or {}

    def level(key: str) -> int | None:
        value = velocities.get(key)
        return int(round(value)) if value else None

    tracks = tuple(replace(role.track, monophonic=bool(mono), velocity=level(role.key))
                   for role, mono in zip(genre.roles, monophonic))
    return _spec(net, genre.name, genre.description, replace(genre.melody, velocity=level("melody")), tracks,
                 genre.beats_per_bar, lowest_pitch=lowest_pitch, melody_range=melody_range,
                 name=name or genre.name, threshold=threshold, provenance=provenance, metrics=metrics)
