"""Content identity of a scanned file: the SHA-256 of its bytes (``FileResult.autov2`` is its short form)."""

from __future__ import annotations

import hashlib
import os

CHUNK = 1 << 20


def file_sha256(path: str) -> str | None:
    """The SHA-256 (hex) of the regular file at ``path``; None when it cannot be read as one."""
    try:
        if not os.path.isfile(path):
            return None
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        return digest.hexdigest()
    except OSError:
        return None

