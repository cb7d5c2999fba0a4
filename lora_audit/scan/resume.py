"""Resuming a batch scan from its own JSON Lines report (``scan --resume -f jsonl -o FILE``).

A file is done when the report already holds a ``file`` record of the same path, size and
modification time (a changed file is scanned again). Earlier runs' records are read back as results,
so the new run's summary line covers the whole batch.
"""

from __future__ import annotations

import json
import os

from lora_audit.errors import InputError
from lora_audit.results import FileResult
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
                if isinstance(record, dict) and record.get("type") == "file":
                    records[record["path"]] = FileResult.from_dict(record)  # a later record of a path wins
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise InputError("output", report, f"is not a lora-audit JSON Lines report (line {number}: "
                         f"{type(e).__name__})") from None
    return list(records.values())


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
