"""Who a datagram belongs to: reply routing and per-client state.

A client is identified by its reply target, the address its replies go to:
  1. the target the sender itself registered with /backline/reply_to, else
  2. the target last registered by any sender on the same host (IP), else
  3. the sender's own address and port.
Rule 2 is what makes stateless senders work: liblo's `oscsend` sends every message from a
new source port, so `reply_to` then `set`, `clip/begin`, ... from separate oscsend calls
all land in the one client whose replies go to the registered port. A client that wants
its replies at its own socket whatever others on its host registered sends a bare
`/backline/reply_to` (no arguments) first; `reply_to HOST 0` removes the redirect.
Settings and open clips belong to the client, so every sender routed to one target
shares them.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from backline.bridge.clip.clips import ClipAssembler

Address = tuple[str, int]
MAX_CLIENTS = 256
MAX_ROUTES = 1024
CLIENT_IDLE_S = 600.0


@dataclass
class Settings:
    """None everywhere means: the server's default."""

    model: str | None = None
    seed: int | None = None
    threshold: float | None = None
    tempo: float | None = None  # kept for live mode; clip mode works in beats
    sample: bool | None = None
    bundle: bool | None = None  # clip replies packed into OSC bundles (None: off)

    def with_overrides(self, **values: Any) -> "Settings":
        merged = {k: v for k, v in values.items() if v is not None}
        return Settings(**{**self.__dict__, **merged})


@dataclass
class Client:
    target: Address
    clips: ClipAssembler
    settings: Settings = field(default_factory=Settings)
    seen: float = 0.0


def _bounded_set(table: OrderedDict, key: Any, value: Any, limit: int) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > limit:
        table.popitem(last=False)


class Clients:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 assembler: Callable[[], ClipAssembler] | None = None) -> None:
        self.clock = clock
        self._assembler = assembler or (lambda: ClipAssembler(clock))
        self._pinned: OrderedDict[Address, Address] = OrderedDict()
        self._pin_heard: dict[Address, float] = {}  # a pinned sender's last message
        self._by_host: OrderedDict[str, Address] = OrderedDict()
        self._clients: OrderedDict[Address, Client] = OrderedDict()

    def target_for(self, sender: Address) -> Address:
        pinned = self._pinned.get(sender)
        if pinned is not None:
            self._pin_heard[sender] = self.clock()
        return pinned or self._by_host.get(sender[0]) or sender

    def reply_to(self, sender: Address, target: Address | None) -> None:
        """target None: pin the sender to itself; port 0: remove the redirect."""
        if target is None:
            _bounded_set(self._pinned, sender, sender, MAX_ROUTES)
        elif target[1] == 0:
            self._pinned.pop(sender, None)
            self._by_host.pop(sender[0], None)
        else:
            _bounded_set(self._pinned, sender, target, MAX_ROUTES)
            _bounded_set(self._by_host, sender[0], target, MAX_ROUTES)
        self._pin_heard[sender] = self.clock()

    def client(self, sender: Address) -> Client:
        """The sender's client, created on first contact (least recently seen evicted)."""
        target = self.target_for(sender)
        client = self._clients.get(target)
        if client is None:
            client = Client(target, self._assembler())
        client.seen = self.clock()
        _bounded_set(self._clients, target, client, MAX_CLIENTS)
        return client

    def targets(self) -> list[Address]:
        """The reply targets of every client heard from lately (announcements go there)."""
        return list(self._clients)

    def expire(self) -> list[tuple[Address, Any]]:
        """Expired clips as (target, clip id); forgets clients idle with no open clip, and
        the pins of senders idle as long. A pin outlives its sender's socket: a program
        that later gets the same (ephemeral) port would have its replies routed by it."""
        now = self.clock()
        expired = []
        for target, client in list(self._clients.items()):
            expired += [(target, clip_id) for clip_id in client.clips.expire()]
            if not len(client.clips) and now - client.seen > CLIENT_IDLE_S:
                del self._clients[target]
        for sender, heard in list(self._pin_heard.items()):
            if now - heard > CLIENT_IDLE_S or sender not in self._pinned:
                del self._pin_heard[sender]
                self._pinned.pop(sender, None)
        return expired
