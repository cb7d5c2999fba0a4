"""Which files a scan reads: the files given, and LoRA / checkpoint files found under given directories."""

from __future__ import annotations

import os

from lora_audit.errors import NothingToScanError
from lora_audit.weights.pickle_file import PICKLE_SUFFIXES

SCANNED_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


def collect_files(paths: list[str]) -> list[str]:
    """Files given directly, plus LoRA / checkpoint files found recursively in given directories.

    Paths stay as given (never made absolute). A missing path is kept so that it becomes an
    error record; raises NothingToScanError when nothing at all is left.
    """
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                files.extend(os.path.join(root, n) for n in sorted(names) if n.lower().endswith(SCANNED_SUFFIXES))
        else:
            files.append(path)
    if not files:
        raise NothingToScanError(f"no .safetensors or checkpoint files found in {', '.join(paths) or 'the given paths'}")
    return files
