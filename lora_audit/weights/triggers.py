"""The trigger phrases a LoRA file's training metadata hands out: the metadata-trigger attack's input.

A DreamBooth-style fine-tune binds its subject to a trigger; whoever prompts the LoRA with it renders the
subject (the paper's "org", an upper bound of every attack). Trainers leave it in the metadata three
ways, read here in this order:

- stated: LA105's keys (``modelspec.trigger_phrase``, ``ssmd_keywords``, ``trigger_word(s)``,
  ``trigger_phrase``, ``instance_prompt``) and the ``class_tokens`` of kohya's non-regularisation
  subsets (``ss_datasets[].subsets[]``);
- kohya's caption tags (``ss_tag_frequency``, ``ss_datasets[].tag_frequency``: ``{folder: {tag: count}}``,
  counted over each image's caption): per folder, the tags of the top count, which every caption of the
  folder holds: the trigger and class word (joined with ", " as a caption writes them);
- DreamBooth's customary rare tokens (:data:`RARE_TOKENS`) as words of any other metadata value
  (a training comment, a folder name), unless a phrase already found holds them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from lora_audit.weights.json_text import parse_json

TRIGGER_KEYS = ("modelspec.trigger_phrase", "ssmd_keywords", "trigger_word", "trigger_words",
                "trigger_phrase", "instance_prompt")
TAG_FREQUENCY_KEY = "ss_tag_frequency"
DATASETS_KEY = "ss_datasets"
RARE_TOKENS = ("sks", "ohwx", "zwx")  # the DreamBooth paper's "sks", and the two popular tutorials' tokens
MAX_TRIGGERS = 4  # candidates tried per file (each costs K images)
MAX_CHARS = 120  # of one phrase
_IMAGE_KEYS = ("ssmd_cover_images", "modelspec.thumbnail")  # base64: letters that are not words
_EMPTY = {"", "none", "null"}


@dataclass(frozen=True)
class Trigger:
    """A candidate trigger phrase and the metadata key it came from."""

    phrase: str
    source: str  # a metadata key, or a key and where in it ("ss_datasets class_tokens")


def metadata_triggers(metadata: Mapping[str, str]) -> list[Trigger]:
    """The candidate triggers of a file's metadata, most explicit first, at most :data:`MAX_TRIGGERS`
    (phrases compared case-insensitively, each kept once)."""
    md = {str(k): str(v) for k, v in dict(metadata or {}).items()}
    found = [Trigger(phrase, key) for key in TRIGGER_KEYS for phrase in _phrases(md.get(key, ""))]
    datasets = parse_json(md.get(DATASETS_KEY, ""))
    datasets = [d for d in datasets if isinstance(d, dict)] if isinstance(datasets, list) else []
    found += [Trigger(s["class_tokens"], f"{DATASETS_KEY} class_tokens") for s in subsets(datasets)
              if not s.get("is_reg") and isinstance(s.get("class_tokens"), str)]
    frequencies = [(TAG_FREQUENCY_KEY, parse_json(md.get(TAG_FREQUENCY_KEY, "")))]
    frequencies += [(f"{DATASETS_KEY} tag_frequency", d.get("tag_frequency")) for d in datasets]
    found += [Trigger(_top_tags(tags), key) for key, freq in frequencies if isinstance(freq, dict)
              for tags in freq.values() if isinstance(tags, dict)]
    found = _unique(found)
    said = " ".join(t.phrase.lower() for t in found)
    for token in RARE_TOKENS:
        word = re.compile(rf"(?<![a-z]){token}(?![a-z])", re.IGNORECASE)  # "10_sks woman" too
        where = next((k for k, v in md.items() if k not in _IMAGE_KEYS and word.search(v[:65536])), None)
        if where is not None and not word.search(said):
            found.append(Trigger(token, where))
    return _unique(found)[:MAX_TRIGGERS]


def subsets(datasets: Any) -> list[dict]:
    """kohya ``ss_datasets[].subsets[]`` entries that are dicts."""
    if not isinstance(datasets, list):
        return []
    return [s for d in datasets if isinstance(d, dict) and isinstance(d.get("subsets"), list)
            for s in d["subsets"] if isinstance(s, dict)]


def _phrases(value: str) -> list[str]:
    """The phrases of a trigger key's value: its JSON strings (a list of keywords), else the value itself."""
    parsed = parse_json(value)
    if isinstance(parsed, list):
        return [p for p in parsed if isinstance(p, str)]
    return [parsed] if isinstance(parsed, str) else [value]


def _top_tags(tags: dict) -> str:
    """The tags of one folder that have its highest count, in the order kohya counted them."""
    counts = {str(tag).strip(): _count(n) for tag, n in tags.items() if str(tag).strip()}
    top = max(counts.values(), default=0)
    return ", ".join(tag for tag, n in counts.items() if n == top)


def _count(value: Any) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return 0


def _unique(triggers: list[Trigger]) -> list[Trigger]:
    """Non-empty phrases on one line, cut to :data:`MAX_CHARS`, each once (the first source kept)."""
    kept: dict[str, Trigger] = {}
    for t in triggers:
        phrase = " ".join(t.phrase.split())[:MAX_CHARS]
        if phrase.lower() not in _EMPTY:
            kept.setdefault(phrase.lower(), Trigger(phrase, t.source))
    return list(kept.values())
