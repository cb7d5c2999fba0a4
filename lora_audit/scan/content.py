"""Content identity of a scanned file: the SHA-256 of its bytes (``FileResult.autov2`` is its short form)."""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str) -> str | None:
    """The SHA-256 (hex) of the regular file at ``path``; None when it cannot be read as one."""
    try:
        if not os.path.isfile(path):
            return None
        with open(path, "rb", buffering=0) as f:
            return hashlib.file_digest(f, "sha256").hexdigest()  # one reused buffer, not a new one per read
    except OSError:
        return None

