"""Which files a scan reads: the files given, and LoRA / checkpoint files found under given directories.

A symbolic link found under a given directory is followed only when it stays inside that directory
(as the Hugging Face cache's ``snapshots/<rev>/x -> ../../blobs/<hash>`` does when the cache root is
scanned), or when ``follow_links`` is set; otherwise it is reported as not followed (LA004).
Directory links are never descended into. A path given directly is read wherever it points.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from lora_audit.errors import NothingToScanError
from lora_audit.weights.pickle_file import PICKLE_SUFFIXES

SCANNED_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


@dataclass
class Collection:
    """The files to scan, in order, and the links found that point out of their directory."""

    files: list[str] = field(default_factory=list)
    not_followed: list[str] = field(default_factory=list)  # links out of the scanned tree (LA004)


def collect_files(paths: list[str], follow_links: bool = False) -> Collection:
    """Files given directly, plus LoRA / checkpoint files found recursively in given directories.

    Paths stay as given (never made absolute). A missing path is kept so that it becomes an
    error record; raises NothingToScanError when nothing at all is left.
    """
    found = Collection()
    for path in paths:
        if not os.path.isdir(path):
            found.files.append(path)
            continue
        root = os.path.realpath(path)
        for directory, dirs, names in os.walk(path):
            dirs.sort()
            for name in sorted(names):
                if not name.lower().endswith(SCANNED_SUFFIXES):
                    continue
                file = os.path.join(directory, name)
                inside = os.path.commonpath([root, os.path.realpath(file)]) == root
                (found.files if follow_links or not os.path.islink(file) or inside else found.not_followed).append(file)
    if not found.files and not found.not_followed:
        raise NothingToScanError(f"no .safetensors or checkpoint files found in {', '.join(paths) or 'the given paths'}")
    return found
