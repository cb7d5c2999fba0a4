"""A corpus of hostile inputs: small files (each < 10 MB on disk) built to crash, hang or exhaust a scanner.

Each generator writes one file into the given folder and returns its path; :data:`CASES` lists them by
name. Everything is deterministic (fixed seeds, fixed zip timestamps) and uses numpy and the standard
library only, so the corpus can be rebuilt anywhere, byte for byte. ``benchmarks/bench_hostile.py``
scans every case in a fresh process and measures its time and peak memory; the regression tests of
each defect live in ``tests/test_hostile_weights.py``, ``tests/test_hostile_cli.py`` and
``tests/test_pickle_and_signals.py``.

The cases, by what they attack:

- weight statistics (a tiny file whose formed dW would be huge): ``lokr_150``, ``lokr_300`` (Kronecker
  factors of a 22500^2 / 90000^2 dW), ``loha_8000`` (rank 1, 8000 x 8000), ``tucker_6000`` (a
  ``lora_mid`` core on 6000 channels), ``rank_2048`` (a rank far above a 16 x 16 layer);
- the alpha arithmetic: ``peft_alpha_huge`` (``lora_alpha`` 10**400, an int no float holds),
  ``peft_alpha_nan`` (the string ``"nan"``);
- metadata parsing: ``cover_ztxt_bomb`` / ``thumbnail_ztxt_bomb`` (a 1x1 PNG with 2000 zTXt chunks of
  1 MB each once inflated, in ``ssmd_cover_images`` / ``modelspec.thumbnail``), ``png_10000_chunks``
  (10 000 tEXt chunks), ``ot_config_deep`` (nested dicts 800 deep, 8000-character keys);
- pickle inspection: ``torch_zip_bomb`` (40 ``.pkl`` members of 63 MB each once inflated),
  ``pickle_memo_decoy`` (a memoised ``posix.system`` behind a ``torch.nn`` decoy on the stack);
- reader false negatives: ``f8_all_nan`` (F8_E4M3 factors that are all NaN), ``kohya_peft_pair`` (a
  kohya and a PEFT pair of one module).

:data:`SKIPPED` names the cases of the hardening issue that cannot be built under 10 MB.
"""

from __future__ import annotations

import base64
import json
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lora_audit.testing.synthetic import as_kohya, as_peft, make_lora, png_with_text, save_synthetic

# Module names of a real SD1.5 UNet, in kohya and PEFT spelling.
KOHYA_LINEAR = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
PEFT_LINEAR = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
KOHYA_CONV = "lora_unet_down_blocks_0_resnets_0_conv1"

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
             "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def write_raw_safetensors(path: str | Path, header: dict, data: bytes = b"", *, pad: bool = True) -> Path:
    """Write ``header`` as given (no validation: any dtype, shape or offsets) and ``data`` after it.

    8-byte little-endian header length, the JSON header (space-padded to a multiple of 8 with
    ``pad``), then ``data``. For hostile files: a real writer would refuse most of them.
    """
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if pad:
        raw += b" " * (-len(raw) % 8)
    path = Path(path)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def write_raw_tensors(path: str | Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]],
                      metadata: dict[str, str] | None = None) -> Path:
    """A valid safetensors file from ``{name: (dtype, shape, raw little-endian bytes)}``, for dtypes
    numpy lacks (F8) or exact bit patterns."""
    header: dict = {} if metadata is None else {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, (dtype, shape, blob) in tensors.items():
        expected = int(np.prod(shape, dtype=np.int64)) * _ITEMSIZE[dtype]
        if len(blob) != expected:
            raise ValueError(f"{name}: {len(blob)} bytes for {dtype} {shape} (expected {expected})")
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    return write_raw_safetensors(path, header, b"".join(blobs))


def _f16(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float16)


# --------------------------------------------------------------------------- weight statistics


def lokr_150(folder: Path) -> Path:
    """LoKr with whole 150x150 ``lokr_w1`` and ``lokr_w2``: dW = kron(w1, w2) is 22500 x 22500 (3.8 GB F64)."""
    return save_synthetic(folder / "lokr_150.safetensors", {f"{KOHYA_LINEAR}.lokr_w1": _f16(0, 150, 150),
                                                            f"{KOHYA_LINEAR}.lokr_w2": _f16(1, 150, 150)})


def lokr_300(folder: Path) -> Path:
    """LoKr with whole 300x300 factors: dW would be 90000 x 90000 (65 GB F64)."""
    return save_synthetic(folder / "lokr_300.safetensors", {f"{KOHYA_LINEAR}.lokr_w1": _f16(2, 300, 300),
                                                            f"{KOHYA_LINEAR}.lokr_w2": _f16(3, 300, 300)})


def loha_8000(folder: Path) -> Path:
    """LoHa at rank 1 on an 8000 x 8000 layer: 64 kB of factors, a 512 MB F64 dW."""
    k = KOHYA_LINEAR
    return save_synthetic(folder / "loha_8000.safetensors", {
        f"{k}.hada_w1_a": _f16(4, 8000, 1), f"{k}.hada_w1_b": _f16(5, 1, 8000),
        f"{k}.hada_w2_a": _f16(6, 8000, 1), f"{k}.hada_w2_b": _f16(7, 1, 8000)})


def tucker_6000(folder: Path) -> Path:
    """LoCon Tucker: rank 1 with a 3x3 ``lora_mid`` on 6000 in and out channels (a 6000 x 54000 dW)."""
    c = KOHYA_CONV
    return save_synthetic(folder / "tucker_6000.safetensors", {
        f"{c}.lora_up.weight": _f16(8, 6000, 1, 1, 1), f"{c}.lora_down.weight": _f16(9, 1, 6000, 1, 1),
        f"{c}.lora_mid.weight": _f16(10, 1, 1, 3, 3)})


def rank_2048(folder: Path) -> Path:
    """A rank-2048 LoRA on a 16 x 16 layer (2048 x 2048 Grams for an update of rank 16 at most)."""
    return save_synthetic(folder / "rank_2048.safetensors", {f"{KOHYA_LINEAR}.lora_up.weight": _f16(11, 16, 2048),
                                                             f"{KOHYA_LINEAR}.lora_down.weight": _f16(12, 2048, 16)})


# --------------------------------------------------------------------------- alphas


def _peft_with_config(folder: Path, name: str, config: str) -> Path:
    tensors, metadata = as_peft(make_lora("sd15", rank=4, max_modules=2, seed=13))
    return save_synthetic(folder / f"{name}.safetensors", tensors, {**metadata, "lora_adapter_metadata": config})


def peft_alpha_huge(folder: Path) -> Path:
    """PEFT ``lora_adapter_metadata`` with ``lora_alpha`` 10**400: JSON gives an int that float() cannot hold."""
    return _peft_with_config(folder, "peft_alpha_huge", '{"unet.r": 4, "unet.lora_alpha": 1%s}' % ("0" * 400))


def peft_alpha_nan(folder: Path) -> Path:
    """PEFT ``lora_alpha`` given as the string ``"nan"`` (float("nan") accepts it)."""
    return _peft_with_config(folder, "peft_alpha_nan", '{"unet.r": 4, "unet.lora_alpha": "nan"}')


# --------------------------------------------------------------------------- metadata


def _small_kohya() -> dict[str, np.ndarray]:
    return as_kohya(make_lora("sd15", rank=2, max_modules=2, seed=14))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with_chunks(chunks: list[tuple[bytes, bytes]], width: int = 1, height: int = 1) -> bytes:
    """A small valid PNG with ``(type, body)`` chunks inserted right after IHDR."""
    png = png_with_text({}, width=width, height=height)
    ihdr_end = 8 + 12 + 13  # signature, then IHDR: length, type, 13 bytes, CRC
    return png[:ihdr_end] + b"".join(_chunk(kind, body) for kind, body in chunks) + png[ihdr_end:]


def ztxt_bomb_png(chunks: int = 2000, inflated: int = 1 << 20) -> bytes:
    """A 1x1 PNG with ``chunks`` zTXt chunks, each ``inflated`` zero bytes once decompressed (~1 kB each
    compressed), under distinct keywords so that no reader can keep only the first."""
    body = zlib.compress(b"\0" * inflated, 9)
    return png_with_chunks([(b"zTXt", f"k{i}".encode() + b"\0\0" + body) for i in range(chunks)])


def cover_ztxt_bomb(folder: Path) -> Path:
    """kohya ``ssmd_cover_images`` (a JSON list of base64 PNGs) holding the zTXt bomb: 2 GB of text inflated."""
    cover = base64.b64encode(ztxt_bomb_png()).decode("ascii")
    return save_synthetic(folder / "cover_ztxt_bomb.safetensors", _small_kohya(),
                          {"ssmd_cover_images": json.dumps([cover])})


def thumbnail_ztxt_bomb(folder: Path) -> Path:
    """The same zTXt bomb as a ``modelspec.thumbnail`` data URL."""
    cover = base64.b64encode(ztxt_bomb_png()).decode("ascii")
    return save_synthetic(folder / "thumbnail_ztxt_bomb.safetensors", _small_kohya(),
                          {"modelspec.thumbnail": f"data:image/png;base64,{cover}"})


def png_10000_chunks(folder: Path) -> Path:
    """A cover image with 10 000 tEXt chunks (one evidence entry each, if nothing caps them)."""
    png = png_with_text({f"k{i}": f"photo of jane doe {i}" for i in range(10_000)}, width=1, height=1)
    return save_synthetic(folder / "png_10000_chunks.safetensors", _small_kohya(),
                          {"ssmd_cover_images": json.dumps([base64.b64encode(png).decode("ascii")])})


def deep_config(depth: int = 800, key_chars: int = 8000) -> str:
    """JSON of dicts nested ``depth`` deep, each with one ``key_chars``-character key of words (so that
    a free-text search matches every key), innermost a path-like string."""
    words = "jane doe photo "
    key = (words * (key_chars // len(words) + 1))[:key_chars]
    # Built as text: json.dumps of a Python dict this deep would itself recurse 800 levels.
    return '{"%s":' % key * depth + '"/home/jane/datasets/jane"' + "}" * depth


def ot_config_deep(folder: Path) -> Path:
    """OneTrainer ``ot_config``: dicts 800 deep with 8000-character keys (6.4 MB of JSON)."""
    return save_synthetic(folder / "ot_config_deep.safetensors", _small_kohya(), {"ot_config": deep_config()})


# --------------------------------------------------------------------------- pickles


def _short_unicode(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE


def torch_zip_bomb(folder: Path, members: int = 40, inflated: int = 63 << 20) -> Path:
    """A torch.save-style zip of ``members`` ``archive{i}/data.pkl`` entries of ``inflated`` bytes each:
    a pickle that calls ``posix.system`` followed by zeros (2.5 GB in all once inflated, ~2.5 MB on disk).

    The zip is written by hand so the 63 MB member is deflated once, not once per entry."""
    call = b"\x80\x02cposix\nsystem\n" + _short_unicode("echo hi") + b"\x85R."
    payload = call + b"\0" * (inflated - len(call))
    crc = zlib.crc32(payload)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    compressed = deflater.compress(payload) + deflater.flush()
    del payload
    path = folder / "torch_zip_bomb.pt"
    local_headers, offset = [], 0
    with open(path, "wb") as f:
        for i in range(members):
            info = zipfile.ZipInfo(f"archive{i}/data.pkl", date_time=_ZIP_TIME)
            info.compress_type, info.CRC = zipfile.ZIP_DEFLATED, crc
            info.compress_size, info.file_size, info.header_offset = len(compressed), inflated, offset
            header = info.FileHeader()
            f.write(header + compressed)
            local_headers.append(info)
            offset += len(header) + len(compressed)
        central = b""
        for info in local_headers:
            name = info.filename.encode()
            dostime = 0
            dosdate = (info.date_time[0] - 1980) << 9 | info.date_time[1] << 5 | info.date_time[2]
            central += struct.pack("<4s4B4HL2L5HLL", b"PK\x01\x02", 20, 3, 20, 0, 0, zipfile.ZIP_DEFLATED,
                                   dostime, dosdate, info.CRC, info.compress_size, info.file_size,
                                   len(name), 0, 0, 0, 0, 0, info.header_offset) + name
        f.write(central)
        f.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, members, members, len(central), offset, 0))
    return path


def pickle_memo_decoy(folder: Path) -> Path:
    """``posix``/``system`` memoised and popped, ``torch``/``nn`` left on the stack, then BINGETs feed
    STACK_GLOBAL: a reader that takes the two strings on the stack names ``torch.nn``; the real
    unpickler imports ``posix.system``."""
    s = _short_unicode
    data = (b"\x80\x04" + s("posix") + b"\x940" + s("system") + b"\x940" + s("torch") + s("nn")
            + b"h\x00h\x01\x93" + s("echo hi") + b"\x85R.")
    path = folder / "pickle_memo_decoy.pt"
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- reader false negatives


def f8_all_nan(folder: Path) -> Path:
    """F8_E4M3 factors whose every byte is 0x7F (NaN): numpy has no F8, a float decoder must not skip them."""
    return write_raw_tensors(folder / "f8_all_nan.safetensors", {
        f"{KOHYA_LINEAR}.lora_down.weight": ("F8_E4M3", (4, 768), b"\x7f" * (4 * 768)),
        f"{KOHYA_LINEAR}.lora_up.weight": ("F8_E4M3", (320, 4), b"\x7f" * (320 * 4))})


def kohya_peft_pair(folder: Path) -> Path:
    """A kohya pair (rank 4) and a PEFT pair (rank 8) of the same module: two updates, not one."""
    rng = np.random.default_rng(15)
    g = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    return save_synthetic(folder / "kohya_peft_pair.safetensors", {
        f"{KOHYA_LINEAR}.lora_down.weight": g(4, 768), f"{KOHYA_LINEAR}.lora_up.weight": g(320, 4),
        f"{KOHYA_LINEAR}.alpha": np.array(1.0, np.float32),
        f"{PEFT_LINEAR}.lora_A.weight": g(8, 768), f"{PEFT_LINEAR}.lora_B.weight": g(320, 8)})


CASES: dict[str, Callable[[Path], Path]] = {
    "lokr_150": lokr_150,
    "lokr_300": lokr_300,
    "loha_8000": loha_8000,
    "tucker_6000": tucker_6000,
    "rank_2048": rank_2048,
    "peft_alpha_huge": peft_alpha_huge,
    "peft_alpha_nan": peft_alpha_nan,
    "cover_ztxt_bomb": cover_ztxt_bomb,
    "thumbnail_ztxt_bomb": thumbnail_ztxt_bomb,
    "png_10000_chunks": png_10000_chunks,
    "ot_config_deep": ot_config_deep,
    "torch_zip_bomb": torch_zip_bomb,
    "pickle_memo_decoy": pickle_memo_decoy,
    "f8_all_nan": f8_all_nan,
    "kohya_peft_pair": kohya_peft_pair,
}
"""Every hostile case: name -> generator writing it into a folder and returning its path."""

STRIPPABLE = ("cover_ztxt_bomb", "thumbnail_ztxt_bomb", "png_10000_chunks", "ot_config_deep")
"""Cases whose hostile part is metadata that ``strip`` removes."""

SKIPPED = {
    "header_near_cap": "a safetensors header just under the 100 MB cap (MAX_HEADER_BYTES) needs a file of "
                       "about 100 MB: the header is stored uncompressed, far above this corpus' 10 MB per file",
}
"""Cases of the hardening issue left out of :data:`CASES`, with why."""


def write_corpus(folder: str | Path) -> dict[str, Path]:
    """Every case of :data:`CASES` written into ``folder``: name -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {name: make(folder) for name, make in CASES.items()}
