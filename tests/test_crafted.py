"""Crafted but well-formed safetensors files: odd shapes, dtypes and adapter metadata give findings
or numbers, never an internal error; real files are never mistaken for pickles."""

import json
import math
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from lora_audit.errors import InvalidFileError
from lora_audit.scan.engine import scan_file
from lora_audit.weights import open_lora
from lora_audit.weights.pickle_file import looks_like_pickle
from lora_audit.weights.safetensors_file import SafetensorsFile

K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"  # SD1: [320, 768]
P = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
_ITEMSIZE = {"F32": 4, "F64": 8, "I8": 1, "I64": 8, "F8_E4M3": 1}


def encode(tensors, metadata=None, pad=0) -> bytes:
    """A safetensors file from ``{name: array or (dtype, shape, raw bytes or None for zeros)}``;
    ``pad`` extra spaces lengthen the header."""
    header = {} if metadata is None else {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, value in tensors.items():
        if isinstance(value, np.ndarray):
            value = ({np.float32: "F32", np.float64: "F64"}[value.dtype.type], value.shape, value.tobytes())
        dtype, shape, data = value
        data = bytes(math.prod(shape) * _ITEMSIZE[dtype]) if data is None else data
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode() + b" " * pad
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


def write(path, tensors, metadata=None, pad=0) -> str:
    path.write_bytes(encode(tensors, metadata, pad))
    return str(path)


def rng_lora(rank=4, out=320, inp=768, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rank, inp)).astype(np.float32), rng.standard_normal((out, rank)).astype(np.float32)


def rules_of(result):
    return {f.rule_id for f in result.findings}


# Pickle detection


def test_safetensors_whose_header_length_starts_with_0x80_is_not_a_pickle(tmp_path):
    down, up = rng_lora()
    tensors = {f"{K}.lora_down.weight": down, f"{K}.lora_up.weight": up}
    content = next(c for pad in range(0, 256, 8) if (c := encode(tensors, pad=pad))[0] == 0x80)
    path = tmp_path / "lora.safetensors"
    path.write_bytes(content)
    result = scan_file(str(path))
    assert result.error is None and result.stats.module_count == 1


def test_pickles_without_a_pickle_extension_are_still_recognised(tmp_path):
    raw = pickle.dumps({"state_dict": {}}, protocol=4)
    assert looks_like_pickle("model.dat", raw[:9], len(raw))
    archive = tmp_path / "model.dat"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("archive/data.pkl", raw)
    assert looks_like_pickle(str(archive), archive.read_bytes()[:9], archive.stat().st_size)
    assert looks_like_pickle("x.ckpt", b"", 0)


def test_corrupt_torch_zip_is_still_reported_as_pickle(tmp_path):
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(list(range(1000)), protocol=2))
    data = bytearray(path.read_bytes())
    data[60:80] = b"\xff" * 20  # inside the compressed member: a CRC or inflate error
    path.write_bytes(bytes(data))
    result = scan_file(str(path))
    assert [f.rule_id for f in result.findings] == ["LA002"] and "pickle" in result.error


# Shapes that do not make a LoRA: LA203, never an internal error


MISMATCHED = {
    "rank_0": {f"{K}.lora_down.weight": ("F32", [0, 768], None), f"{K}.lora_up.weight": ("F32", [320, 0], None)},
    "rank_0_peft": {f"{P}.lora_A.weight": ("F32", [0, 768], None), f"{P}.lora_B.weight": ("F32", [320, 0], None)},
    "locon_up_3x3": {f"{K}.lora_down.weight": ("F32", [4, 768, 3, 3], None),
                     f"{K}.lora_up.weight": ("F32", [320, 4, 3, 3], None)},
    "mid_2d": {f"{K}.lora_down.weight": ("F32", [4, 768, 1, 1], None), f"{K}.lora_up.weight": ("F32", [320, 4, 1, 1], None),
               f"{K}.lora_mid.weight": ("F32", [4, 4], None)},
    "loha_0d": {f"{K}.hada_w{i}": ("F32", [], None) for i in ("1_a", "1_b", "2_a", "2_b")},
    "loha_1d": {f"{K}.hada_w{i}": ("F32", [4], None) for i in ("1_a", "1_b", "2_a", "2_b")},
    "loha_w2_mismatch": {f"{K}.hada_w1_a": ("F32", [320, 4], None), f"{K}.hada_w1_b": ("F32", [4, 768], None),
                         f"{K}.hada_w2_a": ("F32", [320, 4], None), f"{K}.hada_w2_b": ("F32", [4, 767], None)},
    "lokr_0d": {f"{K}.lokr_w1": ("F32", [], None), f"{K}.lokr_w2_a": ("F32", [], None), f"{K}.lokr_w2_b": ("F32", [], None)},
    "lokr_1d": {f"{K}.lokr_w1": ("F32", [4], None), f"{K}.lokr_w2": ("F32", [4], None)},
    "lokr_empty": {f"{K}.lokr_w1": ("F32", [0, 1], None), f"{K}.lokr_w2": ("F32", [4, 0], None)},
}


@pytest.mark.parametrize("name", sorted(MISMATCHED))
def test_impossible_shapes_are_la203(tmp_path, name):
    result = scan_file(write(tmp_path / f"{name}.safetensors", MISMATCHED[name]))
    assert result.error is None and "LA203" in rules_of(result)


# Alphas


def test_absurd_alpha_gives_a_non_finite_norm_not_an_error(tmp_path):
    down, up = rng_lora()
    kohya = write(tmp_path / "k.safetensors", {f"{K}.lora_down.weight": down, f"{K}.lora_up.weight": up,
                                               f"{K}.alpha": np.array(1e200)})
    peft = write(tmp_path / "p.safetensors", {f"{P}.lora_A.weight": down, f"{P}.lora_B.weight": up},
                 {"lora_adapter_metadata": json.dumps({"lora_alpha": 1e200})})
    for path in (kohya, peft):
        result = scan_file(path)
        assert result.error is None
        (module,) = result.stats.modules
        assert module.alpha == 1e200 and not math.isfinite(module.dw_norm)


@pytest.mark.parametrize("metadata", [
    {"lora_alpha": 4, "alpha_pattern": {"(": 2}},  # not a regex
    {"lora_alpha": 4, "alpha_pattern": {"attn2.to.k": 2}},  # literal: "." is not any character
    "[" * 100_000 + "]" * 100_000,  # nested past the recursion limit
])
def test_hostile_adapter_metadata_is_ignored(tmp_path, metadata):
    down, up = rng_lora()
    value = metadata if isinstance(metadata, str) else json.dumps(metadata)
    path = write(tmp_path / "p.safetensors", {f"{P}.lora_A.weight": down, f"{P}.lora_B.weight": up},
                 {"lora_adapter_metadata": value})
    result = scan_file(path)
    assert result.error is None and result.stats.modules[0].alpha == 4


def test_alpha_pattern_matches_module_path_suffixes(tmp_path):
    down, up = rng_lora()
    other = P.replace("to_k", "to_v")
    pattern = {"attn2.to_k": 8, "to_v.x": 16}  # PEFT: a key matches the end of a module path
    path = write(tmp_path / "p.safetensors", {f"{P}.lora_A.weight": down, f"{P}.lora_B.weight": up,
                                              f"{other}.lora_A.weight": down, f"{other}.lora_B.weight": up},
                 {"lora_adapter_metadata": json.dumps({"lora_alpha": 4, "alpha_pattern": pattern})})
    with open_lora(path) as lora:
        assert {m.name: m.alpha for m in lora.modules} == {P: 8, other: 4}


def test_peft_names_with_alpha_tensors_use_them(tmp_path):
    down, up = rng_lora()
    path = write(tmp_path / "p.safetensors", {f"{P}.lora_A.weight": down, f"{P}.lora_B.weight": up,
                                              f"{P}.alpha": np.array(2.0, np.float32)})
    with open_lora(path) as lora:
        (module,) = lora.modules
        assert module.layout == "peft" and (module.alpha, module.scale) == (2.0, 0.5)


@pytest.mark.parametrize(("dtype", "raw", "alpha"), [("I64", struct.pack("<q", 2), 2.0), ("I8", b"\x02", 2.0),
                                                     ("F8_E4M3", b"\x40", 2.0)])  # 0x40: 1.0 * 2^(8-7)
def test_integer_and_f8_alphas_are_read_and_keep_the_stats(tmp_path, dtype, raw, alpha):
    down, up = rng_lora()
    path = write(tmp_path / "k.safetensors", {f"{K}.lora_down.weight": down, f"{K}.lora_up.weight": up,
                                              f"{K}.alpha": (dtype, [], raw)})
    result = scan_file(path)
    (module,) = result.stats.modules
    assert module.alpha == alpha and module.scale == alpha / 4
    assert module.dw_norm == pytest.approx(np.linalg.norm(alpha / 4 * up @ down), rel=1e-5)


# LyCORIS Tucker factors


def test_tucker_loha_in_lycoris_shapes(tmp_path):
    rng = np.random.default_rng(1)
    r, out, inp = 4, 320, 64
    t = {f"hada_{n}": rng.standard_normal(s).astype(np.float32) for n, s in [
        ("t1", (r, r, 3, 3)), ("w1_a", (r, out)), ("w1_b", (r, inp)),
        ("t2", (r, r, 3, 3)), ("w2_a", (r, out)), ("w2_b", (r, inp))]}
    name = "lora_unet_down_blocks_0_resnets_0_conv1"
    path = write(tmp_path / "loha.safetensors", {f"{name}.{k}": v for k, v in t.items()} | {f"{name}.alpha": np.array(2.0)})
    with open_lora(path) as lora:
        (module,) = lora.modules
        assert (module.kind, module.shape, module.rank) == ("loha", (out, inp, 3, 3), r)
        dw = lora.delta(module)
    rebuild = [np.einsum("ijhw,io,jn->onhw", t[f"hada_t{i}"], t[f"hada_w{i}_a"], t[f"hada_w{i}_b"]) for i in "12"]
    np.testing.assert_allclose(dw, 0.5 * rebuild[0] * rebuild[1], rtol=1e-4, atol=1e-5)
    result = scan_file(path)
    assert result.error is None and math.isfinite(result.stats.modules[0].dw_norm)


@pytest.mark.parametrize("alpha", [None, 3.0, 0.5])
def test_tucker_lokr(tmp_path, alpha):
    rng = np.random.default_rng(2)
    w1 = rng.standard_normal((4, 8)).astype(np.float32)
    t2, w2a, w2b = (rng.standard_normal(s).astype(np.float32) for s in ((2, 2, 3, 3), (2, 80), (2, 40)))
    name = "lora_unet_down_blocks_0_resnets_0_conv1"
    tensors = {f"{name}.lokr_w1": w1, f"{name}.lokr_t2": t2, f"{name}.lokr_w2_a": w2a, f"{name}.lokr_w2_b": w2b}
    if alpha is not None:
        tensors[f"{name}.alpha"] = np.array(alpha, np.float32)
    path = write(tmp_path / "lokr.safetensors", tensors)
    # LyCORIS: the rank is that of the low-rank factor (w2_b's rows); scale = alpha / rank, and a missing
    # alpha means alpha = rank (scale 1). Computed from the tensors written, not from the reader.
    rank = w2b.shape[0]
    scale = 1.0 if alpha is None else alpha / rank
    with open_lora(path) as lora:
        (module,) = lora.modules
        assert module.shape == (320, 320, 3, 3) and module.rank == rank and module.scale == pytest.approx(scale)
        w2 = np.einsum("ijhw,io,jn->onhw", t2, w2a, w2b)
        expected = scale * np.kron(w1[:, :, None, None], w2)
        np.testing.assert_allclose(lora.delta(module), expected, rtol=1e-4, atol=1e-5)


# Files that change while being read


def test_truncation_during_a_scan_is_an_error_not_a_crash(tmp_path):
    down, up = rng_lora()
    path = write(tmp_path / "k.safetensors", {f"{K}.lora_down.weight": down, f"{K}.lora_up.weight": up})
    with SafetensorsFile(path) as f:
        os.truncate(path, 100)
        with pytest.raises(InvalidFileError, match="changed while being read"):
            f.non_finite()
        with pytest.raises(InvalidFileError, match="changed while being read"):
            f.read(f"{K}.lora_up.weight")
