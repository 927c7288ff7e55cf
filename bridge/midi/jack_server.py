"""A JACK server to talk to from tools: the one already running, or a private one with the
dummy backend (no sound card), plus the JACK command-line tools against it.

The benchmark measures live timing on it, and the tests run every virtual-MIDI check on
it. A private server gets its own name, so it never meets a user's server or another
run's; clients find it through $JACK_DEFAULT_SERVER, which `env` carries and which
`use_in_this_process()` sets here too (python-rtmidi reads it when a port opens).

A private server runs in synchronous mode (`-S`): each cycle waits for every client. In
the default asynchronous mode a client whose callback starts after the next cycle has
begun (common on a busy shared machine without realtime scheduling) reads that next
cycle's frame time and loses or re-reads a cycle's events, which no client can correct;
in synchronous mode a slow client delays the cycle instead, and the frame count just
falls behind the wall clock, which is what a frame-accurate client is built for.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from backline.models.errors import BacklineError

RATE = 48000
PERIOD = 256  # frames: one period is 5.33 ms at 48 kHz
TOOLS = {"jackd": "jackd2", "jack_lsp": "jackd2", "jack_connect": "jackd2",
         "jack_transport": "jackd2", "jack_midi_clock": "jack-midi-clock"}


def missing_tool(tool: str) -> str | None:
    """None if `tool` is on PATH, else a message naming the Debian package to install."""
    if shutil.which(tool) is not None:
        return None
    package = TOOLS.get(tool, tool)
    return f"{tool} not found: install the Debian package {package} (apt-get install {package})"


class JackServer:
    def __init__(self, name: str, rate: int = RATE, period: int = PERIOD) -> None:
        self.name, self.rate, self.period = name, rate, period
        self.process: subprocess.Popen | None = None
        self.env = {**os.environ, "JACK_DEFAULT_SERVER": name, "JACK_NO_START_SERVER": "1"}

    @property
    def period_s(self) -> float:
        return self.period / self.rate

    @classmethod
    def existing(cls) -> "JackServer | None":
        """The server $JACK_DEFAULT_SERVER names, if one answers there."""
        name = os.environ.get("JACK_DEFAULT_SERVER")
        if not name:
            return None
        server = cls(name)
        if server.run("jack_lsp").returncode != 0:
            return None
        for tool, attribute in (("jack_bufsize", "period"), ("jack_samplerate", "rate")):
            words = server.run(tool).stdout.split()
            if words and words[-1].isdigit():
                setattr(server, attribute, int(words[-1]))
        return server

    def start(self) -> "JackServer":
        """Start a private dummy server under this name and wait until it answers."""
        for tool in ("jackd", "jack_lsp"):
            if (problem := missing_tool(tool)) is not None:
                raise BacklineError(problem)
        self.process = subprocess.Popen(
            ["jackd", "--no-realtime", "-S", "-n", self.name, "-d", "dummy",
             "-r", str(self.rate), "-p", str(self.period)],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BacklineError(f"jackd exited at start: {self.process.stderr.read()[-300:].strip()}")
            if self.run("jack_lsp").returncode == 0:
                return self
            time.sleep(0.1)
        self.stop()
        raise BacklineError("jackd (dummy backend) did not answer within 10 s")

    def use_in_this_process(self) -> None:
        os.environ["JACK_DEFAULT_SERVER"] = self.name
        os.environ["JACK_NO_START_SERVER"] = "1"

    def run(self, *command: str, stdin: str | None = None, timeout: float = 10) -> subprocess.CompletedProcess:
        """Run a JACK tool (jack_lsp, jack_connect, jack_transport...) against this server."""
        return subprocess.run(list(command), env=self.env, capture_output=True, text=True,
                              input=stdin, timeout=timeout)

    def ports(self) -> list[str]:
        return [line.strip() for line in self.run("jack_lsp").stdout.splitlines() if line.strip()]

    def connect(self, source: str, destination: str) -> None:
        result = self.run("jack_connect", source, destination)
        if result.returncode != 0:
            raise BacklineError(f"jack_connect {source} {destination}: {result.stderr.strip()}")

    def wait_for_port(self, name: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if name in self.ports():
                return
            time.sleep(0.05)
        raise BacklineError(f"JACK port {name!r} did not appear; ports: {self.ports()}")

    def transport(self, command: str) -> None:
        """'play' or 'stop' the JACK transport."""
        self.run("jack_transport", stdin=f"{command}\nquit\n")

    def timebase_master(self, bpm: float) -> "TransportMaster":
        """A jack_transport that is the timebase master at `bpm` until closed."""
        return TransportMaster(self, bpm)

    def stop(self) -> None:
        """Stop a server this object started (never a user's)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class TransportMaster:
    """`jack_transport` kept running as the JACK timebase master: it sets the tempo that
    jack_midi_clock (without -B) follows, and rolls and stops the transport."""

    def __init__(self, server: JackServer, bpm: float) -> None:
        if (problem := missing_tool("jack_transport")) is not None:
            raise BacklineError(problem)
        self.process = subprocess.Popen(["jack_transport"], env=server.env, stdin=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        self._command("master")
        self.tempo(bpm)

    def _command(self, line: str) -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def tempo(self, bpm: float) -> None:
        self._command(f"tempo {bpm:g}")

    def play(self) -> None:
        self._command("play")

    def stop(self) -> None:
        self._command("stop")

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self._command("quit")
                self.process.wait(timeout=5)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
