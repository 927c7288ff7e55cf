"""`backline ardour install`: put the Lua action "Backline: accompany region" where Ardour
finds it.

The script (bridge/daw/lua/backline_accompany.lua) is copied into Ardour's user scripts
folder with the absolute path of this installation's `backline` command written in as
the default of its `backline` parameter, so Ardour, started from a desktop menu without
this virtual environment on its PATH, still runs the right one.

The user scripts folder is `scripts/` in Ardour's user configuration folder:

- Linux: $XDG_CONFIG_HOME/ardour7 and .../ardour8 (XDG_CONFIG_HOME defaults to ~/.config)
- macOS: ~/Library/Preferences/Ardour7 and .../Ardour8
- Windows: %LOCALAPPDATA%\\Ardour7 and ...\\Ardour8

The script goes into each of those configuration folders that exists (Ardour creates its
own at the first start); when none does, into Ardour 7's, which is made. Installing again
rewrites the copies, so it also updates them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

SCRIPT_NAME = "backline_accompany.lua"
ACTION_NAME = "Backline: accompany region"
VERSIONS = (7, 8)  # Ardour major versions whose folders are looked for; 7 is made if none is there
# The one line of the packaged script that install rewrites: the default of `backline`.
PLACEHOLDER = '"backline" --[[backline-path]]'


@dataclass(frozen=True)
class Target:
    config: Path  # Ardour's user configuration folder, e.g. ~/.config/ardour7
    exists: bool  # whether Ardour made it already

    @property
    def script(self) -> Path:
        return self.config / "scripts" / SCRIPT_NAME


def config_folders(platform: str | None = None, environ: dict | None = None, home: Path | None = None) -> list[Path]:
    """Ardour 7's and 8's user configuration folders on this platform, existing or not."""
    platform = platform or sys.platform
    environ = os.environ if environ is None else environ
    home = home or Path(os.path.expanduser("~"))
    if platform.startswith("win"):
        base = Path(environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
        return [base / f"Ardour{v}" for v in VERSIONS]
    if platform == "darwin":
        return [home / "Library" / "Preferences" / f"Ardour{v}" for v in VERSIONS]
    base = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
    return [base / f"ardour{v}" for v in VERSIONS]


def targets(platform: str | None = None, environ: dict | None = None, home: Path | None = None) -> list[Target]:
    """Where the script goes: every existing configuration folder, else Ardour 7's."""
    folders = config_folders(platform, environ, home)
    found = [Target(f, True) for f in folders if f.is_dir()]
    return found or [Target(folders[0], False)]


def backline_command() -> str:
    """The absolute path of the `backline` command of this installation."""
    from backline.models.errors import BacklineError

    windows = sys.platform.startswith("win")
    name = "backline.exe" if windows else "backline"
    candidates = []
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name in ("backline", "backline.exe"):
        candidates += [argv0, argv0.with_name(name)]  # (Windows' launcher strips .exe from argv[0])
    candidates.append(Path(sysconfig.get_path("scripts")) / name)  # next to this Python
    found = shutil.which("backline")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and (windows or os.access(path, os.X_OK)):
            return os.path.abspath(path)
    raise BacklineError(
        "cannot find the `backline` command of this installation (looked next to this Python, in "
        f"{sysconfig.get_path('scripts')}, and on PATH); reinstall Backline with pip, or give its path "
        "with --backline PATH"
    )


def lua_string(text: str) -> str:
    """A Lua string literal for text (a path: backslashes, quotes and all)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def packaged_script() -> str:
    from importlib import resources

    return resources.files("backline.bridge.daw").joinpath("lua", SCRIPT_NAME).read_text(encoding="utf-8")


def render_script(backline: str) -> str:
    """The packaged script with `backline` as the default command."""
    from backline.models.errors import BacklineError

    text = packaged_script()
    if text.count(PLACEHOLDER) != 1:
        raise BacklineError(f"the packaged {SCRIPT_NAME} is damaged (its backline-path line is missing); "
                            "reinstall Backline with pip")
    return text.replace(PLACEHOLDER, f"{lua_string(backline)} --[[backline-path]]")


def cmd_ardour_install(args: argparse.Namespace) -> int:
    from backline.models.errors import BacklineError

    backline = os.path.abspath(Path(args.backline).expanduser()) if args.backline else backline_command()
    if args.backline and not Path(backline).is_file():
        raise BacklineError(f"--backline {args.backline}: no such file; give the path of the backline command, "
                            "e.g. the output of: command -v backline")
    where = targets()
    if args.print:
        for t in where:
            state = "" if t.exists else f" (Ardour's folder {t.config} does not exist yet; install makes it)"
            print(f"{t.script}{state}")
        print(f"the action runs: {backline} send-notes")
        return 0
    text = render_script(backline)
    for t in where:
        try:
            if t.script.is_file() and t.script.read_text(encoding="utf-8") == text:
                print(f"up to date: {t.script}")
                continue
            t.script.parent.mkdir(parents=True, exist_ok=True)
            temporary = t.script.with_name(t.script.name + ".tmp")
            temporary.write_text(text, encoding="utf-8")
            os.replace(temporary, t.script)  # a half-written script is never seen by Ardour
        except OSError as exc:
            raise BacklineError(f"cannot write {t.script} ({exc.strerror or exc}); check that you can write "
                                f"to {t.config}") from None
        print(f"installed: {t.script}")
    print(f"""the action runs: {backline} send-notes (through a running `backline serve`)
next, in Ardour:
  1. start the bridge first, in a terminal: backline serve
  2. Edit > Lua Scripts > Script Manager > Action Scripts: select an unset action, press Add/Set,
     pick "{ACTION_NAME}", keep or change its parameters (model, seed, port ...)
  3. the action is now a button in the editor's toolbar (and Edit > Lua Scripts); select a MIDI
     region and press it
  an action added before this install keeps its old copy: remove it and add it again""")
    return 0


def add_ardour_parser(sub) -> None:
    p = sub.add_parser("ardour", help="Ardour: install the Lua action 'Backline: accompany region'",
                       description="Ardour integration: a Lua editor action that sends the selected MIDI region "
                                   "to a running `backline serve` and adds the accompaniment as regions on one "
                                   "track per instrument (docs/DAW.md).")
    what = p.add_subparsers(dest="ardour_command", required=True, metavar="ACTION")
    q = what.add_parser("install", help="copy the Lua action into Ardour's user scripts folder",
                        description="Copy the Lua action into Ardour 7's and 8's user scripts folders (those "
                                    "that exist; Ardour 7's if none does), with the absolute path of this "
                                    "backline command filled in. Running it again updates the copies.")
    q.add_argument("--print", action="store_true", help="only print where the script would go, and exit")
    q.add_argument("--backline", default=None, metavar="PATH",
                   help="the backline command the action runs (default: this installation's, "
                        "found next to this Python)")
    q.set_defaults(func=cmd_ardour_install)
