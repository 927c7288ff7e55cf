"""Real multi-track music from Debian packages that `.ci/run` installs (DESIGN §4). A
missing file fails the test with the package to install; it is never skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

OPENMSX = Path("/usr/share/games/openttd/baseset/openmsx")
SIMUTRANS = Path("/usr/share/games/simutrans/music")
DOOM = Path("/usr/share/games/doom")


def need(path: Path, package: str) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing; install the Debian package {package} "
                    f"(apt-get install {package})", pytrace=False)
    return path


def openmsx(name: str) -> Path:
    return need(OPENMSX / name, "openttd-openmsx")


def simutrans(name: str) -> Path:
    return need(SIMUTRANS / name, "simutrans-data")


def freedm() -> Path:
    return need(DOOM / "freedm.wad", "freedm")
