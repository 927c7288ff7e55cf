"""How much of a long clip's reply reaches a real OSC receiver, paced and unpaced.

Two `backline serve` processes run side by side, one with the default reply pacing and
one with `--reply-rate 0`. For each clip size, liblo's `oscdump` listens on a port of its
own, the clip (ode-to-joy repeated to the size) is sent with `/backline/reply_to` pointing
at oscdump, and the notes oscdump printed are counted against the `n_notes` of
`/backline/accomp/end`. `backline bench --parts delivery` prints the figures;
`python -m backline.bridge.bench.delivery --sizes 2000,20000` runs this part alone.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from backline.models.notes import Note

from backline.bridge.bench.serve import Serve
from backline.bridge.osc import protocol
from backline.bridge.osc.pacing import DEFAULT_RATE

DEFAULT_SIZES = (2000, 20000)
WAIT_S = 120.0  # the longest a reply may take before what arrived is counted


def melody_of(size: int) -> list[Note]:
    """ode-to-joy, repeated end to end until it has `size` notes."""
    from backline.models.midi import pick_melody_track, read_midi
    from backline.models.registry import SHIPPED_DIR

    theme = pick_melody_track(read_midi(SHIPPED_DIR / "examples" / "ode-to-joy.mid")).notes
    length = max(n.end for n in theme)
    length = float(int(length + 3.999) // 4 * 4)  # whole 4/4 bars
    notes: list[Note] = []
    turn = 0
    while len(notes) < size:
        notes += [n._replace(start=n.start + turn * length) for n in theme][: size - len(notes)]
        turn += 1
    return notes


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def count_dump(text: str) -> tuple[int, int | None, str | None]:
    """(notes printed, n_notes of accomp/end or None, the first error line or None) from
    oscdump's output, one message per line: `<timetag> <address> <types> <args...>`."""
    got, sent, error = 0, None, None
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3:
            continue
        if words[1] == "/backline/accomp/notes":
            got += (len(words) - 5) // 5  # after the time tag, address, types, id and index
        elif words[1] == "/backline/accomp/end":
            sent = int(words[-1])
        elif words[1] == "/backline/error" and error is None:
            error = line
    return got, sent, error


def deliver(port: int, notes: Sequence[Note], clip_id: str) -> dict[str, Any]:
    """Send one clip to the server on `port` with its replies going to a fresh oscdump."""
    dump_port = _free_udp_port()
    with tempfile.TemporaryDirectory(prefix="backline-delivery-") as folder:
        out_path = Path(folder) / "dump.txt"
        with open(out_path, "w") as out:
            dump = subprocess.Popen(["oscdump", "-L", str(dump_port)], stdout=out, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.3)  # oscdump binds its port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                server = ("127.0.0.1", port)
                sock.sendto(protocol.message(protocol.REPLY_TO, "127.0.0.1", dump_port).dgram, server)
                length = max(n.end for n in notes)
                sock.sendto(protocol.message(protocol.CLIP_BEGIN, clip_id, float(length)).dgram, server)
                for message in protocol.notes_messages(protocol.CLIP_NOTES, (clip_id,), notes):
                    sock.sendto(message.dgram, server)
                    time.sleep(0.002)  # the server's own receive buffer is large; this is the clip going in
                started = time.monotonic()
                sock.sendto(protocol.message(protocol.CLIP_END, clip_id).dgram, server)
                deadline = started + WAIT_S
                done_at = None
                while time.monotonic() < deadline:
                    time.sleep(0.05)
                    got, sent, error = count_dump(out_path.read_text())
                    if sent is not None or error is not None:
                        done_at = time.monotonic()
                        time.sleep(0.5)  # datagrams still in oscdump's buffer
                        break
                sock.sendto(protocol.message(protocol.REPLY_TO, "127.0.0.1", 0).dgram, server)
        finally:
            dump.terminate()
            dump.wait(5)
        got, sent, error = count_dump(out_path.read_text())
    seconds = (done_at - started) if done_at else None
    return {"melody_notes": len(notes), "sent": sent, "delivered": got, "error": error,
            "seconds_to_end": seconds}


def measure_delivery(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("oscdump") is None:
        return {"available": False, "reason": "liblo's oscdump is not installed (Debian: apt install liblo-tools)"}
    sizes = getattr(args, "sizes", None) or DEFAULT_SIZES
    modes = {"paced": (), "unpaced": ("--reply-rate", "0")}
    serves = {}
    try:
        for mode, extra in modes.items():
            serves[mode] = Serve(args.model, args.device, *extra)
        rows = []
        for size in sizes:
            notes = melody_of(size)
            for mode, serve in serves.items():
                rows.append({"mode": mode, **deliver(serve.port, notes, f"{mode}-{size}")})
    finally:
        for serve in serves.values():
            serve.stop()
    return {"available": True, "rate_mb_s": DEFAULT_RATE / 1e6, "rows": rows}


def format_delivery(result: dict[str, Any]) -> list[str]:
    if not result.get("available"):
        return [f"delivery: not available ({result.get('reason', 'unknown')})"]
    lines = [f"delivery of a long clip's reply to liblo's oscdump over loopback UDP (paced: "
             f"{result['rate_mb_s']:g} MB/s per client after a 64 KB burst; unpaced: --reply-rate 0)"]
    for row in result["rows"]:
        if row["sent"] is None:
            lines.append(f"  {row['melody_notes']:6d}-note clip, {row['mode']:8s}: no accomp/end arrived "
                         f"({row['delivered']} notes did){'; ' + row['error'] if row['error'] else ''}")
            continue
        share = 100.0 * row["delivered"] / row["sent"] if row["sent"] else 100.0
        lines.append(f"  {row['melody_notes']:6d}-note clip, {row['mode']:8s}: {row['delivered']:7d} of "
                     f"{row['sent']:7d} notes delivered ({share:5.1f} %), end after {row['seconds_to_end']:.2f} s")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    from backline.models.registry import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="python -m backline.bridge.bench.delivery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=lambda t: [int(w) for w in t.split(",")], default=list(DEFAULT_SIZES))
    args = parser.parse_args(argv)
    print("\n".join(format_delivery(measure_delivery(args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
