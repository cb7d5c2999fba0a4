"""Recognising pickle checkpoints (.ckpt/.pt/.bin/.pth) and listing what they would import, without unpickling.

``pickletools.genops`` walks the opcode stream as data; nothing is imported or called.
"""

from __future__ import annotations

import io
import pickletools
import zipfile

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
_SAFE_MODULES = ("collections", "torch", "numpy", "_codecs")
_MAX_PICKLE_BYTES = 64 * 1024 * 1024


def looks_like_pickle(path: str, head: bytes) -> bool:
    """True for pickle extensions, raw pickle streams (protocol 2+) and torch zip archives."""
    return path.lower().endswith(PICKLE_SUFFIXES) or head[:1] == b"\x80" or head[:4] == b"PK\x03\x04"


def pickle_imports(path: str) -> tuple[list[str], list[str]]:
    """(all ``module.name`` globals the pickle would import, the ones outside torch/numpy/collections)."""
    imports: set[str] = set()
    for stream in _pickle_streams(path):
        imports |= _globals(stream)
    unsafe = sorted(i for i in imports if not i.startswith(_SAFE_MODULES))
    return sorted(imports), unsafe


def _pickle_streams(path: str) -> list[bytes]:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return [archive.read(info) for info in archive.infolist()
                    if info.filename.endswith(".pkl") and info.file_size <= _MAX_PICKLE_BYTES]
    with open(path, "rb") as f:
        return [f.read(_MAX_PICKLE_BYTES)]


def _globals(data: bytes) -> set[str]:
    """GLOBAL / STACK_GLOBAL targets; STACK_GLOBAL's operands are the two preceding string pushes."""
    found: set[str] = set()
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            if opcode.name == "GLOBAL":
                found.add(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.add(f"{strings[-2]}.{strings[-1]}")
            if isinstance(arg, str):
                strings.append(arg)
    except Exception:  # a truncated or corrupt stream: report what was read so far
        pass
    return found
