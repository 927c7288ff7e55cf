"""Argument types for the command line: each checks its value and says what it wants.

argparse turns the ArgumentTypeError raised here into one usage line and exit status 2,
so a bad number never reaches the code that would fail on it with a traceback.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Callable


def _number(text: str, kind: type) -> float | int | None:
    try:
        value = kind(text)
    except ValueError:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def whole(low: int, high: int | None = None, example: int | None = None, note: str = "") -> Callable[[str], int]:
    """An int in low..high (high None: no upper bound); `note` ends the error message."""
    example = low if example is None else example
    if high is None:
        wanted = f"a whole number >= {low}"
    elif high >= 2**31:
        wanted = f"a whole number >= {low} (and below 2**{high.bit_length()})"
    else:
        wanted = f"a whole number from {low} to {high}"

    def parse(text: str) -> int:
        value = _number(text, int)
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}, e.g. {example}{note}")
        return value

    parse.__name__ = "whole number"  # argparse names the type in some messages
    return parse


def real(low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False,
         example: float | None = None, unit: str = "", noun: str | None = None,
         note: str = "") -> Callable[[str], float]:
    """A finite float in the interval low..high, each end open or closed. The message
    names it `noun` (default: 'a number' and `unit`) and ends with `note`."""
    example = example if example is not None else low
    left = f"> {low:g}" if low_open else f">= {low:g}"
    right = "" if high is None else (f" and < {high:g}" if high_open else f" and <= {high:g}")
    wanted = f"{noun or 'a number' + unit} {left}{right}"

    def parse(text: str) -> float:
        value = _number(text, float)
        ok = value is not None and (value > low if low_open else value >= low)
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}, e.g. {example:g}{note}")
        return float(value)

    parse.__name__ = "number"
    return parse


seed = whole(0, 2**63 - 1, example=7)
count = whole(1, example=16)
non_negative_count = whole(0, example=0)
port = whole(1, 65535, example=11010)
listen_port = whole(0, 65535, example=11010)  # 0: any free port
threshold = real(0.0, 1.0, low_open=True, high_open=True, example=0.5)
tempo = real(1.0, 999.0, example=120, unit=" of beats per minute")
seconds = real(0.0, low_open=True, example=10, unit=" of seconds")
beats = real(0.0, example=2, unit=" of beats")
non_negative = real(0.0, example=1)
positive = real(0.0, low_open=True, example=0.001)
milliseconds = real(0.0, example=2, noun="a time in milliseconds", note=" (0 = no waiting)")
max_batch = whole(1, example=16, note=" (1 = no batching)")


def milliseconds_list(text: str) -> list[float]:
    """'1,3' -> [1.0, 3.0], each checked as `milliseconds`."""
    return [milliseconds(word) for word in text.split(",")]


def run_folder(text: str) -> Path:
    """A folder to write into: it may not exist yet, but it must not be a file."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder; give a folder for the run, e.g. runs/mine")
    return path


def output_file(text: str) -> Path:
    """A file to write: not an existing folder."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name, e.g. {Path(text) / 'out'}")
    return path


def meter(text: str):
    """'6/8' -> models.meter.Meter."""
    from backline.models.meter import MeterError, parse_meter

    try:
        return parse_meter(text)
    except MeterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration(text: str) -> float:
    """'900', '900s', '15m', '1.5h' -> seconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"cannot read the duration {text!r}; write it like 900s, 15m or 1h")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2) or "s"]
