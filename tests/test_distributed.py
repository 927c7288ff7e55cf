"""Training in several processes: real `torchrun` launches of `backline train` (two CPU
processes on gloo) on a data cache of six real chorales, checked against a single-process
run of the same settings; and how an epoch's batches are shared between ranks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from backline.models.errors import BacklineError
from backline.training.batches import epoch_batches
from backline.training.checkpoint import load_checkpoint
from backline.training.distributed import DIGEST_DIR_ENV, resolve_device, resolve_switch, weights_digest
from backline.training.networks import Critic, NetConfig, UNetGenerator

from .conftest import SMALL_TRAIN, SMALL_VAL, _convert, run_backline

WORLD = 2
SETTINGS = ("--warmup-epochs", "1", "--batch-size", "16", "--update-ratio", "2",
            "--widths", "4", "4", "8", "8", "--seed", "3", "--no-progress")


def torchrun(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 ...` (standalone: a free local port)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={WORLD}", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env},
                          cwd=cwd, timeout=300)


def train_ddp(out: Path, cache: Path, digests: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {"BACKLINE_CACHE": str(cache), DIGEST_DIR_ENV: str(digests), "OMP_NUM_THREADS": "1"}
    return torchrun("-m", "backline.bridge.cli", "train", "--out", out, *SETTINGS, *extra, env=env, cwd=out.parent)


def rank_digests(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("rank-*.json"))]


def checkpoint_digests(path: Path) -> dict[str, str]:
    state = load_checkpoint(path)
    net = NetConfig.from_dict(state["net_config"])
    generator, critic = UNetGenerator(net), Critic(net)
    generator.load_state_dict(state["generator"])
    critic.load_state_dict(state["critic"])
    return {"generator": weights_digest(generator), "critic": weights_digest(critic)}


def epoch_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("epoch ")]


@pytest.fixture(scope="module")
def chorale_cache(tmp_path_factory) -> Path:
    """A BACKLINE_CACHE folder whose chorale cache holds six real chorales (four train, two validation)."""
    from backline.training.data.build import chorale_cache_name
    from backline.training.data.cache import save_pieces

    folder = tmp_path_factory.mktemp("cache")
    save_pieces(folder / chorale_cache_name(), _convert(SMALL_TRAIN + SMALL_VAL))
    return folder


@pytest.fixture(scope="module")
def single_run(chorale_cache, tmp_path_factory):
    """One process, 1 warm-up + 2 adversarial epochs: the reference for the same settings."""
    out = tmp_path_factory.mktemp("single") / "run"
    digests = out.parent / "digests"
    result = run_backline("train", "--out", out, *SETTINGS, "--epochs", "2",
                          env={"BACKLINE_CACHE": str(chorale_cache), DIGEST_DIR_ENV: str(digests)})
    return out, digests, result


@pytest.fixture(scope="module")
def ddp_runs(chorale_cache, tmp_path_factory):
    """Two processes: 1 warm-up + 1 adversarial epoch, then resumed for one more."""
    root = tmp_path_factory.mktemp("ddp")
    out = root / "run"
    first = train_ddp(out, chorale_cache, root / "digests-first", "--epochs", "1")
    first_state = load_checkpoint(out / "checkpoint.pt") if first.returncode == 0 else None
    resumed = train_ddp(out, chorale_cache, root / "digests-resumed", "--epochs", "2",
                        "--resume", out / "checkpoint.pt")
    return root, first, first_state, resumed


def test_two_processes_train_and_resume(ddp_runs):
    _, first, _, resumed = ddp_runs
    assert first.returncode == 0, first.stderr[-3000:]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "2 processes" in first.stderr


def test_only_rank_0_writes(ddp_runs):
    root, first, _, resumed = ddp_runs
    out = root / "run"
    assert sorted(p.name for p in out.glob("*.pt")) == ["checkpoint.pt"]
    assert [p for p in out.rglob("*") if p.name.endswith(".tmp")] == []
    # One record per epoch in the log and one epoch line on stdout: not one per rank.
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [line.split()[1] for line in epoch_lines(first.stdout)] == ["1", "2"]
    assert [line.split()[1] for line in epoch_lines(resumed.stdout)] == ["3"]
    assert first.stdout.count("checkpoint: ") == 1
    assert len(list((out / "tensorboard").glob("events.out.tfevents*"))) == 2  # one per launch
    assert sorted(p.name for p in (out / "samples").glob("*.mid")) == [f"epoch-00{i}.mid" for i in (1, 2, 3)]


def test_epochs_and_steps_match_a_single_process_run(ddp_runs, single_run):
    root, _, first_state, _ = ddp_runs
    out, _, result = single_run
    assert result.returncode == 0, result.stderr[-3000:]
    single = load_checkpoint(out / "checkpoint.pt")
    resumed = load_checkpoint(root / "run" / "checkpoint.pt")
    assert single["data"]["train_windows"] == resumed["data"]["train_windows"]
    # The same number of critic steps after each epoch: an epoch is one pass over the data
    # and --batch-size the batch of both processes together.
    assert first_state["epoch"] == 2 and first_state["step"] == single["history"][1]["step"]
    assert resumed["epoch"] == single["epoch"] == 3
    assert resumed["step"] == single["step"]
    assert [r["step"] for r in resumed["history"]] == [r["step"] for r in single["history"]]
    batches = single["data"]["train_windows"] // 16
    assert single["step"] == 2 * batches  # one critic step per batch, adversarial epochs only


def test_both_ranks_end_with_the_saved_weights(ddp_runs):
    root, _, first_state, _ = ddp_runs
    for stage, checkpoint in (("first", None), ("resumed", root / "run" / "checkpoint.pt")):
        records = rank_digests(root / f"digests-{stage}")
        assert [r["rank"] for r in records] == [0, 1] and {r["world"] for r in records} == {WORLD}
        assert records[0]["generator"] == records[1]["generator"], stage
        assert records[0]["critic"] == records[1]["critic"], stage
        if checkpoint is not None:
            saved = checkpoint_digests(checkpoint)
            assert saved == {"generator": records[0]["generator"], "critic": records[0]["critic"]}
    # The resumed run trained on: its weights are not the first run's.
    assert rank_digests(root / "digests-first")[0]["generator"] != rank_digests(root / "digests-resumed")[0]["generator"]


def test_a_single_process_run_is_unaffected(single_run):
    out, digests, result = single_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processes" not in result.stderr  # no process group: one process trains alone
    assert [line.split()[1] for line in epoch_lines(result.stdout)] == ["1", "2", "3"]
    records = rank_digests(digests)
    assert [(r["rank"], r["world"]) for r in records] == [(0, 1)]
    assert checkpoint_digests(out / "checkpoint.pt") == {k: records[0][k] for k in ("generator", "critic")}
    config = load_checkpoint(out / "checkpoint.pt")["train_config"]
    assert (config["device"], config["amp"], config["compile"]) == ("auto", "auto", "auto")


def test_a_batch_that_does_not_split_is_refused_in_one_line(chorale_cache, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    result = train_ddp(out, chorale_cache, tmp_path / "digests", "--epochs", "1", "--batch-size", "15")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("backline: error:")]
    assert errors and all("does not split evenly over 2 processes" in line for line in errors)
    # (torchrun itself reports the failed workers with a traceback of its own)
    assert not re.search(r'File ".*(bridge|training)/', result.stderr), result.stderr[-3000:]
    assert not (out / "checkpoint.pt").exists()


# --------------------------------------------------------------------------- the gradients


GRADIENT_CHECK = textwrap.dedent('''
    """Under DDP, one critic step's gradients (real, fake and gradient-penalty terms, the
    penalty's double backward included) equal one process's gradients on the whole batch."""
    import sys
    import torch
    import torch.distributed as dist
    from backline.training.networks import Critic, NetConfig
    from backline.training.distributed import start, wrap, stop
    from backline.training.train import gradient_penalty

    placement = start("cpu", "off", "off")
    torch.manual_seed(0)
    critic = Critic(NetConfig(widths=(4, 4, 8, 8), z_dim=8))
    alone = Critic(critic.config)
    alone.load_state_dict(critic.state_dict())
    g = torch.Generator().manual_seed(5)
    batch = 8
    melody = torch.rand(batch, 48, 64, generator=g)
    real_f, real_o, fake_f, fake_o = (torch.rand(batch, 3, 48, 64, generator=g) for _ in range(4))

    def loss(model, part, noise_seed):
        noise = torch.Generator().manual_seed(noise_seed)
        d_real = model(melody[part], real_f[part], real_o[part]).mean()
        d_fake = model(melody[part], fake_f[part], fake_o[part]).mean()
        gp = gradient_penalty(model, melody[part], real_f[part], real_o[part], fake_f[part], fake_o[part], noise)
        return d_fake - d_real + 10 * gp

    share = batch // placement.world
    # Each half of the batch draws its penalty interpolation from its own seed, the same
    # on the rank that holds it and in the single process.
    shared = wrap(critic, placement)  # (kept referenced: DDP averages only while it lives)
    loss(shared, slice(placement.rank * share, (placement.rank + 1) * share), placement.rank).backward()
    halves = [loss(alone, slice(r * share, (r + 1) * share), r) for r in range(placement.world)]
    (sum(halves) / placement.world).backward()
    worst = max((p.grad - q.grad).abs().max().item() for p, q in zip(critic.parameters(), alone.parameters()))
    scale = max(q.grad.abs().max().item() for q in alone.parameters())
    # A file per rank, not stdout: two processes sharing one pipe can garble each other's lines.
    with open(f"rank-{placement.rank}.txt", "w") as report:
        report.write(f"largest gradient difference {worst:.3g} of {scale:.3g}\\n")
    stop(placement)
    sys.exit(0 if worst <= 1e-5 * max(scale, 1.0) else 1)
''')


def test_critic_gradients_under_ddp_equal_the_full_batch_gradients(tmp_path):
    script = tmp_path / "gradient_check.py"
    script.write_text(GRADIENT_CHECK)
    result = torchrun(script, env={"OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    reports = sorted(tmp_path.glob("rank-*.txt"))
    assert [p.name for p in reports] == [f"rank-{r}.txt" for r in range(WORLD)]
    assert all(p.read_text().startswith("largest gradient difference") for p in reports)


# --------------------------------------------------------------------------- sharing the batches


def test_the_ranks_shares_make_up_the_single_process_batches():
    n, batch = 101, 16
    alone = epoch_batches(np.random.default_rng(7), n, batch)
    shares = [epoch_batches(np.random.default_rng(7), n, batch, rank=r, world=WORLD) for r in range(WORLD)]
    assert alone.shape == (n // batch, batch)
    assert all(s.shape == (n // batch, batch // WORLD) for s in shares)
    assert torch.equal(torch.cat(shares, dim=1), alone)  # step by step, the same windows
    assert len(set(alone.flatten().tolist())) == alone.numel()  # no window twice in an epoch


def test_an_epoch_order_follows_the_random_stream():
    rng = np.random.default_rng(7)
    first, second = epoch_batches(rng, 64, 16), epoch_batches(rng, 64, 16)
    assert not torch.equal(first, second)
    assert sorted(first.flatten().tolist()) == sorted(second.flatten().tolist()) == list(range(64))


@pytest.mark.parametrize("batch, world, n", [(15, 2, 100), (16, 2, 10)])
def test_batches_that_cannot_be_cut_are_refused(batch, world, n):
    with pytest.raises(BacklineError) as info:
        epoch_batches(np.random.default_rng(0), n, batch, world=world)
    assert "--batch-size" in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- device, amp, compile


def test_auto_turns_amp_and_compile_on_for_cuda_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_switch("auto", cpu, "--amp") is False
    assert resolve_switch("auto", cuda, "--amp") is True
    assert resolve_switch("on", cpu, "--compile") is True
    assert resolve_switch("off", cuda, "--compile") is False
    with pytest.raises(BacklineError, match="--amp 'fast' is not one of auto, on, off"):
        resolve_switch("fast", cpu, "--amp")


def test_device_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(BacklineError, match="sees no CUDA GPU; use --device cpu") as info:
            resolve_device("cuda")
        assert "\n" not in str(info.value)
