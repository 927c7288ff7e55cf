"""docs/PROTOCOL.md, error case by error case, against a real `backline serve` over UDP.

Every documented error code has cases here (`test_every_documented_code_has_a_case` reads
the code table from the doc, so doc and test cannot drift apart); each case sends real
datagrams (python-osc, liblo's `oscsend`, or bytes built here for what no OSC library
sends) and checks the documented reply: `/backline/error`, the code, and the id echoed with
its type. A few codes need a state no datagram can create quickly (a full queue, a clip
idle for 60 s, a bug): those run against an in-process server on a real UDP socket, with
the worker held, the clock moved or a fault injected (the `IN_PROCESS` table says which).
"""

from __future__ import annotations

import os
import queue
import re
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder, build_msg

from backline.models.midi import midi_bytes
from backline.models.notes import Note
from backline.models.spec import TrackSpec

from .test_bridge_osc import Client, Server, free_port, need

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "PROTOCOL.md"
ERROR = "/backline/error"

NOTE_OK = (60, 0.0, 1.0, 100, 0)
MELODY = [Note(68 + i % 5, float(i), 1.0, 100) for i in range(16)]
GOOD_MIDI = midi_bytes(None, [(TrackSpec("Lead", 0, 0), MELODY)])


# --------------------------------------------------------------------------- the doc


def documented_codes() -> list[str]:
    """The codes of the 'Error codes' table in docs/PROTOCOL.md."""
    section = DOC.read_text().split("\n## Error codes", 1)[1].split("\n## ", 1)[0]
    codes = re.findall(r"^\| `([a-z_]+)` \|", section, re.M)
    assert len(codes) >= 10, f"cannot read the error code table from {DOC}"
    return codes


def server_codes() -> set[str]:
    """Every code the server's sources can put into /backline/error."""
    codes: set[str] = set()
    for path in (ROOT / "bridge").rglob("*.py"):
        text = path.read_text()
        codes.update(re.findall(r'ProtocolError\(\s*"([a-z_]+)"', text))
        codes.update(re.findall(r'\berror\(\s*[^,()]+,\s*"([a-z_]+)"', text))  # protocol.error(id, code, ...)
        codes.update(re.findall(r'_error\(\s*[^,()]+,\s*[^,()]+,\s*"([a-z_]+)"', text))  # Bridge._error
    body = (ROOT / "bridge" / "clip" / "generate.py").read_text().split("def error_code", 1)[1].split("\ndef ", 1)[0]
    codes.update(re.findall(r'return "([a-z_]+)"', body))
    return codes


# --------------------------------------------------------------------------- datagrams by hand


def osc_string(text: bytes) -> bytes:
    return text + b"\0" * (4 - len(text) % 4)


def raw_message(address: str, tags: str, *payload: bytes) -> bytes:
    return osc_string(address.encode()) + osc_string(b"," + tags.encode()) + b"".join(payload)


def msg(address: str, *args) -> bytes:
    return build_msg(address, list(args)).dgram


def typed(address: str, *args: tuple[object, str]) -> bytes:
    """A message with explicit type tags, e.g. ('d' for a double)."""
    builder = OscMessageBuilder(address)
    for value, tag in args:
        builder.add_arg(value, tag)
    return builder.build().dgram


def element(content: bytes, size: int | None = None) -> bytes:
    return struct.pack(">i", len(content) if size is None else size) + content


def bundle(*elements: bytes, timetag: bytes = b"\0\0\0\0\0\0\0\1") -> bytes:
    return b"#bundle\0" + timetag + b"".join(elements)


def nested(depth: int, inner: bytes) -> bytes:
    for _ in range(depth):
        inner = bundle(element(inner))
    return inner


PING_BAD = msg("/backline/ping", "in-a-refused-bundle")  # must never be answered with a pong


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    steps: tuple  # each a datagram: (address, *args) for python-osc to build, or bytes
    expect: tuple  # ((id, code), ...): the /backline/error replies in order; () for none
    says: str = ""  # a part of the last error's message
    server: str = "main"  # "midi": a server started with --clock midi


def clip(clip_id, *notes_messages, end: bool = True) -> tuple:
    """begin, the given clip/notes messages (tuples of 5-tuples), end."""
    steps = [("/backline/clip/begin", clip_id, 8.0)]
    steps += [("/backline/clip/notes", clip_id, *(v for note in notes for v in note)) for notes in notes_messages]
    return tuple(steps + ([("/backline/clip/end", clip_id)] if end else []))


def bad_note(clip_id: str, note: tuple) -> Case:
    """A bad note drops its clip: one error, the rest of the clip ignored quietly."""
    return Case(clip(clip_id, (NOTE_OK, note), (NOTE_OK,)), ((clip_id, "bad_note"),), "note 2")


def wrong(*steps, clip_id="", says: str = "", server: str = "main", code: str = "bad_args") -> Case:
    return Case(tuple(steps), ((clip_id, code),), says, server)


CASES: dict[str, Case] = {
    # ---- bad_args: ids
    "ping without an id": wrong(("/backline/ping",), says="needs an id"),
    "ping with a float id": wrong(("/backline/ping", 1.5), says="string or an int"),
    "ping with a T id": wrong(("/backline/ping", True), says="boolean"),
    "ping with an array id": wrong(("/backline/ping", [1, 2]), says="array"),
    "ping with a nil id": wrong(("/backline/ping", None), says="nil"),
    "ping with an id of 257 characters": wrong(("/backline/ping", "x" * 257), says="256"),
    "ping with two arguments": wrong(("/backline/ping", "p2", 1), clip_id="p2"),
    "ping with two arguments, int id": wrong(("/backline/ping", 7, 1), clip_id=7),
    "ping with two arguments, int64 id": wrong(("/backline/ping", 2**40, 1), clip_id=2**40),
    # ---- bad_args: /backline/set
    "set with one argument": wrong(("/backline/set", "seed"), says="key value"),
    "set with an int key": wrong(("/backline/set", 1, 2), says="key must be a string"),
    "set seed -1": wrong(("/backline/set", "seed", -1), says="seed"),
    "set seed 1.5": wrong(("/backline/set", "seed", 1.5), says="seed"),
    "set seed a string": wrong(("/backline/set", "seed", "x"), says="seed"),
    "set threshold 0": wrong(("/backline/set", "threshold", 0.0), says="threshold"),
    "set threshold 1": wrong(("/backline/set", "threshold", 1), says="threshold"),
    "set threshold 1.5": wrong(("/backline/set", "threshold", 1.5), says="threshold"),
    "set sample 2": wrong(("/backline/set", "sample", 2), says="sample"),
    "set bundle 2": wrong(("/backline/set", "bundle", 2), says="bundle must be 0"),
    "set bundle -1": wrong(("/backline/set", "bundle", -1), says="bundle must be 0"),
    "set bundle 1.0": wrong(("/backline/set", "bundle", 1.0), says="bundle must be 0"),
    "set bundle a string": wrong(("/backline/set", "bundle", "yes"), says="bundle must be 0"),
    "set tempo 0.5": wrong(("/backline/set", "tempo", 0.5), says="1..999"),
    "set tempo 1000": wrong(("/backline/set", "tempo", 1000), says="1..999"),
    "set model to a path": wrong(("/backline/set", "model", "../../etc/passwd"), says="not a path"),
    "set model to a file name": wrong(("/backline/set", "model", "fixed.onnx"), says="not a path"),
    "set model to an int": wrong(("/backline/set", "model", 3), says="not a path"),
    # ---- bad_args: /backline/reply_to
    "reply_to without a port": wrong(("/backline/reply_to", "127.0.0.1"), says="host port"),
    "reply_to with three arguments": wrong(("/backline/reply_to", "127.0.0.1", 9000, 1), says="host port"),
    "reply_to a host name": wrong(("/backline/reply_to", "example.com", 9000), says="no host names"),
    "reply_to an empty host": wrong(("/backline/reply_to", "", 9000), says="host must be"),
    "reply_to an int host": wrong(("/backline/reply_to", 127, 9000), says="host must be"),
    "reply_to port 65536": wrong(("/backline/reply_to", "127.0.0.1", 65536), says="port"),
    "reply_to port -1": wrong(("/backline/reply_to", "127.0.0.1", -1), says="port"),
    "reply_to port as a string": wrong(("/backline/reply_to", "127.0.0.1", "9000"), says="port"),
    # ---- bad_args: /backline/clip/begin
    "begin without a length": wrong(("/backline/clip/begin", "b1"), clip_id="b1", says="length_beats"),
    "begin with length 0": wrong(("/backline/clip/begin", "b2", 0.0), clip_id="b2", says="> 0"),
    "begin with length over 100000": wrong(("/backline/clip/begin", "b3", 100000.5), clip_id="b3", says="100000"),
    "begin with a string length": wrong(("/backline/clip/begin", "b4", "eight"), clip_id="b4"),
    "begin with seven arguments": wrong(("/backline/clip/begin", "b5", 8.0, "", 1, 120.0, "4/4", 0), clip_id="b5"),
    "begin with a meter that is no meter": wrong(("/backline/clip/begin", "b9", 8.0, "", 1, 120.0, "4/3"),
                                                 clip_id="b9", says="meter"),
    "begin with an int meter": wrong(("/backline/clip/begin", "b10", 8.0, "", 1, 120.0, 0), clip_id="b10",
                                     says="meter"),
    "begin with a float id": wrong(("/backline/clip/begin", 1.5, 8.0), says="string or an int"),
    "begin with a model path": wrong(("/backline/clip/begin", "b6", 8.0, "a/b"), clip_id="b6", says="not a path"),
    "begin with seed -1": wrong(("/backline/clip/begin", "b7", 8.0, "", -1), clip_id="b7", says="seed"),
    "begin with tempo 0": wrong(("/backline/clip/begin", "b8", 8.0, "", 1, 0.0), clip_id="b8", says="tempo"),
    # ---- bad_args: notes, end, cancel (a clip/notes message of the wrong shape drops its clip)
    "notes not in fives": Case(clip("n5", (NOTE_OK, (61, 1.0, 1.0, 100)), (NOTE_OK,)), (("n5", "bad_args"),),
                               "was dropped"),
    "notes with a float id": wrong(("/backline/clip/notes", 2.5, *NOTE_OK), says="string or an int"),
    "end with two arguments": Case((("/backline/clip/begin", "e2", 8.0), ("/backline/clip/end", "e2", 1),
                                    ("/backline/clip/cancel", "e2")), (("e2", "bad_args"),), "takes id"),
    "end without an id": wrong(("/backline/clip/end",), says="needs an id"),
    "cancel without an id": wrong(("/backline/clip/cancel",), says="needs an id"),
    "cancel with two arguments": wrong(("/backline/clip/cancel", "c2", "x"), clip_id="c2", says="takes id"),
    # ---- bad_args: clip/midi, model/load, model/list
    "midi without a blob": wrong(("/backline/clip/midi", "m1"), clip_id="m1", says="id blob"),
    "midi with a string for the blob": wrong(("/backline/clip/midi", "m2", "MThd"), clip_id="m2", says="blob"),
    "midi with an int track": wrong(("/backline/clip/midi", "m3", GOOD_MIDI, 1), clip_id="m3", says="track"),
    "midi with four arguments": wrong(("/backline/clip/midi", "m4", GOOD_MIDI, "Lead", 1), clip_id="m4"),
    "model/load without a name": wrong(("/backline/model/load",), says="name"),
    "model/load with two names": wrong(("/backline/model/load", "fixed", "bach"), says="name"),
    "model/list with an argument": wrong(("/backline/model/list", 1), says="no arguments"),
    # ---- bad_args: live mode
    "transport/play with a string": wrong(("/backline/transport/play", "x"), says="beat"),
    "transport/play with two beats": wrong(("/backline/transport/play", 1.0, 2.0), says="beat"),
    "transport/stop with an argument": wrong(("/backline/transport/stop", 1), says="no arguments"),
    "transport/continue with an argument": wrong(("/backline/transport/continue", 1), says="no arguments"),
    "transport/tempo without a tempo": wrong(("/backline/transport/tempo",), says="bpm"),
    "transport/tempo 0.5": wrong(("/backline/transport/tempo", 0.5), says="1..999"),
    "transport/tempo 1000": wrong(("/backline/transport/tempo", 1000.0), says="1..999"),
    "transport/position -1": wrong(("/backline/transport/position", -1.0), says="position"),
    "transport/position 100000": wrong(("/backline/transport/position", 100000.0), says="position"),
    "live/note pitch 128": wrong(("/backline/live/note", 128, 100), says="pitch"),
    "live/note velocity 128": wrong(("/backline/live/note", 60, 128), says="velocity"),
    "live/note float pitch": wrong(("/backline/live/note", 60.0, 100), says="pitch"),
    "live/note one argument": wrong(("/backline/live/note", 60), says="pitch"),
    "live/loop 1025": wrong(("/backline/live/loop", 1025.0), says="0..1024"),
    "live/loop -1": wrong(("/backline/live/loop", -1.0), says="0..1024"),
    "live/set tempo": wrong(("/backline/live/set", "tempo", 120.0), says="host's clock"),
    "live/set bundle": wrong(("/backline/live/set", "bundle", 1), says="send /backline/set bundle 1"),
    "live/set threshold 2": wrong(("/backline/live/set", "threshold", 2.0), says="threshold"),
    "live/set one argument": wrong(("/backline/live/set", "seed"), says="key value"),
    "live/plan with an argument": wrong(("/backline/live/plan", 1), says="no arguments"),
    "live/subscribe with a string": wrong(("/backline/live/subscribe", "yes"), says="on"),
    # ---- bad_note: the ranges of Conventions
    "pitch 128": bad_note("p128", (128, 0.0, 1.0, 100, 0)),
    "pitch -1": bad_note("p-1", (-1, 0.0, 1.0, 100, 0)),
    "float pitch": bad_note("pf", (60.0, 0.0, 1.0, 100, 0)),
    "start -1": bad_note("s-1", (60, -1.0, 1.0, 100, 0)),
    "start 100000": bad_note("s1e5", (60, 100000.0, 1.0, 100, 0)),
    "start nan": bad_note("snan", (60, float("nan"), 1.0, 100, 0)),
    "start inf": bad_note("sinf", (60, float("inf"), 1.0, 100, 0)),
    "start a string": bad_note("sstr", (60, "zero", 1.0, 100, 0)),
    "duration 0": bad_note("d0", (60, 0.0, 0.0, 100, 0)),
    "duration -1": bad_note("d-1", (60, 0.0, -1.0, 100, 0)),
    "duration 10000.5": bad_note("d1e4", (60, 0.0, 10000.5, 100, 0)),
    "velocity 0": bad_note("v0", (60, 0.0, 1.0, 0, 0)),
    "velocity 128": bad_note("v128", (60, 0.0, 1.0, 128, 0)),
    "velocity 127.6": bad_note("v127.6", (60, 0.0, 1.0, 127.6, 0)),
    "velocity 0.5": bad_note("v0.5", (60, 0.0, 1.0, 0.5, 0)),
    "mute 2": bad_note("m2", (60, 0.0, 1.0, 100, 2)),
    "mute 0.5": bad_note("m0.5", (60, 0.0, 1.0, 100, 0.5)),
    # ---- unknown_address: matched exactly
    "unknown address": wrong(("/nope", 1), code="unknown_address", says="/nope"),
    "a wildcard pattern": wrong(("/backline/*", "x"), code="unknown_address"),
    "a prefix of an address": wrong(("/backline/clip", "x"), code="unknown_address"),
    "a trailing slash": wrong(("/backline/ping/", "x"), code="unknown_address"),
    "another case": wrong(("/Backline/Ping", "x"), code="unknown_address"),
    # ---- unknown_setting
    "set volume": wrong(("/backline/set", "volume", 3), code="unknown_setting", says="volume"),
    "set an empty key": wrong(("/backline/set", "", 1), code="unknown_setting"),
    "live/set volume": wrong(("/backline/live/set", "volume", 3), code="unknown_setting"),
    # ---- unknown_clip (ids echoed with their type)
    "notes for a clip never begun": wrong(("/backline/clip/notes", "u1", *NOTE_OK), clip_id="u1", code="unknown_clip"),
    "end for a clip never begun": wrong(("/backline/clip/end", "u2"), clip_id="u2", code="unknown_clip"),
    "cancel for a clip never begun": wrong(("/backline/clip/cancel", "u3"), clip_id="u3", code="unknown_clip"),
    "end after cancel": wrong(("/backline/clip/begin", "u4", 8.0), ("/backline/clip/cancel", "u4"),
                              ("/backline/clip/end", "u4"), clip_id="u4", code="unknown_clip"),
    "int id": wrong(("/backline/clip/end", 42), clip_id=42, code="unknown_clip"),
    "int64 id": wrong(("/backline/clip/end", 2**40), clip_id=2**40, code="unknown_clip"),
    "id of 256 characters": wrong(("/backline/clip/end", "y" * 256), clip_id="y" * 256, code="unknown_clip"),
    # ---- duplicate_id, too_many_clips, too_many_notes
    "begin twice": Case((("/backline/clip/begin", "d", 8.0), ("/backline/clip/begin", "d", 4.0),
                         ("/backline/clip/cancel", "d")), (("d", "duplicate_id"),), "already open"),
    "65 open clips": Case(tuple(("/backline/clip/begin", f"o{i}", 8.0) for i in range(65)),
                          (("o64", "too_many_clips"),), "64 clips"),
    "20,001 notes": Case(clip("big", *[[(68 + i % 5, (k * 200 + i) * 0.25, 0.25, 100, 0) for i in range(200)]
                                       for k in range(100)], [NOTE_OK], [NOTE_OK]),
                         (("big", "too_many_notes"),), "more than 20000 notes"),
    # ---- model: not installed, or installed but cannot be loaded (broken.onnx)
    "set model not installed": wrong(("/backline/set", "model", "nosuch"), code="model", says="nosuch"),
    "begin with a model not installed": wrong(("/backline/clip/begin", "mi", 8.0, "nosuch"), clip_id="mi",
                                              code="model", says="nosuch"),
    "live/set model not installed": wrong(("/backline/live/set", "model", "nosuch"), code="model"),
    "set model that cannot be loaded": wrong(("/backline/set", "model", "broken"), code="model", says="broken"),
    "clip with a model that cannot be loaded": Case((("/backline/clip/begin", "mb", 8.0, "broken"),
                                                     *clip("mb", (NOTE_OK,))[1:]), (("mb", "model"),), "broken"),
    # ---- model_load: names only; then not installed, or refused
    "model/load a path": wrong(("/backline/model/load", "../models/bach"), code="model_load", says="not a model name"),
    "model/load a backslash": wrong(("/backline/model/load", "a\\b"), code="model_load"),
    "model/load ..": wrong(("/backline/model/load", "a..b"), code="model_load"),
    "model/load a colon": wrong(("/backline/model/load", "c:bach"), code="model_load"),
    "model/load a .onnx name": wrong(("/backline/model/load", "bach.ONNX"), code="model_load"),
    "model/load an int": wrong(("/backline/model/load", 5), code="model_load"),
    "model/load not installed": wrong(("/backline/model/load", "nosuch"), code="model_load", says="nosuch"),
    "model/load a broken file": wrong(("/backline/model/load", "broken"), code="model_load", says="broken"),
    # ---- bad_melody
    "clip without notes": Case(clip("e0"), (("e0", "bad_melody"),), "no (unmuted) notes"),
    "clip in 7/8": Case((("/backline/clip/begin", "m78", 8.0, "", 0, 120.0, "7/8"),
                         ("/backline/clip/notes", "m78", *NOTE_OK), ("/backline/clip/end", "m78")),
                        (("m78", "bad_melody"),), "the melody is in 7/8"),
    "clip of muted notes": Case(clip("mu", ((60, 0.0, 1.0, 100, 1),)), (("mu", "bad_melody"),), "no (unmuted) notes"),
    "melody too wide": Case(clip("wide", ((30, 0.0, 1.0, 100, 0), (100, 1.0, 1.0, 100, 0))),
                            (("wide", "bad_melody"),), "semitones"),
    "damaged MIDI blob": wrong(("/backline/clip/midi", "dm", b"MThd not really"), clip_id="dm",
                               code="bad_melody", says="damaged MIDI file"),
    "drum-only MIDI blob": wrong(("/backline/clip/midi", "dr", midi_bytes(None, [(TrackSpec("Kit", 0, 9, is_drum=True),
                                                                                  MELODY)])),
                                 clip_id="dr", code="bad_melody", says="drums"),
    "MIDI blob without the named track": wrong(("/backline/clip/midi", "tr", GOOD_MIDI, "Bassoon"), clip_id="tr",
                                               code="bad_melody", says="Bassoon"),
    # ---- malformed: answered with id "", nothing in the datagram acted on
    "not OSC": wrong(b"hello, this is not OSC", code="malformed", says="does not start like"),
    "an empty datagram": wrong(b"", code="malformed", says="does not start like"),
    "unknown type tag": wrong(raw_message("/backline/ping", "x"), code="malformed", says="type tag 'x'"),
    "unknown type tag after the id": wrong(raw_message("/backline/ping", "sx", osc_string(b"p")), code="malformed",
                                           says="type tag 'x' (argument 2"),
    "OSC's optional char tag": wrong(raw_message("/backline/ping", "c", b"\0\0\0x"), code="malformed",
                                     says="type tag 'c'"),
    "a string argument that is not there": wrong(raw_message("/backline/ping", "s"), code="malformed",
                                                 says="argument 1 (s) is cut short"),
    "an int cut short": wrong(raw_message("/backline/ping", "i", b"\0\0"), code="malformed", says="cut short"),
    "bytes after the last argument": wrong(msg("/backline/ping", "p") + b"\0\0\0\1", code="malformed",
                                           says="4 bytes after the arguments"),
    "no comma before the type tags": wrong(osc_string(b"/backline/ping") + osc_string(b"s") + osc_string(b"p"),
                                           code="malformed", says="','"),
    "address without its NUL": wrong(b"/backline/ping", code="malformed", says="address"),
    "a string that is not UTF-8": wrong(raw_message("/backline/ping", "s", b"\xff\xfe\0\0"), code="malformed",
                                        says="UTF-8"),
    "negative blob size": wrong(raw_message("/backline/clip/midi", "sb", osc_string(b"nb"), struct.pack(">i", -8)),
                                code="malformed", says="negative blob size"),
    "blob longer than the datagram": wrong(raw_message("/backline/clip/midi", "sb", osc_string(b"lb"),
                                                       struct.pack(">i", 1000), b"MThd"),
                                           code="malformed", says="cut short"),
    "array not closed": wrong(raw_message("/backline/ping", "[s", osc_string(b"p")), code="malformed", says="'['"),
    "array closed twice": wrong(raw_message("/backline/ping", "]s", osc_string(b"p")), code="malformed", says="']'"),
    "bundle time tag cut short": wrong(b"#bundle\0\0\0\0\0", code="malformed", says="time tag"),
    "bundle element larger than the datagram": wrong(bundle(element(PING_BAD, len(PING_BAD) + 4)),
                                                     code="malformed", says="size"),
    "bundle element size not a multiple of 4": wrong(bundle(element(PING_BAD, len(PING_BAD) - 2) + b"\0\0"),
                                                     code="malformed", says="size"),
    "bundle element of size 0": wrong(bundle(element(PING_BAD), element(b"")), code="malformed",
                                      says="element 2: size 0"),
    "bundle element of negative size": wrong(bundle(element(PING_BAD), struct.pack(">i", -4)), code="malformed",
                                             says="size -4"),
    "bundle element size cut short": wrong(bundle(element(PING_BAD)) + b"\0\0", code="malformed",
                                           says="element 2: its size is cut short"),
    "bundle element that cuts its message": wrong(bundle(element(PING_BAD[:-4], len(PING_BAD) - 4) + PING_BAD[-4:]),
                                                  code="malformed", says="element 1"),
    "bundle element that swallows the next": wrong(bundle(element(PING_BAD + element(PING_BAD),
                                                                  len(PING_BAD) * 2 + 4)),
                                                   code="malformed", says="bytes after the arguments"),
    "bundle element that is neither": wrong(bundle(element(PING_BAD), element(b"junk")), code="malformed",
                                            says="neither a message nor a bundle"),
    "bundle with a bad message after a good one": wrong(bundle(element(PING_BAD),
                                                               element(raw_message("/backline/ping", "x"))),
                                                        code="malformed", says="element 2"),
    "bundles nested 9 deep": wrong(nested(8, bundle(element(PING_BAD))), code="malformed", says="nested"),
    # ---- clock: the OSC transport of a server that follows MIDI clock
    "transport/play under --clock midi": wrong(("/backline/transport/play",), code="clock", server="midi",
                                               says="--clock midi"),
    "transport/stop under --clock midi": wrong(("/backline/transport/stop",), code="clock", server="midi"),
    "transport/continue under --clock midi": wrong(("/backline/transport/continue",), code="clock", server="midi"),
    "transport/tempo under --clock midi": wrong(("/backline/transport/tempo", 120.0), code="clock", server="midi"),
    "transport/position under --clock midi": wrong(("/backline/transport/position", 4.0), code="clock",
                                                   server="midi"),
    # ---- no answer at all: the addresses the server sends itself
    "its own replies are not answered": Case(tuple((address, "x") for address in (
        "/backline/pong", "/backline/accomp/begin", "/backline/accomp/track", "/backline/accomp/notes",
        "/backline/accomp/end", "/backline/error", "/backline/model/loaded", "/backline/model/list/reply",
        "/backline/live/plan/begin", "/backline/live/plan/notes", "/backline/live/plan/end")), ()),
}

# Codes no datagram can provoke quickly or at all: the test that provokes each one on an
# in-process server (real UDP, the same Bridge and OscServer) and how.
IN_PROCESS = {
    "busy": "test_busy_when_the_queues_are_full: the worker and the reload thread held",
    "expired": "test_expired_after_60_s_without_a_message: the clients' clock moved on 61 s",
    "failed": "test_failed_and_internal_while_generating: a BacklineError injected into generation",
    "internal": "test_failed_and_internal_while_generating, test_internal_in_a_handler: an injected bug",
    "model_rejected": "test_model_rejected_is_announced: a broken file dropped into the model folder",
}


# --------------------------------------------------------------------------- servers and peers


class Peer(Client):
    """A bound socket that pins its replies to itself, as `backline send` does, so that the
    liblo session's reply_to (rule 2 of 'Who gets the replies') does not take them."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.send("/backline/reply_to")

    def step(self, step) -> None:
        self.raw(step if isinstance(step, bytes) else msg(*step))

    def exchange(self, steps, n_errors: int, timeout: float = 20.0) -> list[OscMessage]:
        """Send, wait for n_errors errors (some come from the worker, after any pong), then
        collect the rest up to the pong of a fresh ping."""
        for step in steps:
            self.step(step)
        got: list[OscMessage] = []
        if n_errors:
            count = [0]

            def enough(m: OscMessage) -> bool:
                count[0] += m.address == ERROR
                return count[0] >= n_errors

            got = self.receive_until(enough, timeout)
        return got + self.ping_after()


def type_tags(message: OscMessage) -> str:
    data = message.dgram
    start = (data.index(b"\0") // 4 + 1) * 4
    return data[start + 1:data.index(b"\0", start)].decode()


def id_tag(value) -> str:
    if isinstance(value, str):
        return "s"
    return "i" if value.bit_length() <= 31 else "h"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """$BACKLINE_MODELS: 'broken' is installed but is no model."""
    folder = tmp_path_factory.mktemp("models")
    (folder / "broken.onnx").write_bytes(b"not an ONNX model\n" * 64)
    return folder


@pytest.fixture(scope="module")
def servers(fixed_model, models_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("serve")
    env = {**os.environ, "BACKLINE_MODELS": str(models_dir)}
    main = Server(fixed_model, logs / "main.log", "--midi-api", "none", env=env)
    try:
        midi = Server(fixed_model, logs / "midi.log", "--midi-api", "none", "--clock", "midi", "--no-reload", env=env)
    except BaseException:
        main.stop()
        raise
    yield {"main": main, "midi": midi}
    midi.stop()
    main.stop()


# --------------------------------------------------------------------------- the table


def test_every_documented_code_has_a_case():
    documented = documented_codes()
    assert len(documented) == len(set(documented)), documented
    covered = {code for case in CASES.values() for _, code in case.expect} | set(IN_PROCESS)
    assert set(documented) - covered == set(), "documented codes without a case here"
    assert covered - set(documented) == set(), "codes tested here but not documented"
    for name, how in IN_PROCESS.items():
        for test in re.findall(r"test_\w+", how):
            assert callable(globals().get(test)), (name, test)


def test_every_code_the_server_sends_is_documented():
    sent = server_codes()
    assert {"bad_args", "malformed", "internal", "failed", "bad_melody"} <= sent, sent  # the scan works
    assert sent - set(documented_codes()) == set()


@pytest.mark.parametrize("name", CASES, ids=list(CASES))
def test_documented_error(name, servers):
    case = CASES[name]
    server = servers[case.server]
    peer = Peer(server.port)
    try:
        got = peer.exchange(case.steps, len(case.expect))
    finally:
        peer.close()
    assert [m.address for m in got] == [ERROR] * len(case.expect), [(m.address, m.params[:3]) for m in got]
    assert [(m.params[0], m.params[1]) for m in got] == list(case.expect)
    for message, (clip_id, _) in zip(got, case.expect):
        assert type_tags(message) == id_tag(clip_id) + "ss", "the id must come back with its own type"
    if case.says:
        assert case.says in got[-1].params[2], got[-1].params[2]
    assert server.proc.poll() is None


def test_limits_and_accepted_forms_get_no_error(servers):
    """The other side of each limit: what the doc accepts is accepted."""
    peer = Peer(servers["main"].port)
    try:
        # Each clip's range must suit the model: pitch 0 and 127 go in clips of their own.
        low = [(0, 0.0, 10000.0, 1, 0), (2, 15, 1.0, 126.5, True), (4, 99999.9, 1.0, 127, False)]
        high = [(127, 0.0, 1.0, 127, 0), (125, 2.0, 0.5, 99.6, 0)]
        many = [(68 + i % 5, i * 0.05, 0.05, 100, 0) for i in range(300)]  # more than 200 in one message
        steps = [
            ("/backline/set", "seed", 0), ("/backline/set", "threshold", 0.5), ("/backline/set", "sample", True),
            ("/backline/set", "tempo", 1), ("/backline/set", "tempo", 999.0), ("/backline/set", "model", ""),
            ("/backline/set", "model", "fixed"), typed("/backline/set", ("seed", "s"), (2**40, "h")),
            typed("/backline/set", ("threshold", "s"), (0.25, "d")),
            ("/backline/set", "bundle", 1), ("/backline/set", "bundle", True), ("/backline/set", "bundle", ""),
            ("/backline/set", "bundle", False), ("/backline/set", "bundle", 0),  # (single messages again below)
            ("/backline/clip/begin", "max", 100000.0), ("/backline/clip/cancel", "max"),
            ("/backline/clip/begin", "opts", 8.0, "", 0, 999.0), ("/backline/clip/cancel", "opts"),
            ("/backline/clip/begin", "m68", 8.0, "", 0, 120.0, "6/8"), ("/backline/clip/cancel", "m68"),
            typed("/backline/clip/begin", ("dbl", "s"), (16.0, "d")), ("/backline/clip/cancel", "dbl"),
            ("/backline/clip/begin", 2**40, 16), ("/backline/clip/cancel", 2**40),
            *[("/backline/clip/begin", f"open{i}", 8.0) for i in range(64)],
            *[("/backline/clip/cancel", f"open{i}") for i in range(64)],
            ("/backline/live/loop", 1024.0), ("/backline/live/loop", 0),
            ("/backline/live/plan",), ("/backline/live/subscribe", 0),
        ]
        assert [m.address for m in peer.exchange(steps, 0)] == ["/backline/live/plan/begin", "/backline/live/plan/end"]
        for clip_id, notes in (("low", low), ("high", high), ("many", many)):
            for step in clip(clip_id, notes):
                peer.step(step)
            stream = peer.receive_until(lambda m: m.address in ("/backline/accomp/end", ERROR)
                                        and m.params[0] == clip_id)
            assert stream[-1].address == "/backline/accomp/end", [(m.address, m.params[:3]) for m in stream]
        long_id = "z" * 256
        peer.send("/backline/ping", long_id)
        assert peer.receive_until(lambda m: m.address == "/backline/pong")[-1].params[0] == long_id
        peer.send("/backline/ping", 2**40)
        pong = peer.receive_until(lambda m: m.address == "/backline/pong")[-1]
        assert pong.params[0] == 2**40 and type_tags(pong).startswith("h")
        assert peer.ping_after() == []
    finally:
        peer.close()


def test_a_bundle_is_handled_in_the_order_it_stands(servers):
    """Time tags are ignored: a nested bundle timed in the future is not put last."""
    peer = Peer(servers["main"].port)
    try:
        future = struct.pack(">II", 0xF0000000, 0)
        peer.raw(bundle(element(bundle(element(msg("/backline/ping", "first")), timetag=future)),
                        element(msg("/backline/ping", "second")), element(msg("/backline/nope", "third"))))
        got = peer.receive_until(lambda m: m.address == ERROR)
        assert [m.params[0] for m in got] == ["first", "second", ""]
        assert peer.ping_after() == []
    finally:
        peer.close()


# --------------------------------------------------------------------------- liblo


@pytest.fixture(scope="module")
def liblo(servers):
    """oscdump as the reply target of every oscsend (rule 2 of 'Who gets the replies')."""
    oscsend, oscdump = need("oscsend"), need("oscdump")
    port = servers["main"].port
    dump_port = free_port()
    dump = subprocess.Popen([oscdump, "-L", str(dump_port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in dump.stdout], daemon=True).start()

    def send(address: str, types: str = "", *values) -> None:
        subprocess.run([oscsend, "127.0.0.1", str(port), address, types, *map(str, values)], check=True, timeout=10)

    def until_pong(tag: str) -> list[str]:
        send("/backline/ping", "s", tag)
        seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2).rstrip("\n").split(" ", 1)[1]
            except queue.Empty:
                continue
            if line.startswith(f'/backline/pong ssss "{tag}"'):
                return seen
            seen.append(line)
        raise AssertionError(f"oscdump never printed the pong {tag!r}; it printed {seen}")

    send("/backline/reply_to", "si", "127.0.0.1", dump_port)
    until_pong("liblo-ready")
    yield send, until_pong
    send("/backline/reply_to", "si", "127.0.0.1", 0)
    dump.terminate()
    dump.wait(timeout=5)


LIBLO_ERROR = re.compile(r'^/backline/error ([sih])ss (?:"(.*?)"|(-?\d+)) "([a-z_]+)" "(.*)"$')
LIBLO_CASES = {  # oscsend arguments -> (id's type tag, id as printed, code, part of the message)
    "char argument": (("/backline/ping", "c", "x"), ("s", "", "malformed", "type tag 'c'")),
    "symbol argument": (("/backline/ping", "S", "sym"), ("s", "", "malformed", "type tag 'S'")),
    "MIDI argument as an id": (("/backline/ping", "m", "00903c64"), ("s", "", "bad_args", "string or an int")),
    "nil as an id": (("/backline/ping", "N"), ("s", "", "bad_args", "nil")),
    "float id": (("/backline/clip/end", "f", 1.5), ("s", "", "bad_args", "string or an int")),
    "int64 id echoed as int64": (("/backline/clip/end", "h", 5_000_000_000), ("h", "5000000000", "unknown_clip", "")),
    "double length is fine, the duplicate is not": (("/backline/clip/begin", "sd", "L1", 8.0),
                                                    ("s", "L1", "duplicate_id", "already open")),
    "unknown address": (("/backline/nope", "i", 1), ("s", "", "unknown_address", "/backline/nope")),
    "reply_to without a port": (("/backline/reply_to", "s", "127.0.0.1"), ("s", "", "bad_args", "host port")),
}


@pytest.mark.parametrize("name", LIBLO_CASES, ids=list(LIBLO_CASES))
def test_documented_error_from_liblo(name, liblo):
    send, until_pong = liblo
    args, (tag, clip_id, code, says) = LIBLO_CASES[name]
    if name.startswith("double length"):
        send("/backline/clip/begin", "sd", "L1", 8.0)  # accepted: d for a number of beats
    send(*args)
    lines = until_pong(name.replace(" ", "-"))
    assert len(lines) == 1, lines
    match = LIBLO_ERROR.match(lines[0])
    assert match, lines[0]
    assert (match[1], match[2] if match[2] is not None else match[3], match[4]) == (tag, clip_id, code)
    assert says in match[5], match[5]
    if name.startswith("double length"):
        send("/backline/clip/cancel", "s", "L1")
        assert until_pong("cancelled") == []


def test_300_notes_in_one_oscsend_message(liblo):
    """More than 200 notes in one clip/notes (a Live clip passed on whole) are taken."""
    send, until_pong = liblo
    values = [v for i in range(300) for v in (68 + i % 5, i * 0.05, 0.05, 100, 0)]
    send("/backline/clip/begin", "sf", "L300", 16.0)
    send("/backline/clip/notes", "s" + "iffii" * 300, "L300", *values)
    send("/backline/clip/end", "s", "L300")
    lines = until_pong("after-300")
    deadline = time.monotonic() + 10
    while not any(line.startswith('/backline/accomp/end si "L300"') for line in lines):
        assert time.monotonic() < deadline and not any(line.startswith(ERROR) for line in lines), lines
        lines += until_pong("after-300")
    assert not any(line.startswith(ERROR) for line in lines), lines


# --------------------------------------------------------------------------- model_rejected


def test_model_rejected_is_announced(servers, models_dir):
    """A broken model file dropped into a model folder: every recent client hears of it."""
    peer = Peer(servers["main"].port)
    try:
        assert peer.ping_after() == []  # a client heard from lately
        (models_dir / "fresh.onnx").write_bytes(b"half a model\n" * 64)
        got = peer.receive_until(lambda m: m.address == ERROR, timeout=20)
        assert [(m.params[0], m.params[1]) for m in got] == [("", "model_rejected")], got
        assert "fresh" in got[0].params[2]
        assert peer.ping_after() == []
    finally:
        peer.close()
    assert "the loaded model keeps serving" in servers["main"].stderr()


# --------------------------------------------------------------------------- in process


@pytest.fixture
def in_process(fixed_model, models_dir, monkeypatch):
    """A Bridge on a real UDP socket in this process, with a clock the test moves."""
    from backline.bridge.osc.clients import Clients
    from backline.bridge.serving.engine import Engine
    from backline.bridge.osc.handlers import Bridge
    from backline.bridge.osc.server import OscServer
    from backline.bridge.serving.reload import Reloader

    monkeypatch.setenv("BACKLINE_MODELS", str(models_dir))
    now = [1000.0]
    engine = Engine(str(fixed_model), device="cpu")
    reloader = Reloader(engine, watch=False)
    osc = OscServer("127.0.0.1", 0)
    bridge = Bridge(engine, osc.send, osc.resolve, Clients(clock=lambda: now[0]), reloader=reloader)
    osc.start(bridge)
    reloader.start()
    peer = Peer(osc.port)
    try:
        yield peer, bridge, now
    finally:
        peer.close()
        osc.stop()
        reloader.stop()
        engine.close()


def test_expired_after_60_s_without_a_message(in_process):
    peer, _, now = in_process
    assert peer.exchange([("/backline/clip/begin", "idle", 8.0), ("/backline/clip/notes", "idle", *NOTE_OK)], 0) == []
    now[0] += 61
    got = peer.receive_until(lambda m: m.address == ERROR, timeout=5)  # the loop checks once a second
    assert [(m.params[0], m.params[1]) for m in got] == [("idle", "expired")] and "60 s" in got[0].params[2]
    # The rest of an expired clip is ignored quietly; begin starts it afresh.
    assert peer.exchange([("/backline/clip/notes", "idle", *NOTE_OK), ("/backline/clip/end", "idle"),
                          ("/backline/clip/begin", "idle", 8.0), ("/backline/clip/cancel", "idle")], 0) == []


def test_busy_when_the_queues_are_full(in_process):
    from backline.bridge.serving import engine as engine_module
    peer, bridge, _ = in_process
    started, release = threading.Event(), threading.Event()
    try:
        assert bridge.engine.submit(lambda: (started.set(), release.wait(30)))  # holds the worker
        assert started.wait(10)
        steps = [("/backline/clip/midi", f"q{i}", b"MThd junk") for i in range(engine_module.MAX_QUEUED + 1)]
        got = peer.exchange(steps, 1)
        assert [(m.params[0], m.params[1]) for m in got] == [(f"q{engine_module.MAX_QUEUED}", "busy")]
        assert "send this one again later" in got[0].params[2]
        # A model load waits on the reload thread: 16 may wait, the 17th is busy.
        held = threading.Event()
        assert bridge.reloader.request("nosuch", lambda result: (held.set(), release.wait(30)))
        assert held.wait(10)
        got = peer.exchange([("/backline/model/load", "fixed")] * 17, 1)
        assert [(m.params[0], m.params[1]) for m in got] == [("", "busy")] and "model loads" in got[0].params[2]
    finally:
        release.set()
    # Then every queued clip is answered (bad_melody: the blob is junk).
    last = f"q{engine_module.MAX_QUEUED - 1}"
    got = peer.receive_until(lambda m: m.params[:2] == [last, "bad_melody"], timeout=30)
    answered = {m.params[0] for m in got if m.address == ERROR and m.params[1] == "bad_melody"}
    assert answered == {f"q{i}" for i in range(engine_module.MAX_QUEUED)}


def test_failed_and_internal_while_generating(in_process, monkeypatch):
    from backline.models.providers import DeviceError

    peer, bridge, _ = in_process

    def device_gone(name):
        raise DeviceError("the GPU went away")

    monkeypatch.setattr(bridge.engine, "generator", device_gone)
    got = peer.exchange([("/backline/clip/midi", "f1", GOOD_MIDI)], 1)
    assert [(m.params[0], m.params[1]) for m in got] == [("f1", "failed")] and "GPU went away" in got[0].params[2]

    def bug(name):
        raise KeyError("oops")

    monkeypatch.setattr(bridge.engine, "generator", bug)
    for step in clip(77, (NOTE_OK,)):
        peer.step(step)
    got = peer.receive_until(lambda m: m.address == ERROR)
    assert [(m.params[0], m.params[1]) for m in got] == [(77, "internal")] and "server log" in got[0].params[2]
    assert type_tags(got[0]) == "iss"


def test_internal_in_a_handler(in_process, monkeypatch, caplog):
    peer, bridge, _ = in_process

    def bug(name):
        raise ZeroDivisionError("oops")

    loaded = bridge.engine.loaded
    monkeypatch.setattr(bridge.engine, "loaded", bug)
    peer.send("/backline/ping", "p")
    got = peer.receive_until(lambda m: m.address == ERROR)
    assert [(m.params[0], m.params[1]) for m in got] == [("", "internal")]
    assert "ZeroDivisionError" in got[0].params[2]
    assert any("internal error ZeroDivisionError" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(bridge.engine, "loaded", loaded)
    assert peer.ping_after() == []  # and it goes on serving
