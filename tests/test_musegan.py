"""The MuseGAN-style generator and critic: the same contract as the U-Net (shapes, sigmoid
outputs, one z), drum tracks silent off the drum map, conditioned on melody and z, no
batch dependence at inference, every per-track branch trains, the critic survives the
gradient penalty's double backward, and the generator exports to ONNX through the
export module's own path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backline.models.spec import GeneratorSpec, TrackSpec
from backline.training.export import ContractWrapper, _to_onnx
from backline.training.networks import NetConfig, build_critic, build_generator, count_parameters
from backline.training.networks.musegan import MuseGANCritic, MuseGANGenerator
from backline.training.train import gradient_penalty

WIDTHS = (4, 8, 16)


def make_config(bars: int = 4, k: int = 5, **overrides) -> NetConfig:
    values = dict(arch="musegan", n_tracks=k, window_steps=16 * bars, steps_per_bar=16, n_pitches=32,
                  z_dim=8, widths=WIDTHS)
    values.update(overrides)
    return NetConfig(**values)


def inputs(config: NetConfig, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    noise = torch.Generator().manual_seed(seed)
    melody = (torch.rand(batch, config.window_steps, config.n_pitches, generator=noise) < 0.05).float()
    return melody, torch.randn(batch, config.z_dim, generator=noise)


def per_track_chunks(module: torch.nn.Module, k: int):
    """(name, [K chunks]) for every parameter of the private part, split by track."""
    for prefix in ("private_in", "private_norm", "film", "private", "head"):
        for name, param in getattr(module, prefix).named_parameters():
            yield f"{prefix}.{name}", param.chunk(k, dim=0)


@pytest.mark.parametrize("bars", [2, 3, 4])
@pytest.mark.parametrize("k", [1, 5])
def test_shapes_and_probabilities(bars, k):
    torch.manual_seed(0)
    config = make_config(bars, k)
    generator, critic = MuseGANGenerator(config), MuseGANCritic(config)
    melody, z = inputs(config, 2)
    expected = (2, k, 16 * bars, config.n_pitches)
    for mode in (True, False):
        generator.train(mode)
        logit_f, logit_o = generator.logits(melody, z)
        assert logit_f.shape == logit_o.shape == expected
        frames, onsets = generator(melody, z)
        assert frames.shape == onsets.shape == expected
        for probs in (frames, onsets):
            assert torch.isfinite(probs).all()
            assert probs.min() >= 0 and probs.max() <= 1
    assert critic(melody, frames, onsets).shape == (2,)


def test_the_heads_start_at_the_data_sparsity():
    generator = MuseGANGenerator(make_config()).eval()
    frames, onsets = generator(*inputs(generator.config, 2))
    assert 0.002 < frames.mean() < 0.1
    assert onsets.mean() < frames.mean()


def test_drum_tracks_play_only_drum_columns():
    torch.manual_seed(0)
    columns = (8, 10, 14)
    config = make_config(k=3, drum_tracks=(0,), drum_columns=columns)
    generator = MuseGANGenerator(config)
    melody, z = inputs(config, 3)
    others = [p for p in range(config.n_pitches) if p not in columns]
    for mode in (True, False):
        generator.train(mode)
        frames, onsets = generator(melody, z)
        logit_f, logit_o = generator.logits(melody, z)
        for probs, logits in ((frames, logit_f), (onsets, logit_o)):
            assert (probs[:, 0][..., others] == 0).all()
            assert (probs[:, 0][..., list(columns)] > 0).all()
            assert (logits[:, 0][..., others] <= -30 + 1e-6).all()
            assert (probs[:, 1:] > 0).all()  # the other tracks are not masked
    # A masked cell costs nothing to a target that never plays it.
    target = torch.zeros_like(logit_f)
    loss = F.binary_cross_entropy_with_logits(logit_f, target, reduction="none")
    assert loss[:, 0][..., others].max() < 1e-12


def test_the_output_depends_on_melody_and_z():
    torch.manual_seed(0)
    config = make_config()
    generator = MuseGANGenerator(config).eval()
    melody, z = inputs(config, 1, seed=1)
    other_melody, other_z = inputs(config, 1, seed=2)
    with torch.no_grad():
        base = generator(melody, z)[0]
        assert (generator(other_melody, z)[0] - base).abs().max() > 1e-4
        assert (generator(melody, other_z)[0] - base).abs().max() > 1e-4
        assert torch.equal(generator(melody, z)[0], base)


def test_no_batch_dependence_at_inference():
    torch.manual_seed(0)
    config = make_config(bars=3)
    generator = MuseGANGenerator(config)
    melody, z = inputs(config, 5)
    generator.train()
    generator.logits(melody, z)  # move the batch-norm statistics off their defaults
    generator.eval()
    with torch.no_grad():
        alone = generator(melody[2:3], z[2:3])
        batched = generator(melody, z)
    for a, b in zip(alone, batched):
        torch.testing.assert_close(a[0], b[2], atol=1e-5, rtol=0)


def test_one_step_trains_every_track_branch():
    torch.manual_seed(0)
    k = 5
    config = make_config(k=k, drum_tracks=(0,), drum_columns=(8, 10, 14))
    generator = MuseGANGenerator(config).train()
    melody, z = inputs(config, 4)
    target_f = (torch.rand(4, k, config.window_steps, config.n_pitches) < 0.05).float()
    target_o = target_f * (torch.rand_like(target_f) < 0.5)
    before = {name: [c.detach().clone() for c in chunks] for name, chunks in per_track_chunks(generator, k)}
    optimiser = torch.optim.Adam(generator.parameters(), lr=1e-3)
    logit_f, logit_o = generator.logits(melody, z)
    loss = F.binary_cross_entropy_with_logits(logit_f, target_f) + \
        F.binary_cross_entropy_with_logits(logit_o, target_o)
    loss.backward()
    for name, param in generator.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    optimiser.step()
    for name, chunks in per_track_chunks(generator, k):
        for track, (old, new) in enumerate(zip(before[name], chunks)):
            assert not torch.equal(old, new), f"{name}: track {track} did not change"


def test_the_critic_survives_the_gradient_penalty():
    torch.manual_seed(0)
    config = make_config(bars=3)
    critic = MuseGANCritic(config)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in critic.modules())
    melody, _ = inputs(config, 3)
    shape = (3, config.n_tracks, config.window_steps, config.n_pitches)
    real_f = (torch.rand(shape) < 0.05).float()
    real_o = real_f * (torch.rand(shape) < 0.5)
    fake_f, fake_o = torch.rand(shape), torch.rand(shape) * 0.1
    score = critic(melody, real_f, real_o)
    assert score.shape == (3,)
    gp = gradient_penalty(critic, melody, real_f, real_o, fake_f, fake_o)
    loss = critic(melody, fake_f, fake_o).mean() - score.mean() + 10 * gp
    loss.backward()
    assert torch.isfinite(gp)
    for name, param in critic.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        # (A bias may get exactly 0 here: with leaky ReLUs it moves real and fake scores
        # alike while their activation patterns agree, and the penalty ignores it.)
        if name.endswith("weight"):
            assert param.grad.abs().sum() > 0, name
    # The penalty alone reaches every weight too (not the final bias: it adds a constant).
    critic.zero_grad(set_to_none=True)
    gradient_penalty(critic, melody, real_f, real_o, fake_f, fake_o).backward()
    for name, param in critic.named_parameters():
        if name != "score.1.bias":
            assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_build_picks_the_architecture_and_rejects_bad_shapes():
    config = make_config()
    assert isinstance(build_generator(config), MuseGANGenerator)
    assert isinstance(build_critic(config), MuseGANCritic)
    assert count_parameters(build_generator(config)) > 0
    with pytest.raises(ValueError, match="bars"):
        MuseGANGenerator(make_config(window_steps=40))
    with pytest.raises(ValueError, match="drum_tracks"):
        MuseGANGenerator(make_config(k=2, drum_tracks=(2,)))
    with pytest.raises(ValueError, match="drum_columns"):
        MuseGANCritic(make_config(drum_tracks=(0,), drum_columns=(40,)))


def _spec(config: NetConfig) -> GeneratorSpec:
    tracks = tuple(
        TrackSpec("Drums", 0, 9, is_drum=True) if i in config.drum_tracks else TrackSpec(f"T{i}", 33, i + 1)
        for i in range(config.n_tracks)
    )
    return GeneratorSpec(
        name="musegan-test", genre="test", description="", melody=TrackSpec("Melody", 0, 0),
        tracks=tracks, bars=config.bars, beats_per_bar=4, steps_per_beat=config.steps_per_beat,
        lowest_pitch=24, n_pitches=config.n_pitches, z_dim=config.z_dim,
    )


@pytest.mark.parametrize("bars,k", [(4, 5), (3, 1)])
def test_onnx_export_matches_pytorch(bars, k, tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    drums = dict(drum_tracks=(0,), drum_columns=(8, 10, 14)) if k > 1 else {}
    config = make_config(bars, k, z_dim=32, widths=(8, 16, 32, 64), **drums)
    generator = MuseGANGenerator(config)
    generator.train()
    generator.logits(*inputs(config, 4))  # non-default batch-norm statistics
    spec = _spec(config)
    wrapper = ContractWrapper(generator.eval(), spec).eval()
    path = tmp_path / "musegan.onnx"
    _to_onnx(wrapper, spec, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        melody, z = inputs(config, batch, seed=batch)
        melody = melody.reshape(batch, bars, 16, config.n_pitches)
        with torch.no_grad():
            expected = [t.numpy() for t in wrapper(melody, z)]
        got = session.run(None, {"melody": melody.numpy(), "z": z.numpy()})
        assert [g.shape for g in got] == [(batch, k, bars, 16, config.n_pitches)] * 2
        for e, g in zip(expected, got):
            np.testing.assert_allclose(g, e, atol=1e-4, rtol=0)
        if drums:
            assert (got[0][:, 0][..., [p for p in range(config.n_pitches) if p not in (8, 10, 14)]] == 0).all()
