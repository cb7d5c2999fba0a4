"""A real ``transformers.CLIPTokenizer`` for the toy world, built offline from the caption vocabulary.

Stable Diffusion's tokenizer is CLIP's byte-level BPE: ``vocab.json`` (token -> id) and ``merges.txt``
(pairs merged in rank order, ``</w>`` marking a word's end). This module writes the same two files
for a small vocabulary: every printable ASCII character (alone, and as a word's last symbol) so that
any lowercase word still tokenises, as several character tokens, like a rare trigger word in SD;
and BPE merges that make every word of the renderer's captions one token. Deterministic.
"""

from __future__ import annotations

import dataclasses
import json
import re
import string
import tempfile
from pathlib import Path

from lora_audit.toyworld import renderer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MODEL_MAX_LENGTH = 32
"""Tokens per prompt, <|startoftext|> and <|endoftext|> included; the longest captions need 31."""

_END = "</w>"
_CHARS = string.ascii_lowercase + string.digits + string.punctuation
_PRETOKEN = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")  # CLIP's pre-tokeniser, for lowercase ASCII text


def caption_words() -> list[str]:
    """Every word (CLIP pre-token) that :func:`renderer.caption` can produce, sorted."""
    base = dataclasses.replace(renderer.identity(0), facial_hair="none", glasses="none")  # shows eye colour
    variants = [dataclasses.replace(base, hair_style=style, hair_colour=colour)
                for style in renderer.HAIR_STYLES for colour in renderer.HAIR_COLOURS]
    options = {"face_shape": renderer.FACE_SHAPES, "skin_tone": renderer.SKIN_TONES,
               "eye_colour": renderer.EYE_COLOURS, "facial_hair": renderer.FACIAL_HAIR,
               "glasses": renderer.GLASSES}
    variants += [dataclasses.replace(base, **{field: value}) for field, values in options.items() for value in values]
    return sorted({word for ident in variants for word in _PRETOKEN.findall(renderer.caption(ident))})


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE of one pre-token: merge the lowest-ranked adjacent pair until none is in ``ranks``."""
    symbols = list(word[:-1]) + [word[-1] + _END]
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        first, second = symbols[i], symbols[i + 1]
        merged, j = [], 0
        while j < len(symbols):  # merge every occurrence of the pair, left to right
            if j + 1 < len(symbols) and (symbols[j], symbols[j + 1]) == (first, second):
                merged.append(first + second)
                j += 2
            else:
                merged.append(symbols[j])
                j += 1
        symbols = merged
    return symbols


def vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary (characters, merged tokens, special tokens) and the merges, in rank order."""
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in caption_words():
        # Add merges until the word is one token; a new merge has the highest rank, so the words
        # before it still tokenise as they did.
        while len(symbols := _bpe(word, ranks)) > 1:
            ranks[symbols[0], symbols[1]] = len(merges)
            merges.append((symbols[0], symbols[1]))
    tokens = list(_CHARS) + [c + _END for c in _CHARS] + [a + b for a, b in merges] + [BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}, merges


def write_vocab_files(directory: str | Path) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` (CLIP's formats) into ``directory``; return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = vocab_and_merges()
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, indent=1) + "\n")
    merges_path.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return vocab_path, merges_path


def build_tokenizer(model_max_length: int = MODEL_MAX_LENGTH):
    """A ``transformers.CLIPTokenizer`` loaded from freshly written ``vocab.json`` and ``merges.txt``."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_vocab_files(tmp)
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=model_max_length, bos_token=BOS,
                                             eos_token=EOS, pad_token=EOS, unk_token=EOS)
