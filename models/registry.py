"""Where models live and how a name becomes a file.

Search order for a model NAME (the file NAME.onnx):
  1. each folder in $BACKLINE_MODELS (os.pathsep-separated),
  2. the user's folder, ~/.local/share/backline/models (where retrained models go),
  3. the models shipped inside the package (this folder).
A value that is a path to an existing .onnx file is used as it is.
Each model may have a card beside it, NAME.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .runtime import Generator, ModelLoadError
from .spec import GeneratorSpec

DEFAULT_MODEL = "bach"
SHIPPED_DIR = Path(__file__).resolve().parent
USER_DIR = Path.home() / ".local" / "share" / "backline" / "models"


def search_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("BACKLINE_MODELS", "").split(os.pathsep) if p]
    return [*extra, USER_DIR, SHIPPED_DIR]


def resolve(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix == ".onnx" or os.sep in name_or_path:
        if candidate.is_file():
            return candidate
        raise ModelLoadError(f"model file {candidate} does not exist; run 'backline models' to list the installed models")
    for folder in search_dirs():
        path = folder / f"{name_or_path}.onnx"
        if path.is_file():
            return path
    known = ", ".join(sorted({p.stem for d in search_dirs() if d.is_dir() for p in d.glob("*.onnx")})) or "none"
    raise ModelLoadError(f"no model named '{name_or_path}' (installed: {known}); run 'backline models' to list them")


def load(name_or_path: str = DEFAULT_MODEL, device: str = "auto") -> Generator:
    return Generator(resolve(name_or_path), device=device)


@dataclass
class ModelEntry:
    path: Path
    spec: GeneratorSpec | None
    error: str | None
    card: Path | None


def list_models() -> list[ModelEntry]:
    """Every model in the search path; a file that cannot load is listed with its error.
    The first folder wins when a name appears twice."""
    seen: set[str] = set()
    entries = []
    for folder in search_dirs():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.onnx")):
            if path.stem in seen:
                continue
            seen.add(path.stem)
            card = path.with_suffix(".md")
            try:
                spec, error = Generator(path, device="cpu", announce=False).spec, None
            except ModelLoadError as exc:
                spec, error = None, str(exc)
            entries.append(ModelEntry(path, spec, error, card if card.is_file() else None))
    return entries
