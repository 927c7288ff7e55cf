"""The generator contract: what an exported model says about itself.

An ONNX generator carries one JSON document under the metadata key `backline`. The runtime
learns everything from it (tracks, programs, grid, pitch range, noise size) and nothing
from code constants, so a newly trained model with other tracks needs no code change.

Tensor layout (DESIGN §2):
  inputs   melody  float32 [batch, bars, steps_per_bar, n_pitches]  0/1 frames
           z       float32 [batch, z_dim]                           standard normal
  outputs  accompaniment  float32 [batch, n_tracks, bars, steps_per_bar, n_pitches]
           onsets         float32 [batch, n_tracks, bars, steps_per_bar, n_pitches]
           (probabilities in [0, 1]; `onsets` is the chance a note starts at that step)

`bars` and `steps_per_bar` describe the tensor's time axis in the model's own meter
(`beats_per_bar`). A piece in another meter uses the same window of
`bars * beats_per_bar` beats: the bach model's 12-beat window is 3 bars of 4/4 or 4 bars
of 3/4, so windows of either meter start on a barline and hold whole bars.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from typing import Any
from .errors import BacklineError

SCHEMA_VERSION = 1
METADATA_KEY = "backline"


class SpecError(BacklineError, ValueError):
    """The model's metadata is missing or does not describe a usable generator."""


@dataclass(frozen=True)
class TrackSpec:
    name: str
    program: int  # General MIDI program, 0-based
    channel: int  # MIDI channel, 0-based (drums are 9)
    is_drum: bool = False
    # Whether the model's training data had at most one note at a time on this track
    # (a chorale voice). The runtime then keeps only the likeliest pitch at each step.
    monophonic: bool = False
    # The lowest and highest pitch the decoder lets this track play (None: its GM
    # instrument's range, models/instruments.py).
    pitch_range: tuple[int, int] | None = None
    # The track's mean MIDI velocity in the training data (None: as loud as the melody).
    velocity: int | None = None
    # Decoding thresholds calibrated for this track (None: the model's; see
    # models/thresholds.track_thresholds). A drum kit and a string pad are not equally sure.
    threshold: float | None = None
    onset_threshold: float | None = None
    hold_threshold: float | None = None
    # A bar in which the track's likeliest cell stays under this is a rest for the track
    # (None: no such gate). Calibrated so the track rests as often as in the data.
    rest_threshold: float | None = None

    @functools.cached_property  # asked for per note run while decoding; a spec never changes
    def playable_range(self) -> tuple[int, int]:
        from .instruments import playable_range

        return tuple(self.pitch_range) if self.pitch_range else playable_range(self.program, self.is_drum)


def _track(data: dict) -> TrackSpec:
    if not isinstance(data, dict):
        raise TypeError(f"a track is {data!r}, not an object")
    data = dict(data)
    if data.get("pitch_range") is not None:
        data["pitch_range"] = tuple(data["pitch_range"])
    return TrackSpec(**data)


@dataclass(frozen=True)
class GeneratorSpec:
    name: str
    genre: str
    description: str
    melody: TrackSpec
    tracks: tuple[TrackSpec, ...]
    bars: int
    beats_per_bar: int
    steps_per_beat: int
    lowest_pitch: int
    n_pitches: int
    z_dim: int
    threshold: float = 0.5
    onset_threshold: float = 0.5
    # A polyphonic track's sounding note carries on while its probability stays at or
    # above this (below `threshold`); None = a single threshold (models/thresholds.held_cells).
    hold_threshold: float | None = None
    # The model was trained on pieces transposed to C major / A minor: the runtime moves
    # the melody there first and the accompaniment back after.
    key_normalised: bool = False
    # Lowest and highest melody pitch seen in training (after key normalisation).
    melody_range: tuple[int, int] = (0, 127)
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def steps_per_bar(self) -> int:
        return self.beats_per_bar * self.steps_per_beat

    @property
    def window_steps(self) -> int:
        return self.bars * self.steps_per_bar

    @property
    def window_beats(self) -> int:
        return self.bars * self.beats_per_bar

    @property
    def highest_pitch(self) -> int:
        return self.lowest_pitch + self.n_pitches - 1

    @property
    def n_tracks(self) -> int:
        return len(self.tracks)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "GeneratorSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"model metadata is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise SpecError("model metadata is not a JSON object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise SpecError(
                f"model metadata has schema version {version!r}; this Backline reads "
                f"version {SCHEMA_VERSION} (re-export the model with this version)"
            )
        try:
            data["melody"] = _track(data["melody"])
            data["tracks"] = tuple(_track(t) for t in data["tracks"])
            data["melody_range"] = tuple(data["melody_range"])
            spec = cls(**data)
        except (KeyError, TypeError) as exc:
            raise SpecError(f"model metadata is incomplete ({exc})") from None
        spec.validate()
        return spec

    def validate(self) -> None:
        problems = []
        if not self.tracks:
            problems.append("no accompaniment tracks")
        for value, label in [
            (self.bars, "bars"),
            (self.beats_per_bar, "beats_per_bar"),
            (self.steps_per_beat, "steps_per_beat"),
            (self.n_pitches, "n_pitches"),
            (self.z_dim, "z_dim"),
        ]:
            if not isinstance(value, int) or value <= 0:
                problems.append(f"{label} must be a positive integer, not {value!r}")
        # Type checks first: hand-edited metadata ("36", null) must not raise a TypeError.
        if not isinstance(self.lowest_pitch, int):
            problems.append(f"lowest_pitch must be an integer, not {self.lowest_pitch!r}")
        elif isinstance(self.n_pitches, int) and (
            not 0 <= self.lowest_pitch <= 127 or self.lowest_pitch + self.n_pitches > 128
        ):
            problems.append("pitch range lies outside MIDI 0..127")
        for track in (self.melody, *self.tracks):
            if (
                not isinstance(track.channel, int) or not isinstance(track.program, int)
                or not 0 <= track.channel <= 15 or not 0 <= track.program <= 127
            ):
                problems.append(f"track {track.name!r} has a bad channel or program")
        for value, label in [(self.threshold, "threshold"), (self.onset_threshold, "onset_threshold"),
                             (self.hold_threshold, "hold_threshold")]:
            if value is not None and (not isinstance(value, (int, float)) or not 0 <= value <= 1):
                problems.append(f"{label} must be a number in 0..1, not {value!r}")
        for track in self.tracks:
            for value in (track.threshold, track.onset_threshold, track.hold_threshold, track.rest_threshold):
                if value is not None and (not isinstance(value, (int, float)) or not 0 <= value <= 1):
                    problems.append(f"track {track.name!r} has a threshold {value!r} outside 0..1")
            low_high = track.pitch_range
            if low_high is not None and (len(low_high) != 2 or not all(isinstance(v, int) for v in low_high)
                                         or not 0 <= low_high[0] <= low_high[1] <= 127):
                problems.append(f"track {track.name!r} has a bad pitch_range {low_high!r}")
        if problems:
            raise SpecError("model metadata is invalid: " + "; ".join(problems))
