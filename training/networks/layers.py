"""Building blocks both architectures use."""

from __future__ import annotations

import torch
from torch import nn

from .config import NetConfig


def grid_channels(config: NetConfig) -> torch.Tensor:
    """[2, time, pitch]: pitch height in [-1, 1] and phase within the beat in [-1, 1]."""
    pitch = torch.linspace(-1.0, 1.0, config.n_pitches).expand(config.window_steps, -1)
    phase = (torch.arange(config.window_steps) % config.steps_per_beat).float()
    phase = (phase / max(config.steps_per_beat - 1, 1)) * 2.0 - 1.0
    phase = phase[:, None].expand(-1, config.n_pitches)
    return torch.stack([pitch, phase])


def conv_block(c_in: int, c_out: int, norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1)]
    if norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


def down_path(widths: tuple[int, ...]) -> tuple[nn.Sequential, nn.ModuleList]:
    """(stem, down): the melody encoder. The stem reads the melody and the two grid
    channels at full resolution; each `down` level halves time and pitch. Their outputs are
    the skips the decoder (U-Net) or the bar generator (MuseGAN) concatenates back in."""
    stem = conv_block(3, widths[0], norm=True)
    down = nn.ModuleList(
        nn.Sequential(
            nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1),
            nn.BatchNorm2d(widths[i + 1]),
            nn.LeakyReLU(0.2),
            conv_block(widths[i + 1], widths[i + 1], norm=True),
        )
        for i in range(len(widths) - 1)
    )
    return stem, down


def critic_layers(c_in: int, widths: tuple[int, ...]) -> list[nn.Module]:
    """The critic's strided convolutions, no normalisation (WGAN-GP needs per-sample
    gradients): full resolution, then each level halving time and pitch."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, widths[0], 3, padding=1), nn.LeakyReLU(0.2)]
    for i in range(len(widths) - 1):
        layers += [nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
    return layers
