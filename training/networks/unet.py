"""The generator and the critic.

Generator: DeepComposer's U-Net for Bach. The melody is a one-channel image (time x
pitch); an encoder halves both axes four times, the noise joins at the bottleneck, and a
decoder with skip connections paints the accompaniment at the melody's own resolution.
Why U-Net rather than MuseGAN's hybrid generator: accompanying a given melody is an
image-to-image task, and the skips carry the melody's exact timing and pitch to every
decoder level, so harmony lines up with the melody note by note; MuseGAN's generators
start from noise alone and learn to track a condition only through a side encoder.

Two constant channels join the melody: the pitch height (so convolutions know register:
a bass line is not a transposed alto) and the position within the beat (so onsets fall
on beats). Both come from the grid, so the model needs no extra inputs.

The generator outputs two maps per track: frame probability and onset probability.

Critic: a plain strided CNN over melody + frames + onsets (no batch norm, as WGAN-GP
needs per-sample gradients) ending in one unbounded score.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ARCHITECTURES, NetConfig
from .layers import conv_block, critic_layers, down_path, grid_channels

ARCHITECTURE = ARCHITECTURES["unet"]  # what a checkpoint records


class UNetGenerator(nn.Module):
    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.widths
        self.register_buffer("grid", grid_channels(config), persistent=False)
        self.stem, self.down = down_path(widths)
        bottom_t = config.window_steps >> (config.levels - 1)
        bottom_p = config.n_pitches >> (config.levels - 1)
        self.bottom_shape = (bottom_t, bottom_p)
        self.z_map = nn.Linear(config.z_dim, widths[-1] * bottom_t * bottom_p)
        self.merge = conv_block(widths[-1] * 2, widths[-1], norm=True)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 4, stride=2, padding=1)
            for i in reversed(range(config.levels - 1))
        )
        self.fuse = nn.ModuleList(
            conv_block(widths[i] * 2, widths[i], norm=True)
            for i in reversed(range(config.levels - 1))
        )
        self.head = nn.Conv2d(widths[0], 2 * config.n_tracks, 1)
        # Start from the data's sparsity (about 1 cell in 50 sounds, 1 in 200 starts a note)
        # instead of 0.5 everywhere, which would spend the first epochs unlearning noise.
        with torch.no_grad():
            self.head.bias[: config.n_tracks].fill_(-4.0)
            self.head.bias[config.n_tracks :].fill_(-5.0)

    def logits(self, melody: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """melody [B, T, P] -> (frame logits, onset logits), each [B, K, T, P]."""
        batch = melody.shape[0]
        x = torch.cat([melody[:, None], self.grid.expand(batch, -1, -1, -1)], dim=1)
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        noise = self.z_map(z).view(batch, -1, *self.bottom_shape)
        x = self.merge(torch.cat([skips.pop(), noise], dim=1))
        for up, fuse in zip(self.up, self.fuse):
            x = fuse(torch.cat([up(x), skips.pop()], dim=1))
        out = self.head(x)
        k = self.config.n_tracks
        return out[:, :k], out[:, k:]

    def forward(self, melody: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames, onsets = self.logits(melody, z)
        return torch.sigmoid(frames), torch.sigmoid(onsets)


class Critic(nn.Module):
    """Scores (melody, frames, onsets) windows; higher means more like the real data."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.widths
        self.register_buffer("grid", grid_channels(config), persistent=False)
        c_in = 1 + 2 * config.n_tracks + 2
        layers = critic_layers(c_in, widths)
        width = widths[-1]
        self.features = nn.Sequential(*layers)
        # A bar-level view: the whole time axis at the bottom, so the critic judges
        # harmonic rhythm and voice leading, not just local texture.
        bottom = (config.window_steps >> (config.levels - 1)) * (config.n_pitches >> (config.levels - 1))
        self.score = nn.Sequential(nn.Flatten(), nn.Linear(width * bottom, 1))

    def forward(self, melody: torch.Tensor, frames: torch.Tensor, onsets: torch.Tensor) -> torch.Tensor:
        batch = melody.shape[0]
        x = torch.cat([melody[:, None], frames, onsets, self.grid.expand(batch, -1, -1, -1)], dim=1)
        return self.score(self.features(x)).squeeze(1)
