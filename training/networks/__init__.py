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
           "build_critic", "build_generator", "count_parameters"]


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
