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

from .engine import Engine
from .handlers import Bridge
from .osc_server import OscServer


def cmd_serve(args: argparse.Namespace) -> int:
    if args.midi_api != "none":
        print(f"backline: virtual MIDI ({args.midi_api}) is not available yet; running with OSC only",
              file=sys.stderr, flush=True)
    stop = threading.Event()
    # Handlers first: a SIGTERM that comes while the model loads, or right after the
    # banner, still ends in a clean stop.
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    osc = OscServer(args.osc_host, args.osc_port)
    engine = None
    try:
        osc.bind()
        engine = Engine(args.model, device=args.device)
        osc.start(Bridge(engine, osc.send, osc.resolve))
        print(f"backline: listening on {osc.url}, model {engine.default} on {engine.provider}", flush=True)
        while not stop.wait(0.5):  # a timed wait, so the signal handler gets to run everywhere
            pass
    finally:
        osc.stop()
        if engine is not None:
            engine.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("backline: stopped", flush=True)
    return 0
