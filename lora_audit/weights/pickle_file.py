"""Recognising pickle checkpoints (.ckpt/.pt/.bin/.pth) and listing what they would import, without unpickling.

``pickletools.genops`` walks the opcode stream as data; nothing is imported or called.
"""

from __future__ import annotations

import io
import pickletools
import struct
import zipfile
import zlib

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
_SAFE_MODULES = ("collections", "torch", "numpy", "_codecs")
_MAX_PICKLE_BYTES = 64 * 1024 * 1024


def looks_like_pickle(path: str, head: bytes, size: int) -> bool:
    """True for pickle extensions, and for torch zip archives and raw pickle streams (protocol 2-5)
    that are not plausibly safetensors.

    ``head`` is the file's first 9 bytes. A safetensors header length can start with byte 0x80, so
    a file whose u64 header length fits in the file and whose header starts with ``{`` is safetensors.
    """
    if path.lower().endswith(PICKLE_SUFFIXES):
        return True
    if len(head) >= 9 and 8 + struct.unpack("<Q", head[:8])[0] <= size and head[8:9] == b"{":
        return False
    return head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def pickle_imports(path: str) -> tuple[list[str], list[str]]:
    """(all ``module.name`` globals the pickle would import, the ones outside torch/numpy/collections)."""
    imports: set[str] = set()
    for stream in _pickle_streams(path):
        imports |= _globals(stream)
    unsafe = sorted(i for i in imports if not i.startswith(_SAFE_MODULES))
    return sorted(imports), unsafe


def _pickle_streams(path: str) -> list[bytes]:
    """The pickle streams of a raw pickle or torch zip archive; of a damaged archive, those that could be read."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            return [f.read(_MAX_PICKLE_BYTES)]
    streams = []
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".pkl") and info.file_size <= _MAX_PICKLE_BYTES:
                    streams.append(archive.read(info))
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError):
        pass  # corrupt, truncated, encrypted or oddly compressed
    return streams


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
