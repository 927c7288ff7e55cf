"""The model card: a Markdown page beside the .onnx file, written from its own metadata so
that it cannot drift from what the file says about itself."""

from __future__ import annotations

from pathlib import Path

from backline.models.atomic import atomic_write
from backline.models.spec import GeneratorSpec

from .evaluation import format_table, format_track_table, headline


def card_text(spec: GeneratorSpec, parity: str) -> str:
    p = spec.provenance
    tracks = "\n".join(
        f"| {t.name} | {t.program} | {t.channel + 1} | {'yes' if t.monophonic else 'no'} | "
        f"{t.playable_range[0]}..{t.playable_range[1]} | {t.velocity or '='} | "
        + " / ".join("-" if v is None else f"{v:g}" for v in
                     (t.threshold, t.rest_threshold, t.hold_threshold, t.onset_threshold))
        + " |"
        for t in spec.tracks
    )
    hours, rest = divmod(int(p.get("wall_time_s", 0)), 3600)
    wall = f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s"
    lines = [
        f"# Model card: `{spec.name}`",
        "",
        spec.description,
        "",
        "## What it plays",
        "",
        f"Melody in: **{spec.melody.name}**, a {spec.window_beats}-beat window at "
        f"{spec.steps_per_beat} steps per beat, pitches {spec.lowest_pitch}..{spec.highest_pitch} "
        f"(MIDI). Key-normalised: {'yes (C major / A minor)' if spec.key_normalised else 'no'}.",
        "",
        "| track | GM program (0-based) | MIDI channel | one note at a time | range | mean velocity | "
        "note / rest / hold / onset threshold |",
        "|---|---|---|---|---|---|---|",
        tracks,
        "",
        f"Decoding: tracks without their own thresholds use note threshold {spec.threshold} and onset "
        f"threshold {spec.onset_threshold}; each track's were calibrated at export on training windows "
        "(docs/MODEL_FORMAT.md). Mean velocity is the track's in the training data "
        f"(the melody's: {spec.melody.velocity or 'not recorded'}); '=' plays as loud as the melody.",
        "",
        "## How it was made",
        "",
        f"- command: `{p.get('command', '')}`",
        f"- data: {p.get('dataset', '')}; {p.get('train_windows')} training windows, "
        f"{p.get('validation_windows')} validation windows (split by piece)",
        f"- data licence: {p.get('licence', 'not recorded')} (the code is MIT; this model file "
        "is derived from that data)"
        + (". **This model is trained on GPL-licensed music**: treat the file as a derivative of it, "
           "and prefer another model where that matters to you" if "GPL" in str(p.get("licence", "")) else ""),
        f"- architecture: {p.get('architecture')}",
        f"- epochs: {p.get('epochs')} (incl. warm-up), learning rate {p.get('learning_rate')}, "
        f"update ratio {p.get('update_ratio')}, batch size {p.get('batch_size')}, "
        f"paired-loss weight {p.get('recon_weight')}, gradient penalty {p.get('gp_lambda')}",
        f"- seed: {p.get('seed')}",
        f"- wall time: {wall} on {p.get('machine', 'an unrecorded machine')}",
        f"- code: commit {p.get('commit')}",
        f"- export check: {parity}",
        "",
    ]
    lines += recipe(spec)
    metrics = spec.metrics
    if metrics.get("validation"):
        tracks = ", ".join(t.name for t in spec.tracks)
        lines += [
            "## Evaluation",
            "",
            f"`backline evaluate --model {spec.name}`: the model's accompaniment of all "
            f"{metrics.get('validation_windows')} validation windows (pieces it never saw), beside "
            f"the real {tracks} of the same windows.",
            "",
            format_table(metrics["validation"], metrics["validation_real"], headline(spec), spec.melody.name),
            "",
            "Per track, model / real (✓ target met, ✗ missed):",
            "",
            format_track_table(metrics["validation"], metrics["validation_real"], spec),
            "",
        ]
    return "\n".join(lines)


def recipe(spec: GeneratorSpec) -> list[str]:
    """From registry packages to this file: what to install, and the commands."""
    from .data.build import packages_of

    p = spec.provenance
    data = p.get("data") or ["chorales"]
    packages = packages_of(data)
    lines = ["## Rebuild it", ""]
    if data in (["chorales"], ["quartets"]):
        lines.append("The data ships inside music21 (PyPI): `pip install -e '.[train]'` installs it.")
    elif packages:
        lines += [
            "The data comes from Debian packages: install them (`sudo apt-get install "
            + " ".join(packages) + "`), or unpack them without installing: "
            "`apt-get download " + " ".join(packages) + " && for f in *.deb; do dpkg-deb -x $f root; done` "
            "and prefix the paths below with `root`.",
        ]
    lines += ["", "```sh", p.get("command", "backline train ..."),
              f"backline export {p.get('out', 'runs/NAME')}/checkpoint.pt -o ~/.local/share/backline/models/{spec.name}.onnx",
              f"backline evaluate --model {spec.name}", "```", ""]
    return lines


def write_card(spec: GeneratorSpec, path: Path, parity: str) -> None:
    with atomic_write(path) as handle:
        handle.write(card_text(spec, parity).encode())
