"""Hand-made ONNX generators whose output is known exactly, for testing the runtime's
windowing, stitching and decoding through the real ONNX Runtime path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from backline.models.spec import GeneratorSpec, TrackSpec
from backline.training.export import _to_onnx


def fixed_spec(name: str = "fixed", monophonic: bool = False) -> GeneratorSpec:
    return GeneratorSpec(
        name=name, genre="test", description="fixed pattern",
        melody=TrackSpec("Melody", 0, 0),
        tracks=(TrackSpec("Held", 32, 1, monophonic=monophonic),
                TrackSpec("Restruck", 48, 2, monophonic=monophonic),
                TrackSpec("Silent", 0, 3)),
        bars=2, beats_per_bar=4, steps_per_beat=4, lowest_pitch=36, n_pitches=48, z_dim=4,
        key_normalised=False, melody_range=(60, 80),
    )


class FixedPattern(nn.Module):
    """Ignores its inputs; every window is the same. Track 0 holds pitch 48 throughout,
    with an onset probability of 0.3 (under the threshold) at each window start, so the
    windows must join into one note. Track 1 holds pitch 55 with a confident onset at each
    window start, so a new note starts exactly at each join. Track 2 is silent."""

    def __init__(self, spec: GeneratorSpec) -> None:
        super().__init__()
        shape = (spec.n_tracks, spec.bars, spec.steps_per_bar, spec.n_pitches)
        frames = np.zeros(shape, dtype=np.float32)
        onsets = np.zeros(shape, dtype=np.float32)
        frames[0, :, :, 48 - spec.lowest_pitch] = 0.9
        onsets[0, 0, 0, 48 - spec.lowest_pitch] = 0.3
        frames[1, :, :, 55 - spec.lowest_pitch] = 0.9
        onsets[1, 0, 0, 55 - spec.lowest_pitch] = 0.9
        self.register_buffer("frames", torch.from_numpy(frames))
        self.register_buffer("onsets", torch.from_numpy(onsets))

    def forward(self, melody: torch.Tensor, z: torch.Tensor):
        # Tie the output's batch size to the input's (and use z so it stays an input).
        ones = torch.ones_like(melody[:, :1, :1, :1]).unsqueeze(1) + 0.0 * z[:, :1, None, None, None]
        return self.frames * ones, self.onsets * ones


def write_fixed_model(path: Path, monophonic: bool = False) -> GeneratorSpec:
    spec = fixed_spec(path.stem, monophonic)
    _to_onnx(FixedPattern(spec).eval(), spec, path)
    return spec
