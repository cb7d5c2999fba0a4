"""Every layout, built with real SD module names by lora_audit.testing.synthetic, read back to the same dW."""

import json
import math

import numpy as np
import pytest

from lora_audit.testing import synthetic
from lora_audit.weights import open_lora


def write(tmp_path, tensors, metadata=None, dtype=None, name="lora.safetensors"):
    return str(synthetic.save_synthetic(tmp_path / name, tensors, metadata, dtype))


def deltas_of(path):
    with open_lora(path) as lora:
        return {m.name: lora.delta(m).astype(np.float64) for m in lora.modules}, lora


def assert_same_deltas(got, expected, rtol=1e-5, atol=1e-7):
    assert sorted(got) == sorted(expected)
    for name, dw in expected.items():
        np.testing.assert_allclose(got[name], dw, rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_kohya_and_peft_give_the_same_dw(tmp_path, family):
    lora = synthetic.make_lora(family, rank=4, alpha=2, text_encoder=True, max_modules=10, seed=1)
    expected = synthetic.delta_weights(lora)
    kohya, lora_kohya = deltas_of(write(tmp_path, synthetic.as_kohya(lora), name="k.safetensors"))
    peft_tensors, peft_meta = synthetic.as_peft(lora)
    peft, lora_peft = deltas_of(write(tmp_path, peft_tensors, peft_meta, name="p.safetensors"))
    assert_same_deltas(kohya, expected)
    assert_same_deltas(peft, expected)
    assert lora_kohya.layout == "kohya" and lora_peft.layout == "peft"
    expected_family = {"sd15": "sd1", "sd2": "sd2", "sdxl": "sdxl"}[family]
    assert lora_kohya.base_model == lora_peft.base_model == expected_family


def test_refactorised_lora_gives_the_same_dw(tmp_path):
    lora = synthetic.make_lora("sd15", rank=6, max_modules=12, seed=2, dtype="F64")
    other = synthetic.refactorize(lora, seed=3)
    a, _ = deltas_of(write(tmp_path, synthetic.as_kohya(lora), name="a.safetensors"))
    b, _ = deltas_of(write(tmp_path, synthetic.as_kohya(other), name="b.safetensors"))
    assert_same_deltas(b, a, rtol=1e-9, atol=1e-12)
    with open_lora(str(tmp_path / "a.safetensors")) as x, open_lora(str(tmp_path / "b.safetensors")) as y:
        down_a = x.file.read(x.modules[0].keys["down"])
        down_b = y.file.read(y.modules[0].keys["down"])
        assert not np.allclose(down_a, down_b)  # the factors really differ


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32", "F64"])
def test_every_float_dtype_reads_back(tmp_path, dtype):
    lora = synthetic.make_lora("sd15", rank=4, max_modules=6, seed=4, dtype=dtype)
    got, file = deltas_of(write(tmp_path, synthetic.as_kohya(lora), dtype=dtype))
    assert_same_deltas(got, synthetic.delta_weights(lora), rtol=1e-5, atol=1e-8)
    assert set(file.file.tensors[k].dtype for k in file.file.tensors if not k.endswith(".alpha")) == {dtype}


def test_rslora_scale_is_alpha_over_sqrt_rank(tmp_path):
    lora = synthetic.make_lora("sd15", rank=16, alpha=8, max_modules=4, seed=5)
    tensors, metadata = synthetic.as_peft(lora, rslora=True)
    got, file = deltas_of(write(tmp_path, tensors, metadata))
    assert_same_deltas(got, synthetic.delta_weights(lora))
    stored_alpha = json.loads(metadata["lora_adapter_metadata"])["unet.lora_alpha"]
    assert file.modules[0].scale == pytest.approx(stored_alpha / math.sqrt(16))


def test_peft_adapter_file_without_component_prefix(tmp_path):
    lora = synthetic.make_lora("sd15", rank=4, alpha=8, max_modules=4, seed=6)
    tensors, metadata = synthetic.as_peft(lora, component_prefix=False)
    assert not any(k.startswith("unet.") for k in tensors)
    got, _ = deltas_of(write(tmp_path, tensors, metadata))
    assert_same_deltas(got, synthetic.delta_weights(lora))


@pytest.mark.parametrize("style", ["processor", "lora"])
def test_old_diffusers_layouts(tmp_path, style):
    lora = synthetic.make_lora("sd15", rank=4, alpha=4, text_encoder=True, max_modules=16, seed=7)
    got, file = deltas_of(write(tmp_path, synthetic.as_old_diffusers(lora, style)))
    assert file.layout == "diffusers-old"
    assert_same_deltas(got, synthetic.delta_weights(lora))


def test_locon_with_tucker_core(tmp_path):
    lora = synthetic.make_lora("sd15", rank=4, conv=True, tucker=True, targets=("conv1",), max_modules=2, seed=8)
    got, file = deltas_of(write(tmp_path, synthetic.as_locon(lora)))
    assert_same_deltas(got, synthetic.delta_weights(lora), rtol=1e-4, atol=1e-7)
    assert file.layout == "lycoris" and {m.kind for m in file.modules} == {"locon"}
    assert all(len(m.shape) == 4 for m in file.modules)


def test_dora_is_recognised_with_its_direction_update(tmp_path):
    lora = synthetic.make_lora("sd15", rank=4, max_modules=4, seed=9)
    got, file = deltas_of(write(tmp_path, synthetic.as_dora(lora)))
    assert {m.kind for m in file.modules} == {"dora"} and file.layout == "lycoris"
    assert_same_deltas(got, synthetic.delta_weights(lora))


def test_loha_and_lokr_are_recognised_and_their_dw_computed(tmp_path):
    lora = synthetic.make_lora("sd15", rank=4, max_modules=4, seed=10)
    got, file = deltas_of(write(tmp_path, synthetic.as_loha(lora), name="loha.safetensors"))
    assert {m.kind for m in file.modules} == {"loha"}
    assert_same_deltas(got, synthetic.delta_weights(lora), rtol=1e-4, atol=1e-8)
    lokr = synthetic.make_lora("sd15", rank=4, lokr_factor=-1, max_modules=4, seed=11)
    got, file = deltas_of(write(tmp_path, synthetic.as_lokr(lokr), name="lokr.safetensors"))
    assert {m.kind for m in file.modules} == {"lokr"}
    assert_same_deltas(got, synthetic.delta_weights(lokr), rtol=1e-4, atol=1e-8)


def test_flux_kohya_is_detected(tmp_path):
    lora = synthetic.make_lora("flux", rank=2, targets=("img_attn.proj", "txt_attn.proj"), max_modules=2, seed=12)
    got, file = deltas_of(write(tmp_path, synthetic.as_kohya(lora)))
    assert file.base_model == "flux" and all(n.startswith("transformer.") for n in got)
    assert_same_deltas(got, synthetic.delta_weights(lora))


def test_flux_with_a_t5_text_encoder_is_flux_not_sdxl(tmp_path):
    lora = synthetic.make_lora("flux", rank=2, targets=("img_attn.proj",), max_modules=1, seed=12)
    tensors = synthetic.as_kohya(lora)
    t5 = "lora_te2_encoder_block_0_layer_0_SelfAttention_q"  # kohya Flux: lora_te2_ is T5-XXL
    tensors |= {f"{t5}.lora_down.weight": np.zeros((2, 4096), np.float32),
                f"{t5}.lora_up.weight": np.zeros((4096, 2), np.float32)}
    _, file = deltas_of(write(tmp_path, tensors))
    assert file.base_model == "flux"


def test_metadata_base_model_hint_wins_over_shapes(tmp_path):
    lora = synthetic.make_lora("sd15", rank=2, max_modules=2, seed=13)
    _, file = deltas_of(write(tmp_path, synthetic.as_kohya(lora), {"ss_base_model_version": "sdxl_base_v1-0"}))
    assert file.base_model == "sdxl" and "metadata" in file.base_model_evidence


def test_any_rank_and_weight_stats(tmp_path):
    from lora_audit.weights.stats import weight_stats

    for rank in (1, 4, 8):
        lora = synthetic.make_lora("sd15", rank=rank, max_modules=5, seed=rank, dtype="F64")
        path = write(tmp_path, synthetic.as_kohya(lora), name=f"r{rank}.safetensors")
        with open_lora(path) as file:
            stats = weight_stats(file)
        assert stats.ranks == {str(rank): 5} and stats.module_count == 5
        deltas = synthetic.delta_weights(lora)
        for m in stats.modules:
            dw = deltas[m.name].reshape(m.shape[0], -1)
            down, up, alpha = lora.modules[m.name]  # reference: SVD of the r x r core of two QRs
            core = np.linalg.qr(up.reshape(up.shape[0], rank), mode="r") @ np.linalg.qr(down.reshape(rank, -1).T, mode="r").T
            s = np.linalg.svd(alpha / rank * core, compute_uv=False)
            assert m.dw_norm == pytest.approx(np.linalg.norm(dw), rel=1e-6)
            p = s[s > 1e-12 * s[0]] / s.sum()
            assert m.effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-4)
            assert 1 <= m.effective_rank <= rank + 1e-6


def test_orphans_and_mismatches_are_reported(tmp_path):
    from lora_audit.scan.engine import scan_file

    lora = synthetic.make_lora("sd15", rank=4, max_modules=3, seed=14)
    tensors = synthetic.as_kohya(lora)
    up_keys = sorted(k for k in tensors if k.endswith("lora_up.weight"))
    del tensors[up_keys[0]]  # orphan
    tensors[up_keys[1]] = np.zeros((tensors[up_keys[1]].shape[0], 3), np.float32)  # rank 3 vs 4
    result = scan_file(write(tmp_path, tensors))
    rules = {f.rule_id: f for f in result.findings}
    assert "LA202" in rules and "LA203" in rules and result.stats.module_count == 1
