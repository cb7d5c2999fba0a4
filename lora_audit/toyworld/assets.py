"""Where the shipped toy-world models live (package data), with a clear error when they are missing."""

from __future__ import annotations

from pathlib import Path

from lora_audit.errors import UsageError

DATA_DIR = Path(__file__).parent / "data"
BASE = "base"
EMBEDDER = "embedder"
REBUILD = "rebuild it with `lora-audit toy build`"


def asset_path(name: str) -> Path:
    """The directory of one shipped toy model (``base``, ``embedder``, ``attack``)."""
    path = DATA_DIR / name
    if not path.is_dir() or not any(path.iterdir()):
        raise UsageError(f"the toy {name} model is not installed at {path}; {REBUILD}")
    return path


def toy_base_path() -> str:
    return str(asset_path(BASE))


def toy_embedder_path() -> str:
    return str(asset_path(EMBEDDER))
