"""Reading safetensors files safely and cheaply, without torch.

Cheap pre-checks (a regular file, the 8-byte header length within the file and under the 100 MB cap)
come first, then the ``safetensors`` library validates the header (JSON, dtypes, contiguous
in-range offsets); its errors become one-line messages. Tensor data is then read with positioned
reads into numpy buffers (no memory map, so a file truncated during the scan is an error, not a
SIGBUS), including BF16 and F8, which numpy has no type for.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import re
import struct
import threading
from dataclasses import dataclass

import numpy as np

from lora_audit.errors import InvalidFileError

MAX_HEADER_BYTES = 100_000_000  # the Rust library's own cap

_NUMPY_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64}
_OTHER_DTYPES = {"I8": np.int8, "U8": np.uint8, "I16": np.int16, "U16": np.uint16, "I32": np.int32,
                 "U32": np.uint32, "I64": np.int64, "U64": np.uint64, "BOOL": np.bool_,
                 "F8_E4M3": np.uint8, "F8_E5M2": np.uint8}  # read as float64 (alpha scalars)
_RAW_DTYPES = {**_NUMPY_DTYPES, "BF16": np.uint16, **_OTHER_DTYPES}
FLOAT_DTYPES = frozenset(("F16", "BF16", "F32", "F64"))
_RUN_CONVERT_BYTES = 64 * 1024 * 1024
_SMALL_TENSOR = 64  # elements (alpha scalars, ...): converted on their own, not their whole run


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors dtype string: F16, BF16, F32, ...
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int
    numel: int


class SafetensorsFile:
    """An open, validated safetensors file: its metadata, tensor table and an open handle on its data.

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
                             base + info["data_offsets"][1], math.prod(info["shape"]))
            for name, info in header.items()
        }
        self._runs, self._run_of = _runs(self.tensors)
        self._converted: dict[int, np.ndarray] = {}  # run index -> float32 copy of a 16-bit run
        self._file = open(path, "rb", buffering=0)

    def read(self, name: str) -> np.ndarray:
        """The tensor as float32 (F16/BF16/F32), float64 (F64) or, for integer and F8 tensors
        (alpha scalars), float64; other dtypes raise ValueError.

        16-bit tensors are converted a whole run of same-dtype tensors at a time (one read and one
        numpy call instead of one per tensor), runs up to 64 MB; small tensors (alpha scalars) are
        read alone until their run has been converted.
        """
        info = self.tensors[name]
        if info.dtype not in _RAW_DTYPES:
            raise ValueError(f"tensor {name} has unsupported dtype {info.dtype}")
        if info.dtype in _OTHER_DTYPES:
            raw = self._raw(info.dtype, info.start, info.numel, scratch=True)
            return _to_float64(raw, info.dtype).reshape(info.shape)
        if info.dtype in ("F32", "F64"):
            return self._raw(info.dtype, info.start, info.numel).reshape(info.shape)
        index = self._run_of[name]
        dtype, start, end = self._runs[index]
        if index not in self._converted:
            if end - start > _RUN_CONVERT_BYTES or info.numel < _SMALL_TENSOR:  # e.g. alpha scalars
                return _to_float32(self._raw(dtype, info.start, info.numel, scratch=True)).reshape(info.shape)
            self._converted[index] = _to_float32(self._raw(dtype, start, (end - start) // 2, scratch=True))
        offset = (info.start - start) // 2
        return self._converted[index][offset : offset + info.numel].reshape(info.shape)

    def non_finite(self) -> list[str]:
        """Float tensors (F8 too) holding NaN or Inf: one read and check per run of same-dtype tensors (runs
        up to 64 MB; longer runs tensor by tensor), per tensor only in a bad run."""
        members: dict[int, list[str]] = {}
        for name, index in self._run_of.items():
            members.setdefault(index, []).append(name)
        bad = []
        for index, (dtype, start, end) in enumerate(self._runs):
            if dtype not in _EXPONENT_BITS:  # float types, F8 included (checked on their raw bits)
                continue
            count = (end - start) // np.dtype(_RAW_DTYPES[dtype]).itemsize
            if end - start <= _RUN_CONVERT_BYTES and _finite(self._raw(dtype, start, count, scratch=True), dtype):
                continue
            bad += [name for name in members[index] if not _finite(
                self._raw(dtype, self.tensors[name].start, self.tensors[name].numel, scratch=True), dtype)]
        return sorted(bad)

    def _raw(self, dtype: str, start: int, count: int, scratch: bool = False) -> np.ndarray:
        """``count`` elements of ``dtype`` read from byte ``start`` into a new array or, with
        ``scratch``, into this thread's reusable buffer (valid until the next scratch read)."""
        nbytes = count * np.dtype(_RAW_DTYPES[dtype]).itemsize
        if scratch and nbytes <= _RUN_CONVERT_BYTES:
            out = np.frombuffer(_scratch_buffer(nbytes), _RAW_DTYPES[dtype], count)
        else:
            out = np.empty(count, _RAW_DTYPES[dtype])
        view = memoryview(out).cast("B")
        while view:
            self._file.seek(start)
            n = self._file.readinto(view)
            if not n:
                raise InvalidFileError(self.path, "file changed while being read (truncated)")
            view, start = view[n:], start + n
        return out

    def close(self) -> None:
        self._converted.clear()
        self._file.close()

    def __enter__(self) -> "SafetensorsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_scratch = threading.local()


def _scratch_buffer(nbytes: int) -> memoryview:
    """This thread's reusable read buffer, grown to ``nbytes``: fresh memory costs a page fault per
    page, which made reading a run into a new array several times slower than a memory map."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or len(buffer) < nbytes:
        buffer = _scratch.buffer = bytearray(nbytes)
    return memoryview(buffer)[:nbytes]


def _runs(tensors: dict[str, TensorInfo]) -> tuple[list[tuple[str, int, int]], dict[str, int]]:
    """Maximal runs of adjacent tensors of one dtype: [(dtype, start, end)] and tensor -> run index."""
    runs: list[tuple[str, int, int]] = []
    run_of: dict[str, int] = {}
    for name, info in sorted(tensors.items(), key=lambda kv: kv[1].start):
        if runs and runs[-1][0] == info.dtype and runs[-1][2] == info.start:
            runs[-1] = (info.dtype, runs[-1][1], info.end)
        else:
            runs.append((info.dtype, info.start, info.end))
        run_of[name] = len(runs) - 1
    return runs, run_of


@functools.lru_cache(maxsize=1)
def _f16_table() -> np.ndarray:
    """float32 value of every float16 bit pattern: a table lookup converts ~2x faster than astype."""
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def _to_float32(raw: np.ndarray) -> np.ndarray:
    if raw.dtype == np.uint16:  # BF16 bits are the top half of a float32
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if raw.dtype == np.float16 and raw.size >= _SMALL_TENSOR:  # the table pays off on large arrays only
        return np.take(_f16_table(), raw.view(np.uint16))
    return raw.astype(np.float32)


# dtype -> (bits type, mask): a value is Inf or NaN when all the mask's bits are set.
# F8_E4M3 (fn): no Inf, S.1111.111 (0x7F/0xFF) is NaN. F8_E5M2: exponent 11111 is Inf (mantissa 0,
# 0x7C/0xFC) or NaN (mantissa not 0).
_EXPONENT_BITS = {"F16": (np.uint16, 0x7C00), "BF16": (np.uint16, 0x7F80),
                  "F32": (np.uint32, 0x7F800000), "F64": (np.uint64, 0x7FF0000000000000),
                  "F8_E4M3": (np.uint8, 0x7F), "F8_E5M2": (np.uint8, 0x7C)}


@functools.lru_cache(maxsize=1)
def _f8_e4m3_table() -> np.ndarray:
    """float64 value of every F8 E4M3 (fn) bit pattern: bias 7, no infinities, S.1111.111 is NaN."""
    bits = np.arange(256)
    exponent, mantissa = (bits >> 3) & 0xF, (bits & 7) / 8
    value = np.where(exponent == 0, mantissa * 2.0**-6, (1 + mantissa) * 2.0 ** (exponent - 7))
    value[(bits & 0x7F) == 0x7F] = np.nan
    return np.where(bits & 0x80, -value, value)


def _to_float64(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F8_E5M2":  # the top byte of a float16
        return (raw.astype(np.uint16) << 8).view(np.float16).astype(np.float64)
    if dtype == "F8_E4M3":
        return np.take(_f8_e4m3_table(), raw)
    return raw.astype(np.float64)


def _finite(raw: np.ndarray, dtype: str) -> bool:
    """No element has all the bits of its dtype's mask set (Inf or NaN); integer ops on the raw bits,
    ~10x faster than isfinite on F16, and the only way for F8, which numpy has no type for."""
    if raw.size == 0:
        return True
    bits_type, mask = _EXPONENT_BITS[dtype]
    exponent = raw.view(bits_type) & bits_type(mask)
    return bool(exponent.max() != mask)


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
