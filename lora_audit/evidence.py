"""A finding's evidence: the facts behind it, machine-readable.

Keys are snake_case (:data:`KEY`). Values are JSON values: text, integers, floats (rounded to
:data:`DIGITS` significant digits; a non-finite one is None), booleans, None, lists of strings, and
objects of string -> string for data about items of the scanned file (metadata keys, module names,
photo names: names lora-audit does not choose). A list or object holds at most :data:`MAX_ITEMS`
items and always comes with its total under :func:`count_key` (``tensors`` and ``tensor_count``),
so a reader knows whether it is complete and a hostile file cannot make a report grow.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence

KEY = re.compile(r"[a-z][a-z0-9_]*")
MAX_ITEMS = 100  # items kept in an evidence list or object; its count key has the total
DIGITS = 4  # significant digits of an evidence float

Value = str | int | float | bool | None | list[str] | dict[str, str]
Evidence = dict[str, Value]


def count_key(name: str) -> str:
    """The key of the total of list or object ``name``: ``tensors`` -> ``tensor_count``, ``metadata`` ->
    ``metadata_count``."""
    return name.removesuffix("s") + "_count"


def items(name: str, values: Sequence[str], total: int | None = None) -> Evidence:
    """``{name: the first MAX_ITEMS values, count_key(name): total}`` (``total`` defaults to ``len(values)``)."""
    return {name: [str(v) for v in values[:MAX_ITEMS]], count_key(name): len(values) if total is None else total}


def per_item(name: str, values: Mapping[str, str], total: int | None = None) -> Evidence:
    """``{name: the first MAX_ITEMS item -> text pairs, count_key(name): total}`` (``total`` defaults to
    ``len(values)``)."""
    kept = {str(k): str(v) for k, v in itertools.islice(values.items(), MAX_ITEMS)}
    return {name: kept, count_key(name): len(values) if total is None else total}


def clean(evidence: Mapping[str, object]) -> Evidence:
    """``evidence`` with its keys checked and its floats rounded; ValueError for a key that is not
    snake_case, TypeError for a value that is not one of :data:`Value`."""
    bad = [key for key in evidence if not (isinstance(key, str) and KEY.fullmatch(key))]
    if bad:
        raise ValueError(f"evidence keys must be snake_case: {bad!r}")
    return {key: _value(key, value) for key, value in evidence.items()}


def _value(key: str, value: object) -> Value:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return float(f"{value:.{DIGITS}g}") if math.isfinite(value) else None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return dict(value)
    raise TypeError(f"evidence {key!r}: {type(value).__name__} is not an evidence value")


def entries(evidence: Mapping[str, Value]) -> list[tuple[str, Value, int]]:
    """``(key, value, items left out)`` for each entry a person reads: the count key of a list or
    object is folded into it (as the number of items it leaves out)."""
    folded = {count_key(k) for k, v in evidence.items() if isinstance(v, (list, dict))}
    shown = []
    for key, value in evidence.items():
        if key in folded and isinstance(value, int):
            continue
        total = evidence.get(count_key(key))
        more = total - len(value) if isinstance(value, (list, dict)) and isinstance(total, int) else 0
        shown.append((key, value, max(more, 0)))
    return shown


def text(value: Value, more: int = 0) -> str:
    """``value`` as text for people: numbers as written, None as ``n/a``, a list joined with ", ", an
    object as ``name=text`` pairs; ``more``: items left out, said as "+N more"."""
    if isinstance(value, dict):
        parts = [f"{k}={v}" for k, v in value.items()]
    elif isinstance(value, list):
        parts = [str(v) for v in value]
    else:
        return _scalar(value)
    return ", ".join(parts + ([f"+{more} more"] if more > 0 else []))


def short_list(values: Sequence[str], shown: int = 8) -> str:
    """``values`` for a message: the first ``shown`` joined with ", ", then "+N more"."""
    return text([str(v) for v in values[:shown]], len(values) - shown)


def _scalar(value: Value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
