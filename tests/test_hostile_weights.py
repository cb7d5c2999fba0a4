"""Hostile weight files found by a red team: small files that cost gigabytes or minutes, crafted alphas
that stopped the audit, and NaN/Inf or two-layout modules that went unreported."""

import json
import math
import struct
import tracemalloc

import numpy as np
import pytest

from lora_audit.scan.engine import scan_file
from lora_audit.testing.synthetic import leaky_kohya_metadata
from lora_audit.weights import open_lora
from lora_audit.weights import stats as stats_module
from lora_audit.weights.safetensors_file import _finite, _to_float64
from lora_audit.weights.stats import effective_rank, weight_stats

K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
P = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
C = "lora_unet_down_blocks_0_resnets_0_conv1"
_ITEMSIZE = {"F16": 2, "F32": 4, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def write(path, tensors, metadata=None) -> str:
    """A safetensors file from ``{name: array or (dtype, shape, raw bytes)}`` (raw: F8 and other dtypes
    that numpy lacks)."""
    header = {} if metadata is None else {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, value in tensors.items():
        if isinstance(value, np.ndarray):
            code = {np.float16: "F16", np.float32: "F32", np.float64: "F64"}[value.dtype.type]
            value = (code, value.shape, np.ascontiguousarray(value).tobytes())
        dtype, shape, data = value
        assert len(data) == math.prod(shape) * _ITEMSIZE[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))
    return str(path)


def rules_of(result):
    return {f.rule_id for f in result.findings}


def formed_stats(lora, module):
    """Today's reference: norm and effective rank from the SVD of the formed dW."""
    dw = np.asarray(lora.delta(module), dtype=np.float64).reshape(module.shape[0], -1)
    return float(np.linalg.norm(dw)), effective_rank(np.linalg.svd(dw, compute_uv=False))


def peak_mb(fn):
    """Peak traced memory of ``fn()`` in MB (numpy's allocations are traced) and its result."""
    tracemalloc.start()
    try:
        result = fn()
        return tracemalloc.get_traced_memory()[1] / 2**20, result
    finally:
        tracemalloc.stop()


def stats_of(path):
    with open_lora(path) as lora:
        return weight_stats(lora).modules


# 1. Norms and effective ranks come from the factors: equal to the formed-dW values on small modules


def _small_modules(rng):
    """name -> tensors of one small random module of each kind and factor shape."""
    g = lambda *shape: rng.standard_normal(shape)  # noqa: E731  float64: the formed dW is exact
    a = lambda value: np.array(float(value))  # noqa: E731
    return {
        "lora": {f"{K}.lora_down.weight": g(4, 20), f"{K}.lora_up.weight": g(16, 4), f"{K}.alpha": a(2)},
        "lora-rank-above-dims": {f"{K}.lora_down.weight": g(24, 20), f"{K}.lora_up.weight": g(16, 24)},
        "locon": {f"{C}.lora_down.weight": g(3, 6, 3, 3), f"{C}.lora_up.weight": g(10, 3, 1, 1)},
        "tucker": {f"{C}.lora_down.weight": g(3, 6, 1, 1), f"{C}.lora_up.weight": g(10, 3, 1, 1),
                   f"{C}.lora_mid.weight": g(3, 3, 3, 3), f"{C}.alpha": a(1.5)},
        "tucker-rank-above-out": {f"{C}.lora_down.weight": g(8, 6, 1, 1), f"{C}.lora_up.weight": g(5, 8, 1, 1),
                                  f"{C}.lora_mid.weight": g(8, 8, 3, 3)},
        "tucker-rank-above-in": {f"{C}.lora_down.weight": g(12, 1, 1, 1), f"{C}.lora_up.weight": g(40, 12, 1, 1),
                                 f"{C}.lora_mid.weight": g(12, 12, 1, 3)},
        "loha": {f"{K}.hada_w1_a": g(12, 2), f"{K}.hada_w1_b": g(2, 15), f"{K}.hada_w2_a": g(12, 2),
                 f"{K}.hada_w2_b": g(2, 15), f"{K}.alpha": a(3)},
        "loha-rank-above-dims": {f"{K}.hada_w1_a": g(12, 5), f"{K}.hada_w1_b": g(5, 15),
                                 f"{K}.hada_w2_a": g(12, 5), f"{K}.hada_w2_b": g(5, 15)},
        "loha-conv": {f"{C}.hada_w1_a": g(8, 2), f"{C}.hada_w1_b": g(2, 4, 3, 3), f"{C}.hada_w2_a": g(8, 2),
                      f"{C}.hada_w2_b": g(2, 4, 3, 3)},
        "loha-tucker": {f"{C}.hada_t1": g(2, 2, 3, 3), f"{C}.hada_w1_a": g(2, 9), f"{C}.hada_w1_b": g(2, 5),
                        f"{C}.hada_t2": g(2, 2, 3, 3), f"{C}.hada_w2_a": g(2, 9), f"{C}.hada_w2_b": g(2, 5)},
        "lokr-whole": {f"{K}.lokr_w1": g(3, 4), f"{K}.lokr_w2": g(5, 6)},
        "lokr-lowrank-w2": {f"{K}.lokr_w1": g(3, 4), f"{K}.lokr_w2_a": g(5, 2), f"{K}.lokr_w2_b": g(2, 6),
                            f"{K}.alpha": a(1)},
        "lokr-lowrank-both": {f"{K}.lokr_w1_a": g(3, 2), f"{K}.lokr_w1_b": g(2, 4), f"{K}.lokr_w2_a": g(5, 2),
                              f"{K}.lokr_w2_b": g(2, 6), f"{K}.alpha": a(4)},
        "lokr-rank-above-dims": {f"{K}.lokr_w1": g(2, 2), f"{K}.lokr_w2_a": g(3, 7), f"{K}.lokr_w2_b": g(7, 4)},
        "lokr-conv": {f"{C}.lokr_w1": g(2, 3), f"{C}.lokr_w2": g(4, 5, 3, 3)},
        "lokr-tucker": {f"{C}.lokr_w1": g(2, 3), f"{C}.lokr_t2": g(2, 2, 3, 3), f"{C}.lokr_w2_a": g(2, 7),
                        f"{C}.lokr_w2_b": g(2, 5)},
    }


@pytest.mark.parametrize("kind", sorted(_small_modules(np.random.default_rng(0))))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_factor_spectra_equal_the_formed_dw_on_small_modules(tmp_path, kind, seed):
    path = write(tmp_path / f"{kind}.safetensors", _small_modules(np.random.default_rng(seed))[kind])
    with open_lora(path) as lora:
        (module,) = lora.modules
        (got,) = weight_stats(lora).modules
        norm, eff = formed_stats(lora, module)
    assert got.dw_norm == pytest.approx(norm, rel=1e-9)
    assert got.effective_rank == pytest.approx(eff, rel=1e-5)


@pytest.mark.parametrize(("out", "rank"), [(100, 20), (300, 24)])
def test_large_loha_sketch_path(tmp_path, monkeypatch, out, rank):
    """A LoHa whose dW is 'large' (the limit lowered here) and rank bound r*r above the dims: a bounded
    sketch, exact when rank(dW) = min(out, in, r*r) fits in it (100 <= 128), else a lower estimate."""
    rng = np.random.default_rng(rank)
    g = lambda *shape: rng.standard_normal(shape)  # noqa: E731
    path = write(tmp_path / "loha.safetensors", {f"{K}.hada_w1_a": g(out, rank), f"{K}.hada_w1_b": g(rank, 320),
                                                 f"{K}.hada_w2_a": g(out, rank), f"{K}.hada_w2_b": g(rank, 320)})
    monkeypatch.setattr(stats_module, "_DENSE_MAX_ELEMENTS", 1000)
    monkeypatch.setattr(stats_module, "_BLOCK_ELEMENTS", 10_000)  # many column blocks
    assert stats_module._SKETCH_SIZE == 128
    with open_lora(path) as lora:
        (module,) = lora.modules
        (got,) = weight_stats(lora).modules
        norm, eff = formed_stats(lora, module)
    assert got.dw_norm == pytest.approx(norm, rel=1e-9)  # the norm is always exact
    if out <= 128:
        assert got.effective_rank == pytest.approx(eff, rel=1e-5)
    else:  # 128 of the 300 singular values: a lower estimate
        assert 0.3 * eff < got.effective_rank < eff


def test_loha_past_the_work_limit_is_unknown_not_minutes(tmp_path, monkeypatch):
    """A Tucker LoHa with a huge kernel needs ~1e13 multiply-adds even from its factors: NaN, no error."""
    rng = np.random.default_rng(11)
    g = lambda *shape: rng.standard_normal(shape)  # noqa: E731
    path = write(tmp_path / "loha.safetensors", {f"{C}.hada_t1": g(2, 2, 3, 3), f"{C}.hada_w1_a": g(2, 9),
                                                 f"{C}.hada_w1_b": g(2, 5), f"{C}.hada_t2": g(2, 2, 3, 3),
                                                 f"{C}.hada_w2_a": g(2, 9), f"{C}.hada_w2_b": g(2, 5)})
    monkeypatch.setattr(stats_module, "_MAX_WORK", 100)  # stands for 2e11 on a real crafted file
    result = scan_file(path)
    assert result.error is None
    (module,) = result.stats.modules
    assert math.isnan(module.dw_norm) and math.isnan(module.effective_rank)


def test_hadamard_norm_identity():
    """||(A1 B1) * (A2 B2)||_F^2 from Gram matrices without dW: dW = P @ Q with P [out, r1 r2] the
    row-wise Kronecker product of A1, A2 and Q [r1 r2, in] the column-wise one of B1, B2, so
    ||dW||^2 = sum((P^T P) * (Q Q^T)). The r x r form sum((A1^T A1)(A2^T A2)(B1 B1^T)(B2 B2^T))
    (elementwise) does not hold in general."""
    rng = np.random.default_rng(3)
    a1, a2, b1, b2 = rng.standard_normal((7, 3)), rng.standard_normal((7, 3)), rng.standard_normal((3, 9)), \
        rng.standard_normal((3, 9))
    dw = (a1 @ b1) * (a2 @ b2)
    p = (a1[:, :, None] * a2[:, None, :]).reshape(7, 9)
    q = (b1[:, None, :] * b2[None, :, :]).reshape(9, 9)
    np.testing.assert_allclose(p @ q, dw, rtol=1e-10, atol=1e-12)
    gram_p, gram_q = p.T @ p, q @ q.T
    assert np.sum(gram_p * gram_q) == pytest.approx(np.sum(dw**2), rel=1e-12)
    np.testing.assert_allclose(stats_module._face_split_gram(a1, a2), gram_p, rtol=1e-12)
    small = np.sum((a1.T @ a1) * (a2.T @ a2) * (b1 @ b1.T) * (b2 @ b2.T))
    assert small != pytest.approx(np.sum(dw**2), rel=1e-3)


def _f16(rng, *shape):
    return rng.standard_normal(shape).astype(np.float16)


HOSTILE = {  # name -> (tensors, MB the old formed-dW path peaked at, measured with tracemalloc)
    "lokr-150": (lambda r: {f"{K}.lokr_w1": _f16(r, 150, 150), f"{K}.lokr_w2": _f16(r, 150, 150)}, 3863),
    "lokr-300": (lambda r: {f"{K}.lokr_w1": _f16(r, 300, 300), f"{K}.lokr_w2": _f16(r, 300, 300)}, None),
    "loha-8000": (lambda r: {f"{K}.hada_w1_a": _f16(r, 8000, 1), f"{K}.hada_w1_b": _f16(r, 1, 8000),
                             f"{K}.hada_w2_a": _f16(r, 8000, 1), f"{K}.hada_w2_b": _f16(r, 1, 8000)}, 733),
    "tucker-6000": (lambda r: {f"{C}.lora_up.weight": _f16(r, 6000, 1, 1, 1),
                               f"{C}.lora_down.weight": _f16(r, 1, 6000, 1, 1),
                               f"{C}.lora_mid.weight": _f16(r, 1, 1, 3, 3)}, 2472),
}


def _expected(tensors):
    """Norm and effective rank from the factors in float64, written out per case."""
    t = {k.rsplit(".", 2 if k.endswith(".weight") else 1)[-2 if k.endswith(".weight") else -1]: v.astype(np.float64)
         for k, v in tensors.items()}
    if "lokr_w1" in t:
        s1, s2 = (np.linalg.svd(t[f"lokr_w{i}"], compute_uv=False) for i in "12")
        return np.linalg.norm(t["lokr_w1"]) * np.linalg.norm(t["lokr_w2"]), effective_rank(np.outer(s1, s2))
    if "hada_w1_a" in t:  # rank 1: dW = (a1 * a2) (b1 * b2)^T
        u, v = t["hada_w1_a"][:, 0] * t["hada_w2_a"][:, 0], t["hada_w1_b"][0] * t["hada_w2_b"][0]
        return np.linalg.norm(u) * np.linalg.norm(v), 1.0
    up, down, mid = t["lora_up"].reshape(-1), t["lora_down"].reshape(-1), t["lora_mid"].reshape(-1)
    return np.linalg.norm(up) * np.linalg.norm(down) * np.linalg.norm(mid), 1.0  # rank 1 x 3x3 kernel


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_small_files_with_huge_deltas_stay_small_in_memory(tmp_path, case):
    make, old_mb = HOSTILE[case]
    tensors = make(np.random.default_rng(0))
    path = write(tmp_path / f"{case}.safetensors", tensors)
    assert (tmp_path / f"{case}.safetensors").stat().st_size < 400_000
    mb, (module,) = peak_mb(lambda: stats_of(path))
    assert mb < 25, f"{case}: {mb:.1f} MB (the formed dW took {old_mb or 'a MemoryError'} MB)"
    norm, eff = _expected(tensors)
    assert module.dw_norm == pytest.approx(norm, rel=1e-6)
    assert module.effective_rank == pytest.approx(eff, rel=1e-5)
    result = scan_file(path)  # the whole scan, too
    assert result.error is None and result.stats.modules[0].dw_norm == pytest.approx(norm, rel=1e-6)


# 2. The eigenproblem is min(rank, in, out) sized


def test_rank_above_the_layer_size_solves_a_layer_sized_problem(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    path = write(tmp_path / "r2048.safetensors", {f"{K}.lora_up.weight": _f16(rng, 16, 2048),
                                                  f"{K}.lora_down.weight": _f16(rng, 2048, 16)})
    sizes = []
    for name in ("eigvals", "eigvalsh", "svd", "eig", "eigh"):
        original = getattr(np.linalg, name)
        spy = lambda x, *a, _f=original, **k: sizes.append(np.shape(x)) or _f(x, *a, **k)  # noqa: E731
        monkeypatch.setattr(np.linalg, name, spy)
    mb, (module,) = peak_mb(lambda: stats_of(path))
    assert sizes and max(max(s[-2:]) for s in sizes) <= 16  # not 2048 x 2048 (27 s before)
    assert mb < 10  # the 2048 x 2048 Grams alone were 64 MB
    monkeypatch.undo()
    with open_lora(path) as lora:
        norm, eff = formed_stats(lora, lora.modules[0])
    assert module.dw_norm == pytest.approx(norm, rel=1e-6)
    assert module.effective_rank == pytest.approx(eff, rel=1e-5)


# 3. A crafted alpha is a module problem (LA203), not an internal error that loses every finding


def _peft_file(tmp_path, config, extra_metadata=None, name="p"):
    rng = np.random.default_rng(5)
    other = P.replace("to_k", "to_v")
    tensors = {f"{P}.lora_A.weight": rng.standard_normal((4, 768)).astype(np.float32),
               f"{P}.lora_B.weight": rng.standard_normal((320, 4)).astype(np.float32),
               f"{other}.lora_A.weight": rng.standard_normal((4, 768)).astype(np.float32),
               f"{other}.lora_B.weight": rng.standard_normal((320, 4)).astype(np.float32)}
    metadata = {"lora_adapter_metadata": config, **(extra_metadata or {})}
    return write(tmp_path / f"{name}.safetensors", tensors, metadata)


BIG = "1" + "0" * 400  # 10**400: json gives an int that float() cannot hold


@pytest.mark.parametrize("config", [
    '{"lora_alpha": %s}' % BIG,
    '{"lora_alpha": 4, "alpha_pattern": {"attn2.to_k": %s}}' % BIG,
    '{"lora_alpha": "nan"}',
    '{"lora_alpha": NaN}',
    '{"lora_alpha": Infinity}',
    '{"lora_alpha": 4, "alpha_pattern": {"attn2.to_k": "-inf"}}',
    '{"lora_alpha": [1, 2]}',
    '{"unet.lora_alpha": %s, "unet.use_rslora": true}' % BIG,
])
def test_unusable_peft_alpha_is_a_module_problem(tmp_path, config):
    leaky = leaky_kohya_metadata()
    good = scan_file(_peft_file(tmp_path, '{"lora_alpha": 4}', leaky, name="good"))
    result = scan_file(_peft_file(tmp_path, config, leaky))
    assert result.error is None
    assert rules_of(result) == rules_of(good) | {"LA203"}  # every metadata finding is kept
    (finding,) = [f for f in result.findings if f.rule_id == "LA203"]
    modules = finding.evidence["modules"]
    assert "alpha" in finding.message and P in modules and finding.evidence["module_count"] == len(modules)
    assert len(modules[P]) < 200 and "alpha = rank (4)" in modules[P]
    stats = {m.name: m for m in result.stats.modules}
    assert stats[P].alpha == 4 and math.isfinite(stats[P].dw_norm) and math.isfinite(stats[P].effective_rank)
    other = stats[P.replace("to_k", "to_v")]  # the rest is kept
    assert math.isfinite(other.dw_norm) and other.alpha == (4 if "alpha_pattern" in config else stats[P].alpha)
    if "alpha_pattern" in config:
        assert P.replace("to_k", "to_v") not in modules


@pytest.mark.parametrize("alpha", [np.nan, np.inf, -np.inf])
def test_non_finite_kohya_alpha_tensor_is_a_module_problem(tmp_path, alpha):
    rng = np.random.default_rng(6)
    path = write(tmp_path / "k.safetensors", {f"{K}.lora_down.weight": rng.standard_normal((4, 768)).astype(np.float32),
                                              f"{K}.lora_up.weight": rng.standard_normal((320, 4)).astype(np.float32),
                                              f"{K}.alpha": np.array(alpha)})
    result = scan_file(path)
    assert result.error is None and {"LA201", "LA203"} <= rules_of(result)  # LA201: the alpha tensor itself
    (module,) = result.stats.modules
    assert module.alpha == 4 and math.isfinite(module.dw_norm)
    (finding,) = [f for f in result.findings if f.rule_id == "LA203"]
    assert "alpha" in finding.evidence["modules"][P]


def test_finite_absurd_alpha_is_no_module_problem(tmp_path):
    result = scan_file(_peft_file(tmp_path, '{"lora_alpha": 1e200}'))
    assert result.error is None and "LA203" not in rules_of(result)
    assert all(m.alpha == 1e200 and not math.isfinite(m.dw_norm) for m in result.stats.modules)


# 4. Reader false negatives: NaN/Inf in F8 factors; two layouts of one module merged silently

E4M3_NAN, E5M2_NAN, E5M2_INF = 0x7F, 0x7E, 0x7C


@pytest.mark.parametrize(("dtype", "byte"), [("F8_E4M3", E4M3_NAN), ("F8_E4M3", 0xFF), ("F8_E5M2", E5M2_NAN),
                                             ("F8_E5M2", 0xFF), ("F8_E5M2", E5M2_INF), ("F8_E5M2", 0xFC)])
def test_non_finite_f8_factors_are_la201(tmp_path, dtype, byte):
    bad = write(tmp_path / "bad.safetensors", {f"{K}.lora_down.weight": (dtype, (4, 768), bytes([byte]) * 4 * 768),
                                               f"{K}.lora_up.weight": (dtype, (320, 4), bytes([byte]) * 320 * 4)})
    one = 0x38 if dtype == "F8_E4M3" else 0x3C  # 1.0
    fine = write(tmp_path / "fine.safetensors", {f"{K}.lora_down.weight": (dtype, (4, 768), bytes([one]) * 4 * 768),
                                                 f"{K}.lora_up.weight": (dtype, (320, 4), bytes([one]) * 320 * 4)})
    result = scan_file(bad)
    assert result.error is None and "LA201" in rules_of(result)
    (finding,) = [f for f in result.findings if f.rule_id == "LA201"]
    assert finding.message.startswith("2 tensor(s)")
    assert "LA201" not in rules_of(scan_file(fine))


@pytest.mark.parametrize("dtype", ["F8_E4M3", "F8_E5M2"])
def test_f8_bit_pattern_check_agrees_with_the_decoded_values(dtype):
    for byte in range(256):
        raw = np.array([byte], dtype=np.uint8)
        assert _finite(raw, dtype) == bool(np.isfinite(_to_float64(raw, dtype)).all()), hex(byte)


def _pair(rng, rank):
    return rng.standard_normal((rank, 768)).astype(np.float32), rng.standard_normal((320, rank)).astype(np.float32)


def test_kohya_and_peft_pairs_on_one_module_are_not_merged(tmp_path):
    rng = np.random.default_rng(7)
    (kd, ku), (pd, pu) = _pair(rng, 4), _pair(rng, 8)
    other = K.replace("to_k", "to_v")
    path = write(tmp_path / "mixed.safetensors", {
        f"{K}.lora_down.weight": kd, f"{K}.lora_up.weight": ku, f"{K}.alpha": np.array(1.0, np.float32),
        f"{P}.lora_A.weight": pd, f"{P}.lora_B.weight": pu,
        f"{other}.lora_down.weight": kd, f"{other}.lora_up.weight": ku})
    result = scan_file(path)
    assert result.error is None and "LA203" in rules_of(result)
    (finding,) = [f for f in result.findings if f.rule_id == "LA203"]
    assert "two layouts" in finding.message
    assert finding.evidence == {"modules": {P: "kohya: alpha, down, up; peft: down, up"}, "module_count": 1}
    assert [m.name for m in result.stats.modules] == [P.replace("to_k", "to_v")]  # the rest is audited
    with open_lora(path) as lora:
        assert P in lora.problems.conflicting and P not in {m.name for m in lora.modules}


def test_a_pair_split_over_two_layouts_is_not_merged(tmp_path):
    kd, _ = _pair(np.random.default_rng(8), 4)
    _, pu = _pair(np.random.default_rng(9), 4)
    result = scan_file(write(tmp_path / "split.safetensors", {f"{K}.lora_down.weight": kd, f"{P}.lora_B.weight": pu}))
    assert result.error is None and "LA203" in rules_of(result) and "LA003" not in rules_of(result)
    assert result.stats.module_count == 0


def test_lora_and_loha_factors_on_one_module_are_not_merged(tmp_path):
    rng = np.random.default_rng(12)
    kd, ku = _pair(rng, 4)
    g = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    path = write(tmp_path / "kinds.safetensors", {
        f"{K}.lora_down.weight": kd, f"{K}.lora_up.weight": ku, f"{K}.hada_w1_a": g(320, 2),
        f"{K}.hada_w1_b": g(2, 768), f"{K}.hada_w2_a": g(320, 2), f"{K}.hada_w2_b": g(2, 768)})
    result = scan_file(path)
    (finding,) = [f for f in result.findings if f.rule_id == "LA203"]
    assert "two layouts or kinds" in finding.message and P in finding.evidence["modules"]
    assert result.stats.module_count == 0


def test_tucker_locon_and_dora_are_still_one_module(tmp_path):
    rng = np.random.default_rng(13)
    g = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    path = write(tmp_path / "ok.safetensors", {
        f"{C}.lora_down.weight": g(4, 320, 1, 1), f"{C}.lora_up.weight": g(320, 4, 1, 1),
        f"{C}.lora_mid.weight": g(4, 4, 3, 3), f"{K}.lora_down.weight": g(4, 768), f"{K}.lora_up.weight": g(320, 4),
        f"{K}.dora_scale": g(1, 768)})
    result = scan_file(path)
    assert "LA203" not in rules_of(result) and result.stats.kinds == {"locon": 1, "dora": 1}


def test_peft_pair_with_network_alphas_is_still_one_module(tmp_path):
    pd, pu = _pair(np.random.default_rng(10), 4)
    path = write(tmp_path / "p.safetensors", {f"{P}.lora_A.weight": pd, f"{P}.lora_B.weight": pu,
                                              f"{P}.alpha": np.array(2.0, np.float32)})
    result = scan_file(path)
    assert "LA203" not in rules_of(result) and result.stats.modules[0].scale == 0.5
