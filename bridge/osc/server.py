"""The UDP transport: one socket, python-osc's server loop and Dispatcher.

Replies leave from the listening socket itself, so a client that sends from a bound socket
gets them on that socket. Nothing a peer sends can stop the loop: a datagram that is not
OSC, or that python-osc would read only by guessing (protocol.datagram_problem), is logged
(one line) and answered with /backline/error malformed, and nothing in it is acted on;
handler failures are caught in `Bridge`; a reply to a vanished peer is dropped. No file
path from the network is ever opened: model names are names (see protocol.parse_setting),
MIDI arrives as a blob.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
import threading
from typing import Any, Iterator

from pythonosc.dispatcher import Dispatcher, Handler
from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_message import OscMessage
from pythonosc.osc_server import BlockingOSCUDPServer

from backline.models.errors import BacklineError

from backline.bridge.osc.clients import Address
from backline.bridge.osc.handlers import Bridge
from backline.bridge.osc.pacing import DEFAULT_RATE, ReplyPacer
from backline.bridge.osc.protocol import Packet, ProtocolError, datagram_problem, read_datagram

log = logging.getLogger("backline.bridge")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11010  # AbletonOSC owns 11000/11001
RECEIVE_BUFFER = 4 << 20  # room for a burst of note messages while the loop is busy


class _ExactDispatcher(Dispatcher):
    """Exact addresses only: an OSC pattern such as /backline/* must not fan one message out
    to every handler. Bundle time tags are ignored (no sleeping in the network thread): a
    bundle's messages are handled in the order they stand in it."""

    def __init__(self) -> None:
        super().__init__()
        self.bridge: Bridge | None = None  # set by OscServer.start, before the loop runs

    def handlers_for_address(self, address_pattern: str) -> Iterator[Handler]:
        handlers = self._map.get(address_pattern)
        if handlers:
            yield from handlers
        elif self._default_handler is not None:
            yield self._default_handler

    def call_handlers_for_packet(self, data: bytes, client_address: Any) -> list:
        sender = tuple(client_address[:2])
        problem = datagram_problem(data)  # before parsing: python-osc guesses past some faults
        if problem is None:
            try:
                messages = read_datagram(data)
            except Exception as exc:  # ParseError, or anything a hostile datagram provokes
                problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            self.bridge.malformed(sender, problem[:200])
            return []
        for message in messages:
            for handler in self.handlers_for_address(message.address):
                handler.invoke(sender, message)
        return []


class _Server(BlockingOSCUDPServer):
    max_packet_size = 65535  # socketserver's 8 KiB would cut a /backline/clip/midi blob
    allow_reuse_address = False  # a second server on the port must fail, not share it

    @property
    def bridge(self) -> Bridge:
        return self.dispatcher.bridge

    def verify_request(self, request: Any, client_address: Any) -> bool:
        data = request[0]
        if OscMessage.dgram_is_message(data) or OscBundle.dgram_is_bundle(data):
            return True
        self.bridge.malformed(tuple(client_address[:2]), datagram_problem(data) or "not OSC")
        return False

    def service_actions(self) -> None:
        self.bridge.tick()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        log.error("datagram from %s: %s: %s", client_address, type(exc).__name__, exc)


class OscServer:
    """`bind()` (fails fast on a taken port), then `start(bridge)`; `send` and `resolve` are
    what the Bridge needs."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 reply_rate: float = DEFAULT_RATE) -> None:
        self.host, self.port = host, port
        # Replies go out through a pacer: a long clip's reply must not overflow its receiver.
        self.pacer = ReplyPacer(self._sendto, rate=reply_rate)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.family = socket.AF_INET

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"osc.udp://{host}:{self.port}"

    def bind(self) -> None:
        try:
            self._server = _Server((self.host, self.port), _ExactDispatcher())
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise BacklineError(
                    f"port {self.port} is in use (another backline serve?); pick another with --osc-port"
                ) from None
            raise BacklineError(
                f"cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); give --osc-host an "
                "address of this machine, such as 127.0.0.1"
            ) from None
        self.family = self._server.socket.family
        self.port = self._server.server_address[1]  # the real one when asked for port 0
        _tune(self._server.socket)

    def start(self, bridge: Bridge) -> None:
        if self._server is None:
            self.bind()
        dispatcher = self._server.dispatcher
        dispatcher.bridge = bridge
        for address in bridge.routes:
            dispatcher.map(address, self._forward(bridge, address), needs_reply_address=True)
        dispatcher.set_default_handler(
            lambda sender, address, *args: bridge.call(bridge.unknown_handler, sender, address, args),
            needs_reply_address=True,
        )
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="backline-osc", daemon=True)
        self._thread.start()

    @property
    def bridge(self) -> Bridge | None:
        return self._server.dispatcher.bridge if self._server is not None else None

    def add_routes(self, routes: dict) -> None:
        """More addresses after start (live mode's), handled like the Bridge's own: errors
        answered with /backline/error, the server never stopped by one."""
        bridge = self.bridge
        for address, handler in routes.items():
            bridge.routes[address] = handler
            self._server.dispatcher.map(address, self._forward(bridge, address), needs_reply_address=True)

    @staticmethod
    def _forward(bridge: Bridge, address: str):
        handler = bridge.routes[address]
        return lambda sender, addr, *args: bridge.call(handler, sender, addr, args)

    def stop(self) -> None:
        self.pacer.flush(timeout=1.0)  # a reply still going out gets a moment to finish
        self.pacer.close()
        server, self._server = self._server, None
        if server is not None:
            if self._thread is not None:
                server.shutdown()  # waits for the loop to finish its current datagram
            server.server_close()

    def send(self, target: Address, packet: Packet) -> None:
        """A message or bundle. Thread-safe; paced per target (bridge/osc/pacing.py); a peer
        that has gone is not an error."""
        self.pacer.send(target, packet.dgram)

    def _sendto(self, target: Address, data: bytes) -> None:
        server = self._server
        if server is None:
            return
        try:
            server.socket.sendto(data, target)
        except OSError as exc:
            log.debug("reply to %s:%d dropped: %s", *target, exc)

    def resolve(self, host: str, port: int) -> Address:
        """A reply_to host -> socket address, without DNS (it would stall the network thread)."""
        flags = 0 if host == "localhost" else socket.AI_NUMERICHOST
        try:
            infos = socket.getaddrinfo(host, port, self.family, socket.SOCK_DGRAM, 0, flags)
        except (socket.gaierror, UnicodeError):
            example = "::1" if self.family == socket.AF_INET6 else "127.0.0.1"
            raise ProtocolError(
                "bad_args", f"reply_to host {host!r} is not an address this server can reply to; give an "
                f"IP address such as {example} (no host names: looking one up would stall the server)"
            ) from None
        return tuple(infos[0][4][:2])


def _tune(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)  # the OS may cap it
    except OSError:
        pass
    if hasattr(socket, "SIO_UDP_CONNRESET"):  # Windows: an ICMP "port unreachable" from a
        sock.ioctl(socket.SIO_UDP_CONNRESET, False)  # vanished client must not break recvfrom
