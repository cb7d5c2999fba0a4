"""Report files: refuse paths that would overwrite a scanned file, and never leave a half report;
:class:`Interrupted`, what SIGINT and SIGTERM raise in the CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Callable, Iterator, TextIO

from lora_audit.errors import InputError, LoraAuditError, UsageError


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (raised by the handlers ``main()`` installs). A BaseException, so
    that no ``except Exception`` of a scan swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.word = "terminated" if signum == signal.SIGTERM else "interrupted"
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them


_held = {"depth": 0, "pending": None}  # see interrupts_held


def interrupt(signum: int) -> None:
    """What the CLI's SIGINT / SIGTERM handler does: raise :class:`Interrupted`, or, inside
    :func:`interrupts_held`, raise it when that block ends."""
    if _held["depth"]:
        _held["pending"] = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold :class:`Interrupted` back until the block is done, so that a streamed line is written and
    counted whole (a write can run signal handlers after its data reached the file)."""
    _held["depth"] += 1
    try:
        yield
    finally:
        _held["depth"] -= 1
        pending, _held["pending"] = _held["pending"], None
        if pending is not None and not _held["depth"]:
            raise Interrupted(pending)


def check_report_path(path: str, files: list[str]) -> None:
    """Refuse a report path that is empty, could overwrite a scanned file, or is a directory."""
    from lora_audit.scan.collect import SCANNED_SUFFIXES

    if not path:
        raise InputError("output", None, "is empty; give the path of the report file")
    if path.lower().endswith(SCANNED_SUFFIXES):
        raise UsageError(f"--output {path} has the suffix of a file lora-audit scans; choose e.g. report.json")
    if os.path.isdir(path):
        raise UsageError(f"--output {path} is a directory")
    if os.path.exists(path) and any(os.path.exists(f) and os.path.samefile(path, f) for f in files):
        raise UsageError(f"--output {path} is one of the scanned files")


@contextlib.contextmanager
def open_output(path: str | None, keep_partial: bool = False,
                keep_lines: Callable[[str], bool] | None = None) -> Iterator[TextIO]:
    """stdout, or ``path`` written through a temporary file renamed at the end, so that a failed scan
    leaves no half report (devices such as /dev/null are written directly). With ``keep_partial``
    (streamed JSON Lines), an interrupted scan keeps what was written: the file is renamed all the same.
    With ``keep_lines`` (``--resume``) the temporary file starts with the lines of ``path`` it keeps."""
    if path is None:
        yield sys.stdout
        return
    direct = os.path.exists(path) and not os.path.isfile(path)
    tmp = path if direct else os.path.join(os.path.dirname(path) or ".",
                                           f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        stream = open(tmp, "w" if direct else "x", encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot write report to {path}: {e.strerror}") from None
    try:
        with stream:
            if keep_lines is not None and not direct and os.path.isfile(path):
                with open(path, encoding="utf-8") as earlier:
                    stream.writelines(line for line in earlier if keep_lines(line))
            yield stream
        if not direct:
            os.replace(tmp, path)
    except BaseException as e:
        if not direct and keep_partial and isinstance(e, (Interrupted, KeyboardInterrupt)):  # closed: all written
            with contextlib.suppress(OSError):
                os.replace(tmp, path)
        if not direct and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename in (None, tmp, path):  # a write, the close or the rename
            raise LoraAuditError(f"cannot write report to {path}: {e.strerror}") from None
        raise
