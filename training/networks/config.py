"""The shape of a network, shared by every architecture (stored in checkpoints)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

# --arch value -> the architecture name a checkpoint records.
ARCHITECTURES = {"unet": "unet-onset-v1", "musegan": "musegan-onset-v1"}


@dataclass(frozen=True)
class NetConfig:
    n_tracks: int = 3
    window_steps: int = 48
    n_pitches: int = 64
    steps_per_beat: int = 4
    z_dim: int = 32
    # Channels at each resolution, full first; each further level halves time and pitch.
    # Full resolution is kept narrow: it is where the compute goes (48 x 64 positions).
    widths: tuple[int, ...] = (8, 16, 32, 64)
    arch: str = "unet"  # a key of ARCHITECTURES
    # The tensor's bar (MuseGAN's bar-level parts work bar by bar).
    steps_per_bar: int = 16
    # Tracks on the GM drum map, and the pitch columns a drum track may play: the
    # generator outputs exactly 0 anywhere else on those tracks.
    drum_tracks: tuple[int, ...] = ()
    drum_columns: tuple[int, ...] = ()

    @property
    def levels(self) -> int:
        return len(self.widths)

    @property
    def bars(self) -> int:
        return self.window_steps // self.steps_per_bar

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NetConfig":
        data = dict(data)
        for key in ("widths", "drum_tracks", "drum_columns"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
