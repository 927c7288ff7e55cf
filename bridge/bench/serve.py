"""`backline serve` as a subprocess for the benchmarks: on a port the OS picks, with the
clip path alone, stopped with SIGTERM."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from backline.models.errors import BacklineError

SERVE_START_S = 120.0


class Serve:
    """`backline serve` on a port the OS picks, stopped with SIGTERM."""

    def __init__(self, model: str, device: str, *extra: str) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", prefix="backline-bench-serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backline.bridge.cli", "serve", "--model", model, "--osc-port", "0",
             "--device", device, *quiet_serve_options(), *extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        banner: list[str] = []
        reader = threading.Thread(target=lambda: banner.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(SERVE_START_S)
        match = re.search(r"listening on osc\.udp://([^\s,]+):(\d+)", banner[0] if banner else "")
        if match is None:
            self.stop()
            raise BacklineError(f"backline serve did not start for the benchmark: {self.errors()}")
        self.port = int(match.group(2))
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # drain the rest

    def errors(self) -> str:
        self.log.flush()
        lines = Path(self.log.name).read_text().strip().splitlines()
        return lines[-1] if lines else f"exit status {self.proc.poll()}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


def quiet_serve_options() -> list[str]:
    """Serve with the clip path alone: no model watching, no MIDI ports, no live engine."""
    return ["--no-reload", "--midi-api", "none", "--clock", "off"]
