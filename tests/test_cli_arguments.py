"""No traceback reaches a user from any command-line argument.

A table of bad arguments across every subcommand. Each must end with a non-zero exit
status and one line `backline...: error: ...` that is not the catch-all "internal
error" (which means a bug got that far), and write nothing it was asked to write. The
commands run in this process through `cli.main`, the entry point the `backline` script
calls, so a bad value that slipped through to an exception fails the test with it.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

from backline.bridge import cli
from backline.models.registry import SHIPPED_DIR

MELODY = str(SHIPPED_DIR / "examples" / "ode-to-joy.mid")

# (argv, a piece of the error message). Paths are relative to a fresh temporary folder
# that holds: corrupt.mid (not MIDI), notes.txt (text), corrupt.onnx (not ONNX), a folder
# called folder, and seven78.mid (a melody in 7/8).
BAD_ARGUMENTS: list[tuple[list[str], str]] = [
    # accompany
    (["accompany", "missing.mid", "-o", "out.mid"], "does not exist"),
    (["accompany", "corrupt.mid", "-o", "out.mid"], "not a Standard MIDI File"),
    (["accompany", "folder", "-o", "out.mid"], "is a folder"),
    (["accompany", MELODY, "-o", "nodir/out.mid"], "cannot write"),
    (["accompany", MELODY, "-o", "folder"], "is a folder"),
    (["accompany", MELODY], "required: -o/--output"),
    (["accompany", MELODY, "-o", "out.mid", "--model", "nosuch"], "no model named 'nosuch'"),
    (["accompany", MELODY, "-o", "out.mid", "--model", "corrupt.onnx"], "not a loadable ONNX model"),
    (["accompany", MELODY, "-o", "out.mid", "--seed", "-3"], "--seed"),
    (["accompany", MELODY, "-o", "out.mid", "--seed", "abc"], "--seed"),
    (["accompany", MELODY, "-o", "out.mid", "--seed", "1" + "0" * 30], "--seed"),
    (["accompany", MELODY, "-o", "out.mid", "--threshold", "2"], "--threshold"),
    (["accompany", MELODY, "-o", "out.mid", "--threshold", "0"], "--threshold"),
    (["accompany", MELODY, "-o", "out.mid", "--threshold", "nan"], "--threshold"),
    (["accompany", MELODY, "-o", "out.mid", "--track", "nosuch"], "no track is named 'nosuch'"),
    (["accompany", MELODY, "-o", "out.mid", "--device", "bogus"], "unknown device"),
    (["accompany", MELODY, "-o", "out.mid", "--device", "cpu:fp8"], "unknown device"),
    (["accompany", MELODY, "-o", "out.mid", "--precision", "fp8"], "--precision"),
    (["accompany", MELODY, "-o", "out.mid", "--png", "folder"], "is a folder"),
    (["accompany", MELODY, "-o", "out.mid", "--meter", "4/3"], "not a meter"),
    (["accompany", MELODY, "-o", "out.mid", "--meter", "fast"], "not a meter"),
    (["accompany", "seven78.mid", "-o", "out.mid"], "--meter 4/4"),
    # models
    (["models", "extra"], "unrecognized arguments"),
    # train (all fail before any training starts)
    (["train", "--epochs", "-1"], "--epochs"),
    (["train", "--warmup-epochs", "x"], "--warmup-epochs"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--update-ratio", "0"], "--update-ratio"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--widths", "0"], "--widths"),
    (["train", "--recon-weight", "-1"], "--recon-weight"),
    (["train", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["train", "--max-pieces", "0"], "--max-pieces"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--genre", "polka"], "--genre"),
    (["train", "--arch", "transformer"], "--arch"),
    (["train", "--out", "notes.txt"], "is a file, not a folder"),
    (["train", "--time-budget", "soon", "--out", "run1"], "cannot read the duration"),
    (["train", "--resume", "missing.pt", "--out", "run2"], "does not exist"),
    (["train", "--resume", "notes.txt", "--out", "run3"], "not a readable checkpoint"),
    (["train", "--data", "missing-folder", "--out", "run4"], "no such file or folder"),
    (["train", "--data", "notes.txt", "--out", "run5"], "is not one of MIDI files"),
    # export
    (["export", "missing.pt", "-o", "x.onnx"], "does not exist"),
    (["export", "notes.txt", "-o", "x.onnx"], "not a readable checkpoint"),
    (["export", "notes.txt", "-o", "folder"], "is a folder"),
    (["export", "notes.txt", "-o", "x.onnx", "--threshold", "5"], "--threshold"),
    (["export", "notes.txt", "-o", "x.onnx", "--onset-threshold", "-1"], "--onset-threshold"),
    (["export", "notes.txt"], "required: -o/--output"),
    # evaluate
    (["evaluate", "--model", "nosuch"], "no model named 'nosuch'"),
    (["evaluate", "--model", "notes.txt"], "no model named"),
    (["evaluate", "--seed", "-1"], "--seed"),
    # serve (all fail before the server would run)
    (["serve", "--osc-port", "70000"], "--osc-port"),
    (["serve", "--osc-port", "abc"], "--osc-port"),
    (["serve", "--tempo", "0"], "--tempo"),
    (["serve", "--tempo", "5000"], "--tempo"),
    (["serve", "--commit-ahead", "-1"], "--commit-ahead"),
    (["serve", "--batch-window-ms", "-1"], "--batch-window-ms"),
    (["serve", "--max-batch", "0"], "--max-batch"),
    (["serve", "--reply-rate", "-1"], "--reply-rate"),
    (["serve", "--midi-api", "winmm"], "--midi-api"),
    (["serve", "--clock", "sundial"], "--clock"),
    (["serve", "--model", "nosuch", "--midi-api", "none", "--osc-port", "0"], "no model named 'nosuch'"),
    (["serve", "--osc-host", "999.1.1.1", "--midi-api", "none"], "cannot listen on"),
    # send
    (["send", MELODY, "-o", "out.mid", "--port", "0"], "--port"),
    (["send", MELODY, "-o", "out.mid", "--port", "70000"], "--port"),
    (["send", MELODY, "-o", "out.mid", "--timeout", "0"], "--timeout"),
    (["send", MELODY, "-o", "out.mid", "--seed", "-1"], "--seed"),
    (["send", MELODY, "-o", "folder"], "is a folder"),
    (["send", "missing.mid", "-o", "out.mid"], "does not exist"),
    (["send", "corrupt.mid", "-o", "out.mid"], "not a Standard MIDI File"),
    (["send", MELODY, "-o", "out.mid", "--host", "not a host"], "cannot find host"),
    (["send", MELODY, "-o", "out.mid", "--meter", "4/3"], "not a meter"),
    # bench
    (["bench", "--runs", "0"], "--runs"),
    (["bench", "--clients", "0"], "--clients"),
    (["bench", "--clients", "abc"], "--clients"),
    (["bench", "--parts", "speed"], "--parts"),
    (["bench", "--reply", "bundles"], "--reply"),
    (["bench", "--compare-windows", "x"], "--compare-windows"),
    (["bench", "--level-seconds", "0"], "--level-seconds"),
    (["bench", "--seconds", "-5"], "--seconds"),
    (["bench", "--json", "folder"], "is a folder"),
    (["bench", "--model", "nosuch", "--parts", "latency"], "no model named 'nosuch'"),
    # ableton (all fail before AbletonOSC or the bridge is asked anything)
    (["ableton", "--slot", "0"], "--slot"),
    (["ableton", "--track", "1"], "--track and --slot go together"),
    (["ableton", "--live-port", "70000"], "--live-port"),
    (["ableton", "--seed", "-1"], "--seed"),
    (["ableton", "--threshold", "1"], "--threshold"),
    # send-notes (notes.txt holds "hello": no melody line)
    (["send-notes", "notes.txt"], "line 1 of notes.txt"),
    (["send-notes", "missing.txt"], "cannot read missing.txt"),
    (["send-notes", "notes.txt", "--port", "70000"], "--port"),
    (["send-notes", "notes.txt", "--length", "0"], "--length"),
    (["send-notes", "notes.txt", "--threshold", "1"], "--threshold"),
    # ardour
    (["ardour"], "required: ACTION"),
    (["ardour", "install", "--backline", "missing"], "no such file"),
    # the command itself
    (["nosuchcommand"], "invalid choice"),
    ([], "required: COMMAND"),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "corrupt.mid").write_bytes(b"not midi at all")
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "corrupt.onnx").write_bytes(b"garbage")
    (tmp_path / "folder").mkdir()
    _write_seven_eight(tmp_path / "seven78.mid")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _write_seven_eight(path: Path) -> None:
    import mido

    midi = mido.MidiFile()
    track = mido.MidiTrack([mido.MetaMessage("time_signature", numerator=7, denominator=8)])
    for pitch in [67, 69, 71, 72, 71, 69, 67] * 4:
        track += [mido.Message("note_on", note=pitch, velocity=80, time=0),
                  mido.Message("note_off", note=pitch, time=240)]
    midi.tracks.append(track)
    midi.save(path)


def run_main(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = cli.main(argv)
        except SystemExit as exc:  # argparse's usage errors
            status = exc.code
    return status, err.getvalue()


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("argv, wanted", BAD_ARGUMENTS, ids=[" ".join(a)[:70] or "(none)" for a, _ in BAD_ARGUMENTS])
def test_a_bad_argument_is_one_clear_error(workdir, argv, wanted):
    before = _listing(workdir)
    status, stderr = run_main(argv)
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("backline: model ")]
    assert status not in (0, None), stderr
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr  # one line: no usage dump, no log noise
    assert lines[-1].startswith("backline") and "error:" in lines[-1], stderr
    assert "internal error" not in stderr, stderr
    assert wanted in lines[-1], stderr
    assert _listing(workdir) == before, f"{argv} wrote {_listing(workdir) - before}"


def test_the_table_covers_every_subcommand():
    subcommands = set(cli.build_parser()._subparsers._group_actions[0].choices)
    covered = {argv[0] for argv, _ in BAD_ARGUMENTS if argv}
    assert subcommands <= covered, subcommands - covered


def test_png_without_matplotlib_fails_before_writing_anything(tmp_path):
    # matplotlib is installed here; a None in sys.modules makes its import fail as if it
    # were not, in a separate interpreter, through the real entry point.
    code = ("import sys; sys.modules['matplotlib'] = None; from backline.bridge.cli import main; "
            f"sys.exit(main(['accompany', {MELODY!r}, '-o', 'out.mid', '--png', 'roll.png']))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        "backline: error: --png needs matplotlib, which is not installed; run: pip install matplotlib"]
    assert list(tmp_path.iterdir()) == []


def test_a_bug_is_one_line_unless_asked_for_the_details(monkeypatch):
    def broken(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "cmd_models", broken)
    monkeypatch.delenv("BACKLINE_DEBUG", raising=False)
    status, stderr = run_main(["models"])
    assert status == 70
    assert stderr.strip().splitlines() == [
        "backline: error: internal error (ZeroDivisionError: division by zero); this is a bug in Backline: "
        "run again with BACKLINE_DEBUG=1 for the details and report them"]
    monkeypatch.setenv("BACKLINE_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        run_main(["models"])
