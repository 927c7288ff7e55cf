"""`backline send-notes`: a melody as text lines in, the accompaniment as text lines out.

The return path for a DAW script that can run a command and read what it prints but
cannot speak OSC itself (Ardour's Lua, bridge/daw/lua/backline_accompany.lua). It sends
the melody through a running `backline serve` with the client of `backline send`
(bridge/clip/send.py), so the bridge, its model and its settings are the ones every other
client gets.

Input: one note per line, `pitch start_beats length_beats velocity`, e.g. `60 0 1 100`:
pitch 0..127, start >= 0 beats from the clip start, length > 0 beats, velocity 1..127,
fields separated by spaces or tabs. Blank lines and lines starting with `#` are skipped;
anything else is an error naming the line. The clip runs from beat 0 to `--length`
(default: the end of the last note); the accompaniment is cut at its end.

Output, format version 1 (stdout, UTF-8, `\\n` line ends, nothing printed on failure):

    backline-notes 1
    track INDEX PROGRAM CHANNEL IS_DRUM NAME
    note INDEX PITCH START LENGTH VELOCITY
    ...
    end N_NOTES

- `backline-notes 1` is always the first line; the number is the format's version, raised
  only for a change an old reader would misread.
- One `track` line per instrument of the model, INDEX 0, 1, 2 ... in the model's order:
  PROGRAM the General MIDI program 0..127, CHANNEL the MIDI channel 0..15 (0-based; a
  drum track is always 9, i.e. channel 10), IS_DRUM 0 or 1, and NAME last, the rest of the
  line, so that it may hold spaces ("Violin II"). A resting instrument has a `track` line
  and no notes.
- A track's `note` lines follow its `track` line, sorted by start then pitch: START and
  LENGTH in beats (quarter notes) from the clip start, written as plain decimals with a
  `.` and at most 6 places (`0`, `0.25`, `15.5`; never an exponent), PITCH and VELOCITY
  whole numbers.
- `end N_NOTES` is always the last line; N_NOTES is the number of `note` lines, so a
  reader can tell a complete answer from a cut-off one.
- A reader should skip lines whose first word it does not know.

Failure: exit status 1 (2 for a usage mistake) and one line on stderr,
`backline: error: ...`, e.g. `... start one with: backline serve` when no bridge answers.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from backline.bridge import cli_types

if TYPE_CHECKING:  # (the notes and the client are imported when the command runs)
    from backline.models.notes import Note
    from backline.models.spec import TrackSpec

FORMAT = "backline-notes"
FORMAT_VERSION = 1
DRUM_CHANNEL = 9  # MIDI channel 10, 0-based
TEMPO_BPM = 120.0  # clip mode works in beats; the protocol wants a tempo all the same
EXAMPLE = "60 0 1 100"


def parse_melody(lines: Iterable[str], source: str) -> list[Note]:
    """The notes of `pitch start_beats length_beats velocity` lines; BacklineError names
    the first line that is not one."""
    from backline.models.errors import BacklineError
    from backline.models.notes import Note

    from backline.bridge.osc.protocol import MAX_DURATION_BEATS, MAX_START_BEATS

    notes = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        problem = None
        fields = text.split()
        if len(fields) != 4:
            problem = f"has {len(fields)} field{'' if len(fields) == 1 else 's'}, not 4"
        else:
            pitch, start, length, velocity = (_int(fields[0]), _float(fields[1]),
                                               _float(fields[2]), _int(fields[3]))
            if pitch is None or not 0 <= pitch <= 127:
                problem = f"pitch {fields[0]!r} is not a whole number from 0 to 127"
            elif start is None or not 0 <= start < MAX_START_BEATS:
                problem = f"start {fields[1]!r} is not a number of beats >= 0 and < {MAX_START_BEATS:g}"
            elif length is None or not 0 < length <= MAX_DURATION_BEATS:
                problem = f"length {fields[2]!r} is not a number of beats > 0 and <= {MAX_DURATION_BEATS:g}"
            elif velocity is None or not 1 <= velocity <= 127:
                problem = f"velocity {fields[3]!r} is not a whole number from 1 to 127"
            else:
                notes.append(Note(pitch, start, length, velocity))
        if problem:
            raise BacklineError(
                f"line {number} of {source} ({_shorten(text)!r}) {problem}; each line is one note: "
                f"pitch start_beats length_beats velocity, e.g. {EXAMPLE}"
            )
    if not notes:
        raise BacklineError(f"no notes in {source}; give one line per note: pitch start_beats length_beats "
                            f"velocity, e.g. {EXAMPLE}")
    return notes


def format_reply(tracks: Sequence[tuple[TrackSpec, Sequence[Note]]]) -> str:
    """The accompaniment as format-version-1 lines (see the module's docstring)."""
    out = [f"{FORMAT} {FORMAT_VERSION}"]
    n_notes = 0
    for index, (spec, notes) in enumerate(tracks):
        channel = DRUM_CHANNEL if spec.is_drum else spec.channel
        out.append(f"track {index} {spec.program} {channel} {int(spec.is_drum)} {_name(spec.name, index)}")
        for note in sorted(notes, key=lambda n: (n.start, n.pitch)):
            out.append(f"note {index} {note.pitch} {_beats(note.start)} {_beats(note.duration)} {note.velocity}")
            n_notes += 1
    out.append(f"end {n_notes}")
    return "\n".join(out) + "\n"


def read_source(name: str) -> tuple[list[str], str]:
    """The lines of the file `name`, or of stdin for '-', and how to name it in messages."""
    from backline.models.errors import BacklineError

    if name == "-":
        return sys.stdin.buffer.read().decode("utf-8", "replace").splitlines(), "stdin"
    try:
        return Path(name).read_bytes().decode("utf-8", "replace").splitlines(), name
    except OSError as exc:
        raise BacklineError(f"cannot read {name} ({exc.strerror or exc}); give a file of note lines, "
                            "or - to read them from stdin") from None


def cmd_send_notes(args: argparse.Namespace) -> int:
    from backline.bridge.clip.send import BridgeClient

    lines, source = read_source(args.melody)
    notes = parse_melody(lines, source)
    length = args.length if args.length is not None else max(n.end for n in notes)
    client = BridgeClient(args.host, args.port)
    try:
        client.ping()
        if args.threshold is not None:  # a setting of this client (this socket) only
            client.send("/backline/set", "threshold", float(args.threshold))
        reply = client.accompany(notes, length, args.model, args.seed, TEMPO_BPM, args.timeout)
    finally:
        client.close()
    text = format_reply([(spec, reply.notes.get(i, [])) for i, spec in enumerate(reply.tracks)])
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away: nothing left to tell it
        return 1
    return 0


def add_send_notes_parser(sub) -> None:
    p = sub.add_parser(
        "send-notes", help="accompany a melody given as text lines through a running `backline serve`",
        description="Read a melody as lines 'pitch start_beats length_beats velocity' from MELODY (or stdin), "
                    "send it to a running bridge over OSC, and print the accompaniment as text lines: "
                    "'backline-notes 1', then per instrument 'track INDEX PROGRAM CHANNEL IS_DRUM NAME' and "
                    "its 'note INDEX PITCH START LENGTH VELOCITY' lines, then 'end N_NOTES' "
                    "(docs/DAW.md). For DAW scripts, e.g. Ardour's.")
    p.add_argument("melody", nargs="?", default="-", metavar="MELODY",
                   help="file of note lines, or - for stdin (default -)")
    p.add_argument("--length", type=_clip_length, default=None, metavar="BEATS",
                   help="the clip's length in beats; the accompaniment is cut there (default: the end of "
                        "the last note)")
    p.add_argument("--host", default="127.0.0.1", help="the bridge's address (default 127.0.0.1)")
    p.add_argument("--port", type=cli_types.port, default=11010, help="the bridge's UDP port (default 11010)")
    p.add_argument("--model", default=None, help="model name (default: the bridge's)")
    p.add_argument("--seed", type=cli_types.seed, default=0, help="noise seed: same seed, same accompaniment (default 0)")
    p.add_argument("--threshold", type=cli_types.threshold, default=None,
                   help="note threshold in (0, 1), lower = busier (default: the model's)")
    p.add_argument("--timeout", type=cli_types.seconds, default=10.0,
                   help="seconds to wait for the accompaniment (default 10)")
    p.set_defaults(func=cmd_send_notes)


_clip_length = cli_types.real(0.0, 100_000.0, low_open=True, example=16, unit=" of beats")


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _beats(value: float) -> str:
    """Plain decimal, at most 6 places, no exponent: 0, 0.25, 15.5."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _name(name: str, index: int) -> str:
    """One line's worth of name: whitespace runs (newlines too) become one space."""
    cleaned = " ".join("".join(c if c.isprintable() else " " for c in name).split())
    return cleaned or f"Track {index + 1}"


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."
