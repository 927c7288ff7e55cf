"""`backline train`, `backline export` and `backline evaluate`."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

import numpy as np

from backline.models.errors import BacklineError

from . import distributed
from .batches import check_split
from .card import write_card
from .checkpoint import load_checkpoint
from .data.build import default_genre, load_data, summary
from .data.windows import WindowDataset
from .evaluation import accompany_and_score, calibrate_decoding, format_table, format_track_table, headline, score_windows
from .networks import net_config_for
from .train import TrainConfig, fixed_subset, train, window_modes

log = logging.getLogger("backline.training")


def limit_pieces(data: WindowDataset, max_pieces: int | None) -> WindowDataset:
    if max_pieces is None:
        return data
    return data.subset(data.piece_index < max_pieces)


def cmd_train(args: argparse.Namespace) -> int:
    # Under torchrun this joins the process group: one process per GPU (or CPU share).
    placement = distributed.start(args.device, args.amp, args.compile)
    try:
        return train_command(args, placement)
    finally:
        distributed.stop(placement)


def train_command(args: argparse.Namespace, placement: distributed.Placement) -> int:
    check_split(args.batch_size, placement.world)
    if args.resume is not None:
        load_checkpoint(args.resume)  # a wrong path or file is told now, not after the data is built
    main = placement.is_main
    show_progress = main and not args.no_progress
    data = tuple(args.data)
    genre = args.genre or default_genre(data)
    with distributed.main_first(placement):  # rank 0 builds the data cache if need be
        train_set, val_set = load_data(data, genre, melody_track=args.melody_track, licence=args.data_licence,
                                       rebuild=args.rebuild_data and main, progress=show_progress)
    train_set = limit_pieces(train_set, args.max_pieces)
    if main:
        print(summary(train_set, val_set, genre))
    if len(train_set) < args.batch_size:
        raise BacklineError(f"only {len(train_set)} training windows for a batch of {args.batch_size}; lower --batch-size")
    config = TrainConfig(
        out_dir=str(args.out), epochs=args.epochs, warmup_epochs=args.warmup_epochs, lr=args.lr, update_ratio=args.update_ratio,
        batch_size=args.batch_size, seed=args.seed,
        time_budget_s=args.time_budget,  # seconds (bridge/cli_types.duration)
        recon_weight=args.recon_weight, checkpoint_every=args.checkpoint_every,
        net=net_config_for(genre, args.arch, n_pitches=train_set.n_pitches, lowest_pitch=train_set.lowest_pitch,
                           widths=args.widths),
        command=command_line(placement), device=args.device, amp=args.amp, compile=args.compile,
        data=data, genre=genre, melody_track=args.melody_track, data_licence=args.data_licence,
    )
    path = train(config, train_set, val_set, resume=args.resume, progress=show_progress, placement=placement)
    if main:
        from backline.models.registry import search_dirs

        user_dir = search_dirs()[0]  # $BACKLINE_MODELS if set, else ~/.local/share/backline/models
        hint = shlex.join(["backline", "export", str(path), "-o", str(user_dir / "NAME.onnx")])
        print(f"checkpoint: {path}\nexport it with: {hint} "
              f"(a model there is found by 'backline models' and --model NAME)")
    return 0


def command_line(placement: distributed.Placement) -> str:
    """The command that started the run, for the model card."""
    if not placement.distributed:
        return shlex.join(["backline", *sys.argv[1:]])
    per_node = os.environ.get("LOCAL_WORLD_SIZE", str(placement.world))
    return shlex.join(["torchrun", f"--nproc_per_node={per_node}", "-m", "backline.bridge.cli", *sys.argv[1:]])


def validation_metrics(generate, spec, val_set: WindowDataset, seed: int = 0) -> dict[str, float]:
    modes = window_modes(val_set)
    return accompany_and_score(generate, spec, val_set.frames, val_set.onsets,
                               val_set.steps_per_bar, modes, seed=seed)


def onnx_generate_fn(runtime):
    def generate(melody: np.ndarray, z: np.ndarray):
        probs = runtime.run(melody, z)
        return probs.frames, probs.onsets

    return generate


def data_of(provenance: dict) -> tuple[WindowDataset, WindowDataset]:
    """The (train, validation) sets a model or checkpoint was trained on (bach's first
    models predate the record: chorales)."""
    data = tuple(provenance.get("data") or ("chorales",))
    return load_data(data, provenance.get("genre") or default_genre(data),
                     melody_track=provenance.get("melody_track"), licence=provenance.get("data_licence"))


def finite(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics that have a value (JSON has no NaN; a track silent in every window has none)."""
    return {k: v for k, v in metrics.items() if np.isfinite(v)}


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export

    evaluate = None
    train_set, val_set = data_of(load_checkpoint(args.checkpoint)["train_config"])
    calibration = train_set.subset(fixed_subset(len(train_set), 512))

    def calibrate(runtime):
        from dataclasses import replace

        from .train import monophonic_tracks

        # Which tracks read one note at a time, by this version's rule, on the training data.
        spec = runtime.spec
        mono = monophonic_tracks(train_set.frames, [t.is_drum for t in spec.tracks])
        spec = replace(spec, tracks=tuple(replace(t, monophonic=m) for t, m in zip(spec.tracks, mono)))
        chosen = calibrate_decoding(onnx_generate_fn(runtime), spec, calibration.frames, calibration.onsets)
        tracks = chosen["tracks"]
        if args.threshold is not None or args.onset_threshold is not None:  # the user's choice, for every track
            tracks = tuple(replace(t, threshold=None, onset_threshold=None, hold_threshold=None) for t in tracks)
            chosen["threshold"] = args.threshold if args.threshold is not None else chosen["threshold"]
            if args.onset_threshold is not None:
                chosen["onset_threshold"] = args.onset_threshold
        chosen["tracks"] = tracks
        print(f"decoding calibrated on {len(calibration)} training windows (note / rest / hold / onset "
              "threshold: how much, in how many bars, how long and how often each track plays in the data):")
        for t in tracks:
            print(f"  {t.name:12s} {'one note at a time' if t.monophonic else 'chords':18s} "
                  f"{t.threshold} / {t.rest_threshold} / {t.hold_threshold} / {t.onset_threshold}")
        return chosen

    if not args.no_evaluate:
        def evaluate(runtime):
            real = score_windows(val_set.frames, val_set.onsets, val_set.steps_per_bar,
                                 window_modes(val_set), runtime.spec)
            model = validation_metrics(onnx_generate_fn(runtime), runtime.spec, val_set)
            return {"validation": finite(model), "validation_real": finite(real), "validation_windows": len(val_set),
                    "validation_pieces": len(np.unique(val_set.piece_index))}
    spec, report = export(args.checkpoint, args.output, name=args.name,
                          melodies=val_set.frames[:64, 0], calibrate=calibrate, evaluate=evaluate)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.1f} MB)\n{report}")
    card = args.output.with_suffix(".md")
    write_card(spec, card, str(report))
    print(f"wrote the model card {card}")
    if spec.metrics:
        print(format_table(spec.metrics["validation"], spec.metrics["validation_real"], headline(spec)))
        print(format_track_table(spec.metrics["validation"], spec.metrics["validation_real"], spec))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from backline.models import registry

    runtime = registry.load(args.model)
    spec = runtime.spec
    _, val_set = data_of(spec.provenance)
    real = score_windows(val_set.frames, val_set.onsets, val_set.steps_per_bar, window_modes(val_set), spec)
    model = validation_metrics(onnx_generate_fn(runtime), spec, val_set, seed=args.seed)
    pieces = len(np.unique(val_set.piece_index))
    tracks = ", ".join(t.name for t in spec.tracks)
    print(f"model {spec.name} on {len(val_set)} validation windows from {pieces} held-out pieces "
          f"(seed {args.seed}); 'real' is those pieces' own {tracks}\n")
    print(format_table(model, real, headline(spec)))
    print("\nper track (model / real):")
    print(format_track_table(model, real, spec))
    return 0
