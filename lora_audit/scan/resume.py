"""Resuming a batch scan from its own JSON Lines report (``scan --resume -f jsonl -o FILE``).

A file is done when the report already holds a ``file`` record of the same path, size and
modification time (a changed file is scanned again). Earlier runs' records are read back as results,
so the new run's summary line covers the whole batch. A report written with another major schema
version (1.x evidence is text under phrase keys) is refused: one report holds one schema.
"""

from __future__ import annotations

import json
import os

from lora_audit.errors import InputError
from lora_audit.results import SCHEMA_VERSION, FileResult
from lora_audit.scan.collect import Collection


def recorded(report: str) -> list[FileResult]:
    """The file records of the JSON Lines report at ``report`` (none when it does not exist yet)."""
    if not os.path.exists(report):
        return []
    records, number = {}, 0
    try:
        with open(report, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                _same_schema(report, record)
                if isinstance(record, dict) and record.get("type") == "file":
                    records[record["path"]] = FileResult.from_dict(record)  # a later record of a path wins
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise InputError("output", report, f"is not a lora-audit JSON Lines report (line {number}: "
                         f"{type(e).__name__})") from None
    return list(records.values())


def _same_schema(report: str, record: object) -> None:
    """InputError when ``record`` was written with another major version of the report schema."""
    version = record.get("schema_version") if isinstance(record, dict) else None
    if isinstance(version, str) and version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise InputError("output", report, f"was written with report schema {version}; this lora-audit writes "
                         f"{SCHEMA_VERSION} and cannot add to it (write a new report, or scan without --resume)")


def still_to_scan(collected: Collection, earlier: list[FileResult]) -> Collection:
    """``collected`` without the files ``earlier`` records as they are now (same size and mtime)."""
    done = {r.path for r in earlier if _unchanged(r)}
    return Collection([p for p in collected.files if p not in done],
                      [p for p in collected.not_followed if p not in done],
                      {p: h for p, h in collected.hub.items() if p not in done})


def _unchanged(result: FileResult) -> bool:
    try:
        stat = os.stat(result.path)
    except OSError:
        return False
    return result.size_bytes == stat.st_size and result.mtime == stat.st_mtime
