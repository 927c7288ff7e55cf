"""Assembling one client's clips from begin / notes / end messages.

State only, no I/O: the handlers turn a ProtocolError into /backline/error. A clip that
was dropped (too many notes, a bad note, idle too long) leaves a tombstone, so the rest of
its notes and its end are ignored quietly: the client hears about the clip once.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from backline.models.notes import Note

from backline.bridge.osc.protocol import Begin, ProtocolError

MAX_NOTES_PER_CLIP = 20_000
MAX_OPEN_CLIPS = 64
CLIP_IDLE_S = 60.0
_MAX_TOMBSTONES = 256

ClipId = str | int


@dataclass
class OpenClip:
    begin: Begin
    touched: float  # clock time of the last message for this clip
    notes: list[Note] = field(default_factory=list)


class ClipAssembler:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        max_open: int = MAX_OPEN_CLIPS,
        max_notes: int = MAX_NOTES_PER_CLIP,
        idle_s: float = CLIP_IDLE_S,
    ) -> None:
        self.clock = clock
        self.max_open = max_open
        self.max_notes = max_notes
        self.idle_s = idle_s
        self._open: dict[ClipId, OpenClip] = {}
        self._dropped: OrderedDict[ClipId, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def begin(self, begin: Begin) -> None:
        clip_id = begin.clip_id
        if clip_id in self._open:
            raise ProtocolError("duplicate_id", f"clip {clip_id!r} is already open; end it or use a new id", clip_id)
        if len(self._open) >= self.max_open:
            raise ProtocolError(
                "too_many_clips", f"{self.max_open} clips are already open; end or cancel some first", clip_id
            )
        self._dropped.pop(clip_id, None)
        self._open[clip_id] = OpenClip(begin, self.clock())

    def add(self, clip_id: ClipId, notes: list[Note]) -> None:
        clip = self._get(clip_id)
        if clip is None:
            return
        if len(clip.notes) + len(notes) > self.max_notes:
            self.drop(clip_id)
            raise ProtocolError(
                "too_many_notes", f"clip {clip_id!r} has more than {self.max_notes} notes; it was dropped "
                "(split the melody into shorter clips)", clip_id,
            )
        clip.notes.extend(notes)
        clip.touched = self.clock()

    def end(self, clip_id: ClipId) -> OpenClip | None:
        """The finished clip; None for a dropped one (already reported)."""
        clip = self._get(clip_id)
        if clip is not None:
            del self._open[clip_id]
        return clip

    def cancel(self, clip_id: ClipId) -> None:
        if self._get(clip_id) is not None:
            del self._open[clip_id]

    def is_open(self, clip_id: ClipId) -> bool:
        return clip_id in self._open

    def drop(self, clip_id: ClipId) -> None:
        self._open.pop(clip_id, None)
        self._dropped[clip_id] = None
        while len(self._dropped) > _MAX_TOMBSTONES:
            self._dropped.popitem(last=False)

    def expire(self) -> list[ClipId]:
        """Drop the clips idle for longer than idle_s; returns their ids."""
        now = self.clock()
        stale = [cid for cid, clip in self._open.items() if now - clip.touched > self.idle_s]
        for clip_id in stale:
            self.drop(clip_id)
        return stale

    def _get(self, clip_id: ClipId) -> OpenClip | None:
        clip = self._open.get(clip_id)
        if clip is None and clip_id not in self._dropped:
            raise ProtocolError("unknown_clip", f"no open clip {clip_id!r}; send /backline/clip/begin first", clip_id)
        return clip
