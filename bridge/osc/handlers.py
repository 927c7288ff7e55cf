"""What each incoming message does (network thread; knows nothing of sockets).

Every handler validates with `protocol`, changes client state or queues a generation job,
and raises ProtocolError for anything it cannot do; `Bridge.handle` turns that into
/backline/error to the client's reply target, so no input can stop the server.
"""

from __future__ import annotations

import collections
import functools
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from backline.models import registry
from backline.models.errors import BacklineError

from backline.bridge.osc import protocol
from backline.bridge.osc.clients import Address, Client, Clients
from backline.bridge.serving.engine import Engine
from backline.bridge.clip.generate import ClipJob, ClipTask, Send
from backline.bridge.osc.protocol import ProtocolError

if TYPE_CHECKING:
    from backline.bridge.serving.reload import LoadResult, Reloader

log = logging.getLogger("backline.bridge")

Resolve = Callable[[str, int], Address]
Args = Sequence[Any]


class Bridge:
    def __init__(self, engine: Engine, send: Send, resolve: Resolve, clients: Clients | None = None,
                 reloader: "Reloader | None" = None) -> None:
        self.engine = engine
        self.reloader = reloader
        self.send = send
        self.resolve = resolve
        self.clients = clients or Clients()
        self._last_tick = 0.0
        self._announcements: collections.deque = collections.deque(maxlen=64)  # from the reload thread
        self.routes: dict[str, Callable[[Address, str, Args], None]] = {
            protocol.PING: self.ping,
            protocol.SET: self.set,
            protocol.REPLY_TO: self.reply_to,
            protocol.CLIP_BEGIN: self.clip_begin,
            protocol.CLIP_NOTES: self.clip_notes,
            protocol.CLIP_END: self.clip_end,
            protocol.CLIP_CANCEL: self.clip_cancel,
            protocol.CLIP_MIDI: self.clip_midi,
            protocol.MODEL_LOAD: self.model_load,
            protocol.MODEL_LIST: self.model_list,
        }
        if reloader is not None:
            reloader.on_result(self.announce)

    # ------------------------------------------------------------------ entry points

    def handle(self, sender: Address, address: str, args: Args) -> None:
        self.call(self.routes.get(address, self.unknown_handler), sender, address, args)

    def call(self, handler: Callable[[Address, str, Args], None], sender: Address, address: str, args: Args) -> None:
        """Run one handler; whatever goes wrong is answered, never raised."""
        try:
            handler(sender, address, args)
        except ProtocolError as exc:
            self._error(sender, exc.clip_id, exc.code, exc.message)
        except Exception as exc:  # a bug: one log line, an answer, and the server goes on
            log.error("%s from %s:%d: internal error %s: %s", address, *sender, type(exc).__name__, exc)
            self._error(sender, "", "internal", f"internal error ({type(exc).__name__}); see the server log")

    def unknown_handler(self, sender: Address, address: str, args: Args) -> None:
        if address in protocol.OUTGOING:  # another server's reply: answering could loop forever
            log.debug("ignored %s from %s:%d", address, *sender)
            return
        raise ProtocolError("unknown_address", f"no address {address}; see docs/PROTOCOL.md for the /backline/* addresses")

    def malformed(self, sender: Address, reason: str) -> None:
        log.warning("ignored a datagram from %s:%d that is not OSC (%s)", *sender, reason)
        self._error(sender, "", "malformed", f"the datagram is not a valid OSC message or bundle ({reason})")

    def tick(self) -> None:
        """Called often from the network loop: reports clips idle too long (once a second)."""
        while self._announcements:  # client state belongs to this thread: announce from here
            message = self._announcements.popleft()
            for target in self.clients.targets():
                self.send(target, message)
        now = time.monotonic()
        if now - self._last_tick < 1.0:
            return
        self._last_tick = now
        for target, clip_id in self.clients.expire():
            self.send(target, protocol.error(clip_id, "expired", f"clip {clip_id!r} got no message for "
                                                                 "60 s and was dropped; send it again"))

    # ------------------------------------------------------------------ handlers

    def ping(self, sender: Address, address: str, args: Args) -> None:
        ping_id = protocol.parse_id(address, args)
        protocol.expect_count(address, args, 1, 1, "id", ping_id)
        client = self.clients.client(sender)
        model = client.settings.model or self.engine.default
        generator = self.engine.loaded(model)
        provider = generator.provider if generator is not None else "loading"
        self.send(client.target, protocol.pong(ping_id, model, provider))

    def set(self, sender: Address, address: str, args: Args) -> None:
        key, value = protocol.parse_set(address, args)
        client = self.clients.client(sender)
        if key == "model" and value is not None:
            self._check_model(value, "")
            self._queue(client, "", functools.partial(self._preload, client.target, value))
        setattr(client.settings, key, value)

    def reply_to(self, sender: Address, address: str, args: Args) -> None:
        target = protocol.parse_reply_to(address, args)
        if target is not None and target[1] != 0:
            target = self.resolve(*target)
        self.clients.reply_to(sender, target)

    def clip_begin(self, sender: Address, address: str, args: Args) -> None:
        begin = protocol.parse_begin(address, args)
        if begin.model is not None:
            self._check_model(begin.model, begin.clip_id)
        self.clients.client(sender).clips.begin(begin)

    def clip_notes(self, sender: Address, address: str, args: Args) -> None:
        clip_id = protocol.parse_id(address, args)
        clips = self.clients.client(sender).clips
        clips.add(clip_id, [])  # unknown_clip first: a stray message is not a bad note
        try:
            _, notes = protocol.parse_notes(address, args)
        except ProtocolError as exc:
            if not clips.is_open(clip_id):
                return  # dropped before: the client has heard about this clip already
            clips.drop(clip_id)  # a clip with holes would be accompanied wrongly
            raise ProtocolError(exc.code, f"{exc.message}; clip {clip_id!r} was dropped, send it again", clip_id) from None
        clips.add(clip_id, notes)

    def clip_end(self, sender: Address, address: str, args: Args) -> None:
        clip_id = protocol.parse_id(address, args)
        protocol.expect_count(address, args, 1, 1, "id", clip_id)
        client = self.clients.client(sender)
        clip = client.clips.end(clip_id)
        if clip is None:
            return  # dropped: reported already
        begin = clip.begin
        settings = client.settings.with_overrides(model=begin.model, seed=begin.seed, tempo=begin.tempo)
        # The clip is [0, length): a note starting at or after its end is not part of it.
        notes = [n for n in clip.notes if n.start < begin.length_beats]
        self._queue(client, clip_id, ClipJob(client.target, clip_id, settings, notes, begin.length_beats,
                                             meter=begin.meter))

    def clip_cancel(self, sender: Address, address: str, args: Args) -> None:
        clip_id = protocol.parse_id(address, args)
        protocol.expect_count(address, args, 1, 1, "id", clip_id)
        self.clients.client(sender).clips.cancel(clip_id)

    def clip_midi(self, sender: Address, address: str, args: Args) -> None:
        clip = protocol.parse_midi(address, args)
        client = self.clients.client(sender)
        self._queue(client, clip.clip_id, ClipJob(client.target, clip.clip_id, client.settings.with_overrides(),
                                                  midi=clip.data, track=clip.track))

    def model_load(self, sender: Address, address: str, args: Args) -> None:
        name = protocol.parse_model_name(address, args)
        target = self.clients.client(sender).target
        if self.reloader is None:
            raise ProtocolError("model_load", f"{address}: model reloading is not available in this server")

        def reply(result: "LoadResult") -> None:
            if result.ok:
                self.send(target, protocol.model_loaded(result.name, result.generator.provider))
            else:
                self.send(target, protocol.error("", "model_load", result.error))

        if not self.reloader.request(name, reply):
            raise ProtocolError("busy", "too many model loads are waiting; send this one again later")

    def model_list(self, sender: Address, address: str, args: Args) -> None:
        protocol.expect_count(address, args, 0, 0, "no arguments")
        names: list[str] = []
        for folder in registry.search_dirs():
            try:
                names += [p.stem for p in folder.glob("*.onnx") if not p.name.startswith(".")]
            except OSError:
                continue
        self.send(self.clients.client(sender).target, protocol.model_list_reply(sorted(set(names))))

    def announce(self, result: "LoadResult") -> None:
        """A model file changed on disk and was swapped in or refused (reload thread): every
        client heard from lately gets /backline/model/loaded or /backline/error model_rejected
        (sent from the network thread's next tick, which owns the client table)."""
        if result.ok:
            self._announcements.append(protocol.model_loaded(result.name, result.generator.provider))
        else:
            self._announcements.append(protocol.error("", "model_rejected", result.error))

    # ------------------------------------------------------------------ helpers

    def _error(self, sender: Address, clip_id: str | int, code: str, text: str) -> None:
        self.send(self.clients.target_for(sender), protocol.error(clip_id, code, text))

    def _check_model(self, name: str, clip_id: str | int) -> None:
        try:
            self.engine.check_name(name)
        except BacklineError as exc:
            raise ProtocolError("model", str(exc), clip_id) from None

    def _queue(self, client: Client, clip_id: str | int, job: ClipJob | Callable[[], None]) -> None:
        work = ClipTask(job, self.engine, self.send) if isinstance(job, ClipJob) else job
        if not self.engine.submit(work):
            raise ProtocolError("busy", "too many clips are waiting to be generated; send this one again later", clip_id)

    def _preload(self, target: Address, name: str) -> None:
        """Load a model chosen with /backline/set before the first clip needs it."""
        try:
            self.engine.generator(name)
        except BacklineError as exc:
            self.send(target, protocol.error("", "model", str(exc)))
