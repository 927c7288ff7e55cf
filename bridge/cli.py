"""The `backline` command line.

Commands that need PyTorch (train, export, evaluate) import the training package only
when run, so `accompany` and `models` work on an install without the `train` extra.
Every expected failure prints one line, `backline: error: ...`, and exits non-zero.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Sequence

from backline.models.errors import BacklineError
from backline.models.registry import DEFAULT_MODEL

from backline.bridge import cli_types
from .daw.ableton import add_ableton_parser
from .daw.ardour import add_ardour_parser
from .daw.lines import add_send_notes_parser
from backline.bridge.serving.engine import DEFAULT_BATCH_WINDOW_MS, DEFAULT_MAX_BATCH
from backline.bridge.osc import protocol
from backline.bridge.osc.pacing import DEFAULT_RATE

log = logging.getLogger("backline")


def version() -> str:
    try:
        return metadata.version("backline")
    except metadata.PackageNotFoundError:
        return "unknown"


def cmd_accompany(args: argparse.Namespace) -> int:
    from backline.models import registry
    from backline.models.accompaniment import accompany
    from backline.models.meter import Meter
    from backline.models.midi import pick_melody_track, read_midi, write_midi
    from backline.models.spec import TrackSpec

    if args.png:
        require_matplotlib("--png")  # before anything is written
    score = read_midi(args.melody)
    melody = pick_melody_track(score, args.track)
    meter = args.meter or Meter(*score.time_signature)
    generator = registry.load(args.model, device=args.device)
    result = accompany(generator, melody.notes, seed=args.seed, threshold=args.threshold, sample=args.sample,
                       meter=meter)
    spec = generator.spec
    melody_spec = TrackSpec(melody.name, melody.program, spec.melody.channel)
    try:
        write_midi(
            args.output, (melody_spec, melody.notes), result.tracks,
            tempo_bpm=score.tempo_bpm, time_signature=score.time_signature,
            ticks_per_beat=score.ticks_per_beat, tempo_changes=score.tempo_changes,
        )
    except OSError as exc:  # a missing folder, a folder as -o, a full disk: no traceback
        raise BacklineError(
            f"cannot write {args.output} ({exc.strerror or exc}); give -o the path of a .mid "
            "file in a folder that exists and that you can write to"
        ) from None
    if args.png:
        write_png(args.png, melody.name, melody.notes, result.tracks, spec, score.time_signature)
    counts = ", ".join(f"{t.name} {len(n)}" for t, n in result.tracks)
    key = f"key {result.key.name}, " if result.key else ""
    for notice in result.notices:
        print(f"backline: note: {notice}", file=sys.stderr)
    print(f"wrote {args.output}: melody '{melody.name}' ({len(melody.notes)} notes), {key}{counts} notes")
    return 0


def require_matplotlib(option: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BacklineError(f"{option} needs matplotlib, which is not installed; run: pip install matplotlib") from None


def write_png(path: Path, melody_name: str, melody_notes, tracks, spec, time_signature) -> None:
    """A piano roll of the melody and its accompaniment (needs matplotlib)."""
    from backline.training.plots import save_roll_png

    everything = [melody_notes, *(notes for _, notes in tracks)]
    length = max(n.end for notes in everything for n in notes)
    numerator, denominator = time_signature
    names = [melody_name, *(t.name for t, _ in tracks)]
    title = f"{melody_name} with model {spec.name}"
    save_roll_png(path, [(title, everything, length, numerator * 4 / denominator)], names,
                  [False, *(t.is_drum for t, _ in tracks)])


def cmd_models(args: argparse.Namespace) -> int:
    from backline.models.registry import list_models

    entries = list_models()
    if not entries:
        print("no models installed")
        return 1
    for entry in entries:
        if entry.spec is None:
            print(f"{entry.path.stem:12s} BROKEN  {entry.error}")
            continue
        s = entry.spec
        tracks = ", ".join(t.name for t in s.tracks)
        print(f"{s.name:12s} {s.genre:8s} melody {s.melody.name} -> {tracks}; "
              f"{s.window_beats} beats per window; {entry.path}")
        if args.verbose:
            print(f"    {s.description}")
            for key, value in sorted(s.provenance.items()):
                print(f"    {key}: {value}")
            if entry.card:
                print(f"    card: {entry.card}")
    return 0


def _training():
    try:
        from backline.training import commands
    except ModuleNotFoundError as exc:
        raise SystemExit(
            f"backline: error: this command needs the training extra ({exc.name} is not "
            "installed); run: pip install -e '.[train]'"
        ) from None
    return commands


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a generator: the Bach chorales, the quartets, or your own MIDI",
                       description="Train a generator with WGAN-GP (DeepComposer's knobs) on the Bach chorales "
                                   "(bach, U-Net), music21's string quartets (symphony) or MIDI you have: files, "
                                   "folders, Doom WADs, LPD .npz (pop, rock, jazz or band, MuseGAN).")
    p.add_argument("--out", type=cli_types.run_folder, default="runs/bach", help="run folder: checkpoint, logs, samples (default runs/bach)")
    p.add_argument("--data", nargs="+", default=["chorales"], metavar="SOURCE",
                   help="chorales (default), quartets, or paths: MIDI files, folders of them (read recursively), "
                        ".wad files, folders of LPD/pypianoroll .npz")
    p.add_argument("--genre", default=None, choices=["bach", "pop", "rock", "jazz", "symphony", "band"],
                   help="the tracks the model generates (default: bach for chorales, symphony for quartets, "
                        "band for your own MIDI: drums, bass, guitar, keys, pad)")
    p.add_argument("--arch", default=None, choices=["unet", "musegan"],
                   help="generator architecture (default: unet for bach, musegan for the other genres)")
    p.add_argument("--melody-track", default=None, metavar="NAME|INDEX",
                   help="the melody track of every file, by name or 0-based index (default: a track named "
                        "melody/lead/vocal/voice/solo, else the highest mostly one-note-at-a-time track that "
                        "is neither drums nor bass)")
    p.add_argument("--data-licence", default=None, metavar="TEXT",
                   help="the licence of your data, recorded in the model's metadata and card")
    p.add_argument("--epochs", type=cli_types.non_negative_count, default=20,
                   help="adversarial epochs: passes of the critic over the data (default 20)")
    p.add_argument("--warmup-epochs", type=cli_types.non_negative_count, default=10,
                   help="generator-only epochs on the paired loss first (default 10; 0 = none)")
    p.add_argument("--lr", type=cli_types.positive, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--update-ratio", type=cli_types.count, default=5,
                   help="critic updates per generator update (default 5)")
    p.add_argument("--batch-size", type=cli_types.count, default=64, help="windows per batch, all processes of a torchrun launch together (default 64)")
    p.add_argument("--seed", type=cli_types.seed, default=0, help="random seed (default 0)")
    p.add_argument("--time-budget", type=cli_types.duration, default=None,
                   help="stop after the epoch that passes this wall time, e.g. 900s, 15m, 1h")
    p.add_argument("--resume", type=Path, default=None, help="continue from this checkpoint.pt")
    p.add_argument("--recon-weight", type=cli_types.non_negative, default=10.0,
                   help="weight of the paired reconstruction loss; 0 = pure WGAN-GP (default 10)")
    p.add_argument("--widths", type=cli_types.count, nargs="+", default=None, metavar="C",
                   help="channels per resolution level, full resolution first (default 8 16 32 64 for unet, "
                        "16 32 64 128 for musegan)")
    p.add_argument("--checkpoint-every", type=cli_types.count, default=1, help="epochs between checkpoints (default 1)")
    p.add_argument("--rebuild-data", action="store_true", help="rebuild the cached training data")
    p.add_argument("--max-pieces", type=cli_types.count, default=None, help="use only this many training pieces (quick runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to train: auto = CUDA when torch sees a GPU, else the CPU (default auto); "
                        "under torchrun, each process takes the GPU of its local rank")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="bf16 autocast for the forward passes (the gradient penalty stays fp32); "
                        "auto = on for CUDA, off on the CPU (default auto)")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile the networks; auto = on for CUDA, off on the CPU, where its gain "
                        "(about 8 %%) barely repays the compile time (default auto)")


def _client_levels(text: str) -> list[int]:
    from backline.bridge.bench.suite import parse_clients

    return parse_clients(text)


def _bench_parts(text: str) -> list[str]:
    from backline.bridge.bench.suite import parse_parts

    return parse_parts(text)


class _DeviceAction(argparse.Action):
    """--device KIND[:PRECISION] and --precision P both write args.device as one
    'KIND[:PRECISION]' string (models/providers.py), whichever comes first."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        from backline.models.providers import Device, DeviceError

        current = Device.parse(getattr(namespace, "device", None) or "auto")
        try:
            if option_string == "--precision":
                device = Device(current.kind, value)
            else:
                device = Device.parse(value)
                if ":" not in value:  # a bare kind keeps a --precision given before it
                    device = Device(device.kind, current.precision)
        except DeviceError as exc:
            parser.error(str(exc))
        namespace.device = str(device)


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", action=_DeviceAction, default="auto", metavar="{auto,cpu,cuda,tensorrt}",
                   help="where the model runs (default auto: CUDA if there is a GPU, else the CPU); "
                        "tensorrt builds engines on first use and caches them")
    p.add_argument("--precision", action=_DeviceAction, dest="device", choices=["fp32", "fp16"],
                   default=argparse.SUPPRESS,
                   help="fp16 runs a GPU provider in half precision, if it leaves the notes unchanged "
                        "against fp32 (checked at load; otherwise fp32) (default fp32)")


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line, like every other error (the usage is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"backline: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="backline", description="Backline: an AI band for your DAW.")
    parser.add_argument("--version", action="version", version=f"backline {version()}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("accompany", help="accompany a melody MIDI file",
                       description="Write MELODY plus the model's accompaniment tracks to OUT.")
    p.add_argument("melody", type=Path, help="melody .mid file")
    p.add_argument("-o", "--output", type=cli_types.output_file, required=True, help="output .mid file")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or .onnx path (default {DEFAULT_MODEL})")
    p.add_argument("--seed", type=cli_types.seed, default=0, help="noise seed: same seed, same accompaniment (default 0)")
    p.add_argument("--threshold", type=cli_types.threshold, default=None, help="note threshold in (0, 1) (default: the model's)")
    p.add_argument("--sample", action="store_true", help="sample notes (seeded) instead of thresholding")
    p.add_argument("--track", default=None, help="name of the melody track in a multi-track file")
    p.add_argument("--meter", type=cli_types.meter, default=None, metavar="N/D",
                   help="read the melody in this meter, e.g. 4/4 for a file in 7/8 (default: the file's)")
    add_device_arguments(p)
    p.add_argument("--png", type=cli_types.output_file, default=None, help="also draw the result as a piano roll PNG")
    p.set_defaults(func=cmd_accompany)

    p = sub.add_parser("models", help="list the installed models")
    p.add_argument("-v", "--verbose", action="store_true", help="show provenance and cards")
    p.set_defaults(func=cmd_models)

    add_train_parser(sub)
    sub.choices["train"].set_defaults(func=lambda a: _training().cmd_train(a))

    p = sub.add_parser("export", help="export a checkpoint as an ONNX generator")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("-o", "--output", type=cli_types.output_file, required=True, help="the .onnx file to write")
    p.add_argument("--name", default=None, help="model name (default: the file's stem)")
    p.add_argument("--no-evaluate", action="store_true", help="skip measuring the metrics for the metadata")
    p.add_argument("--threshold", type=cli_types.threshold, default=None,
                   help="note threshold to ship (default: calibrated to how much the training data's voices sound)")
    p.add_argument("--onset-threshold", type=cli_types.threshold, default=None,
                   help="onset threshold to ship (default: calibrated to the training data's note density)")
    p.set_defaults(func=lambda a: _training().cmd_export(a))

    p = sub.add_parser("evaluate", help="metrics of a model's accompaniment vs the real tracks of its held-out pieces")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or .onnx path (default {DEFAULT_MODEL})")
    p.add_argument("--seed", type=cli_types.seed, default=0, help="noise seed (default 0)")
    p.set_defaults(func=lambda a: _training().cmd_evaluate(a))

    p = sub.add_parser("serve", help="run the bridge: accompany clips sent over OSC",
                       description="Run Backline as a resident process that accompanies clips sent over OSC "
                                   "(docs/PROTOCOL.md). Stops on Ctrl-C or SIGTERM.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or .onnx path (default {DEFAULT_MODEL})")
    p.add_argument("--osc-host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--osc-port", type=cli_types.listen_port, default=11010, help="UDP port (default 11010)")
    p.add_argument("--midi-api", choices=["alsa", "jack", "coremidi", "none"], default=None,
                   help="virtual MIDI ports 'backline in' / 'backline out' through this API "
                        "(default: coremidi on macOS, alsa on Linux; none for OSC only)")
    p.add_argument("--per-track-ports", action="store_true",
                   help="one MIDI output port per accompaniment track instead of one port with a channel per track")
    add_device_arguments(p)
    p.add_argument("--no-reload", action="store_true",
                   help="do not watch the model folders for new or changed models (/backline/model/load still works)")
    p.add_argument("--clock", choices=["auto", "midi", "osc", "internal", "off"], default="auto",
                   help="live mode's clock: MIDI clock on 'backline in', OSC /backline/transport/*, both (auto: "
                        "whichever is heard), an internal clock at --tempo that starts at once, or off (default auto)")
    p.add_argument("--tempo", type=cli_types.tempo, default=120.0,
                   help="BPM of the internal clock, and the first guess for the others (default 120)")
    p.add_argument("--commit-ahead", type=cli_types.beats, default=2.0, metavar="BEATS",
                   help="live mode generates each bar this many beats before it starts (default 2)")
    p.add_argument("--batch-window-ms", type=cli_types.milliseconds, default=DEFAULT_BATCH_WINDOW_MS, metavar="MS",
                   help="clips queued together share one model call; also wait up to MS for more clips to "
                        f"join a batch (default {DEFAULT_BATCH_WINDOW_MS:g}: take only the clips already waiting)")
    p.add_argument("--max-batch", type=cli_types.max_batch, default=DEFAULT_MAX_BATCH, metavar="CLIPS",
                   help=f"most clips in one batch; 1 turns batching off (default {DEFAULT_MAX_BATCH})")
    p.add_argument("--reply-rate", type=cli_types.non_negative, default=DEFAULT_RATE / 1e6, metavar="MB_PER_S",
                   help="most megabytes per second of replies to one client after a 64 KB burst, so that a "
                        f"long clip's reply does not overflow it; 0 = unpaced (default {DEFAULT_RATE / 1e6:g})")
    p.set_defaults(func=lambda a: __import__("backline.bridge.serve", fromlist=["x"]).cmd_serve(a))

    p = sub.add_parser("send", help="accompany a melody file through a running `backline serve`",
                       description="Send MELODY to a running bridge over OSC; write melody + accompaniment to OUT.")
    p.add_argument("melody", type=Path, help="melody .mid file")
    p.add_argument("-o", "--output", type=cli_types.output_file, required=True, help="output .mid file")
    p.add_argument("--host", default="127.0.0.1", help="the bridge's address (default 127.0.0.1)")
    p.add_argument("--port", type=cli_types.port, default=11010, help="the bridge's UDP port (default 11010)")
    p.add_argument("--model", default=None, help="model name (default: the bridge's)")
    p.add_argument("--seed", type=cli_types.seed, default=0, help="noise seed (default 0)")
    p.add_argument("--track", default=None, help="name of the melody track in a multi-track file")
    p.add_argument("--timeout", type=cli_types.seconds, default=10.0, help="seconds to wait for the accompaniment (default 10)")
    p.add_argument("--meter", type=cli_types.meter, default=None, metavar="N/D",
                   help="read the melody in this meter, e.g. 4/4 for a file in 7/8 (default: the file's)")
    p.set_defaults(func=lambda a: __import__("backline.bridge.clip.send", fromlist=["x"]).cmd_send(a))
    add_send_notes_parser(sub)

    p = sub.add_parser("bench", help="time the model call, the OSC round trip, concurrent clients and live timing",
                       description="Print p50/p99/max of the bare model call for a 4-bar clip and of the same clip's "
                                   "round trip through `backline serve` over loopback with batching on and off; the "
                                   "round trip and throughput with 1, 4, 16, 64 concurrent client processes; and live "
                                   "mode's timing (figures only; see docs/PERFORMANCE.md).")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or .onnx path (default {DEFAULT_MODEL})")
    p.add_argument("--runs", type=cli_types.count, default=200, help="timed runs of the bare call and the single-client round trip (default 200)")
    p.add_argument("--clients", type=_client_levels, default=[1, 4, 16, 64], metavar="N,N,...",
                   help="concurrency levels: how many client processes at once (default 1,4,16,64)")
    p.add_argument("--level-seconds", type=cli_types.seconds, default=4.0,
                   help="how long each concurrency level runs, after a 0.5 s warm-up (default 4)")
    p.add_argument("--no-unbatched", action="store_true",
                   help="run the concurrency levels against the batching server only, not also with batching off")
    p.add_argument("--compare-windows", type=cli_types.milliseconds_list, default=None, metavar="MS,...",
                   help="also run the concurrency levels against servers with these --batch-window-ms values")
    p.add_argument("--reply", choices=protocol.REPLY_FORMS, default="bundle",
                   help="the benchmark clients ask for replies as OSC bundles (/backline/set bundle 1) or as single "
                        "messages, one datagram each (default bundle)")
    p.add_argument("--parts", type=_bench_parts, default=None, metavar="PART,...",
                   help="only these parts: latency, clients, live (default: all)")
    p.add_argument("--training-seconds", type=cli_types.seconds, default=10.0,
                   help="how long to time training steps (default 10)")
    p.add_argument("--seconds", type=cli_types.seconds, default=20.0, help="how long to measure live timing (default 20)")
    p.add_argument("--tempo", type=cli_types.tempo, default=180.0, help="live timing tempo in BPM (default 180)")
    p.add_argument("--no-live", action="store_true", help="skip the live timing")
    add_device_arguments(p)
    p.add_argument("--json", type=cli_types.output_file, default=None, metavar="FILE", help="also write the figures to FILE")
    p.set_defaults(func=lambda a: __import__("backline.bridge.bench.suite", fromlist=["x"]).cmd_bench(a))
    add_ardour_parser(sub)
    add_ableton_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.INFO,
                        format="backline: %(message)s", stream=sys.stderr)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its notes are not ours to print
    try:
        return args.func(args)
    except BacklineError as exc:
        print(f"backline: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("backline: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line for the user, the traceback on request
        if os.environ.get("BACKLINE_DEBUG"):
            raise
        print(f"backline: error: internal error ({type(exc).__name__}: {exc}); this is a bug in Backline: "
              "run again with BACKLINE_DEBUG=1 for the details and report them", file=sys.stderr)
        return 70  # EX_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
