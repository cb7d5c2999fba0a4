"""Tensor-name parsing for every layout, checked against real key names."""

import pytest

from lora_audit.weights.keys import parse_key, sgm_to_diffusers, unflatten

ATTN = "transformer_blocks.0.attn1.to_q"


@pytest.mark.parametrize("key, module, layout, role", [
    # kohya SD1.5: diffusers block names, flattened
    ("lora_unet_down_blocks_0_attentions_1_transformer_blocks_0_attn2_to_k.lora_down.weight",
     "unet.down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k", "kohya", "down"),
    ("lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_out_0.lora_up.weight",
     "unet.up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_out.0", "kohya", "up"),
    ("lora_unet_mid_block_attentions_0_proj_in.alpha", "unet.mid_block.attentions.0.proj_in", "kohya", "alpha"),
    ("lora_unet_down_blocks_1_resnets_0_time_emb_proj.lora_down.weight",
     "unet.down_blocks.1.resnets.0.time_emb_proj", "kohya", "down"),
    ("lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_ff_net_0_proj.lora_down.weight",
     "unet.up_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj", "kohya", "down"),
    ("lora_te_text_model_encoder_layers_11_self_attn_out_proj.lora_up.weight",
     "text_encoder.text_model.encoder.layers.11.self_attn.out_proj", "kohya", "up"),
    ("lora_te_text_model_encoder_layers_0_mlp_fc1.alpha", "text_encoder.text_model.encoder.layers.0.mlp.fc1", "kohya", "alpha"),
    # kohya SDXL: SGM block names and two text encoders
    ("lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_v.lora_down.weight",
     "unet.down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_v", "kohya", "down"),
    ("lora_unet_input_blocks_8_1_proj_out.lora_up.weight", "unet.down_blocks.2.attentions.1.proj_out", "kohya", "up"),
    ("lora_unet_middle_block_1_transformer_blocks_9_attn1_to_k.lora_down.weight",
     "unet.mid_block.attentions.0.transformer_blocks.9.attn1.to_k", "kohya", "down"),
    ("lora_unet_output_blocks_5_1_transformer_blocks_0_attn1_to_q.lora_down.weight",
     "unet.up_blocks.1.attentions.2.transformer_blocks.0.attn1.to_q", "kohya", "down"),
    ("lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight", "unet.down_blocks.0.resnets.0.conv1", "kohya", "down"),
    ("lora_unet_output_blocks_2_2_conv.lora_down.weight", "unet.up_blocks.0.upsamplers.0.conv", "kohya", "down"),
    ("lora_unet_input_blocks_3_0_op.lora_down.weight", "unet.down_blocks.0.downsamplers.0.conv", "kohya", "down"),
    ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
     "text_encoder.text_model.encoder.layers.0.self_attn.q_proj", "kohya", "down"),
    ("lora_te2_text_model_encoder_layers_31_mlp_fc2.lora_down.weight",
     "text_encoder_2.text_model.encoder.layers.31.mlp.fc2", "kohya", "down"),
    # kohya Flux keeps BFL names
    ("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", "transformer.double_blocks.0.img_attn.qkv", "kohya", "down"),
    ("lora_unet_single_blocks_37_linear2.alpha", "transformer.single_blocks.37.linear2", "kohya", "alpha"),
    ("lora_unet_final_layer_linear.lora_down.weight", "transformer.final_layer.linear", "kohya", "down"),
    ("lora_unet_img_in.lora_up.weight", "transformer.img_in", "kohya", "up"),
    ("lora_unet_time_in_in_layer.lora_down.weight", "transformer.time_in.in_layer", "kohya", "down"),
    ("lora_unet_guidance_in_out_layer.alpha", "transformer.guidance_in.out_layer", "kohya", "alpha"),
    # kohya-style names of a transformer (SD3 / Flux trainers), ComfyUI / BFL names
    ("lora_transformer_single_transformer_blocks_0_attn_to_k.lora_down.weight",
     "transformer.single_transformer_blocks.0.attn.to_k", "kohya", "down"),
    ("diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight", "transformer.double_blocks.0.img_attn.qkv", "peft", "down"),
    ("diffusion_model.single_blocks.3.linear1.lora_B.weight", "transformer.single_blocks.3.linear1", "peft", "up"),
    ("diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.lora_A.weight",
     "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", "peft", "down"),
    # LyCORIS Tucker factors
    ("lora_unet_down_blocks_0_resnets_0_conv1.hada_t1", "unet.down_blocks.0.resnets.0.conv1", "lycoris", "hada_t1"),
    ("lora_unet_down_blocks_0_resnets_0_conv1.lokr_t2", "unet.down_blocks.0.resnets.0.conv1", "lycoris", "lokr_t2"),
    # LyCORIS
    ("lora_unet_down_blocks_0_resnets_0_conv1.lora_mid.weight", "unet.down_blocks.0.resnets.0.conv1", "lycoris", "mid"),
    ("lora_unet_mid_block_attentions_0_proj_out.dora_scale", "unet.mid_block.attentions.0.proj_out", "lycoris", "dora_scale"),
    ("lora_unet_down_blocks_1_attentions_0_proj_in.hada_w1_a", "unet.down_blocks.1.attentions.0.proj_in", "lycoris", "hada_w1_a"),
    ("lora_unet_down_blocks_1_attentions_0_proj_in.lokr_w2_b", "unet.down_blocks.1.attentions.0.proj_in", "lycoris", "lokr_w2_b"),
    # diffusers / PEFT
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
     "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "peft", "down"),
    ("text_encoder_2.text_model.encoder.layers.1.self_attn.v_proj.lora_B.weight",
     "text_encoder_2.text_model.encoder.layers.1.self_attn.v_proj", "peft", "up"),
    ("transformer.transformer_blocks.0.attn.to_q.lora_A.weight", "transformer.transformer_blocks.0.attn.to_q", "peft", "down"),
    ("base_model.model.down_blocks.0.attentions.0.proj_in.lora_A.default.weight",
     "unet.down_blocks.0.attentions.0.proj_in", "peft", "down"),
    ("unet.mid_block.attentions.0.proj_in.lora_magnitude_vector", "unet.mid_block.attentions.0.proj_in", "peft", "dora_scale"),
    # old diffusers
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight",
     "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "diffusers-old", "down"),
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight",
     "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0", "diffusers-old", "up"),
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.lora.down.weight",
     "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k", "diffusers-old", "down"),
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v.lora_linear_layer.up.weight",
     "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v", "diffusers-old", "up"),
])
def test_parse_key(key, module, layout, role):
    parsed = parse_key(key)
    assert (parsed.module, parsed.layout, parsed.role) == (module, layout, role)


@pytest.mark.parametrize("key", ["model.diffusion_model.input_blocks.0.0.weight", "text_model.embeddings.position_ids",
                                 "random_tensor", ""])
def test_non_lora_keys_are_not_parsed(key):
    assert parse_key(key) is None


def test_sgm_names_that_are_not_numbered_pass_through():
    assert parse_key("lora_unet_input_blocks_a_b.lora_down.weight").module == "unet.input_blocks.a.b"
    assert sgm_to_diffusers("output_blocks.x.1.conv") == "output_blocks.x.1.conv"


def test_unflatten_rejoins_compound_identifiers():
    assert unflatten("down_blocks_2_attentions_1_transformer_blocks_0_attn2_to_out_0") == \
        "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_out.0"
    assert unflatten("single_transformer_blocks_3_attn_add_k_proj") == "single_transformer_blocks.3.attn.add_k_proj"


def test_sgm_mapping_covers_every_sdxl_attention_block():
    # SDXL: attentions in input blocks 4,5,7,8, the middle block and output blocks 0-5.
    expected = {
        "input_blocks.4.1": "down_blocks.1.attentions.0", "input_blocks.5.1": "down_blocks.1.attentions.1",
        "input_blocks.7.1": "down_blocks.2.attentions.0", "input_blocks.8.1": "down_blocks.2.attentions.1",
        "middle_block.1": "mid_block.attentions.0",
        **{f"output_blocks.{i}.1": f"up_blocks.{i // 3}.attentions.{i % 3}" for i in range(6)},
    }
    for sgm, diffusers in expected.items():
        assert sgm_to_diffusers(f"{sgm}.{ATTN}") == f"{diffusers}.{ATTN}"
    assert sgm_to_diffusers("middle_block.2.out_layers.3") == "mid_block.resnets.1.conv2"
    assert sgm_to_diffusers("output_blocks.7.0.skip_connection") == "up_blocks.2.resnets.1.conv_shortcut"
    assert sgm_to_diffusers("down_blocks.0.resnets.0.conv1") == "down_blocks.0.resnets.0.conv1"
