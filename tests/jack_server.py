"""A real JACK server with the dummy backend (no sound card), for tests of virtual MIDI.

Each server gets its own name, so tests never meet a user's JACK server or each other's;
clients find it through $JACK_DEFAULT_SERVER, which `JackServer.env` carries and which
the fixture sets in this process too (python-rtmidi reads it when a port opens).
A missing JACK is a failure that names the Debian package, never a skip.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field

import pytest

RATE = 48000
PERIOD = 256  # frames: one period is 5.33 ms
_counter = itertools.count()


def require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} not found: install the Debian package {package} (apt-get install {package})")
    return path


@dataclass
class JackServer:
    name: str
    rate: int = RATE
    period: int = PERIOD
    process: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def period_s(self) -> float:
        return self.period / self.rate

    def start(self) -> "JackServer":
        require("jackd", "jackd2")
        self.env = {**os.environ, "JACK_DEFAULT_SERVER": self.name, "JACK_NO_START_SERVER": "1"}
        self.process = subprocess.Popen(
            ["jackd", "--no-realtime", "-n", self.name, "-d", "dummy", "-r", str(self.rate), "-p", str(self.period)],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jackd exited at start: {self.process.stderr.read()[-500:]}")
            if self.run("jack_lsp").returncode == 0:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("jackd did not come up within 10 s")

    def run(self, *command: str, timeout: float = 10) -> subprocess.CompletedProcess:
        """Run a JACK tool (jack_lsp, jack_connect, jack_transport...) against this server."""
        return subprocess.run(list(command), env=self.env, capture_output=True, text=True, timeout=timeout)

    def ports(self) -> list[str]:
        return [line.strip() for line in self.run("jack_lsp").stdout.splitlines() if line.strip()]

    def connect(self, source: str, destination: str) -> None:
        result = self.run("jack_connect", source, destination)
        if result.returncode != 0:
            raise RuntimeError(f"jack_connect {source} {destination}: {result.stderr.strip()}")

    def wait_for_port(self, name: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if name in self.ports():
                return
            time.sleep(0.05)
        raise AssertionError(f"JACK port {name!r} did not appear; ports: {self.ports()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def jack(monkeypatch):
    """A fresh JACK dummy server for one test; this process's clients use it too."""
    server = JackServer(f"backline-test-{os.getpid()}-{next(_counter)}").start()
    monkeypatch.setenv("JACK_DEFAULT_SERVER", server.name)
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    try:
        yield server
    finally:
        server.stop()
