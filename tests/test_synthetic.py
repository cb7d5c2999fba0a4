"""Tests of the synthetic LoRA generator: real shapes, real key names, exact updates, valid files."""

import base64
import json
import math
import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from safetensors import safe_open

from lora_audit.testing import synthetic as S

# --------------------------------------------------------------------------- inventories


def count(shapes, suffix):
    return sum(name.endswith(suffix) for name in shapes)


def test_inventory_counts_and_shapes():
    sd15, sd2, sdxl, flux = (S.module_shapes(f) for f in S.FAMILIES)
    assert count(sd15, "attn1.to_q") == 16 and count(sd2, "attn1.to_q") == 16
    assert count(sdxl, "attn1.to_q") == 70  # 2*2 + 2*10 down, 10 mid, 3*10 + 3*2 up
    assert sd15["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"] == (320, 768)
    assert sd2["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"] == (320, 1024)
    assert sdxl["unet.down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k"] == (640, 2048)
    assert not any(n.startswith("unet.down_blocks.0.attentions") for n in sdxl)
    assert sd15["unet.down_blocks.0.attentions.0.proj_in"] == (320, 320, 1, 1)  # 1x1 conv in SD1.5
    assert sd2["unet.down_blocks.0.attentions.0.proj_in"] == (320, 320)
    assert sd15["unet.up_blocks.3.resnets.2.conv1"] == (320, 640, 3, 3)
    assert count(sd15, "self_attn.q_proj") == 12
    assert sd15["text_encoder.text_model.encoder.layers.0.mlp.fc1"] == (3072, 768)
    assert count(sdxl, "self_attn.q_proj") == 12 + 32
    assert sdxl["text_encoder_2.text_model.encoder.layers.31.mlp.fc1"] == (5120, 1280)
    assert count(flux, "img_attn.qkv") == 19 and count(flux, "linear1") == 38
    assert flux["transformer.double_blocks.0.img_attn.qkv"] == (9216, 3072)
    assert flux["transformer.single_blocks.37.linear1"] == (21504, 3072)
    assert flux["transformer.single_blocks.0.linear2"] == (3072, 15360)


UNET_CONFIGS = {
    "sd15": dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8),
    "sd2": dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
                attention_head_dim=(5, 10, 20, 20), use_linear_projection=True),
    "sdxl": dict(block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816),
}
CLIP_CONFIGS = {  # (component family, component) -> hidden, MLP, layers, heads
    ("sd15", "text_encoder"): (768, 3072, 12, 12),
    ("sd2", "text_encoder"): (1024, 4096, 23, 16),
    ("sdxl", "text_encoder_2"): (1280, 5120, 32, 20),
}


def linear_shapes(model, skip=()):
    import torch

    return {name: tuple(m.weight.shape) for name, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and not name.startswith(skip)}


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_unet_inventory_matches_diffusers(family):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**UNET_CONFIGS[family])
    want = linear_shapes(unet, skip=("conv_in", "conv_out", "time_embedding", "add_embedding"))
    ours = {k[len("unet."):]: v for k, v in S.module_shapes(family, text_encoder=False).items()}
    assert ours == want


@pytest.mark.parametrize("family, component", list(CLIP_CONFIGS))
def test_text_encoder_inventory_matches_transformers(family, component):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hidden, mlp, layers, heads = CLIP_CONFIGS[family, component]
    config = transformers.CLIPTextConfig(hidden_size=hidden, intermediate_size=mlp,
                                         num_hidden_layers=layers, num_attention_heads=heads)
    with torch.device("meta"):
        model = transformers.CLIPTextModel(config)
    prefix = component + "."
    ours = {k[len(prefix):]: v for k, v in S.module_shapes(family).items() if k.startswith(prefix)}
    # transformers 5 dropped the `text_model.` level that LoRA files (kohya, diffusers) still use
    want = {("" if k.startswith("text_model.") else "text_model.") + k: v for k, v in linear_shapes(model).items()}
    assert ours == want


def test_flux_inventory_matches_diffusers():
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        model = diffusers.FluxTransformer2DModel(guidance_embeds=True)
    d = linear_shapes(model)
    ours = S.module_shapes("flux", text_encoder=False)
    rows = lambda *names: sum(d[n][0] for n in names)  # noqa: E731  fused projections stack rows
    assert count(ours, "img_attn.qkv") == len(model.transformer_blocks)
    assert count(ours, "linear1") == len(model.single_transformer_blocks)
    b, s = "transformer_blocks.0", "single_transformer_blocks.0"
    assert ours["transformer.double_blocks.0.img_mod.lin"] == d[f"{b}.norm1.linear"]
    assert ours["transformer.double_blocks.0.img_attn.qkv"] == (rows(*(f"{b}.attn.to_{x}" for x in "qkv")), 3072)
    assert ours["transformer.double_blocks.0.txt_attn.proj"] == d[f"{b}.attn.to_add_out"]
    assert ours["transformer.double_blocks.0.txt_mlp.0"] == d[f"{b}.ff_context.net.0.proj"]
    assert ours["transformer.double_blocks.0.img_mlp.2"] == d[f"{b}.ff.net.2"]
    linear1 = rows(*(f"{s}.attn.to_{x}" for x in "qkv"), f"{s}.proj_mlp")
    assert ours["transformer.single_blocks.0.linear1"] == (linear1, 3072)
    assert ours["transformer.single_blocks.0.linear2"] == d[f"{s}.proj_out"]
    assert ours["transformer.single_blocks.0.modulation.lin"] == d[f"{s}.norm.linear"]


# --------------------------------------------------------------------------- kohya names


@pytest.mark.parametrize("name, kohya", [
    ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
     "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"),
    ("unet.down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k",
     "lora_unet_input_blocks_8_1_transformer_blocks_9_attn2_to_k"),
    ("unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
     "lora_unet_middle_block_1_transformer_blocks_0_ff_net_0_proj"),
    ("unet.mid_block.resnets.1.time_emb_proj", "lora_unet_middle_block_2_emb_layers_1"),
    ("unet.up_blocks.0.attentions.0.proj_in", "lora_unet_output_blocks_0_1_proj_in"),
    ("unet.up_blocks.1.attentions.2.transformer_blocks.1.attn1.to_out.0",
     "lora_unet_output_blocks_5_1_transformer_blocks_1_attn1_to_out_0"),
    ("unet.down_blocks.0.resnets.1.conv1", "lora_unet_input_blocks_2_0_in_layers_2"),
    ("unet.down_blocks.1.resnets.0.conv_shortcut", "lora_unet_input_blocks_4_0_skip_connection"),
    ("unet.down_blocks.0.downsamplers.0.conv", "lora_unet_input_blocks_3_0_op"),
    ("unet.up_blocks.0.upsamplers.0.conv", "lora_unet_output_blocks_2_2_conv"),
    ("unet.up_blocks.2.resnets.2.conv2", "lora_unet_output_blocks_8_0_out_layers_3"),
    ("text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
     "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"),
    ("text_encoder_2.text_model.encoder.layers.3.mlp.fc1", "lora_te2_text_model_encoder_layers_3_mlp_fc1"),
])
def test_sdxl_kohya_names_use_sgm_blocks(name, kohya):
    assert S.kohya_module_name("sdxl", name) == kohya


def test_kohya_names_sd15_and_flux():
    assert (S.kohya_module_name("sd15", "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k")
            == "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k")
    assert (S.kohya_module_name("sd15", "text_encoder.text_model.encoder.layers.0.self_attn.q_proj")
            == "lora_te_text_model_encoder_layers_0_self_attn_q_proj")
    assert (S.kohya_module_name("flux", "transformer.double_blocks.0.img_attn.qkv")
            == "lora_unet_double_blocks_0_img_attn_qkv")
    assert (S.kohya_module_name("flux", "text_encoder.text_model.encoder.layers.0.mlp.fc2")
            == "lora_te1_text_model_encoder_layers_0_mlp_fc2")


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_diffusers_converts_every_kohya_name_back(family):
    """diffusers' own kohya/SGM converter must map all our kohya names to our diffusers names."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_lora_to_diffusers, _maybe_map_sgm_blocks_to_diffusers)
    from diffusers.utils.state_dict_utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft

    shapes = S.module_shapes(family)
    state = {}
    for name in shapes:
        base = S.kohya_module_name(family, name)
        state.update({f"{base}.lora_down.weight": 0, f"{base}.lora_up.weight": 0, f"{base}.alpha": np.array(1.0)})
    state = _maybe_map_sgm_blocks_to_diffusers(state, SimpleNamespace(layers_per_block=2))
    converted, _ = _convert_non_diffusers_lora_to_diffusers(state)
    unet = convert_unet_state_dict_to_peft({k[5:]: v for k, v in converted.items() if k.startswith("unet.")})
    text = convert_state_dict_to_peft({k: v for k, v in converted.items() if not k.startswith("unet.")})
    got = {f"unet.{k}" for k in unet} | set(text)
    assert {k.removesuffix(".lora_A.weight") for k in got if k.endswith(".lora_A.weight")} == set(shapes)


# --------------------------------------------------------------------------- make_lora and updates


def subset(lora, keep):
    """The modules of ``lora`` whose name passes ``keep`` (dense updates of 1280-wide convs are slow)."""
    return S.SyntheticLora(
        lora.family, {k: v for k, v in lora.modules.items() if keep(k)},
        tucker={k: v for k, v in lora.tucker.items() if keep(k)},
        lokr={k: v for k, v in lora.lokr.items() if keep(k)}, dtype=lora.dtype)


def in_first_level(name):
    return name.startswith("unet.down_blocks.0.")


def test_make_lora_is_deterministic_and_sized():
    a = S.make_lora("sd15", rank=8, alpha=4, max_modules=5, seed=3)
    b = S.make_lora("sd15", rank=8, alpha=4, max_modules=5, seed=3)
    c = S.make_lora("sd15", rank=8, alpha=4, max_modules=5, seed=4)
    assert list(a.modules) == list(b.modules) and len(a.modules) == 5
    name = next(iter(a.modules))
    assert np.array_equal(a.modules[name][0], b.modules[name][0])
    assert not np.array_equal(a.modules[name][0], c.modules[name][0])
    down, up, alpha = a.modules["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    assert down.shape == (8, 320) and up.shape == (320, 8) and alpha == 4.0 and np.abs(up).min() > 0


def test_make_lora_conv_text_encoder_and_dtypes():
    lora = S.make_lora("sd15", conv=True, text_encoder=True, dtype="F16")
    assert lora.modules["unet.down_blocks.1.resnets.0.conv1"][0].shape == (4, 320, 3, 3)
    assert lora.modules["unet.down_blocks.1.resnets.0.conv1"][1].shape == (640, 4, 1, 1)
    assert "text_encoder.text_model.encoder.layers.11.mlp.fc2" in lora.modules
    assert all(d.dtype == np.float16 for d, _, _ in lora.modules.values())
    bf16 = S.make_lora("sd15", max_modules=2, dtype="BF16")
    down = next(iter(bf16.modules.values()))[0]
    assert np.array_equal(S.round_to_bf16(down), down)
    with pytest.raises(ValueError):
        S.make_lora("flux", conv=True)


def test_delta_weights_and_refactorize():
    lora = subset(S.make_lora("sd15", rank=4, alpha=1, conv=True, seed=1, dtype="F64"), in_first_level)
    assert len(lora.modules) == 4 + 16  # 2 resnets x 2 convs, 2 attentions x 2 x (q, k, v, out)
    deltas = S.delta_weights(lora)
    for name, (down, up, alpha) in lora.modules.items():
        assert deltas[name].shape == (up.shape[0],) + down.shape[1:]
        flat = up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1) * alpha / down.shape[0]
        assert np.allclose(deltas[name].reshape(flat.shape), flat)
    other = S.refactorize(lora, seed=9)
    for name, delta in S.delta_weights(other).items():
        assert not np.allclose(other.modules[name][0], lora.modules[name][0])
        assert np.allclose(delta, deltas[name], rtol=1e-9, atol=1e-12)


def test_tucker_and_lokr_refactorize():
    tucker = S.make_lora("sdxl", conv=True, tucker=True, dtype="F64")
    for lora in (subset(tucker, in_first_level), S.make_lora("sd15", lokr_factor=-1, max_modules=3, dtype="F64")):
        other = S.refactorize(lora, seed=2)
        for name, delta in S.delta_weights(lora).items():
            assert np.allclose(S.delta_weights(other)[name], delta, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- writers


def test_kohya_keys_and_alpha():
    lora = S.make_lora("sd15", alpha=2, text_encoder=True, targets=("attn2.to_k",))
    state = S.as_kohya(lora)
    base = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    assert state[f"{base}.lora_down.weight"].shape == (4, 768)
    assert state[f"{base}.lora_up.weight"].shape == (640, 4)
    assert state[f"{base}.alpha"].shape == () and float(state[f"{base}.alpha"]) == 2.0
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in state
    sdxl = S.as_kohya(S.make_lora("sdxl", text_encoder=True, targets=("to_q",)))
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight" in sdxl
    assert "lora_unet_middle_block_1_transformer_blocks_9_attn2_to_q.alpha" in sdxl
    assert "lora_te2_text_model_encoder_layers_31_mlp_fc2.lora_down.weight" in sdxl
    assert not any("down_blocks" in k or "lora_te_" in k for k in sdxl)
    flux = S.as_kohya(S.make_lora("flux", max_modules=400))
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in flux
    assert flux["lora_unet_single_blocks_37_linear2.lora_down.weight"].shape == (4, 15360)


def test_peft_keys_and_metadata():
    lora = S.make_lora("sdxl", rank=8, alpha=4, text_encoder=True, max_modules=40)
    state, metadata = S.as_peft(lora, rslora=True)
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in state
    assert state["unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight"].shape == (640, 8)
    assert any(k.startswith("text_encoder_2.text_model.encoder.layers.") for k in state)
    assert metadata["format"] == "pt"
    config = json.loads(metadata["lora_adapter_metadata"])
    assert config["unet.r"] == 8 and config["unet.use_rslora"] is True
    assert config["unet.lora_alpha"] / math.sqrt(8) == pytest.approx(4 / 8)  # update unchanged
    assert config["text_encoder_2.peft_type"] == "LORA"
    single, meta = S.as_peft(S.make_lora("flux", max_modules=3), component_prefix=False)
    assert all(k.startswith(("double_blocks.", "single_blocks.")) for k in single)
    assert json.loads(meta["lora_adapter_metadata"])["lora_alpha"] == 4.0


def test_peft_metadata_is_read_by_diffusers(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from diffusers.utils.state_dict_utils import _load_sft_state_dict_metadata

    state, metadata = S.as_peft(S.make_lora("sd15", max_modules=2))
    path = S.save_synthetic(tmp_path / "peft.safetensors", state, metadata)
    assert _load_sft_state_dict_metadata(str(path))["unet.lora_alpha"] == 4.0


def test_old_diffusers_keys_fold_the_scale():
    base = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    layer = "text_encoder.text_model.encoder.layers.0"
    lora = S.make_lora("sd15", rank=4, alpha=1, text_encoder=True, targets=("to_out.0", "proj_in"), seed=2)
    lora = subset(lora, lambda n: n.startswith((base, "unet.down_blocks.0.attentions.0.proj", layer + ".")))
    proc = S.as_old_diffusers(lora, "processor")
    assert f"{base}.processor.to_out_lora.down.weight" in proc
    assert "unet.down_blocks.0.attentions.0.proj_in.lora.down.weight" in proc
    assert "text_encoder.text_model.encoder.layers.0.self_attn.to_q_lora.up.weight" in proc
    assert "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.down.weight" in proc
    old = S.as_old_diffusers(lora, "lora")
    assert f"{base}.to_out.0.lora.up.weight" in old
    assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight" in old
    delta = old[f"{base}.to_out.0.lora.up.weight"] @ old[f"{base}.to_out.0.lora.down.weight"]
    assert np.allclose(delta, S.delta_weights(lora)[f"{base}.to_out.0"], rtol=1e-5, atol=1e-9)


def test_locon_tucker_matches_delta():
    lora = S.make_lora("sd15", conv=True, tucker=True, targets=("to_q",), dtype="F64")
    lora = subset(lora, lambda n: in_first_level(n) or n.startswith("unet.down_blocks.1.resnets.0."))
    assert len(lora.tucker) == 6
    state, deltas = S.as_locon(lora), S.delta_weights(lora)
    base = "lora_unet_down_blocks_1_resnets_0_conv1"
    down, mid, up = (state[f"{base}.{k}.weight"] for k in ("lora_down", "lora_mid", "lora_up"))
    assert down.shape == (4, 320, 1, 1) and mid.shape == (4, 4, 3, 3) and up.shape == (640, 4, 1, 1)
    for name in lora.tucker:
        base = S.kohya_module_name("sd15", name)
        down, mid, up = (state[f"{base}.{k}.weight"] for k in ("lora_down", "lora_mid", "lora_up"))
        rebuilt = np.einsum("ijkl,pi,jr->prkl", mid, up[:, :, 0, 0], down[:, :, 0, 0])  # LyCORIS make_weight
        assert np.allclose(rebuilt * float(state[f"{base}.alpha"]) / 4, deltas[name])
    plain = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert f"{plain}.lora_down.weight" in state and f"{plain}.lora_mid.weight" not in state
    assert S.as_kohya(lora)["lora_unet_down_blocks_1_resnets_0_conv1.lora_down.weight"].shape == (4, 320, 3, 3)


def test_dora_scale_shapes():
    lora = S.make_lora("sd15", conv=True, max_modules=50)
    state, out_state = S.as_dora(lora), S.as_dora(lora, wd_on_output=True)
    for name, (down, up, _) in lora.modules.items():
        key = f"{S.kohya_module_name('sd15', name)}.dora_scale"
        tail = (1, 1) if down.ndim == 4 else ()
        assert state[key].shape == (1, down.shape[1], *tail) and (state[key] > 0).all()
        assert out_state[key].shape == (up.shape[0], 1, *tail)
        assert f"{S.kohya_module_name('sd15', name)}.lora_up.weight" in state


def test_loha_matches_delta():
    lora = subset(S.make_lora("sd15", alpha=2, conv=True, dtype="F64"), in_first_level)
    state, deltas = S.as_loha(lora), S.delta_weights(lora)
    for name, delta in deltas.items():
        base = S.kohya_module_name("sd15", name)
        w1 = state[f"{base}.hada_w1_a"] @ state[f"{base}.hada_w1_b"]
        w2 = state[f"{base}.hada_w2_a"] @ state[f"{base}.hada_w2_b"]
        rank = state[f"{base}.hada_w1_b"].shape[0]
        assert np.allclose((w1 * w2 * float(state[f"{base}.alpha"]) / rank).reshape(delta.shape), delta)


@pytest.mark.parametrize("full_w2", [False, True])
def test_lokr_matches_delta(full_w2):
    lora = S.make_lora("sd15", rank=2, alpha=1, lokr_factor=-1, text_encoder=True, max_modules=4, dtype="F64")
    state, deltas = S.as_lokr(lora, full_w2=full_w2), S.delta_weights(lora)
    for name, delta in deltas.items():
        base = S.kohya_module_name("sd15", name)
        if full_w2:
            w2, scale = state[f"{base}.lokr_w2"], 1.0  # neither factor decomposed: scale 1
        else:
            w2 = state[f"{base}.lokr_w2_a"] @ state[f"{base}.lokr_w2_b"]
            scale = float(state[f"{base}.alpha"]) / state[f"{base}.lokr_w2_b"].shape[0]
        assert np.allclose(np.kron(state[f"{base}.lokr_w1"], w2) * scale, delta)
    first = S.kohya_module_name("sd15", next(iter(lora.modules)))
    assert state[f"{first}.lokr_w1"].shape == (16, 16)  # 320 = 16 * 20
    with pytest.raises(ValueError):
        S.as_lokr(S.make_lora("sd15", max_modules=1))


# --------------------------------------------------------------------------- safetensors encoder


@pytest.mark.parametrize("dtype, np_dtype", [("F16", np.float16), ("F32", np.float32), ("F64", np.float64)])
def test_encoder_round_trip_numpy(tmp_path, dtype, np_dtype):
    tensors = S.as_kohya(S.make_lora("sd15", conv=True, max_modules=6, dtype=dtype))
    path = S.save_synthetic(tmp_path / "x.safetensors", tensors, {"ss_network_dim": "4"})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and json.loads(raw[8:8 + n])["__metadata__"] == {"ss_network_dim": "4"}
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == {"ss_network_dim": "4"} and set(f.keys()) == set(tensors)
        for key, value in tensors.items():
            got = f.get_tensor(key)
            assert got.dtype == np_dtype and got.shape == value.shape and np.array_equal(got, value)


def test_encoder_is_byte_identical_to_rust_writer():
    from safetensors.numpy import save

    tensors = {"b": np.arange(3, dtype=np.float16), "a": np.ones((2, 3), np.float32), "c": np.array(2.0)}
    assert S.encode_safetensors(tensors, {"k": "v"}) == save(tensors, {"k": "v"})


def test_bf16_bits_round_to_nearest_even():
    values = np.array([1.0, -2.5, 1 / 3, 1.00390625, 1.01171875, np.inf], dtype=np.float32)
    raw = S.encode_safetensors({"w": values}, dtype="BF16")
    (n,) = struct.unpack("<Q", raw[:8])
    assert json.loads(raw[8:8 + n])["w"] == {"dtype": "BF16", "shape": [6], "data_offsets": [0, 12]}
    bits = np.frombuffer(raw[8 + n:], dtype="<u2")  # ties go to even: 0x3F80_8000 down, 0x3F81_8000 up
    assert [hex(b) for b in bits] == ["0x3f80", "0xc020", "0x3eab", "0x3f80", "0x3f82", "0x7f80"]


def test_encoder_bf16_via_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    values = np.array([1.0, -2.5, 1 / 3, 1.00390625, 3e38, np.inf, np.nan, 0.0], dtype=np.float32)
    path = S.save_synthetic(tmp_path / "b.safetensors", {"w": values, "alpha": np.array(4.0)}, dtype="BF16")
    loaded = load_file(str(path))
    assert loaded["w"].dtype == torch.bfloat16 and loaded["alpha"].shape == ()
    expected = torch.from_numpy(values).to(torch.bfloat16).float().numpy()  # torch rounds to nearest even
    assert np.array_equal(loaded["w"].float().numpy(), expected, equal_nan=True)
    assert np.array_equal(S.round_to_bf16(values), expected, equal_nan=True)


# --------------------------------------------------------------------------- metadata


def png_text_chunks(png):
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, text, kinds = 8, {}, []
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind, data = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", png[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + data)
        kinds.append(kind)
        if kind == b"tEXt":
            key, value = data.split(b"\x00", 1)
            text[key.decode("latin-1")] = value.decode("latin-1")
        if kind == b"IDAT":
            assert len(zlib.decompress(data)) == 32 * (1 + 32 * 3)
        pos += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    return text


def test_leaky_metadata():
    meta = S.leaky_kohya_metadata(name="jane doe", trigger="sks")
    assert all(isinstance(v, str) for v in meta.values())
    assert json.loads(meta["ss_tag_frequency"])["10_jane doe woman"]["sks woman"] == 20
    assert json.loads(meta["ss_dataset_dirs"]) == {"10_jane doe woman": {"n_repeats": 10, "img_count": 20}}
    assert json.loads(meta["ss_datasets"])[0]["subsets"][0]["class_tokens"] == "sks woman"
    assert meta["ss_sd_model_name"].startswith("/home/jane/")
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.thumbnail"].startswith("data:image/png;base64,")
    (cover,) = json.loads(meta["ssmd_cover_images"])
    assert "sks woman" in png_text_chunks(base64.b64decode(cover))["parameters"]
    assert "ssmd_cover_images" not in S.leaky_kohya_metadata(with_cover_image=False)
    assert S.leaky_kohya_metadata(family="sdxl")["ss_base_model_version"] == "sdxl_base_v1-0"


def test_clean_metadata_has_nothing_personal():
    meta = S.clean_metadata("sdxl")
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert not any(k in meta for k in ("ss_tag_frequency", "ss_output_name", "ss_sd_model_name", "modelspec.title"))
    assert "jane" not in json.dumps(meta)


def test_generator_imports_neither_torch_nor_diffusers():
    import subprocess
    import sys

    code = "import sys, lora_audit.testing.synthetic; print(sorted(m for m in sys.modules if m in ('torch', 'diffusers')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
