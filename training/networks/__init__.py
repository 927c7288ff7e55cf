"""The generators and critics, one architecture per module.

- `unet`: DeepComposer's U-Net for Bach (image-to-image from the melody's piano roll).
- `musegan`: a MuseGAN-style multi-track generator conditioned on the melody, with a
  bar-level temporal part and shared plus per-track parts (genre models with drums).

Both take the same `NetConfig` and have the same call signature, so the training loop,
export and evaluation do not care which one they hold:

    generator.logits(melody [B, T, P], z [B, z_dim]) -> (frame logits, onset logits) [B, K, T, P]
    generator(melody, z)                             -> (frame probs,  onset probs)  [B, K, T, P]
    critic(melody [B, T, P], frames [B, K, T, P], onsets [B, K, T, P]) -> score [B]
"""

from __future__ import annotations

from torch import nn

from .config import ARCHITECTURES, NetConfig, count_parameters
from .unet import ARCHITECTURE, Critic, UNetGenerator

__all__ = ["ARCHITECTURE", "ARCHITECTURES", "Critic", "NetConfig", "UNetGenerator",
           "build_critic", "build_generator", "count_parameters", "net_config_for"]


def build_generator(config: NetConfig) -> nn.Module:
    if config.arch == "musegan":
        from .musegan import MuseGANGenerator

        return MuseGANGenerator(config)
    return UNetGenerator(config)


def build_critic(config: NetConfig) -> nn.Module:
    if config.arch == "musegan":
        from .musegan import MuseGANCritic

        return MuseGANCritic(config)
    return Critic(config)


def architecture_name(config: NetConfig) -> str:
    """The name a checkpoint records, e.g. 'unet-onset-v1' or 'musegan-onset-v1'."""
    return ARCHITECTURES[config.arch]


# Widths per architecture when --widths is not given: the U-Net's measured best for Bach;
# for MuseGAN, the per-bar trunk at 16-128 channels (1.45 M generator parameters, about
# 2-4 ms per 4-bar window on 2 CPU cores).
DEFAULT_WIDTHS = {"unet": (8, 16, 32, 64), "musegan": (16, 32, 64, 128)}


def net_config_for(genre_name: str, arch: str | None, *, n_pitches: int, lowest_pitch: int,
                   widths: "tuple[int, ...] | list[int] | None" = None) -> NetConfig:
    """The network for a genre: its tracks, window and drum map; `arch` None = the genre's default."""
    if genre_name == "bach":
        arch = arch or "unet"
        return NetConfig(n_pitches=n_pitches, arch=arch, widths=tuple(widths or DEFAULT_WIDTHS[arch]))
    from ..data.genres import DRUM_PITCHES, get_genre
    from ..data.grid import STEPS_PER_BEAT

    genre = get_genre(genre_name)
    arch = arch or genre.default_arch
    drums = tuple(k for k, role in enumerate(genre.roles) if role.track.is_drum)
    return NetConfig(
        n_tracks=len(genre.roles),
        window_steps=genre.window_beats * STEPS_PER_BEAT,
        n_pitches=n_pitches,
        steps_per_beat=STEPS_PER_BEAT,
        arch=arch,
        widths=tuple(widths or DEFAULT_WIDTHS[arch]),
        steps_per_bar=genre.beats_per_bar * STEPS_PER_BEAT,
        drum_tracks=drums,
        drum_columns=tuple(p - lowest_pitch for p in DRUM_PITCHES) if drums else (),
    )
