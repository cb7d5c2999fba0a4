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
import hashlib
import itertools
import json
import math
import os
import re
import stat
import struct
import threading
from typing import NamedTuple

import numpy as np

from lora_audit.errors import InvalidFileError

MAX_HEADER_BYTES = 100_000_000  # the Rust library's own cap

_NUMPY_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64}
_OTHER_DTYPES = {"I8": np.int8, "U8": np.uint8, "I16": np.int16, "U16": np.uint16, "I32": np.int32,
                 "U32": np.uint32, "I64": np.int64, "U64": np.uint64, "BOOL": np.bool_,
                 "F8_E4M3": np.uint8, "F8_E5M2": np.uint8}  # read as float64 (alpha scalars)
_RAW_DTYPES = {**_NUMPY_DTYPES, "BF16": np.uint16, **_OTHER_DTYPES}
_STRUCT_CODES = {"F16": "<e", "F32": "<f", "F64": "<d", "I8": "<b", "U8": "<B", "I16": "<h", "U16": "<H",
                 "I32": "<i", "U32": "<I", "I64": "<q", "U64": "<Q", "BOOL": "<?"}
FLOAT_DTYPES = frozenset(("F16", "BF16", "F32", "F64"))
_WINDOW_BYTES = 64 * 1024 * 1024  # tensor data is read into memory up to this much at a time
_SMALL_TENSOR = 64  # elements (alpha scalars, ...): read on their own unless the window holds them
_FIRST_READ = 1 << 16  # bytes of the first read: the header length and, for most files, the whole header
_CHECK_ELEMENTS = 1 << 20  # non_finite: elements checked at a time (a bounded temporary)
_file_ids = itertools.count()


class TensorInfo(NamedTuple):
    dtype: str  # safetensors dtype string: F16, BF16, F32, ...
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int
    numel: int


class SafetensorsFile:
    """An open, validated safetensors file: its metadata, tensor table and an open handle on its data.

    Use as a context manager; ``read(name)`` returns a float numpy array. Tensor data comes from one
    read of up to 64 MB of the data section (this thread's window, reused by the next file), so that
    the NaN check, the statistics and every later read of a small file cost one pass over its bytes.
    """

    def __init__(self, path: str):
        self.path = path
        self.size = check_file(path)
        try:
            self._file = open(path, "rb", buffering=0)
        except OSError as e:
            raise InvalidFileError(path, _os_reason(e)) from None
        try:
            opened = _version(os.fstat(self._file.fileno()))
            self._prefix = self._read_prefix()  # the length and the header, as stored
            _validate_with_safetensors(path)
            self._version = _version(os.fstat(self._file.fileno()))  # what was read; sha256() checks it still is
            if not self._version == opened == _version(os.stat(path)):  # and what the library validated
                raise InvalidFileError(path, "file changed while being read (rewritten during the scan)")
            header = json.loads(self._prefix[8:])
        except ValueError:  # the bytes read are not the header validated (a race the checks above missed)
            self._file.close()
            raise InvalidFileError(path, "file changed while being read (rewritten during the scan)") from None
        except OSError as e:  # removed meanwhile
            self._file.close()
            raise InvalidFileError(path, _os_reason(e)) from None
        except BaseException:
            self._file.close()
            raise
        raw_meta = header.pop("__metadata__", None) or {}
        self.header_length = len(self._prefix) - 8
        self.header = header  # tensor table as stored (offsets relative to the data section)
        self.metadata: dict[str, str] = {str(k): str(v) for k, v in raw_meta.items()}
        base, make = len(self._prefix), TensorInfo._make  # _make: the tuple, without NamedTuple's __new__ (0.2 -> 0.12 ms a file)
        self.tensors: dict[str, TensorInfo] = {}
        for name, info in header.items():
            shape, (start, end) = tuple(info["shape"]), info["data_offsets"]
            self.tensors[name] = make((info["dtype"], shape, base + start, base + end, math.prod(shape)))
        self._id = next(_file_ids)
        self._refilled = 0  # bytes read into the window; past twice the file, tensors are read alone

    def read(self, name: str) -> np.ndarray:
        """The tensor as float32 (F16/BF16/F32), float64 (F64) or, for integer and F8 tensors
        (alpha scalars), float64; other dtypes raise ValueError. A new array on every call."""
        info = self.tensors[name]
        raw = self._raw(info)
        if info.dtype in _OTHER_DTYPES:
            return _to_float64(raw, info.dtype).reshape(info.shape)
        if info.dtype in ("F32", "F64"):
            return (raw if raw.base is None else raw.copy()).reshape(info.shape)  # never a view of the window
        return _to_float32(raw).reshape(info.shape)

    def read_into(self, name: str, out: np.ndarray) -> np.ndarray:
        """The tensor converted into ``out`` (a float64 array of its size), reshaped to its shape: no
        new memory, for a pass over many tensors (weights/stats.py)."""
        info = self.tensors[name]
        raw = self._raw(info)
        if info.dtype == "BF16":
            np.copyto(out, (raw.astype(np.uint32) << 16).view(np.float32))
        elif info.dtype in _OTHER_DTYPES:
            out[:] = _to_float64(raw, info.dtype)
        else:
            np.copyto(out, raw)
        return out.reshape(info.shape)

    def scalar(self, name: str) -> float:
        """The tensor's first element as a float (an alpha scalar): one small read, no array. ValueError
        when the tensor is empty or of an unsupported dtype."""
        info = self.tensors[name]
        code = _STRUCT_CODES.get(info.dtype)
        if info.numel == 0 or code is None:  # BF16, F8 (and the errors): through the array
            return float(self.read(name).reshape(-1)[0])
        return float(struct.unpack(code, self._pread(struct.calcsize(code), info.start))[0])

    def non_finite(self) -> list[str]:
        """Float tensors (F8 too) holding NaN or Inf, checked on their raw bits: a run of adjacent tensors
        of one dtype (up to 64 MB) at once, its tensors one by one only when the run has one."""
        bad = []
        for run, members in _runs(self.tensors):
            if run.dtype in _EXPONENT_BITS and not _finite(self._raw(run), run.dtype):
                bad += [name for name in members if not _finite(self._raw(self.tensors[name]), run.dtype)]
        return sorted(bad)

    def sha256(self) -> str:
        """The SHA-256 (hex) of the file's bytes: from memory when this thread's window holds its whole
        data section (a full scan of a file of up to 64 MB reads it once), else read again."""
        digest = hashlib.sha256(self._prefix)
        window, data = _window(), len(self._prefix)
        if window.owner == self._id and (window.start, window.end) == (data, self.size):
            digest.update(memoryview(window.buffer)[: self.size - data])
        else:
            self._file.seek(data)
            hashlib.file_digest(self._file, lambda: digest)
        if _version(os.fstat(self._file.fileno())) != self._version:  # the hash could mix two versions
            raise InvalidFileError(self.path, "file changed while being read (rewritten during the scan)")
        return digest.hexdigest()

    def _raw(self, info: TensorInfo) -> np.ndarray:
        """The tensor's elements as stored (BF16 as uint16 bits, F8 as uint8): a view into this thread's
        window when the tensor fits one, else a new array read for it alone."""
        if info.dtype not in _RAW_DTYPES:
            raise ValueError(f"a tensor has unsupported dtype {info.dtype}")
        dtype, window = _RAW_DTYPES[info.dtype], _window()
        if window.owner != self._id or not window.start <= info.start <= info.end <= window.end:
            # read alone: alpha scalars, a tensor larger than a window, or, past twice the file's bytes
            # refilled, factors far apart in a large file (each refill would read 64 MB)
            if info.numel < _SMALL_TENSOR or info.end - info.start > _WINDOW_BYTES or self._refilled > 2 * self.size:
                out = np.empty(info.numel, dtype)
                self._read_exactly(memoryview(out).cast("B"), info.start)
                return out
            self._fill(window, info)
        return np.frombuffer(window.buffer, dtype, info.numel, info.start - window.start)

    def _fill(self, window: "_Window", info: TensorInfo) -> None:
        """Read into ``window`` the whole data section of a file with at most 64 MB of it, else the
        64 MB from 8 MB before ``info``'s tensor (its module's other factors usually lie just before it)."""
        data = 8 + self.header_length
        if self.size - data <= _WINDOW_BYTES:
            first, end = data, self.size
        else:
            first = max(data, info.start - _WINDOW_BYTES // 8)
            end = min(self.size, max(first + _WINDOW_BYTES, info.end))
        if window.buffer is None or len(window.buffer) < end - first:
            window.buffer = bytearray(end - first)
        window.owner = None
        self._read_exactly(memoryview(window.buffer)[: end - first], first)
        window.owner, window.start, window.end = self._id, first, end
        self._refilled += end - first

    def _read_exactly(self, view: memoryview, start: int) -> None:
        while view:
            n = os.preadv(self._file.fileno(), [view], start)
            if not n:
                raise InvalidFileError(self.path, "file changed while being read (truncated)")
            view, start = view[n:], start + n

    def _pread(self, count: int, start: int) -> bytes:
        """``count`` bytes from ``start``: one read, or a one-line error when the file ends before them."""
        data = os.pread(self._file.fileno(), count, start)
        return data if len(data) == count else data + self._pread_rest(count - len(data), start + len(data))

    def _pread_rest(self, count: int, start: int) -> bytes:
        view = memoryview(bytearray(count))
        self._read_exactly(view, start)
        return bytes(view)

    def _read_prefix(self) -> bytes:
        """The 8-byte header length and the header, checked against the size and the 100 MB cap; one
        read for a header of up to 64 KiB."""
        if self.size == 0:
            raise InvalidFileError(self.path, "empty file (0 bytes)")
        if self.size < 8:
            raise InvalidFileError(self.path, f"too small to be a safetensors file ({self.size} bytes)")
        first = os.pread(self._file.fileno(), min(self.size, _FIRST_READ), 0)
        if len(first) < 8:
            raise InvalidFileError(self.path, "file changed while being read (truncated)")
        (n,) = struct.unpack_from("<Q", first)
        if n > MAX_HEADER_BYTES:
            raise InvalidFileError(self.path, f"header length {n} is above the 100 MB limit: not a safetensors file")
        if 8 + n > self.size:
            raise InvalidFileError(self.path, f"header length {n} runs past the end of the file ({self.size} bytes): "
                                   "truncated or not safetensors")
        if 8 + n <= len(first):
            return first[: 8 + n]
        return first + self._pread_rest(8 + n - len(first), len(first))

    def close(self) -> None:
        window = _window()
        if window.owner == self._id:
            window.owner = None
        self._file.close()

    def __enter__(self) -> "SafetensorsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _runs(tensors: dict[str, TensorInfo]) -> list[tuple[TensorInfo, list[str]]]:
    """Maximal runs of adjacent tensors of one dtype, up to 64 MB each (a tensor past that is a run of
    its own), as one TensorInfo spanning each run and the names in it, in file order."""
    runs: list[tuple[TensorInfo, list[str]]] = []
    for name, info in sorted(tensors.items(), key=lambda kv: kv[1].start):
        if runs:
            last, members = runs[-1]
            if last.dtype == info.dtype and last.end == info.start and info.end - last.start <= _WINDOW_BYTES:
                runs[-1] = (last._replace(end=info.end, numel=last.numel + info.numel, shape=()), members)
                members.append(name)
                continue
        runs.append((info, [name]))
    return runs


def _version(st: os.stat_result) -> tuple[int, ...]:
    """What identifies one version of a file: its inode (a file replaced by another, ``os.replace``), size and mtime."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class _Window:
    """This thread's copy of part of one file's tensor data: bytes [start, end) of file ``owner``."""

    def __init__(self):
        self.buffer: bytearray | None = None  # reused from file to file: fresh memory costs a page fault per page
        self.owner: int | None = None
        self.start = self.end = 0


_local = threading.local()


def _window() -> _Window:
    if not hasattr(_local, "window"):
        _local.window = _Window()
    return _local.window


@functools.lru_cache(maxsize=1)
def _f16_table() -> np.ndarray:
    """float32 value of every float16 bit pattern: a table lookup converts ~1.5x faster than astype."""
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
    """No element has all the bits of its dtype's mask set (Inf or NaN): integer ops on the raw bits,
    ~10x faster than isfinite on F16 and the only way for F8, which numpy has no type for; a block at
    a time into a reused buffer, never a temporary as large as the tensor."""
    bits_type, mask = _EXPONENT_BITS[dtype]
    bits = raw.view(bits_type)
    if not hasattr(_local, "check_block"):
        _local.check_block = np.empty(_CHECK_ELEMENTS * 8, np.uint8)
    block = _local.check_block.view(bits_type)
    for lo in range(0, bits.size, _CHECK_ELEMENTS):
        part = block[: min(_CHECK_ELEMENTS, bits.size - lo)]
        np.bitwise_and(bits[lo : lo + _CHECK_ELEMENTS], bits_type(mask), out=part)
        if part.max() == mask:
            return False
    return True


def check_file(path: str) -> int:
    """Size of ``path`` if it is a readable regular file; otherwise a one-line InvalidFileError."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise InvalidFileError(path, _os_reason(e)) from None
    if stat.S_ISDIR(st.st_mode):
        raise InvalidFileError(path, "is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
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
