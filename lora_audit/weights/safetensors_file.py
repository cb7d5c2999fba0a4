"""Reading safetensors files safely and cheaply, without torch.

Cheap pre-checks (a regular file, the 8-byte header length within the file and under the 100 MB cap)
come first, then the ``safetensors`` library validates the header (JSON, dtypes, contiguous
in-range offsets); its errors become one-line messages. Tensor data is then read straight from a
memory map with numpy, including BF16, which numpy has no type for.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import re
import struct
from dataclasses import dataclass

import numpy as np

from lora_audit.errors import InvalidFileError

MAX_HEADER_BYTES = 100_000_000  # the Rust library's own cap

_NUMPY_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors dtype string: F16, BF16, F32, ...
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class SafetensorsFile:
    """An open, validated safetensors file: its metadata, tensor table and a memory map of its data.

    Use as a context manager; ``read(name)`` returns a float numpy array.
    """

    def __init__(self, path: str):
        self.path = path
        self.size = check_file(path)
        header_len = _read_header_length(path, self.size)
        _validate_with_safetensors(path)
        header = _read_header(path, header_len)
        raw_meta = header.pop("__metadata__", None) or {}
        self.header_length = header_len
        self.header = header  # tensor table as stored (offsets relative to the data section)
        self.metadata: dict[str, str] = {str(k): str(v) for k, v in raw_meta.items()}
        base = 8 + header_len
        self.tensors: dict[str, TensorInfo] = {
            name: TensorInfo(info["dtype"], tuple(info["shape"]), base + info["data_offsets"][0],
                             base + info["data_offsets"][1])
            for name, info in header.items()
        }
        self._file = open(path, "rb")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)

    def read(self, name: str) -> np.ndarray:
        """The tensor as float32 (F16/BF16/F32) or float64 (F64); other dtypes raise ValueError."""
        info = self.tensors[name]
        if info.dtype == "BF16":
            bits = np.frombuffer(self._map, np.uint16, info.numel, info.start)
            return (bits.astype(np.uint32) << 16).view(np.float32).reshape(info.shape)
        if info.dtype not in _NUMPY_DTYPES:
            raise ValueError(f"tensor {name} has non-float dtype {info.dtype}")
        array = np.frombuffer(self._map, _NUMPY_DTYPES[info.dtype], info.numel, info.start).reshape(info.shape)
        return array.astype(np.float32) if info.dtype == "F16" else array

    def close(self) -> None:
        self._map.close()
        self._file.close()

    def __enter__(self) -> "SafetensorsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_file(path: str) -> int:
    """Size of ``path`` if it is a readable regular file; otherwise a one-line InvalidFileError."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise InvalidFileError(path, _os_reason(e)) from None
    if os.path.isdir(path):
        raise InvalidFileError(path, "is a directory, not a file")
    if not os.path.isfile(path):
        raise InvalidFileError(path, "is not a regular file")
    if not os.access(path, os.R_OK):
        raise InvalidFileError(path, "permission denied")
    return st.st_size


def _os_reason(e: OSError) -> str:
    if e.errno == errno.ENOENT:
        return "no such file or directory"
    if e.errno == errno.ELOOP:
        return "symbolic link loop"
    if e.errno == errno.EACCES:
        return "permission denied"
    return e.strerror or str(e)


def _read_header_length(path: str, size: int) -> int:
    if size == 0:
        raise InvalidFileError(path, "empty file (0 bytes)")
    if size < 8:
        raise InvalidFileError(path, f"too small to be a safetensors file ({size} bytes)")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    if n > MAX_HEADER_BYTES:
        raise InvalidFileError(path, f"header length {n} is above the 100 MB limit: not a safetensors file")
    if 8 + n > size:
        raise InvalidFileError(path, f"header length {n} runs past the end of the file ({size} bytes): truncated or not safetensors")
    return n


def _validate_with_safetensors(path: str) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            f.metadata()
    except SafetensorError as e:
        raise InvalidFileError(path, f"invalid safetensors file: {_clean_safetensors_message(str(e))}") from None
    except OSError as e:
        raise InvalidFileError(path, _os_reason(e)) from None
    except Exception as e:  # the Rust binding raises a few builtins on odd headers
        raise InvalidFileError(path, f"invalid safetensors file: {_clean_safetensors_message(str(e))}") from None


def _clean_safetensors_message(message: str) -> str:
    """The first line of the library's message, without Rust debug noise."""
    line = message.strip().splitlines()[0] if message.strip() else "unreadable header"
    line = re.sub(r"^Error while deserializing header: ", "", line)
    line = re.sub(r", expected one of .*", "", line)  # the list of every dtype the library knows
    return line[:160]


def _read_header(path: str, header_len: int) -> dict:
    with open(path, "rb") as f:
        f.seek(8)
        return json.loads(f.read(header_len))
