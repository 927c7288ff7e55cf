"""`backline serve`: the resident process.

Start-up order: bind the OSC port (fails in a moment if it is taken), load and warm the
model, then serve until SIGINT or SIGTERM. Each front end (OSC now; virtual MIDI and live
mode next) is started here against the one Engine and stopped here in reverse order.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Callable

from backline.bridge.serving.engine import DEFAULT_BATCH_WINDOW_MS, DEFAULT_MAX_BATCH, Engine
from backline.bridge.osc.handlers import Bridge
from backline.bridge.midi.ports import MidiPorts
from backline.bridge.midi.common import MidiUnavailable, default_api
from backline.bridge.osc.server import OscServer
from backline.bridge.osc.pacing import DEFAULT_RATE
from backline.bridge.serving.reload import Reloader


def open_midi(args: argparse.Namespace, engine: Engine) -> MidiPorts | None:
    """The virtual MIDI ports for the default model's tracks, or None (--midi-api none, or
    the backend is unavailable: one line says why and the server goes on with OSC only)."""
    api = getattr(args, "midi_api", None) or default_api()
    if api == "none":
        return None
    try:
        ports = MidiPorts.open(api, engine.loaded(None).spec.tracks,
                               per_track_ports=getattr(args, "per_track_ports", False))
    except MidiUnavailable as exc:
        print(f"backline: virtual MIDI unavailable ({exc}); running with OSC only", file=sys.stderr, flush=True)
        return None
    print(f"backline: virtual MIDI ({api}): {', '.join(ports.port_names)}", flush=True)
    return ports


def start_frontends(engine: Engine, osc: OscServer, ports: MidiPorts | None,
                    args: argparse.Namespace) -> list[Callable[[], None]]:
    """Start the front ends that play through the MIDI ports; return their stop functions
    (cmd_serve calls them in reverse order before it closes the ports).

    LIVE MODE attaches here: it gets the one Engine, the OSC server (for its transport
    messages) and `ports` (None without virtual MIDI): ports.set_input_callback() for the
    melody and the host's clock, ports.send(channel, msg) for the accompaniment,
    ports.notes_off() on stop / tempo jump, ports.retarget(tracks) on a model swap."""
    stoppers: list[Callable[[], None]] = []
    if getattr(args, "clock", "auto") != "off":
        from backline.bridge.live.session import start_live  # live mode: bridge/live/session.py

        stoppers.append(start_live(engine, osc, ports, args))
    return stoppers


def cmd_serve(args: argparse.Namespace) -> int:
    stop = threading.Event()
    # Handlers first: a SIGTERM that comes while the model loads, or right after the
    # banner, still ends in a clean stop.
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    osc = OscServer(args.osc_host, args.osc_port,
                    reply_rate=getattr(args, "reply_rate", DEFAULT_RATE / 1e6) * 1e6)
    engine = None
    reloader = None
    ports: MidiPorts | None = None
    stoppers: list[Callable[[], None]] = []
    try:
        osc.bind()
        engine = Engine(args.model, device=args.device,
                        batch_window_ms=getattr(args, "batch_window_ms", DEFAULT_BATCH_WINDOW_MS),
                        max_batch=getattr(args, "max_batch", DEFAULT_MAX_BATCH))
        # Hot reload: watches the model folders unless --no-reload; /backline/model/load always works.
        reloader = Reloader(engine, watch=not getattr(args, "no_reload", False))
        osc.start(Bridge(engine, osc.send, osc.resolve, reloader=reloader))
        reloader.start()
        ports = open_midi(args, engine)
        stoppers = start_frontends(engine, osc, ports, args)
        print(f"backline: listening on {osc.url}, model {engine.default} on {engine.provider}", flush=True)
        while not stop.wait(0.5):  # a timed wait, so the signal handler gets to run everywhere
            pass
    finally:
        for stop_frontend in reversed(stoppers):
            stop_frontend()
        if ports is not None:
            ports.close()  # all notes off on every channel used, then the ports go
        osc.stop()
        if reloader is not None:
            reloader.stop()
        if engine is not None:
            engine.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("backline: stopped", flush=True)
    return 0
