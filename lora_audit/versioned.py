"""Saved model configs carry a ``format_version``; reading one checks it and names the file when it is wrong.

A config without the key was written before versioning and reads as version 1.
"""

from __future__ import annotations

import json
from pathlib import Path

from lora_audit.errors import InvalidFileError


def versioned(config: dict, version: int) -> dict:
    """``config`` with its ``format_version`` first, as it is written to disk."""
    return {"format_version": version, **config}


def read_versioned(path: str | Path, kind: str, version: int) -> dict:
    """The JSON object at ``path`` without its ``format_version``, which must be ``version``.

    ``kind`` names the file in errors ("attack-model", "toy-embedder"); a file that is not a JSON
    object, or holds another version, is an :class:`InvalidFileError` naming ``path``.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InvalidFileError(str(path), f"not a readable {kind} config ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise InvalidFileError(str(path), f"not a {kind} config (not a JSON object)")
    found = data.pop("format_version", 1)
    if found != version:
        raise InvalidFileError(str(path), f"unknown {kind} format version {found} (this lora-audit reads version "
                               f"{version}); upgrade lora-audit or rebuild the model")
    return data
