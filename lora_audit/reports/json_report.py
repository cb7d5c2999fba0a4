"""JSON and JSON Lines reports.

``json`` is ``ScanResult.to_dict()`` as one document. Both formats have a JSON Schema shipped in
``lora_audit/reports/schemas/`` (:func:`schema`). ``jsonl`` has one ``{"type": "file", ...}``
line per file, then one ``{"type": "summary", ...}`` line (or, for a scan that was stopped, one
``{"type": "incomplete", ...}`` line instead), so a consumer can read results while a
long scan runs: ``scan`` streams file lines as files finish (input order with one job, completion
order with ``--jobs`` above 1); :func:`write_jsonl` writes them in the result's order. Non-finite floats (a NaN weight norm, say) become ``null``: the
output is always strict JSON. The undecodable bytes of a file name (which Python holds as lone
surrogates) are written as backslash escapes (``\\xff``), so the output is valid UTF-8 and decodes
to valid Unicode.
"""

from __future__ import annotations

import json
import math
import re
from importlib.resources import files
from typing import Any, TextIO

from lora_audit.results import SCHEMA_VERSION, FileResult, ScanResult


def schema(name: str = "report") -> dict:
    """The JSON Schema (2020-12) that ships with lora-audit: ``"report"`` for ``-f json``, ``"jsonl-line"``
    for each line of ``-f jsonl`` (a file, summary or incomplete record)."""
    return json.loads((files("lora_audit.reports") / "schemas" / f"{name}.schema.json").read_text(encoding="utf-8"))


def write_json(result: ScanResult, stream: TextIO) -> None:
    """Write the whole scan as one indented JSON document."""
    json.dump(json_ready(result.to_dict()), stream, indent=2, allow_nan=False)
    stream.write("\n")


def write_jsonl(result: ScanResult, stream: TextIO) -> None:
    """Write one line per file and a final summary line."""
    for file_result in result.files:
        stream.write(jsonl_file_line(file_result) + "\n")
    stream.write(jsonl_summary_line(result) + "\n")


def jsonl_file_line(file_result: FileResult) -> str:
    """The JSON Lines record of one file, without the trailing newline."""
    return _line({"type": "file", "schema_version": SCHEMA_VERSION, **file_result.to_dict()})


def jsonl_summary_line(result: ScanResult) -> str:
    """The final JSON Lines record (tool, counts, exit code), without the trailing newline."""
    d = result.header()
    return _line({"type": "summary", "schema_version": d["schema_version"], "tool": d["tool"],
                  **d["summary"]})


def jsonl_incomplete_line(reason: str, files_done: int, files_total: int) -> str:
    """The last JSON Lines record of a scan that stopped early (``reason``: "interrupted", "terminated"):
    the file lines before it are all there is; no summary follows."""
    return _line({"type": "incomplete", "schema_version": SCHEMA_VERSION, "reason": reason,
                  "files_scanned": files_done, "files_total": files_total})


def _line(record: dict[str, Any]) -> str:
    """``record`` as one line of strict JSON: encoded as is when it holds no non-finite number and no
    lone surrogate (nearly every record; the check is the encoder's own), else through :func:`json_ready`."""
    try:
        text = json.dumps(record, allow_nan=False)
    except ValueError:  # NaN or an infinity
        return json.dumps(json_ready(record), allow_nan=False)
    return text if _SURROGATE_ESCAPE.search(text) is None else json.dumps(json_ready(record), allow_nan=False)


_SURROGATE_ESCAPE = re.compile(r"\\ud[89a-f]", re.IGNORECASE)  # how json.dumps writes a lone surrogate


def json_ready(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by None (JSON has no such numbers) and every string
    made valid Unicode (:func:`unicode_text`)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, str):
        return unicode_text(obj)
    if isinstance(obj, dict):
        return {json_ready(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_ready(v) for v in obj]
    return obj


def unicode_text(text: str) -> str:
    """``text`` if it encodes as UTF-8; else the bytes of a file name that did not decode as
    ``\\xff`` escapes (the bytes SARIF percent-encodes), other lone surrogates as ``\\udXXX``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name decodes to (e.g. a "\\ud800" in JSON metadata)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
