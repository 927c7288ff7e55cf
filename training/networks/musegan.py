"""A MuseGAN-style generator and critic for multi-track accompaniment (genre models).

Why this shape. MuseGAN (Dong et al. 2018) writes several tracks at once by splitting
both the noise and the network into a part all tracks share and a part each track owns,
and by writing bar by bar under a temporal part that ties the bars together. Its
track-conditional variant encodes a given track bar by bar and feeds that encoding to
the bar generator; DeepComposer's MuseGAN adds tracks to an input melody this way. We
keep those ideas and add one from the U-Net (`unet.py`): the melody encoder's feature
maps at every resolution are concatenated into the bar generator (skips), so the
accompaniment lines up with the melody note by note instead of tracking it through a
single vector.

The generator, for a window of `bars` bars of `steps_per_bar` steps each:

1. Melody encoder, shared across bars. Each bar of the melody roll ``[steps_per_bar, P]``
   plus two constant grid channels (pitch height in [-1, 1], phase within the beat; the
   same as the U-Net's, so convolutions know register and where beats fall) goes through
   a stem conv and strided convs that halve time and pitch once per level. The maps at
   every level are kept as skips; the bottom map is flattened into a bar embedding.

2. Temporal part, bar to bar. The single contract z ``[B, z_dim]`` is split in two
   slices: a shared slice and a private slice. A small 1-D conv stack runs over the bar
   axis on (melody bar embeddings, a learned bar-position embedding, a projection of z)
   and outputs, per bar, a *time-dependent shared* latent (the chords: what all tracks
   agree on in that bar) and *time-dependent private* latents, one per track. The
   *time-independent* parts come straight from z: the shared slice gives one shared
   vector (the style of the whole window), the private slice is projected into one
   vector per track (each track's own style). Convolutions (not a GRU) over a fixed
   number of bars: nothing depends on the batch size and ONNX export is plain.

3. Bar generator. A SHARED trunk maps the bar's shared latent (time-independent +
   time-dependent) to the bottom resolution, merges it with the melody encoder's bottom
   map and goes back up with transposed convs, concatenating the melody skip at every
   level. PRIVATE per-track branches then paint each track at full resolution: the first
   private conv reads (trunk features, full-resolution melody skip, grid) - one plain
   conv with K x width outputs is exactly K separate convs on the same input - and each
   track's latent (time-independent + time-dependent private) comes in as a per-channel
   scale and shift (FiLM; a broadcast latent concatenated as constant channels would
   act the same way, as a bias, at more cost). The remaining private layers are grouped
   convolutions (groups=K), so track k's weights only ever see track k's features.
   Each track ends in two maps: frame logits and onset logits (as in the U-Net).

4. Drums. For every track in `config.drum_tracks`, only the pitch columns in
   `config.drum_columns` (the drum map's instruments) may sound: a fixed mask sets the
   other columns' logits to -30 in `logits` (binary cross-entropy then reads them as
   "never", and they get no gradient) and multiplies the probabilities by exactly 0 in
   `forward`. Drum notes are short hits: their onset channel carries them, the frame
   channel is at most a step or two long.

Widths (`config.widths`, full resolution first; each further level halves time and
pitch within the bar, e.g. 16 x 64 -> 8 x 32 -> 4 x 16 -> 2 x 8 for (16, 32, 64, 128)):

- ``widths[i]``: channels of the melody encoder and of the shared trunk at level i;
- ``widths[0]``: also the channels of EACH track's private branch (so the private part
  costs K x widths[0] channels at full resolution, where most of the compute goes);
- ``widths[-1]``: also the bar-level width: the bar embedding, the temporal part's
  hidden channels and the shared per-bar latent (half time-independent, half
  time-dependent). Each track's latent is ``widths[0]`` wide (half and half).

Recommended: widths=(16, 32, 64, 128) for genre models (about 1.3 M generator
parameters, a few milliseconds per 4-bar window on a CPU in ONNX Runtime).

The generator uses batch norm (eval mode at inference, so one window's output does not
depend on the others in its batch).

Critic: no batch norm (WGAN-GP needs per-sample gradients), only convolutions, linear
layers and leaky ReLUs, all of which support the gradient penalty's double backward. It
sees the melody, all K frame maps, all K onset maps and the grid channels. A bar-level
view first (a strided conv encoder shared across bars, one feature vector per bar), then
a temporal view (a 1-D conv over the bar axis), then one linear, unbounded score.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ARCHITECTURES, NetConfig
from .layers import conv_block, critic_layers, down_path, grid_channels

ARCHITECTURE = ARCHITECTURES["musegan"]  # what a checkpoint records

# Logit given to cells a drum track may never play: sigmoid(-30) ~ 1e-13.
_NEVER = -30.0


def _check(config: NetConfig) -> None:
    scale = 1 << (config.levels - 1)
    problems = []
    if config.levels < 1 or min(config.widths) < 2:
        problems.append(f"widths {config.widths} must be non-empty and at least 2 each")
    if config.steps_per_bar <= 0 or config.window_steps % config.steps_per_bar:
        problems.append(f"window_steps {config.window_steps} is not a whole number of "
                        f"{config.steps_per_bar}-step bars")
    if config.steps_per_bar % scale or config.n_pitches % scale:
        problems.append(f"steps_per_bar {config.steps_per_bar} and n_pitches {config.n_pitches} "
                        f"must be multiples of {scale} for {config.levels} levels")
    if any(not 0 <= k < config.n_tracks for k in config.drum_tracks):
        problems.append(f"drum_tracks {config.drum_tracks} outside 0..{config.n_tracks - 1}")
    if any(not 0 <= p < config.n_pitches for p in config.drum_columns):
        problems.append(f"drum_columns {config.drum_columns} outside 0..{config.n_pitches - 1}")
    if problems:
        raise ValueError("musegan: " + "; ".join(problems))


def _bar_grid(config: NetConfig) -> torch.Tensor:
    """[bars, 2, steps_per_bar, P]: the window's grid channels cut into bars."""
    grid = grid_channels(config)
    return grid.view(2, config.bars, config.steps_per_bar, config.n_pitches).transpose(0, 1).contiguous()


def _to_bars(x: torch.Tensor, config: NetConfig) -> torch.Tensor:
    """[B, C, bars * S, P] -> [B * bars, C, S, P]."""
    c, s, p = x.shape[1], config.steps_per_bar, config.n_pitches
    return x.reshape(-1, c, config.bars, s, p).transpose(1, 2).reshape(-1, c, s, p)


class MuseGANGenerator(nn.Module):
    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        _check(config)
        self.config = config
        widths = config.widths
        k, levels, bars = config.n_tracks, config.levels, config.bars
        bar_width = widths[-1]
        branch = widths[0]
        self.register_buffer("grid", _bar_grid(config), persistent=False)

        # 1. Melody encoder (shared across bars).
        self.stem, self.down = down_path(widths)
        self.bottom_shape = (config.steps_per_bar >> (levels - 1), config.n_pitches >> (levels - 1))
        bottom = bar_width * self.bottom_shape[0] * self.bottom_shape[1]
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(bottom, bar_width), nn.LeakyReLU(0.2))

        # 2. The noise: a shared slice and a private slice (both all of z when z_dim is 1).
        self.z_shared = max(1, config.z_dim - config.z_dim // 2)
        self.z_private_all = config.z_dim == self.z_shared  # z_dim 1: no private slice
        z_private = config.z_dim if self.z_private_all else config.z_dim - self.z_shared
        self.shared_ti = nn.Linear(self.z_shared, bar_width // 2)
        self.private_ti = nn.Linear(z_private, k * (branch // 2))
        # Temporal part over the bar axis: time-dependent shared and private latents.
        half = bar_width // 2
        self.position = nn.Parameter(0.1 * torch.randn(1, half, bars))
        self.z_time = nn.Linear(config.z_dim, half)
        self.temporal = nn.Sequential(
            nn.Conv1d(bar_width + 2 * half, bar_width, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv1d(bar_width, bar_width, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv1d(bar_width, bar_width - bar_width // 2 + k * (branch - branch // 2), 1),
        )
        self.shared_td = bar_width - bar_width // 2

        # 3. Shared trunk: bar latent -> bottom map, merged with the melody, then up.
        self.latent_map = nn.Linear(bar_width, bottom // bar_width * half)
        self.merge = conv_block(bar_width + half, bar_width, norm=True)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 4, stride=2, padding=1)
            for i in reversed(range(levels - 1))
        )
        # Fuse with the skip at every level but the full one (the private branches do that).
        self.fuse = nn.ModuleList(
            conv_block(widths[i] * 2, widths[i], norm=True) for i in reversed(range(1, levels - 1))
        )

        # Private per-track branches at full resolution.
        self.private_in = nn.Conv2d(2 * widths[0] + 2, k * branch, 3, padding=1)
        self.private_norm = nn.BatchNorm2d(k * branch)
        # Each track's latent -> a scale and a shift for each of its branch's channels.
        self.film = nn.Conv1d(k * branch, k * 2 * branch, 1, groups=k)
        self.private = nn.Sequential(
            nn.LeakyReLU(0.2),
            nn.Conv2d(k * branch, k * branch, 3, padding=1, groups=k),
            nn.BatchNorm2d(k * branch),
            nn.LeakyReLU(0.2),
        )
        # Output channels 2k and 2k + 1: track k's frame and onset logits.
        self.head = nn.Conv2d(k * branch, 2 * k, 1, groups=k)
        # Start from the data's sparsity (about 1 cell in 50 sounds, 1 in 200 starts a
        # note) instead of 0.5 everywhere, which would spend the first epochs unlearning noise.
        with torch.no_grad():
            self.head.bias[0::2].fill_(-4.0)
            self.head.bias[1::2].fill_(-5.0)

        # 4. Drums: 1 where a track may play, 0 on a drum track's non-drum columns.
        self.masked = bool(config.drum_tracks)
        keep = torch.ones(k, 1, config.n_pitches)
        for track in config.drum_tracks:
            keep[track] = 0.0
            keep[track, 0, list(config.drum_columns)] = 1.0
        self.register_buffer("keep", keep, persistent=False)
        self.register_buffer("never", (1.0 - keep) * _NEVER, persistent=False)

    def logits(self, melody: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """melody [B, T, P], z [B, z_dim] -> (frame logits, onset logits), each [B, K, T, P]."""
        c = self.config
        k, bars, s, p = c.n_tracks, c.bars, c.steps_per_bar, c.n_pitches
        branch = c.widths[0]
        # Bars become batch entries: [B * bars, 1 + 2, S, P].
        x = melody.reshape(-1, bars, 1, s, p)
        grid = self.grid.expand(x.shape[0], -1, -1, -1, -1)
        x = torch.cat([x, grid], dim=2).reshape(-1, 3, s, p)
        grid = grid.reshape(-1, 2, s, p)

        # 1. Melody encoder.
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        embedding = self.embed(skips[-1])  # [B * bars, W]

        # 2. Latents: time-independent from z, time-dependent from the temporal part.
        sequence = embedding.reshape(-1, bars, embedding.shape[1]).transpose(1, 2)  # [B, W, bars]
        batch = sequence.shape[0]
        z_time = self.z_time(z)[:, :, None].expand(-1, -1, bars)
        position = self.position.expand(batch, -1, -1)
        timed = self.temporal(torch.cat([sequence, position, z_time], dim=1))
        timed = timed.transpose(1, 2).reshape(batch * bars, -1)  # [B * bars, W_td + K * b_td]
        shared_td, private_td = timed[:, : self.shared_td], timed[:, self.shared_td :]
        z_shared = z[:, : self.z_shared]
        z_private = z if self.z_private_all else z[:, self.z_shared :]
        shared_ti = self.shared_ti(z_shared)[:, None].expand(-1, bars, -1).reshape(batch * bars, -1)
        private_ti = self.private_ti(z_private)[:, None].expand(-1, bars, -1).reshape(batch * bars, -1)
        shared = torch.cat([shared_ti, shared_td], dim=1)  # [B * bars, W]
        private = torch.cat(  # [B * bars, K * branch], track-major
            [private_ti.reshape(-1, k, branch // 2), private_td.reshape(-1, k, branch - branch // 2)], dim=2
        ).reshape(-1, k * branch, 1)

        # 3. Shared trunk.
        h = self.latent_map(shared).reshape(-1, c.widths[-1] // 2, *self.bottom_shape)
        h = self.merge(torch.cat([skips[-1], h], dim=1))
        for i, up in enumerate(self.up):
            h = up(h)
            level = c.levels - 2 - i
            if level > 0:
                h = self.fuse[i](torch.cat([h, skips[level]], dim=1))
        # Private branches: (trunk, full-resolution melody skip, grid) -> K tracks.
        h = self.private_norm(self.private_in(torch.cat([h, skips[0], grid], dim=1)))
        film = self.film(private).reshape(-1, k, 2, branch)
        scale = 1.0 + film[:, :, 0].reshape(-1, k * branch, 1, 1)
        shift = film[:, :, 1].reshape(-1, k * branch, 1, 1)
        out = self.head(self.private(h * scale + shift))  # [B * bars, 2K, S, P]

        # [B * bars, K, 2, S, P] -> 2 x [B, K, bars * S, P]
        out = out.reshape(-1, bars, k, 2, s, p).permute(3, 0, 2, 1, 4, 5).reshape(2, -1, k, bars * s, p)
        frames, onsets = out[0], out[1]
        if self.masked:
            frames = frames * self.keep + self.never
            onsets = onsets * self.keep + self.never
        return frames, onsets

    def forward(self, melody: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames, onsets = self.logits(melody, z)
        frames, onsets = torch.sigmoid(frames), torch.sigmoid(onsets)
        if self.masked:
            frames, onsets = frames * self.keep, onsets * self.keep
        return frames, onsets


class MuseGANCritic(nn.Module):
    """Scores (melody, frames, onsets) windows; higher means more like the real data."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        _check(config)
        self.config = config
        widths = config.widths
        self.register_buffer("grid", grid_channels(config), persistent=False)
        c_in = 1 + 2 * config.n_tracks + 2
        # Bar-level view, shared across bars.
        layers = critic_layers(c_in, widths)
        width = widths[-1]
        bottom = (config.steps_per_bar >> (config.levels - 1)) * (config.n_pitches >> (config.levels - 1))
        layers += [nn.Flatten(), nn.Linear(width * bottom, width), nn.LeakyReLU(0.2)]
        self.bar = nn.Sequential(*layers)
        # Temporal view: bar to bar (harmonic rhythm, repetition, voice leading across bars).
        self.temporal = nn.Sequential(nn.Conv1d(width, width, 3, padding=1), nn.LeakyReLU(0.2))
        self.score = nn.Sequential(nn.Flatten(), nn.Linear(width * config.bars, 1))

    def forward(self, melody: torch.Tensor, frames: torch.Tensor, onsets: torch.Tensor) -> torch.Tensor:
        batch, bars = melody.shape[0], self.config.bars
        x = torch.cat([melody[:, None], frames, onsets, self.grid.expand(batch, -1, -1, -1)], dim=1)
        features = self.bar(_to_bars(x, self.config))  # [B * bars, W]
        features = features.reshape(batch, bars, -1).transpose(1, 2)  # [B, W, bars]
        return self.score(self.temporal(features)).squeeze(1)
