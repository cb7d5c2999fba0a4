"""Report writers: views of a :class:`~lora_audit.results.ScanResult` written to a text stream.

``console`` needs rich and is imported only when asked for; the others (JSON, JSON Lines, SARIF and a
self-contained HTML page) use the standard library.
"""

from __future__ import annotations

from typing import TextIO

from lora_audit.errors import UsageError
from lora_audit.reports.html import write_html
from lora_audit.reports.json_report import write_json, write_jsonl
from lora_audit.reports.sarif import write_sarif
from lora_audit.results import ScanResult

FORMATS = ("console", "json", "jsonl", "sarif", "html")


def write_report(result: ScanResult, fmt: str, stream: TextIO, *,
                 color: bool | None = None, verbose: bool = False) -> None:
    """Write ``result`` to ``stream`` in format ``fmt`` (one of :data:`FORMATS`).

    ``color`` (None: only on a terminal) and ``verbose`` (per-module weight table) affect the
    console format only.
    """
    if fmt == "console":
        from lora_audit.reports.console import write_console

        write_console(result, stream, color=color, verbose=verbose)
    elif fmt == "json":
        write_json(result, stream)
    elif fmt == "jsonl":
        write_jsonl(result, stream)
    elif fmt == "sarif":
        write_sarif(result, stream)
    elif fmt == "html":
        write_html(result, stream)
    else:
        raise UsageError(f"unknown report format {fmt!r}: expected one of {', '.join(FORMATS)}")
