"""The OSC clip protocol: addresses, argument validation and reply building.

Pure functions only (no sockets, no state), shared by the server and `backline send`.
docs/PROTOCOL.md is the reference for every address, argument and error code.

Notes travel as AbletonOSC 5-tuples `pitch:i start:f duration:f velocity:i mute:i`
(times in beats from the clip start), so Live's `/live/clip/get/notes` can be passed on
as it is. Velocity may also come as a float and mute as OSC True/False, because that is
what Live's own note API hands out.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Iterable, Iterator, Sequence, Union

from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from backline.models.meter import Meter, MeterError, parse_meter
from backline.models.notes import Note

# Incoming.
PING = "/backline/ping"
SET = "/backline/set"
REPLY_TO = "/backline/reply_to"
CLIP_BEGIN = "/backline/clip/begin"
CLIP_NOTES = "/backline/clip/notes"
CLIP_END = "/backline/clip/end"
CLIP_CANCEL = "/backline/clip/cancel"
CLIP_MIDI = "/backline/clip/midi"
MODEL_LOAD = "/backline/model/load"
MODEL_LIST = "/backline/model/list"
# Live mode (bridge/live/session.py): the host's transport and the live melody.
TRANSPORT_PLAY = "/backline/transport/play"
TRANSPORT_STOP = "/backline/transport/stop"
TRANSPORT_CONTINUE = "/backline/transport/continue"
TRANSPORT_TEMPO = "/backline/transport/tempo"
TRANSPORT_POSITION = "/backline/transport/position"
LIVE_NOTE = "/backline/live/note"
LIVE_LOOP = "/backline/live/loop"
LIVE_PLAN = "/backline/live/plan"
LIVE_SUBSCRIBE = "/backline/live/subscribe"
LIVE_SET = "/backline/live/set"
# Outgoing.
PONG = "/backline/pong"
ACCOMP_BEGIN = "/backline/accomp/begin"
ACCOMP_TRACK = "/backline/accomp/track"
ACCOMP_NOTES = "/backline/accomp/notes"
ACCOMP_END = "/backline/accomp/end"
ERROR = "/backline/error"
MODEL_LOADED = "/backline/model/loaded"
MODEL_LIST_REPLY = "/backline/model/list/reply"
# The server never answers these: a reply sent to another Backline server (reply_to
# pointing at one) must not start an endless exchange of errors.
LIVE_PLAN_BEGIN = "/backline/live/plan/begin"
LIVE_PLAN_NOTES = "/backline/live/plan/notes"
LIVE_PLAN_END = "/backline/live/plan/end"
OUTGOING = frozenset({PONG, ACCOMP_BEGIN, ACCOMP_TRACK, ACCOMP_NOTES, ACCOMP_END, ERROR,
                      MODEL_LOADED, MODEL_LIST_REPLY,
                      LIVE_PLAN_BEGIN, LIVE_PLAN_NOTES, LIVE_PLAN_END})

MAX_NOTES_PER_MESSAGE = 200  # in replies: near 5 KiB, under python-osc's 8 KiB buffers
MAX_START_BEATS = 100_000.0
MAX_DURATION_BEATS = 10_000.0
MAX_ID_LENGTH = 256
SETTING_KEYS = ("model", "seed", "threshold", "tempo", "sample", "bundle")
_FLAG_SETTINGS = {  # the 0/1 settings, with what their bad values are told
    "sample": "sample must be 0 (threshold) or 1 (sample notes)",
    "bundle": "bundle must be 0 (one message a datagram) or 1 (replies packed into OSC bundles)",
}
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class ProtocolError(Exception):
    """A message the server cannot act on; answered with /backline/error id code message."""

    def __init__(self, code: str, message: str, clip_id: str | int = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.clip_id = clip_id


def version() -> str:
    try:
        return metadata.version("backline")
    except metadata.PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------- datagrams

BUNDLE_PREFIX = b"#bundle\0"
MAX_BUNDLE_DEPTH = 8  # bundles in bundles: more is refused as malformed
# Type tags python-osc reads, with their sizes (None: an OSC string, -1: a blob). Any other
# tag (OSC's optional c S I too) would make python-osc skip it silently and misread the rest.
_TAG_SIZES = {"i": 4, "f": 4, "r": 4, "m": 4, "h": 8, "d": 8, "t": 8, "s": None, "b": -1,
              "T": 0, "F": 0, "N": 0, "[": 0, "]": 0}
_READ_TAGS = "i h f d s b T F"  # the ones Backline's messages take


def datagram_problem(data: bytes) -> str | None:
    """Why `data` is not an OSC message or bundle python-osc reads exactly, or None.

    Checked before dispatch because python-osc is lenient: it skips unknown type tags,
    ignores bytes after the last argument and does not check a bundle element's size."""
    if data.startswith(BUNDLE_PREFIX):
        return _bundle_problem(data, 1)
    if data.startswith(b"/"):
        return _message_problem(data)
    return "it does not start like an OSC message ('/') or bundle ('#bundle')"


def _bundle_problem(data: bytes, depth: int, path: str = "") -> str | None:
    """`path`: where this bundle stands, e.g. "2.1." for the first element of element 2."""
    if depth > MAX_BUNDLE_DEPTH:
        return f"bundles nested more than {MAX_BUNDLE_DEPTH} deep"
    if len(data) < 16:
        return f"{'bundle element ' + path[:-1] + ': ' if path else ''}the bundle's time tag is cut short"
    index, element = 16, 0
    while index < len(data):
        element += 1
        where = f"bundle element {path}{element}"
        if len(data) - index < 4:
            return f"{where}: its size is cut short ({len(data) - index} bytes left)"
        (size,) = struct.unpack_from(">i", data, index)
        index += 4
        if size <= 0 or size % 4 or size > len(data) - index:
            return (f"{where}: size {size} is wrong (a positive multiple of 4, at most the "
                    f"{len(data) - index} bytes left)")
        content = data[index:index + size]
        index += size
        if content.startswith(BUNDLE_PREFIX):
            problem = _bundle_problem(content, depth + 1, f"{path}{element}.")
            if problem is not None:
                return problem  # names its own element
        elif content.startswith(b"/"):
            problem = _message_problem(content)
        else:
            problem = "it is neither a message nor a bundle"
        if problem is not None:
            return f"{where} ({size} bytes): {problem}"
    return None


def _osc_string_end(data: bytes, index: int) -> int | None:
    """The index after the OSC string at `index` (NUL-terminated, padded to 4), or None."""
    end = data.find(b"\0", index)
    if end < 0:
        return None
    end += 4 - (end - index) % 4
    return end if end <= len(data) else None


def _utf8(data: bytes, start: int, end: int) -> str | None:
    """The OSC string in data[start:end] (up to its first NUL), or None if not UTF-8."""
    try:
        return data[start:end].split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _message_problem(data: bytes) -> str | None:
    end = _osc_string_end(data, 0)
    if end is None:
        return "the address is not a NUL-terminated, padded OSC string"
    if _utf8(data, 0, end) is None:
        return "the address is not UTF-8"
    if end == len(data):
        return None  # no type tags: no arguments
    if data[end:end + 1] != b",":
        return "the type tag string (after the address) does not start with ','"
    tags_end = _osc_string_end(data, end)
    if tags_end is None:
        return "the type tag string is not a NUL-terminated, padded OSC string"
    tags = data[end + 1:tags_end].split(b"\0", 1)[0].decode("latin-1")
    if _arguments_fit(data, tags, tags_end):
        return None
    return _arguments_problem(data, tags, tags_end)


def _run_size(run: str) -> int:
    """The bytes of a run of fixed-size type tags."""
    return (4 * (run.count("i") + run.count("f") + run.count("r") + run.count("m"))
            + 8 * (run.count("h") + run.count("d") + run.count("t")))


_FAST_TAGS = frozenset("ifrmhdtTFNsb")
_VARIABLE = re.compile("[sb]")


def _arguments_fit(data: bytes, tags: str, index: int) -> bool:
    """The usual message, quickly: True when the arguments fill `data` exactly. False
    means only 'look closer' (`_arguments_problem` says what is wrong, if anything)."""
    if not _FAST_TAGS.issuperset(tags):
        return False
    start = 0
    for match in _VARIABLE.finditer(tags):
        index += _run_size(tags[start:match.start()])
        if match.group() == "s":
            end = _osc_string_end(data, index)
            if end is None or _utf8(data, index, end) is None:
                return False
        else:
            if len(data) - index < 4:
                return False
            (length,) = struct.unpack_from(">i", data, index)
            if length < 0:
                return False
            end = index + 4 + length + (-length % 4)
        if end > len(data):
            return False
        index, start = end, match.end()
    return index + _run_size(tags[start:]) == len(data)


def _arguments_problem(data: bytes, tags: str, index: int) -> str | None:
    """What is wrong with the arguments after the type tags, argument by argument."""
    shown = f"',{tags}'" if len(tags) <= 24 else f"',{tags[:24]}...'"
    arrays = 0
    for n, tag in enumerate(tags, 1):
        if tag not in _TAG_SIZES:
            return f"type tag {tag!r} (argument {n} of {shown}) is not one Backline reads ({_READ_TAGS})"
        size = _TAG_SIZES[tag]
        if size is None:
            string_end = _osc_string_end(data, index)
            if string_end is None:
                return f"argument {n} ({tag}) is cut short"
            if _utf8(data, index, string_end) is None:
                return f"argument {n} (s) is not UTF-8"
            index = string_end
        elif size < 0:
            if len(data) - index < 4:
                return f"argument {n} (b) is cut short"
            (length,) = struct.unpack_from(">i", data, index)
            if length < 0:
                return f"argument {n} (b): negative blob size {length}"
            index += 4 + length + (-length % 4)
        else:
            index += size
            arrays += {"[": 1, "]": -1}.get(tag, 0)
            if arrays < 0:
                return f"type tag ']' without '[' in {shown}"
        if index > len(data):
            return f"argument {n} ({tag}) is cut short"
    if arrays:
        return f"type tag '[' without ']' in {shown}"
    if index < len(data):
        return f"{len(data) - index} bytes after the arguments its type tags {shown} describe"
    return None


def read_datagram(data: bytes) -> list[OscMessage]:
    """The messages in a datagram: the message itself, or a (possibly nested) bundle's in
    the order they stand. Raises what python-osc raises for what it cannot parse."""
    if OscBundle.dgram_is_bundle(data):
        return list(_unpack(OscBundle(data)))
    return [OscMessage(data)]


def _unpack(bundle: OscBundle) -> Iterator[OscMessage]:
    for content in bundle:
        if isinstance(content, OscBundle):
            yield from _unpack(content)
        else:
            yield content


# --------------------------------------------------------------------------- parsing


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # OSC T/F arrive as bool


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def parse_id(address: str, args: Sequence[Any]) -> str | int:
    """The clip or ping id: the first argument, a string or an int, echoed back as given."""
    if not args:
        raise ProtocolError("bad_args", f"{address} needs an id (string or int) as its first argument")
    clip_id = args[0]
    if isinstance(clip_id, str):
        if len(clip_id) > MAX_ID_LENGTH:
            raise ProtocolError("bad_args", f"{address}: the id is longer than {MAX_ID_LENGTH} characters")
        return clip_id
    if _is_int(clip_id):
        return clip_id
    raise ProtocolError("bad_args", f"{address}: the id must be a string or an int, not {_kind(clip_id)}")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (bytes, bytearray)):
        return "a blob"
    if value is None:
        return "nil (N)"
    if isinstance(value, list):
        return "an array"
    return {int: "an int", float: "a float", str: "a string"}.get(type(value), type(value).__name__)


def expect_count(address: str, args: Sequence[Any], low: int, high: int, usage: str, clip_id: str | int = "") -> None:
    if not low <= len(args) <= high:
        raise ProtocolError("bad_args", f"{address} takes {usage}; got {len(args)} arguments", clip_id)


def parse_note(values: Sequence[Any], index: int = 0) -> Note:
    """One 5-tuple -> Note; ProtocolError('bad_note') naming the note and the problem."""
    pitch, start, duration, velocity, mute = values
    where = f"note {index + 1} (pitch {pitch!r}, start {start!r})"
    if not _is_int(pitch) or not 0 <= pitch <= 127:
        raise ProtocolError("bad_note", f"{where}: pitch must be an int 0..127")
    if not _is_number(start) or not 0 <= start < MAX_START_BEATS:
        raise ProtocolError("bad_note", f"{where}: start must be a number of beats >= 0 and < {MAX_START_BEATS:g}")
    if not _is_number(duration) or not 0 < duration <= MAX_DURATION_BEATS:
        raise ProtocolError("bad_note", f"{where}: duration must be a number of beats > 0 and <= {MAX_DURATION_BEATS:g}")
    if not _is_number(velocity) or not 1 <= velocity <= 127:
        raise ProtocolError("bad_note", f"{where}: velocity must be 1..127")
    if isinstance(mute, bool):
        mute = int(mute)
    if not _is_int(mute) or mute not in (0, 1):
        raise ProtocolError("bad_note", f"{where}: mute must be 0 or 1")
    return Note(pitch, float(start), float(duration), int(round(velocity)), bool(mute))


def parse_notes(address: str, args: Sequence[Any]) -> tuple[str | int, list[Note]]:
    """`id (pitch start duration velocity mute)*` -> (id, notes)."""
    clip_id = parse_id(address, args)
    values = args[1:]
    if len(values) % 5:
        raise ProtocolError(
            "bad_args", f"{address}: notes come as 5-tuples (pitch start duration velocity mute); "
            f"got {len(values)} values after the id, not a multiple of 5", clip_id,
        )
    try:
        notes = [parse_note(values[i:i + 5], i // 5) for i in range(0, len(values), 5)]
    except ProtocolError as exc:
        exc.clip_id = clip_id
        raise
    return clip_id, notes


@dataclass(frozen=True)
class Begin:
    clip_id: str | int
    length_beats: float
    model: str | None = None  # None: the client's setting
    seed: int | None = None
    tempo: float | None = None
    meter: Meter | None = None  # None: 4/4


def parse_begin(address: str, args: Sequence[Any]) -> Begin:
    """`id length_beats [model seed tempo meter]`."""
    clip_id = parse_id(address, args)
    expect_count(address, args, 2, 6, "id length_beats [model seed tempo meter]", clip_id)
    length = args[1]
    if not _is_number(length) or not 0 < length <= MAX_START_BEATS:
        raise ProtocolError("bad_args", f"{address}: length_beats must be a number > 0 and <= {MAX_START_BEATS:g}", clip_id)
    extra = {}
    for key, value in zip(("model", "seed", "tempo"), args[2:5]):
        try:
            extra[key] = parse_setting(key, value)
        except ProtocolError as exc:
            raise ProtocolError(exc.code, f"{address}: {exc.message}", clip_id) from None
    if len(args) == 6 and args[5] != "":
        extra["meter"] = _parse_meter(address, args[5], clip_id)
    return Begin(clip_id, float(length), **extra)


def _parse_meter(address: str, value: Any, clip_id: str | int) -> Meter:
    """'6/8' -> Meter; whether the model can follow it is the generator's to say."""
    if isinstance(value, str):
        try:
            return parse_meter(value)
        except MeterError:
            pass
    raise ProtocolError("bad_args", f"{address}: meter must be a string like 4/4 or 6/8 (\"\" for 4/4)", clip_id)


def parse_setting(key: str, value: Any) -> Any:
    """A validated setting value; "" resets a key to the server's default (None)."""
    if key not in SETTING_KEYS:
        raise ProtocolError("unknown_setting", f"no setting '{key}' (settings: {', '.join(SETTING_KEYS)})")
    if isinstance(value, str) and value == "":
        return None
    if key == "model":
        # A name only, never a path: a client must not make the server open files.
        if not isinstance(value, str) or not _MODEL_NAME.fullmatch(value) or value.endswith(".onnx"):
            raise ProtocolError("bad_args", "model must be an installed model's name (letters, digits, _ . -), not a path")
        return value
    if key == "seed":
        if not _is_int(value) or not 0 <= value < 2**63:
            raise ProtocolError("bad_args", "seed must be an int >= 0")
        return value
    if key == "threshold":
        if not _is_number(value) or not 0 < value < 1:
            raise ProtocolError("bad_args", "threshold must be a number between 0 and 1, e.g. 0.5")
        return float(value)
    if key == "tempo":
        if not _is_number(value) or not 1 <= value <= 999:
            raise ProtocolError("bad_args", "tempo must be a number of beats per minute, 1..999")
        return float(value)
    # sample, bundle
    if isinstance(value, bool):
        return value
    if not _is_int(value) or value not in (0, 1):
        raise ProtocolError("bad_args", _FLAG_SETTINGS[key])
    return bool(value)


def parse_set(address: str, args: Sequence[Any]) -> tuple[str, Any]:
    expect_count(address, args, 2, 2, "key value")
    key = args[0]
    if not isinstance(key, str):
        raise ProtocolError("bad_args", f"{address}: the key must be a string ({', '.join(SETTING_KEYS)})")
    return key, parse_setting(key, args[1])


def parse_model_name(address: str, args: Sequence[Any]) -> str:
    """`name`: an installed model's name, never a path (ProtocolError 'model_load' otherwise).
    The bridge never opens a file named over the network."""
    expect_count(address, args, 1, 1, "name (an installed model's name)")
    name = args[0]
    if (not isinstance(name, str) or not _MODEL_NAME.fullmatch(name) or ".." in name
            or name.lower().endswith(".onnx")):
        shown = repr(name)[:80] if isinstance(name, str) else _kind(name)
        raise ProtocolError("model_load", f"{address}: {shown} is not a model name; give the name of an "
                                          "installed model (letters, digits, _ . -; no path, no .onnx)")
    return name


def parse_reply_to(address: str, args: Sequence[Any]) -> tuple[str, int] | None:
    """`host port` -> (host, port); no arguments -> None (reply to the sender itself)."""
    if not args:
        return None
    expect_count(address, args, 2, 2, "host port (or nothing: reply to the sender)")
    host, port = args
    if not isinstance(host, str) or not host:
        raise ProtocolError("bad_args", f"{address}: host must be a string such as 127.0.0.1")
    if not _is_int(port) or not 0 <= port <= 65535:
        raise ProtocolError("bad_args", f"{address}: port must be an int 1..65535 (0 clears the redirect)")
    return host, port


@dataclass(frozen=True)
class MidiClip:
    clip_id: str | int
    data: bytes
    track: str | None


def parse_midi(address: str, args: Sequence[Any]) -> MidiClip:
    """`id blob [track]`: a whole Standard MIDI File in a blob."""
    clip_id = parse_id(address, args)
    expect_count(address, args, 2, 3, "id blob [track]", clip_id)
    if not isinstance(args[1], (bytes, bytearray)):
        raise ProtocolError("bad_args", f"{address}: the second argument must be a blob holding a .mid file, not {_kind(args[1])}", clip_id)
    track = args[2] if len(args) == 3 else None
    if track is not None and not isinstance(track, str):
        raise ProtocolError("bad_args", f"{address}: the track name must be a string", clip_id)
    return MidiClip(clip_id, bytes(args[1]), track or None)


# --------------------------------------------------------------------------- building


def message(address: str, *args: Any) -> OscMessage:
    builder = OscMessageBuilder(address)
    for arg in args:
        if isinstance(arg, bool):  # ints 0/1, not OSC T/F: easier for Max/Pd patches
            arg = int(arg)
        builder.add_arg(arg)
    return builder.build()


def chunks(notes: Sequence[Note], size: int = MAX_NOTES_PER_MESSAGE) -> Iterable[Sequence[Note]]:
    for i in range(0, len(notes), size):
        yield notes[i:i + size]


def _osc_string(text: str) -> bytes:
    data = text.encode("utf-8")
    return data + b"\0" * (4 - len(data) % 4)  # NUL-terminated, padded to 4 bytes


def _head_arg(value: str | int) -> tuple[str, bytes]:
    """An id or index as python-osc's builder would type and encode it."""
    if isinstance(value, str):
        return "s", _osc_string(value)
    if value.bit_length() <= 31:  # the builder's choice between int32 and int64
        return "i", struct.pack(">i", value)
    return "h", struct.pack(">q", value)


class _Packed(OscMessage):
    """An outgoing message made from its bytes; parsed only if something reads it."""

    def __init__(self, dgram: bytes) -> None:
        self._dgram = dgram

    def __getattr__(self, name: str):
        if name in ("_address_regexp", "_parameters"):  # the first read of address or params
            OscMessage.__init__(self, self._dgram)
            return getattr(self, name)
        raise AttributeError(name)


def notes_messages(address: str, head: Sequence[str | int], notes: Sequence[Note]) -> list[OscMessage]:
    """`address *head (5-tuple)*`, at most 200 notes each; no message for no notes.

    Byte for byte what `message()` builds, but packed with one struct call per message:
    the generic builder's work per argument was most of the cost of a clip's reply."""
    typed = [_head_arg(value) for value in head]
    prefix = _osc_string(address)
    head_tags = "".join(tag for tag, _ in typed)
    head_bytes = b"".join(data for _, data in typed)
    messages: list[OscMessage] = []
    for group in chunks(notes):
        values = [v for n in group for v in (int(n.pitch), float(n.start), float(n.duration), int(n.velocity),
                                             int(bool(n.mute)))]
        types = "iffii" * len(group)
        messages.append(_Packed(prefix + _osc_string(f",{head_tags}{types}") + head_bytes
                                + struct.pack(">" + types, *values)))
    return messages


# --------------------------------------------------------------------------- bundled replies

REPLY_FORMS = ("messages", "bundle")  # how a client can ask for clip replies: `bundle` 0 or 1
MAX_BUNDLE_BYTES = 8192  # a bundle's datagram: what python-osc's default receive buffer takes
_BUNDLE_HEAD = BUNDLE_PREFIX + struct.pack(">Q", 1)  # time tag 1: "immediately"


@dataclass(frozen=True)
class Bundle:
    """An outgoing OSC bundle of messages, as the bytes of its datagram."""

    dgram: bytes


Packet = Union[OscMessage, Bundle]  # what goes out as one datagram


class BundlePacker:
    """Messages in, in order; bundles out, each as full as MAX_BUNDLE_BYTES allow. A
    message too big for that goes alone in its bundle."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = len(_BUNDLE_HEAD)

    def add(self, message: OscMessage) -> Bundle | None:
        """Take a message; the bundle so far if the message did not fit in it, else None."""
        data = message.dgram
        full = self.flush() if self._parts and self._size + 4 + len(data) > MAX_BUNDLE_BYTES else None
        self._parts += (struct.pack(">i", len(data)), data)
        self._size += 4 + len(data)
        return full

    def flush(self) -> Bundle | None:
        """The bundle so far (None when empty); the next message starts a new one."""
        if not self._parts:
            return None
        bundle = Bundle(_BUNDLE_HEAD + b"".join(self._parts))
        self._parts, self._size = [], len(_BUNDLE_HEAD)
        return bundle


def packets(messages: Sequence[OscMessage], bundled: bool) -> list[Packet]:
    """What to send for `messages`: the messages themselves, or (bundled) the messages in
    order in as few bundles of at most MAX_BUNDLE_BYTES as they fit in."""
    if not bundled:
        return list(messages)
    packer = BundlePacker()
    out: list[Packet] = [full for message in messages if (full := packer.add(message)) is not None]
    last = packer.flush()
    return out if last is None else [*out, last]


def clip_request(clip_id: str | int, notes: Sequence[Note], *begin_args: Any,
                 lead: Sequence[OscMessage] = ()) -> list[Packet]:
    """A client's clip: the `lead` messages (e.g. a bare reply_to), `clip/begin clip_id
    *begin_args`, the notes, `clip/end`. As one bundle where that fits in MAX_BUNDLE_BYTES
    (one datagram to send and for the server to read: a clip of up to about 300 notes),
    else as the messages, one datagram each."""
    messages = [*lead, message(CLIP_BEGIN, clip_id, *begin_args), *notes_messages(CLIP_NOTES, (clip_id,), notes),
                message(CLIP_END, clip_id)]
    packed = packets(messages, True)
    return packed if len(packed) == 1 else messages


def pong(ping_id: str | int, model: str, provider: str) -> OscMessage:
    return message(PONG, ping_id, version(), model, provider)


def accomp_begin(clip_id: str | int, n_tracks: int, length_beats: float) -> OscMessage:
    return message(ACCOMP_BEGIN, clip_id, n_tracks, float(length_beats))


def accomp_track(clip_id: str | int, index: int, name: str, program: int, channel: int, is_drum: bool) -> OscMessage:
    return message(ACCOMP_TRACK, clip_id, index, name, program, channel, is_drum)


def accomp_notes(clip_id: str | int, index: int, notes: Sequence[Note]) -> list[OscMessage]:
    return notes_messages(ACCOMP_NOTES, (clip_id, index), notes)


def accomp_end(clip_id: str | int, n_notes: int) -> OscMessage:
    return message(ACCOMP_END, clip_id, n_notes)


def error(clip_id: str | int, code: str, text: str) -> OscMessage:
    return message(ERROR, clip_id, code, text)


def model_loaded(name: str, provider: str) -> OscMessage:
    return message(MODEL_LOADED, name, provider)


MAX_LISTED_MODELS = 100  # 100 names of <= 64 characters keep the reply under 8 KiB


def model_list_reply(names: Sequence[str]) -> OscMessage:
    return message(MODEL_LIST_REPLY, *names[:MAX_LISTED_MODELS])


def parse_numbers(address: str, args: Sequence[Any], low: int, high: int, usage: str) -> list[float]:
    """Between `low` and `high` finite numbers (ints or floats), as floats (live mode)."""
    expect_count(address, args, low, high, usage)
    for value in args:
        if not _is_number(value):
            raise ProtocolError("bad_args", f"{address} takes {usage}; {_kind(value)} is not a number")
    return [float(v) for v in args]


def live_plan(from_beat: float, to_beat: float, tracks: Sequence[Sequence[Note]]) -> list[OscMessage]:
    """`plan/begin from to n_tracks`, `plan/notes index (5-tuple)*` (absolute beats, at most
    200 notes each, none for a silent track), `plan/end`."""
    messages = [message(LIVE_PLAN_BEGIN, float(from_beat), float(to_beat), len(tracks))]
    for index, notes in enumerate(tracks):
        messages += notes_messages(LIVE_PLAN_NOTES, (index,), notes)
    messages.append(message(LIVE_PLAN_END))
    return messages
