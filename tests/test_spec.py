"""The generator contract's metadata: a spec survives JSON, and bad metadata is refused
with a SpecError that says what is wrong."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from backline.models.errors import BacklineError
from backline.models.spec import SCHEMA_VERSION, GeneratorSpec, SpecError, TrackSpec

from .fake_models import fixed_spec


def spec_with_everything() -> GeneratorSpec:
    return replace(
        fixed_spec("roundtrip", monophonic=True),
        threshold=0.4,
        onset_threshold=0.6,
        key_normalised=True,
        provenance={"epochs": 3, "learning_rate": 1e-3, "command": "backline train --epochs 3"},
        metrics={"validation": {"QN": 0.9, "EB": 0.01}, "validation_windows": 18},
    )


def spec_dict() -> dict:
    return json.loads(spec_with_everything().to_json())


def test_round_trip_is_equal():
    spec = spec_with_everything()
    again = GeneratorSpec.from_json(spec.to_json())
    assert again == spec
    assert isinstance(again.tracks, tuple) and isinstance(again.melody, TrackSpec)
    assert again.melody_range == (60, 80)
    assert again.tracks[0].monophonic is True
    assert again.steps_per_bar == 16 and again.window_steps == 32
    # And the JSON is stable: the same spec always gives the same text.
    assert again.to_json() == spec.to_json()


def test_spec_error_is_a_backline_error():
    assert issubclass(SpecError, BacklineError)


@pytest.mark.parametrize("text", ["", "{not json", "[1, 2", "\x00\x01"])
def test_bad_json(text):
    with pytest.raises(SpecError, match="not valid JSON"):
        GeneratorSpec.from_json(text)


@pytest.mark.parametrize("text", ["[]", "42", '"spec"', "null"])
def test_json_that_is_not_an_object(text):
    with pytest.raises(SpecError, match="not a JSON object"):
        GeneratorSpec.from_json(text)


@pytest.mark.parametrize("version", [0, 2, 99, "1", None])
def test_wrong_schema_version(version):
    data = spec_dict()
    data["schema_version"] = version
    with pytest.raises(SpecError) as info:
        GeneratorSpec.from_json(json.dumps(data))
    message = str(info.value)
    assert f"schema version {version!r}" in message
    assert f"version {SCHEMA_VERSION}" in message
    assert "re-export" in message


def test_missing_schema_version():
    data = spec_dict()
    del data["schema_version"]
    with pytest.raises(SpecError, match="schema version None"):
        GeneratorSpec.from_json(json.dumps(data))


@pytest.mark.parametrize("field_name", ["melody", "tracks", "melody_range", "bars", "n_pitches", "z_dim", "name"])
def test_missing_field(field_name):
    data = spec_dict()
    del data[field_name]
    with pytest.raises(SpecError, match="incomplete") as info:
        GeneratorSpec.from_json(json.dumps(data))
    assert field_name in str(info.value)


def test_unknown_field():
    data = spec_dict()
    data["colour"] = "blue"
    with pytest.raises(SpecError, match="incomplete.*colour"):
        GeneratorSpec.from_json(json.dumps(data))


def test_track_missing_its_channel():
    data = spec_dict()
    del data["tracks"][1]["channel"]
    with pytest.raises(SpecError, match="incomplete.*channel"):
        GeneratorSpec.from_json(json.dumps(data))


@pytest.mark.parametrize("value", ["Alto", 3, None])
def test_track_that_is_not_an_object(value):
    data = spec_dict()
    data["tracks"] = [value]
    with pytest.raises(SpecError, match="incomplete"):
        GeneratorSpec.from_json(json.dumps(data))


@pytest.mark.parametrize("channel", [16, -1, 99])
def test_invalid_channel(channel):
    data = spec_dict()
    data["tracks"][1]["channel"] = channel
    with pytest.raises(SpecError, match="invalid: track 'Restruck' has a bad channel or program"):
        GeneratorSpec.from_json(json.dumps(data))


def test_invalid_melody_program():
    data = spec_dict()
    data["melody"]["program"] = 128
    with pytest.raises(SpecError, match="track 'Melody' has a bad channel or program"):
        GeneratorSpec.from_json(json.dumps(data))


def test_no_tracks():
    data = spec_dict()
    data["tracks"] = []
    with pytest.raises(SpecError, match="no accompaniment tracks"):
        GeneratorSpec.from_json(json.dumps(data))


@pytest.mark.parametrize("key", ["bars", "beats_per_bar", "steps_per_beat", "n_pitches", "z_dim"])
@pytest.mark.parametrize("value", [0, -3, 2.5])
def test_sizes_must_be_positive_integers(key, value):
    data = spec_dict()
    data[key] = value
    with pytest.raises(SpecError, match=f"{key} must be a positive integer, not {value!r}"):
        GeneratorSpec.from_json(json.dumps(data))


@pytest.mark.parametrize("lowest, n", [(-1, 48), (100, 48), (0, 129)])
def test_pitch_range_outside_midi(lowest, n):
    data = spec_dict()
    data["lowest_pitch"], data["n_pitches"] = lowest, n
    with pytest.raises(SpecError, match="pitch range lies outside MIDI 0..127"):
        GeneratorSpec.from_json(json.dumps(data))


@pytest.mark.parametrize("key, value", [
    ("n_pitches", "48"), ("lowest_pitch", "36"), ("lowest_pitch", None), ("bars", None),
])
def test_wrongly_typed_numbers_are_a_spec_error(key, value):
    """Hand-edited metadata with a number as a string is reported, not a TypeError."""
    data = spec_dict()
    data[key] = value
    with pytest.raises(SpecError, match="invalid"):
        GeneratorSpec.from_json(json.dumps(data))


@pytest.mark.parametrize("key, value", [("channel", "1"), ("program", None)])
def test_wrongly_typed_track_numbers_are_a_spec_error(key, value):
    data = spec_dict()
    data["tracks"][0][key] = value
    with pytest.raises(SpecError, match="track 'Held' has a bad channel or program"):
        GeneratorSpec.from_json(json.dumps(data))


def test_several_problems_are_reported_together():
    data = spec_dict()
    data["bars"] = 0
    data["tracks"][2]["channel"] = 20
    with pytest.raises(SpecError) as info:
        GeneratorSpec.from_json(json.dumps(data))
    message = str(info.value)
    assert "bars must be a positive integer" in message and "'Silent'" in message
    assert "\n" not in message
