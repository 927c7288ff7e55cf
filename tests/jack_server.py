"""The `jack` fixture: a fresh private JACK dummy server (backline.bridge.midi.jack_server) per test,
which this process's python-rtmidi clients use too. A missing JACK tool is a failure that
names the Debian package, never a skip."""

from __future__ import annotations

import itertools
import os

import pytest

from backline.bridge.midi.jack_server import JackServer, missing_tool

_counter = itertools.count()


def require(tool: str, package: str | None = None) -> str:
    """Fail the test, naming the package, when a command-line peer is missing."""
    problem = missing_tool(tool)
    if problem is not None:
        pytest.fail(problem if package is None else f"{tool} not found: install the Debian package {package}")
    return tool


@pytest.fixture
def jack(monkeypatch):
    require("jackd")
    require("jack_lsp")
    server = JackServer(f"backline-test-{os.getpid()}-{next(_counter)}").start()
    monkeypatch.setenv("JACK_DEFAULT_SERVER", server.name)
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    try:
        yield server
    finally:
        server.stop()
