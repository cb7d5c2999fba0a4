"""Recognising pickle checkpoints (.ckpt/.pt/.bin/.pth) and listing what they would import, without unpickling.

``pickletools.genops`` walks the opcode stream as data; nothing is imported or called. A small
symbolic stack (strings, marks and the memo, everything else unknown) follows ``STACK_GLOBAL`` to
the strings it really takes, memo look-ups included; an operand it cannot follow is named ``?``.

Resource bounds: every pickle stream is read as a stream, never whole; at most
:data:`MAX_STREAM_BYTES` (16 MiB) of one stream (a raw pickle file, or one ``.pkl`` member of a
torch zip archive) and :data:`MAX_FILE_BYTES` (64 MiB) of one file in all are read, and the walk
stops after :data:`MAX_OPCODES` opcodes of one file (a few seconds) or at :data:`MAX_STACK` stack or
:data:`MAX_MEMO` memo entries (tens of MB). Where a bound stops the walk,
:attr:`PickleImports.truncated` says so: imports further on are not listed.
"""

from __future__ import annotations

import io
import pickletools
import struct
import zipfile
from dataclasses import dataclass, field

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
MAX_STREAM_BYTES = 16 * 1024 * 1024
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_OPCODES = 2_000_000  # a torch.save checkpoint of thousands of tensors has some 100 000
MAX_STACK = 1_000_000
MAX_MEMO = 250_000
_SNIFF_BYTES = 4096  # of a file without a pickle suffix or protocol header: enough to tell a pickle
_MAX_NAME = 200  # longer strings are cut (and so never match the allow-list)
_ZIP_MAGIC = b"PK\x03\x04"  # torch.load's own test for its zip format

_TORCH_STORAGES = ("Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
                   "ComplexDouble", "ComplexFloat", "QUInt8", "QInt8", "QInt32", "QUInt4x2", "QUInt2x4",
                   "Untyped")
_TORCH_DTYPES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
                 "bool", "complex64", "complex128", "float8_e4m3fn", "float8_e5m2")
SAFE_GLOBALS = frozenset(
    {("collections", "OrderedDict"),
     ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
     ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
     ("torch", "Size"), ("torch", "device"), ("torch.nn.parameter", "Parameter"),
     ("numpy", "dtype"), ("numpy", "ndarray"),
     ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
     ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
     ("_codecs", "encode")}
    | {("torch", f"{kind}Storage") for kind in _TORCH_STORAGES}
    | {("torch", dtype) for dtype in _TORCH_DTYPES}
    | {(module, name) for module in ("builtins", "__builtin__") for name in ("set", "frozenset", "slice", "bytearray")}
)
"""The exact (module, name) globals that torch.save / numpy checkpoints legitimately import (after
picklescan's safe list and torch's weights-only unpickler); anything else is listed as unsafe."""

_STRINGS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}
_MARK = object()  # a MARK on the symbolic stack; None is a value we do not follow


@dataclass
class PickleImports:
    """What the opcode walk found in a pickle file."""

    kind: str  # "zip" (torch.save archive) or "raw" (a pickle stream)
    imports: list[str] = field(default_factory=list)  # every ``module.name`` it would import, sorted
    unsafe: list[str] = field(default_factory=list)  # those outside :data:`SAFE_GLOBALS`
    opcodes: int = 0  # opcodes read: 0 means nothing readable as a pickle
    truncated: str | None = None  # which bound stopped the walk, if one did


def looks_like_pickle(path: str, head: bytes, size: int) -> bool:
    """True for pickle extensions, torch zip archives and pickle streams of any protocol (recognised
    by content, whatever the suffix) that are not plausibly safetensors.

    ``head`` is the file's first 9 bytes. A safetensors header length can start with byte 0x80, so
    a file whose u64 header length fits in the file and whose header starts with ``{`` is safetensors.
    Protocol 0/1 streams have no header: the first bytes of the file must walk as opcodes.
    """
    if path.lower().endswith(PICKLE_SUFFIXES):
        return True
    if len(head) >= 9 and 8 + struct.unpack("<Q", head[:8])[0] <= size and head[8:9] == b"{":
        return False
    if head[:4] == _ZIP_MAGIC or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return True
    try:
        with open(path, "rb") as f:
            start = f.read(_SNIFF_BYTES)
    except OSError:
        return False
    return _walks_as_pickle(start, complete=len(start) < _SNIFF_BYTES)


def _walks_as_pickle(data: bytes, complete: bool) -> bool:
    """True if ``data`` parses as opcodes up to a STOP, or (a longer file's start) up to its end."""
    stream = io.BytesIO(data)
    try:
        for opcode, _, _ in pickletools.genops(stream):
            if opcode.name == "STOP":
                return True
    except Exception:  # not opcodes, or the opcode walk ran past these bytes
        return not complete and stream.tell() >= len(data)
    return False


def pickle_imports(path: str) -> PickleImports:
    """Every global the pickle file at ``path`` would import (a raw stream or a torch zip's ``.pkl``
    members), read within the bounds of the module docstring."""
    with open(path, "rb") as f:
        is_zip = f.read(4) == _ZIP_MAGIC
    found: set[tuple[str, str]] = set()
    result = PickleImports("zip" if is_zip else "raw")
    budget = [MAX_FILE_BYTES]
    try:
        archive = zipfile.ZipFile(path) if is_zip else None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):  # not an archive after all: the raw stream
        archive = None
    if archive is not None:
        with archive:
            _walk_archive(archive, budget, found, result)
    else:
        result.kind = "raw"
        with open(path, "rb") as f:
            _walk(_Bounded(f, budget, "the stream"), found, result)
    result.imports = sorted(_dotted(g) for g in found)
    result.unsafe = sorted(_dotted(g) for g in found if g not in SAFE_GLOBALS)
    return result


def _walk_archive(archive: zipfile.ZipFile, budget: list[int], found: set, result: PickleImports) -> None:
    """Walk the ``.pkl`` members of a torch zip archive (torch.load unpickles those), each as a stream."""
    for info in archive.infolist():
        if not info.filename.endswith(".pkl"):
            continue
        if budget[0] <= 0:
            result.truncated = result.truncated or f"stopped after {_mib(MAX_FILE_BYTES)} (the bound per file)"
            return
        try:
            with archive.open(info) as member:
                _walk(_Bounded(member, budget, info.filename), found, result)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, ValueError):
            pass  # a corrupt, encrypted or oddly compressed member: the others are still read


class _Bounded:
    """A read-only view of ``raw`` for ``pickletools.genops`` that reads at most
    :data:`MAX_STREAM_BYTES` of it and what is left of the file's ``budget`` (a one-item list shared
    by the file's streams); ``hit`` says which bound stopped it, if one did."""

    def __init__(self, raw, budget: list[int], name: str):
        self.raw, self.budget, self.name, self.pos, self.hit = raw, budget, name, 0, None
        self.file_bound = budget[0] < MAX_STREAM_BYTES
        self.left = min(MAX_STREAM_BYTES, budget[0])

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1):
        if n < 0 or n > self.left:  # never read past a bound, not even into memory
            return self._stop()
        data = bytearray()
        while len(data) < n:
            chunk = self.raw.read(min(n - len(data), 1 << 20))
            if not chunk:
                break
            data += chunk
        return self._count(data)

    def readline(self, size: int = -1) -> bytes:
        line = self.raw.readline(self.left + 1)
        return self._stop() if len(line) > self.left else self._count(line)

    def _count(self, data):
        self.pos += len(data)
        self.left -= len(data)
        self.budget[0] -= len(data)
        return data

    def _stop(self) -> bytes:
        if self.left > 0 or self.raw.read(1):  # more to read than the bound allows
            self.hit = (f"stopped after {_mib(MAX_FILE_BYTES)} (the bound per file)" if self.file_bound
                        else f"stopped after {_mib(MAX_STREAM_BYTES)} of {self.name} (the bound per pickle stream)")
        self.left = 0
        return b""


def _walk(stream: _Bounded, found: set[tuple[str, str]], result: PickleImports) -> None:
    """Add the globals of the pickles in ``stream`` (one after another, as torch's legacy format has) to ``found``."""
    while True:
        stack: list = []
        memo: dict = {}
        stopped = False
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                result.opcodes += 1
                stopped = opcode.name == "STOP"
                _step(opcode, arg, stack, memo, found)
                if result.opcodes >= MAX_OPCODES or len(stack) > MAX_STACK or len(memo) > MAX_MEMO:
                    result.truncated = result.truncated or (f"stopped at {MAX_OPCODES} opcodes, {MAX_STACK} stack "
                                                            f"or {MAX_MEMO} memo entries (the bounds per file)")
                    return
        except Exception:  # the end, a corrupt stream or a bound: what was read so far counts
            pass
        if stream.hit:
            result.truncated = result.truncated or stream.hit
        if not stopped or stream.hit:
            return


def _step(opcode, arg, stack: list, memo: dict, found: set[tuple[str, str]]) -> None:
    """Apply one opcode to the symbolic ``stack`` and ``memo``, recording the globals it imports."""
    name = opcode.name
    top = stack[-1] if stack else None
    if name in _STRINGS:
        stack.append(arg if len(arg) <= _MAX_NAME else arg[:_MAX_NAME] + "...")
    elif name == "MEMOIZE":
        memo[len(memo)] = top
    elif name in _PUTS:
        memo[arg] = top
    elif name in _GETS:
        stack.append(memo.get(arg))
    elif name == "DUP":
        stack.append(top)
    elif name == "MARK":
        stack.append(_MARK)
    else:
        if name in ("GLOBAL", "INST"):
            found.add(tuple(arg.split(" ", 1)) if " " in arg else (arg, "?"))
        elif name == "STACK_GLOBAL":
            operands = stack[-2:]
            found.add(tuple(v if isinstance(v, str) else "?" for v in [None] * (2 - len(operands)) + operands))
        elif name in ("EXT1", "EXT2", "EXT4"):
            found.add(("copyreg extension", str(arg)))
        _pop(stack, opcode.stack_before)
        stack.extend([None] * len(opcode.stack_after))


def _pop(stack: list, before: list) -> None:
    """Pop what an opcode takes: up to its mark (and the mark) and then what lies below the mark."""
    count = len(before)
    if pickletools.markobject in before:
        while stack and stack.pop() is not _MARK:
            pass
        count = before.index(pickletools.markobject)
    del stack[max(0, len(stack) - count):]


def _dotted(name: tuple[str, str]) -> str:
    return f"{name[0]}.{name[1]}"


def _mib(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB"
