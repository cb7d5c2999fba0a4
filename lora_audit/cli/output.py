"""Report files: refuse paths that would overwrite a scanned file, and never leave a half report."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, TextIO

from lora_audit.errors import InputError, LoraAuditError, UsageError


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
def open_output(path: str | None) -> Iterator[TextIO]:
    """stdout, or ``path`` written through a temporary file renamed at the end, so that a failed scan
    leaves no half report (devices such as /dev/null are written directly)."""
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
            yield stream
        if not direct:
            os.replace(tmp, path)
    except BaseException as e:
        if not direct and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename in (None, tmp, path):  # a write, the close or the rename
            raise LoraAuditError(f"cannot write report to {path}: {e.strerror}") from None
        raise
