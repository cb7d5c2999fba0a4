"""Metadata values that hold JSON: safetensors metadata is str -> str, and trainers nest JSON in it."""

from __future__ import annotations

import json
from typing import Any


def parse_json(value: str) -> Any:
    """The parsed JSON of a value (unwrapping one level of double encoding), or None."""
    try:
        parsed = json.loads(value)
        if isinstance(parsed, str) and parsed.strip()[:1] in ("{", "["):
            parsed = json.loads(parsed)
        return parsed
    except (ValueError, TypeError, RecursionError):
        return None
