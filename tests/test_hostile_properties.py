"""Property-based hostile inputs: structurally valid safetensors files (an 8-byte little-endian length,
a JSON header, data bytes) whose headers and metadata are odd in every way a crafted upload can be,
not byte flips.

Headers: dtypes valid and not, shapes with zeros, huge dims whose product overflows, negative or
non-integer dims; offsets consistent, overlapping, out of range, in order with the sizes wrong,
reversed, with gaps or of the wrong type; tensor names in every LoRA layout (kohya, LyCORIS LoCon /
LoHa / LoKr / DoRA, PEFT, old diffusers) on random modules. Metadata: deep JSON, huge strings, base64
garbage, data: URLs, PNGs with text chunks, control characters, numbers no float holds, non-string
values, and raw bytes that are not UTF-8 or lone surrogate escapes.

Each file is scanned with ``scan_file``: nothing escapes, the result is an error record (LA001) or
findings of catalogued rules, no record is an internal error, and the traced peak stays bounded. One
property runs the whole CLI and checks its exit code and JSON. Derandomized: every run draws the
same examples.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from lora_audit.cli import main
from lora_audit.rules import RULES
from lora_audit.scan.engine import scan_file
from lora_audit.scan.metadata import sensitive_keys
from lora_audit.testing.hostile import deep_config, ztxt_bomb_png
from lora_audit.testing.synthetic import as_kohya, make_lora, png_with_text, save_synthetic

PEAK_BOUND = 256 << 20  # traced bytes per scanned file
MAX_DATA = 1 << 20  # data bytes written per file

SETTINGS = dict(derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
            "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
ODD_DTYPES = ["f32", "", "F128", "F8_E8M0", "F4", "C64", "float16", "F16 ", 5, None, ["F16"]]

# --------------------------------------------------------------------------- tensor names

_DOTTED = [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "down_blocks.1.attentions.1.transformer_blocks.0.attn1.to_out.0",
    "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
    "up_blocks.3.resnets.2.conv1",
    "down_blocks.0.resnets.0.time_emb_proj",
    "text_model.encoder.layers.11.self_attn.q_proj",
    "text_model.encoder.layers.0.mlp.fc1",
    "double_blocks.0.img_attn.qkv",
    "single_blocks.37.linear1",
    "input_blocks.4.1.transformer_blocks.0.attn2.to_v",
]
_MODULES = st.one_of(st.sampled_from(_DOTTED), st.from_regex(r"[a-z][a-z0-9_.]{0,30}", fullmatch=True))
_KOHYA_PREFIX = st.sampled_from(["lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lycoris_", "lora_", ""])
_PEFT_PREFIX = st.sampled_from(["unet.", "text_encoder.", "text_encoder_2.", "transformer.", "base_model.model.", ""])
_ROLES = {
    "kohya": ["lora_down.weight", "lora_up.weight", "alpha", "lora_mid.weight", "dora_scale"],
    "loha": ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha"],
    "lokr": ["lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha"],
    "peft": ["lora_A.weight", "lora_B.weight", "lora_magnitude_vector", "alpha", "lora_A.default.weight"],
    "old": ["processor.to_q_lora.down.weight", "processor.to_q_lora.up.weight", "lora.down.weight",
            "lora.up.weight", "lora_linear_layer.down.weight", "lora_linear_layer.up.weight"],
}


@st.composite
def module_tensor_names(draw) -> list[str]:
    """The tensor names of one module in one layout: a random subset of its roles (possibly one that
    does not fit together), on a real or random module."""
    layout = draw(st.sampled_from(sorted(_ROLES)))
    module = draw(_MODULES)
    if layout in ("kohya", "loha", "lokr"):
        base = draw(_KOHYA_PREFIX) + module.replace(".", "_")
    else:
        base = draw(_PEFT_PREFIX) + module
    roles = draw(st.lists(st.sampled_from(_ROLES[layout]), min_size=1, max_size=4, unique=True))
    return [f"{base}.{role}" for role in roles]


# --------------------------------------------------------------------------- shapes, dtypes, offsets

_SMALL_DIM = st.integers(0, 48)
_VALID_SHAPE = st.one_of(
    st.lists(_SMALL_DIM, min_size=0, max_size=4),  # zeros and 0-d included
    st.lists(st.integers(1, 3), min_size=5, max_size=10),  # many dims
    st.sampled_from([[8000, 1], [1, 8000], [16, 2048], [2048, 16], [150, 150], [6000, 1, 1, 1], [1, 1, 3, 3]]),
    st.sampled_from([[0, 2**40], [2**62, 0], [0, 2**63, 2**63], [0, 18446744073709551615]]),  # no bytes, huge dims
)
_ODD_SHAPE = st.one_of(
    st.lists(st.sampled_from([2**31, 2**32 + 1, 2**53 + 1, 2**62, 2**63, 2**64 + 3, 10**30, -1, -(2**63)]),
             min_size=1, max_size=4),  # products that overflow, negative dims
    st.sampled_from([[1.5, 2], ["3", 4], [None], [[2], 3], [True, 2], 7, "4,4", None]),  # not a list of ints
)
_VALID_DTYPE = st.sampled_from(sorted(ITEMSIZE))
_BREAKAGES = ["dtype", "shape", "overlap", "out_of_range", "sizes_wrong", "reversed", "gap", "odd_offsets",
              "metadata_type", "metadata_value", "raw_bytes", "not_a_tensor", "unpadded", "trailing"]
_FILL = st.sampled_from(["random", "zeros", "ones_f16", "nan", "ff"])


def _nbytes(dtype, shape) -> int | None:
    """Bytes of a tensor whose dtype and shape make sense, else None."""
    if not isinstance(dtype, str) or dtype not in ITEMSIZE or not all(type(d) is int and d >= 0 for d in shape):
        return None
    return math.prod(shape) * ITEMSIZE[dtype]


def _fill(kind: str, n: int, seed: int) -> bytes:
    if kind == "random":
        return np.random.default_rng(seed).bytes(n)
    if kind == "zeros":
        return b"\0" * n
    if kind == "ones_f16":
        return (b"\x00\x3c" * (n // 2 + 1))[:n]
    if kind == "nan":
        return (b"\x00\x7e" * (n // 2 + 1))[:n]  # F16 NaN; other dtypes: arbitrary bits
    return b"\xff" * n


# --------------------------------------------------------------------------- metadata values

_KEYS = st.one_of(
    st.sampled_from(["ss_tag_frequency", "ss_dataset_dirs", "ss_datasets", "ss_training_comment", "ss_output_name",
                     "ss_network_alpha", "ss_network_dim", "ss_network_module", "ss_network_args",
                     "ss_sd_model_name", "ss_base_model_version", "modelspec.architecture", "modelspec.title",
                     "modelspec.thumbnail", "modelspec.trigger_phrase", "ssmd_cover_images", "ssmd_keywords",
                     "ssmd_rating", "ot_config", "config", "training_info", "lora_adapter_metadata", "format",
                     "name", "trigger_word", "instance_prompt"]),
    st.text(min_size=0, max_size=20),
)


def _deep_text(depth: int, kind: str, key_chars: int) -> str:
    """JSON text nested ``depth`` deep (lists, dicts or both), built as text."""
    key = ("jane doe " * (key_chars // 9 + 1))[:key_chars]
    if kind == "list":
        return "[" * depth + '"/home/jane/x"' + "]" * depth
    if kind == "dict":
        return ('{"%s":' % key) * depth + '"/home/jane/x"' + "}" * depth
    opens = "".join('[{"%s":' % key if i % 2 else "[" for i in range(depth))
    closes = "".join("}]" if i % 2 else "]" for i in reversed(range(depth)))
    return opens + "1" + closes


_JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30))
_JSON = st.recursive(_JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                     max_leaves=25)


@st.composite
def metadata_values(draw):
    kind = draw(st.sampled_from(["text", "huge", "deep", "json", "base64", "data_url", "png", "number",
                                 "peft_config"]))
    if kind == "text":
        return draw(st.text(max_size=200))  # control characters included (lone surrogates: see _RAW)
    if kind == "huge":
        unit = draw(st.sampled_from(["a", "jane doe ", "/home/jane/", "C:\\Users\\jane\\", "\x1b[31m", "€", " "]))
        return unit * (draw(st.integers(10_000, 300_000)) // len(unit))
    if kind == "deep":
        return _deep_text(draw(st.integers(1, 400)), draw(st.sampled_from(["list", "dict", "mixed"])),
                          draw(st.integers(1, 64)))
    if kind == "json":
        return json.dumps(draw(_JSON))
    if kind in ("base64", "data_url"):
        raw = draw(st.binary(max_size=400))
        text = base64.b64encode(raw).decode() + draw(st.sampled_from(["", "=", "==", "!!", " \n", "%"]))
        if kind == "data_url":
            prefix = draw(st.sampled_from(["data:image/png;base64,", "data:,", "DATA:image/jpeg;base64,", "data:"]))
            return prefix + text
        return json.dumps([text]) if draw(st.booleans()) else text
    if kind == "png":
        chunks = {f"k{i}": draw(st.text(st.characters(max_codepoint=255), max_size=40))
                  for i in range(draw(st.integers(0, 40)))}
        cover = base64.b64encode(png_with_text(chunks, width=1, height=1)).decode()
        return draw(st.sampled_from([json.dumps([cover]), f"data:image/png;base64,{cover}", cover]))
    if kind == "number":
        return draw(st.sampled_from(["nan", "NaN", "inf", "-inf", "1e400", "1" + "0" * 400, "-0", "0x10", "", " ",
                                     "None", "1_000", "٣"]))
    # kind == "peft_config": alphas and ranks no float holds, or not numbers at all
    alpha = draw(st.sampled_from(["1" + "0" * 400, '"nan"', "NaN", "Infinity", "-1e309", "0", "[1, 2]", "{}",
                                  "null", "4", '"4"', "1e-320"]))
    rank = draw(st.sampled_from(["0", "-4", "4", "1e400", '"r"', "null", "2048"]))
    return '{"r": %s, "lora_alpha": %s, "unet.r": %s, "unet.lora_alpha": %s, "alpha_pattern": {"to_k": %s}, ' \
        '"use_rslora": %s}' % (rank, alpha, rank, alpha, alpha, draw(st.sampled_from(["true", "1", '"yes"'])))


RAW_MARK = "@@RAW@@"
_RAW = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\\ud800", b"\\udfff\\ud800",
                        b"\x00", b"\\u0000"])


# --------------------------------------------------------------------------- whole files


@st.composite
def hostile_files(draw) -> tuple[bytes, dict]:
    """``(file bytes, description)`` of one hostile safetensors file: valid (only its names, shapes, data
    and metadata are hostile) three times in five, else broken in one drawn way."""
    broken = None if draw(st.integers(0, 99)) < 60 else _BREAKAGES[draw(st.integers(0, len(_BREAKAGES) - 1))]
    names = [n for group in draw(st.lists(module_tensor_names(), min_size=1, max_size=4)) for n in group]
    names = list(dict.fromkeys(names + draw(st.lists(st.text(max_size=30), max_size=1))))
    fill, seed = draw(_FILL), draw(st.integers(0, 2**32 - 1))

    metadata = draw(st.dictionaries(_KEYS, metadata_values(), max_size=4))
    if broken == "metadata_type":
        metadata = draw(st.sampled_from([[], "x", 5, None, {"a": None}, {"a": ["b"]}]))
    elif broken == "metadata_value":
        metadata[draw(_KEYS)] = draw(_JSON.filter(lambda v: not isinstance(v, str)))
    elif broken == "raw_bytes":
        metadata[draw(_KEYS)] = draw(st.text(max_size=20)) + RAW_MARK
    header: dict = {} if metadata == {} and draw(st.booleans()) else {"__metadata__": metadata}

    victim = draw(st.integers(0, max(len(names) - 1, 0)))  # the tensor a per-tensor breakage hits
    offset = 0
    for i, name in enumerate(names):
        dtype, shape = draw(_VALID_DTYPE), draw(_VALID_SHAPE)
        if math.prod(shape) * ITEMSIZE[dtype] + offset > MAX_DATA:
            shape = [draw(_SMALL_DIM)]
        size = math.prod(shape) * ITEMSIZE[dtype]
        start = offset
        hit = i == victim
        if hit and broken == "dtype":
            dtype = draw(st.sampled_from(ODD_DTYPES))
        elif hit and broken == "shape":
            shape = draw(_ODD_SHAPE)
        elif hit and broken == "sizes_wrong":
            size = max(0, size + draw(st.sampled_from([-1, 1, -ITEMSIZE[dtype], ITEMSIZE[dtype], 7])))
        elif hit and broken == "gap":
            start += draw(st.integers(1, 16))
        offsets = [start, start + size]
        if hit and broken == "overlap" and i > 0:
            offsets = [0, size]
        elif hit and broken == "reversed" and size:
            offsets = [start + size, start]
        elif hit and broken == "out_of_range":
            offsets = [start, start + size + draw(st.sampled_from([1, 2**20, 2**63, 2**64 + 1]))]
        elif hit and broken == "odd_offsets":
            offsets = draw(st.sampled_from([[start], [start, start + size, 0], [float(start), start + size],
                                            [str(start), start + size], None, [-1, size], {"a": 1}]))
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
        offset = max(offset, start + size)
    if broken == "not_a_tensor" and names:
        header[draw(st.sampled_from(names))] = draw(st.sampled_from([None, 5, "x", [], {"dtype": "F16"}]))
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=draw(st.booleans())).encode("utf-8")
    if RAW_MARK.encode() in raw:
        raw = raw.replace(RAW_MARK.encode(), draw(_RAW))
    if broken != "unpadded":
        raw += b" " * (-len(raw) % 8)
    data = _fill(fill, min(offset, MAX_DATA), seed)
    if broken == "trailing":
        data += draw(st.binary(min_size=1, max_size=64))
    return struct.pack("<Q", len(raw)) + raw + data, {"mode": broken or "valid", "tensors": len(names)}


def _scan_bounded(path: str):
    tracemalloc.start()
    try:
        result = scan_file(path)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _check_result(result, peak: int) -> None:
    rule_ids = {f.rule_id for f in result.findings}
    assert rule_ids <= set(RULES), rule_ids - set(RULES)
    if result.error is not None:
        assert "internal error" not in result.error, result.error
        assert rule_ids & {"LA001", "LA002"}, (result.error, rule_ids)
    else:
        assert "LA001" not in rule_ids
    assert peak < PEAK_BOUND, f"traced peak {peak / 2**20:.0f} MB"


def _write(folder: str, blob: bytes) -> str:
    path = Path(folder) / "hostile.safetensors"
    path.write_bytes(blob)
    return str(path)


@settings(max_examples=300, **SETTINGS)
@given(hostile_files())
def test_hostile_headers_and_metadata_give_a_record_never_an_exception(case):
    blob, _ = case
    with tempfile.TemporaryDirectory() as folder:
        result, peak = _scan_bounded(_write(folder, blob))  # an exception here fails the property
    _check_result(result, peak)


@settings(max_examples=40, **SETTINGS)
@given(hostile_files())
def test_the_cli_exits_with_a_documented_code_and_valid_json(case):
    blob, _ = case
    with tempfile.TemporaryDirectory() as folder:
        path, out = _write(folder, blob), str(Path(folder) / "report.json")
        code = main(["scan", path, "-f", "json", "-o", out, "--no-attack", "-q"])
        assert code in (0, 1, 2)
        report = json.loads(Path(out).read_text(encoding="utf-8"))
    (record,) = report["files"]
    assert report["summary"]["exit_code"] == code
    assert {f["rule_id"] for f in record["findings"]} <= set(RULES)


# --------------------------------------------------------------------------- bounded metadata reading
# Found by benchmarks/bench_hostile.py on the full-size corpus (lora_audit.testing.hostile): a cover image
# of 2000 compressed text chunks (2 GiB) and a deep trainer config (past 16 GiB). Kept at a tenth of that
# size against a bound the bounded reader meets with room to spare.

SMALL_BOUND = 64 << 20  # traced bytes: the metadata itself is under 3 MB


def _metadata_file(folder: str, metadata: dict[str, str]) -> str:
    tensors = as_kohya(make_lora("sd15", rank=2, max_modules=2, seed=14))
    return str(save_synthetic(Path(folder) / "meta.safetensors", tensors, metadata))


def _traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@settings(phases=[Phase.explicit], **SETTINGS)
@example(chunks=100, key="ssmd_cover_images")
@example(chunks=100, key="modelspec.thumbnail")
@given(chunks=st.integers(100, 2000), key=st.sampled_from(["ssmd_cover_images", "modelspec.thumbnail"]))
def test_ztxt_chunks_of_a_cover_image_are_inflated_within_a_bound(chunks, key):
    cover = base64.b64encode(ztxt_bomb_png(chunks)).decode("ascii")  # ~0.14 MB of base64 at 100 chunks
    metadata = {key: json.dumps([cover]) if key == "ssmd_cover_images" else f"data:image/png;base64,{cover}"}
    with tempfile.TemporaryDirectory() as folder:
        path = _metadata_file(folder, metadata)
        scan_peak = _traced_peak(lambda: scan_file(path))
    strip_peak = _traced_peak(lambda: sensitive_keys(metadata))  # what strip runs to choose the keys
    assert scan_peak < SMALL_BOUND and strip_peak < SMALL_BOUND, (scan_peak >> 20, strip_peak >> 20)


@settings(phases=[Phase.explicit], **SETTINGS)
@example(depth=120, key_chars=1200)
@given(depth=st.integers(120, 800), key_chars=st.integers(1200, 8000))
def test_a_deep_trainer_config_is_checked_within_a_bound(depth, key_chars):
    metadata = {"ot_config": deep_config(depth, key_chars)}  # 0.14 MB at 120 x 1200
    with tempfile.TemporaryDirectory() as folder:
        path = _metadata_file(folder, metadata)
        result = []
        peak = _traced_peak(lambda: result.append(scan_file(path)))
    assert result[0].error is None and "LA107" in {f.rule_id for f in result[0].findings}
    assert peak < SMALL_BOUND, peak >> 20


# --------------------------------------------------------------------------- the benchmark's corpus


def test_the_hostile_corpus_is_small_and_deterministic():
    """Every case of lora_audit.testing.hostile is under 10 MB and byte-identical when written again."""
    from lora_audit.testing.hostile import CASES, write_corpus

    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        first, second = write_corpus(a), write_corpus(b)
        assert list(first) == list(CASES)
        for name in CASES:
            data = first[name].read_bytes()
            assert len(data) < 10 << 20, name
            assert data == second[name].read_bytes(), name
