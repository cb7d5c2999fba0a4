"""Privacy rules LA101-LA107 over the ``__metadata__`` of a safetensors file.

The metadata is a dict of str -> str; many values are JSON strings. Trainers write these keys
(verified against their sources):

- kohya-ss/sd-scripts (train_network.py): ``ss_tag_frequency`` (``{folder: {tag: count}}``),
  ``ss_dataset_dirs`` / ``ss_reg_dataset_dirs`` (``{folder: {n_repeats, img_count}}``),
  ``ss_datasets`` (list of datasets with ``tag_frequency`` and ``subsets[]`` holding ``image_dir``,
  ``metadata_file``, ``class_tokens``, ``is_reg``, ``caption_prefix``), ``ss_output_name``,
  ``ss_training_comment``, ``ss_network_args`` (JSON), ``ss_sd_model_name`` / ``ss_vae_name``
  (a basename when the file existed, else the argument as given). Every value went through
  ``str()``, so an unset option reads ``"None"``.
- kohya library/sai_model_spec.py: ``modelspec.title`` (output name, else ``LoRA@<timestamp>``),
  ``.author``, ``.description``, ``.usage_hint``, ``.tags``, ``.trigger_phrase`` and
  ``.thumbnail`` (a ``data:<mime>;base64,...`` URL).
- sd-webui-additional-networks metadata editor: ``ssmd_cover_images`` (JSON list of base64 PNGs that
  keep the source image's text chunks), ``ssmd_display_name``, ``ssmd_author``, ``ssmd_keywords``
  ("activation keywords", hence LA105 rather than LA104), ``ssmd_description``, ``ssmd_tags``,
  ``ssmd_rating`` (a number, not text).
- Nerogar/OneTrainer: ``ot_config`` (the JSON training config), ``ot_branch``, ``ot_revision``.
- ostris/ai-toolkit: ``name`` (the job name), ``training_info`` (``{"step", "epoch"}``, harmless
  unless it holds text), ``software``, ``ss_output_name`` and a one-tag ``ss_tag_frequency`` built
  from the trigger word.

Messages never quote metadata values; evidence does (under ``metadata``: where in the metadata ->
value), truncated, or masked with ``redact=True``.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from lora_audit.evidence import MAX_ITEMS, per_item, short_list
from lora_audit.results import Finding
from lora_audit.rules import make_finding
from lora_audit.scan.check import Check, Subject
from lora_audit.weights.json_text import parse_json
from lora_audit.weights.dp_metadata import DPGuarantee, read_dp_guarantee
from lora_audit.weights.triggers import TRIGGER_KEYS, subsets

TAG_FREQUENCY_KEYS = ("ss_tag_frequency",)
DATASET_KEYS = ("ss_dataset_dirs", "ss_reg_dataset_dirs", "ss_datasets")
FREE_TEXT_KEYS = (
    "ss_training_comment", "ss_output_name", "modelspec.title", "modelspec.author",
    "modelspec.description", "modelspec.usage_hint", "modelspec.tags", "name",
    "ssmd_display_name", "ssmd_author", "ssmd_description", "ssmd_tags", "ssmd_version", "ssmd_source",
)
IMAGE_KEYS = ("ssmd_cover_images", "modelspec.thumbnail")
# Trainer configs; True means "only when it holds a path or free text" (otherwise it is numbers).
CONFIG_KEYS = {"ot_config": False, "config": False, "training_info": True, "ss_network_args": True}

# ssmd_* keys that are not free text: images (LA106), trigger keywords (LA105), a 0-10 rating.
_SSMD_NOT_TEXT = {"ssmd_cover_images", "ssmd_keywords", "ssmd_rating"}

SENSITIVE_KEYS = frozenset(
    TAG_FREQUENCY_KEYS + DATASET_KEYS + FREE_TEXT_KEYS + TRIGGER_KEYS + IMAGE_KEYS
    + tuple(k for k, only_text in CONFIG_KEYS.items() if not only_text)
)
"""Keys that leak by their nature: ``strip`` removes them even when they look empty."""

_EMPTY = {"", "none", "null", "[]", "{}", '""'}
# Values trainers write when the user set nothing: kohya's default title, ai-toolkit's name template.
_PLACEHOLDER = re.compile(r"(LoRA|TextualInversion|Checkpoint)@[\d.]+|\[name\]")
_TOP_TAGS = 5
_LEAVES_SHOWN = 8  # matching values of one trainer config quoted in its evidence

_PATH_PATTERNS = [
    re.compile(r"file:/{1,3}[^\s\"'<>|]+", re.IGNORECASE),
    # C:\Users\x or D:/data, not the "s:/" of "https://" (a letter may not precede the drive).
    re.compile(r"(?<![A-Za-z0-9])[A-Za-z]:[\\/](?![\\/])[^\s\\/\"'<>|:*?,;]+(?:[\\/][^\s\\/\"'<>|:*?,;]+)*"),
    re.compile(r"(?<![\\\w])\\\\[A-Za-z0-9][\w.$-]*\\[^\s\\\"'<>|]+(?:\\[^\s\\\"'<>|]+)*"),  # \\server\share
    re.compile(r"(?<![\w~/])~[\\/][^\s\"'<>|,;]+"),
    # /home/jane/x: starts the string or follows a separator, so URLs ("//host/a"), model ids
    # ("org/model"), fractions and dates ("1/2") and base64 ("ab/cd") never match; the first
    # component must start with a letter, "." "_" or "~", which rules out "/9j/" JPEG base64.
    re.compile(r"(?:^|(?<=[\s\"'=(\[{,;]))/[A-Za-z._~][^\s/\"'<>|,;:*?]*(?:/[^\s/\"'<>|,;:*?]+)+"),
]
# Two words: a caption, a name, a sentence. Matching starts only where a word starts, which keeps
# the search linear on long runs of letters.
_WORDS = re.compile(r"(?<![^\W\d_])[^\W\d_]{2,}\s+[^\W\d_]{2,}")
_MAX_SCANNED_CHARS = 65536  # of each string the text rules search; longer ones are cut
MAX_PNG_TEXT = 1 << 20  # characters of PNG text read per embedded image ...
MAX_PNG_TEXT_PER_FILE = 4 << 20  # ... and per file, all images together


@dataclass
class _Hit:
    """One leaking metadata ``key``; ``label`` names the evidence entry when it differs from it (where in
    the value, e.g. ``ssmd_cover_images[0] parameters``). Labels are unique within one rule's hits."""

    key: str
    value: str
    label: str = ""


_Check = Callable[[dict[str, str]], tuple[str, list[_Hit]] | None]


def check_metadata(metadata: dict[str, str], *, redact: bool = False, max_value_chars: int = 120) -> list[Finding]:
    """Findings LA101-LA107 for one file's metadata, at most one per rule, in rule order; the evidence
    of each is ``metadata`` (label -> value shown, the first :data:`~lora_audit.evidence.MAX_ITEMS`)
    and ``metadata_count``."""
    findings = []
    for rule_id, message, hits in _run_checks(metadata):
        shown = {hit.label or hit.key: _show(hit.value, redact, max_value_chars) for hit in hits[:MAX_ITEMS]}
        findings.append(make_finding(rule_id, message, per_item("metadata", shown, total=len(hits))))
    return findings


class MetadataCheck(Check):
    """The metadata privacy rules LA101-LA107 as a scan check, and the DP guarantee a file states (LA108)."""

    rule_ids = tuple(f"LA10{i}" for i in range(1, 9))

    def __init__(self, redact: bool = False):
        self.redact = redact

    def run(self, subject: Subject) -> list[Finding]:
        findings = check_metadata(subject.lora.metadata, redact=self.redact)
        guarantee = read_dp_guarantee(subject.lora.metadata)
        if isinstance(guarantee, DPGuarantee):
            findings.append(make_finding("LA108", f"the file states it was trained with {guarantee.summary()} "
                                         "(a claim in its metadata: lora-audit cannot verify it)",
                                         {**asdict(guarantee), "group_epsilon": guarantee.group_epsilon(),
                                          "group_delta": guarantee.group_delta()}))
        elif guarantee is not None:
            findings.append(make_finding("LA108", f"the file states a DP guarantee that cannot be read ({guarantee}): "
                                         "treat it as trained without DP", {"problem": guarantee}))
        return findings


def sensitive_keys(metadata: dict[str, str]) -> set[str]:
    """Keys a ``strip`` should remove: those behind a finding plus known leaky keys, even if empty."""
    keys = {str(k) for k in metadata if str(k) in SENSITIVE_KEYS or str(k).startswith("ssmd_")}
    keys.discard("ssmd_rating")
    for _, _, hits in _run_checks(metadata):
        keys.update(hit.key for hit in hits)
    return keys


def png_text_chunks(png_bytes: bytes, max_text: int = MAX_PNG_TEXT) -> dict[str, str]:
    """Text of the tEXt, zTXt and iTXt chunks of a PNG; what could be parsed, never an exception.

    At most ``max_text`` characters of text are read (inflated) in all: the chunks after that are
    left unread, so a few KB of compressed chunks cannot grow into gigabytes.
    """
    if not isinstance(png_bytes, (bytes, bytearray, memoryview)):
        return {}
    data = bytes(png_bytes)
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return {}
    chunks: dict[str, str] = {}
    pos, left = 8, max_text
    while pos + 8 <= len(data) and left > 0:
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8:pos + 8 + length]
        if len(body) < length or kind == b"IEND":
            break
        pos += 12 + length  # length, type, body, CRC
        parser = _TEXT_CHUNKS.get(kind)
        keyword, sep, rest = body.partition(b"\0")
        if parser is None or not sep or not keyword or keyword.decode("latin-1") in chunks:
            continue
        try:
            text = parser(rest, left)
        except (zlib.error, IndexError):
            continue
        chunks[keyword.decode("latin-1")] = text
        left -= len(text) + len(keyword)
    return chunks


# --- the rules ---------------------------------------------------------------------------------


def _caption_tags(md: dict[str, str]) -> tuple[str, list[_Hit]] | None:
    """LA101: caption tags of ss_tag_frequency and of each ss_datasets entry."""
    hits, tags, folders = [], Counter(), 0
    sources = [(key, parse_json(md[key]), md[key]) for key in TAG_FREQUENCY_KEYS if _present(md, key)]
    datasets = parse_json(md.get("ss_datasets", ""))
    if isinstance(datasets, list):
        freqs = [d.get("tag_frequency") for d in datasets if isinstance(d, dict)]
        merged = {f"{i}/{folder}": counts for i, freq in enumerate(freqs) if isinstance(freq, dict)
                  for folder, counts in freq.items()}
        sources.append(("ss_datasets", merged, ""))
    for key, freq, raw in sources:
        if not isinstance(freq, dict):
            hits.append(_Hit(key, raw))  # set, but not the {folder: {tag: count}} JSON we know
            continue
        counts = _tag_counts(freq)
        if counts:
            top = ", ".join(f"{tag} ({n})" for tag, n in counts.most_common(_TOP_TAGS))
            hits.append(_Hit(key, f"{len(counts)} tags: {top}"))
            tags.update(counts)
            folders += len(freq)
    if not hits:
        return None
    return f"{len(tags)} caption tag(s) from {folders} dataset folder(s) in {_names(hits)}", hits


def _dataset_folders(md: dict[str, str]) -> tuple[str, list[_Hit]] | None:
    """LA102: dataset folder names ("10_jane doe woman") and fine-tuning metadata file names."""
    hits, count = [], 0
    for key in DATASET_KEYS:
        if not _present(md, key):
            continue
        parsed = parse_json(md[key])
        if key == "ss_datasets" and isinstance(parsed, list):
            names = [s.get(field) for s in subsets(parsed) for field in ("image_dir", "metadata_file")]
        elif key != "ss_datasets" and isinstance(parsed, dict):
            names = list(parsed)
        else:
            hits.append(_Hit(key, md[key]))  # set, but not the JSON kohya writes
            continue
        names = [n for n in names if isinstance(n, str) and n.strip()]
        if names:
            hits.append(_Hit(key, ", ".join(names)))
            count += len(names)
    if not hits:
        return None
    return f"{count} dataset folder name(s) in {_names(hits)}", hits


def _local_paths(md: dict[str, str]) -> tuple[str, list[_Hit]] | None:
    """LA103: absolute, home-relative, Windows or UNC paths anywhere, inside JSON values too."""
    hits = []
    for key, value in md.items():
        if key in IMAGE_KEYS and (key != "modelspec.thumbnail" or value.strip().lower().startswith("data:")):
            continue  # base64 images: LA106 reports them (a thumbnail that names a file is a path)
        paths = [p for text in _strings(value) for p in _find_paths(text)]
        if paths:
            hits.append(_Hit(key, ", ".join(dict.fromkeys(paths))))
    if not hits:
        return None
    return f"{len(hits)} metadata key(s) hold local paths: {_names(hits)}", hits


def _free_text(md: dict[str, str]) -> tuple[str, list[_Hit]] | None:
    """LA104: titles, names, descriptions, comments and the metadata editor's ssmd_* text."""
    keys = list(FREE_TEXT_KEYS) + sorted(k for k in md if k.startswith("ssmd_") and k not in FREE_TEXT_KEYS)
    hits = [_Hit(k, md[k]) for k in keys
            if k not in _SSMD_NOT_TEXT and _present(md, k) and not _PLACEHOLDER.fullmatch(md[k].strip())]
    if not hits:
        return None
    return f"Free-text fields are set: {_names(hits)}", hits


def _trigger_phrases(md: dict[str, str]) -> tuple[str, list[_Hit]] | None:
    """LA105: trigger phrases, activation keywords and kohya's instance class tokens."""
    phrases = {k: ", ".join(_strings(md[k])) for k in TRIGGER_KEYS if _present(md, k)}
    hits = [_Hit(k, text) for k, text in phrases.items() if text.strip()]
    tokens = [s["class_tokens"] for s in subsets(parse_json(md.get("ss_datasets", "")))
              if not s.get("is_reg") and isinstance(s.get("class_tokens"), str) and s["class_tokens"].strip()]
    if tokens:
        hits.append(_Hit("ss_datasets", ", ".join(dict.fromkeys(tokens)), "ss_datasets class_tokens"))
    if not hits:
        return None
    return f"Trigger phrase(s) stored in {_names(hits)}", hits


def _embedded_images(md: dict[str, str]) -> tuple[str, list[_Hit]] | None:
    """LA106: cover images and thumbnails, then the text chunks their PNGs carry (the images come first,
    so capping the evidence leaves out chunks, not images)."""
    images_found, chunks, n_images, text_left = [], [], 0, MAX_PNG_TEXT_PER_FILE
    for key in IMAGE_KEYS:
        if not _present(md, key):
            continue
        if key == "modelspec.thumbnail":
            if not md[key].strip().lower().startswith("data:"):
                continue  # a URL or a path, not an embedded image (LA103 reports paths)
            images = [md[key]]
        else:
            parsed = parse_json(md[key])
            images = [s for s in parsed if isinstance(s, str) and s] if isinstance(parsed, list) else [md[key]]
        summaries = []
        for i, image in enumerate(images):
            data = _decode_image(image)
            summaries.append(_describe_image(data))
            where = f"{key}[{i}]" if key == "ssmd_cover_images" else key
            found = png_text_chunks(data or b"", min(MAX_PNG_TEXT, text_left)) if text_left > 0 else {}
            text_left -= sum(len(k) + len(t) for k, t in found.items())
            chunks += [_Hit(key, text, f"{where} {keyword}") for keyword, text in found.items()]
        if summaries:
            images_found.append(_Hit(key, "; ".join(summaries)))
            n_images += len(summaries)
    if not images_found:
        return None
    said = f", with {len(chunks)} PNG text chunk(s) (generation parameters, prompts)" if chunks else ""
    return f"{n_images} embedded image(s) in {_names(images_found)}{said}", images_found + chunks


def _trainer_configs(md: dict[str, str]) -> tuple[str, list[_Hit]] | None:
    """LA107: trainer configuration dumps (OneTrainer ot_config, ai-toolkit, kohya network args)."""
    hits = []
    for key, only_text in CONFIG_KEYS.items():
        if not _present(md, key):
            continue
        parsed = parse_json(md[key])
        leaves = _leaves(parsed) if parsed is not None else [((), md[key])]
        telling = [(where, text) for where, text in leaves
                   if _find_paths(text[:_MAX_SCANNED_CHARS]) or _WORDS.search(text[:_MAX_SCANNED_CHARS])]
        if telling:
            shown = [f"{_path(where)}={text[:_MAX_SCANNED_CHARS]}" if where else text[:_MAX_SCANNED_CHARS]
                     for where, text in telling[:_LEAVES_SHOWN]]
            cut = f"{len(telling)} values, the first {_LEAVES_SHOWN}: " if len(telling) > _LEAVES_SHOWN else ""
            hits.append(_Hit(key, cut + "; ".join(shown)))
        elif not only_text:
            hits.append(_Hit(key, md[key]))
    if not hits:
        return None
    return f"Trainer configuration stored in {_names(hits)}", hits


_CHECKS: list[tuple[str, _Check]] = [
    ("LA101", _caption_tags),
    ("LA102", _dataset_folders),
    ("LA103", _local_paths),
    ("LA104", _free_text),
    ("LA105", _trigger_phrases),
    ("LA106", _embedded_images),
    ("LA107", _trainer_configs),
]


def _run_checks(metadata: dict[str, str]) -> list[tuple[str, str, list[_Hit]]]:
    md = {str(k): v if isinstance(v, str) else str(v) for k, v in dict(metadata or {}).items()}
    results = []
    for rule_id, check in _CHECKS:
        result = check(md)
        if result is not None:
            results.append((rule_id, *result))
    return results


# --- helpers -----------------------------------------------------------------------------------


def _present(md: dict[str, str], key: str) -> bool:
    return key in md and md[key].strip().lower() not in _EMPTY


def _names(hits: list[_Hit]) -> str:
    """The metadata keys of ``hits`` for a message (the first 8, then "+N more")."""
    return short_list(list(dict.fromkeys(hit.key for hit in hits)))


def _show(value: str, redact: bool, max_chars: int) -> str:
    """Evidence as shown: masked, or on one line and at most ``max_chars`` long."""
    if redact:
        return f"<redacted {len(value)} chars>"
    text = " ".join(value.split())
    limit = max(1, max_chars)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _leaves(obj: Any) -> Iterator[tuple[tuple, str]]:
    """(JSON path as a tuple of keys and indices, string) for every string in a parsed JSON value,
    dict keys included. Paths share their parts (no string per level), so a deep value costs
    memory linear in its size; :func:`_path` words one, bounded."""
    stack = [((), obj)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict):
            for k, v in reversed(list(node.items())):
                yield where, str(k)
                stack.append(((*where, str(k)), v))
        elif isinstance(node, list):
            stack.extend(((*where, i), v) for i, v in reversed(list(enumerate(node))))
        elif isinstance(node, str):
            yield where, node


def _path(parts: tuple, limit: int = 120) -> str:
    """A JSON path ``a.b[0].c`` of at most about ``limit`` characters: the first part, "…", the last parts."""
    words = [f"[{p}]" if isinstance(p, int) else f".{p[:limit]}" for p in parts]
    text = "".join(words).lstrip(".")
    if len(text) <= limit:
        return text
    tail, size = [], 0
    for word in reversed(words[1:]):
        if size + len(word) > limit // 2:
            break
        tail.insert(0, word)
        size += len(word)
    return words[0].lstrip(".")[:limit // 2] + ".…" + "".join(tail)


def _strings(value: str) -> list[str]:
    """The strings of a value: its JSON strings when it is JSON, else the value itself."""
    if value.lstrip()[:1] not in ("{", "[", '"'):  # no JSON object, array or string (most values): not parsed
        return [value]
    parsed = parse_json(value)
    if isinstance(parsed, (dict, list, str)):
        return [text for _, text in _leaves(parsed) if text.strip()]
    return [value]


def _find_paths(text: str) -> list[str]:
    text = text[:_MAX_SCANNED_CHARS]
    if text.lstrip()[:5].lower() == "data:":
        return []
    return [m.group().rstrip(".)]}") for pattern in _PATH_PATTERNS for m in pattern.finditer(text)]


def _tag_counts(freq: dict) -> Counter:
    """Tag counts summed over folders of ``{folder: {tag: count}}``."""
    counts: Counter = Counter()
    for folder, tags in freq.items():
        items = tags.items() if isinstance(tags, dict) else [(folder, tags)]  # tolerate a flat {tag: count}
        for tag, n in items:
            tag = str(tag).strip()
            if tag:
                counts[tag] += _as_int(n)
    return counts


def _as_int(value: Any) -> int:
    try:
        return max(int(float(value)), 0)
    except (TypeError, ValueError, OverflowError):
        return 1


def _decode_image(value: str) -> bytes | None:
    """Bytes of a base64 image or data: URL, or None when it does not decode."""
    text = value.strip()
    if text[:5].lower() == "data:":
        text = text.partition(",")[2]
    text = "".join(text.split())
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def _describe_image(data: bytes | None) -> str:
    if not data:
        return "undecodable image data"
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack_from(">II", data, 16)
        return f"PNG {width}x{height}, {len(data)} bytes"
    for magic, name in ((b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF")):
        if data.startswith(magic):
            return f"{name}, {len(data)} bytes"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return f"WebP, {len(data)} bytes"
    return f"unknown image format, {len(data)} bytes"


def _inflate(data: bytes, limit: int) -> bytes:
    """At most ``limit`` bytes of a zlib stream (a zip bomb stops there)."""
    return zlib.decompressobj().decompress(data, max(1, limit))


def _itxt(rest: bytes, limit: int) -> str:
    compressed, rest = rest[0], rest[2:]  # rest[1]: the compression method (zlib is the only one)
    _language, _, rest = rest.partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    return (_inflate(text, limit) if compressed else text[:limit]).decode("utf-8", "replace")


_TEXT_CHUNKS: dict[bytes, Callable[[bytes, int], str]] = {  # (chunk body after the keyword, bytes left) -> text
    b"tEXt": lambda rest, limit: rest[:limit].decode("latin-1"),
    b"zTXt": lambda rest, limit: _inflate(rest[1:], limit).decode("latin-1"),  # compression method byte, then zlib
    b"iTXt": _itxt,
}
