"""Tensor-name parsing: which module a tensor belongs to, and what role it plays there.

Every layout is normalised to one canonical module name: the diffusers dotted path with a
component prefix, e.g. ``unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k`` or
``text_encoder.text_model.encoder.layers.0.self_attn.q_proj``. kohya's underscore-flattened
names are un-flattened, and kohya's SDXL names in the original Stability (SGM) block layout
(``input_blocks_4_1_...``) are mapped to diffusers blocks, so that the same LoRA saved in any
layout yields the same module names.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

# (suffix, layout, role), longest suffixes first so that ".lora_down.weight" wins over ".weight".
_SUFFIXES: list[tuple[str, str, str]] = [
    (".loda_down.weight", "loda", "down"),  # LoDA adapters (weights/loda.py)
    (".loda_up.weight", "loda", "up"),
    (".lora_down.weight", "kohya", "down"),
    (".lora_up.weight", "kohya", "up"),
    (".lora_mid.weight", "lycoris", "mid"),
    (".dora_scale", "lycoris", "dora_scale"),
    (".hada_w1_a", "lycoris", "hada_w1_a"),
    (".hada_w1_b", "lycoris", "hada_w1_b"),
    (".hada_w2_a", "lycoris", "hada_w2_a"),
    (".hada_w2_b", "lycoris", "hada_w2_b"),
    (".hada_t1", "lycoris", "hada_t1"),
    (".hada_t2", "lycoris", "hada_t2"),
    (".lokr_w1_a", "lycoris", "lokr_w1_a"),
    (".lokr_w1_b", "lycoris", "lokr_w1_b"),
    (".lokr_w2_a", "lycoris", "lokr_w2_a"),
    (".lokr_w2_b", "lycoris", "lokr_w2_b"),
    (".lokr_w1", "lycoris", "lokr_w1"),
    (".lokr_w2", "lycoris", "lokr_w2"),
    (".lokr_t2", "lycoris", "lokr_t2"),
    (".lora_linear_layer.down.weight", "diffusers-old", "down"),
    (".lora_linear_layer.up.weight", "diffusers-old", "up"),
    ("_lora.down.weight", "diffusers-old", "down"),  # ...processor.to_q_lora.down.weight
    ("_lora.up.weight", "diffusers-old", "up"),
    (".lora.down.weight", "diffusers-old", "down"),  # ...to_q.lora.down.weight
    (".lora.up.weight", "diffusers-old", "up"),
    (".lora_magnitude_vector", "peft", "dora_scale"),
    (".lora_A.weight", "peft", "down"),
    (".lora_B.weight", "peft", "up"),
    (".alpha", "kohya", "alpha"),
]
_PEFT_ADAPTER = re.compile(r"\.lora_(A|B)\.[A-Za-z0-9_\-]+\.weight$")  # lora_A.<adapter>.weight
_SUFFIX_INFO = {suffix: (layout, role) for suffix, layout, role in _SUFFIXES}
# One alternation, longest suffix first: a single regex search per key.
_SUFFIX_RE = re.compile("(" + "|".join(re.escape(s) for s, _, _ in _SUFFIXES) + ")$")

_KOHYA_PREFIXES = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
    "lora_te3_": "text_encoder_3",
    "lora_transformer_": "transformer",
    "lycoris_": "unet",
}
_KOHYA_PREFIX_TUPLE = tuple(_KOHYA_PREFIXES)
_COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "prior")

# Multi-word identifiers that kohya's "." -> "_" flattening glues together; un-flattening
# re-joins them (longest match first). Covers SD1/2/XL UNets, CLIP, SGM blocks and Flux.
_COMPOUNDS = {
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "single_transformer_blocks",
    "to_q", "to_k", "to_v", "to_out", "proj_in", "proj_out", "proj_attn", "time_emb_proj",
    "conv_shortcut", "conv_in", "conv_out", "conv_norm_out", "time_embedding", "linear_1",
    "linear_2", "add_embedding", "text_model", "self_attn", "q_proj", "k_proj", "v_proj",
    "out_proj", "input_blocks", "output_blocks", "middle_block", "in_layers", "out_layers",
    "emb_layers", "skip_connection", "double_blocks", "single_blocks", "img_attn", "txt_attn",
    "img_mlp", "txt_mlp", "img_mod", "txt_mod", "img_in", "txt_in", "time_in", "vector_in",
    "guidance_in", "final_layer", "in_layer", "out_layer", "add_q_proj", "add_k_proj",
    "add_v_proj", "to_add_out", "ff_context", "norm1_context", "proj_mlp", "x_embedder",
    "context_embedder", "norm_out", "time_text_embed", "timestep_embedder", "text_embedder",
    "guidance_embedder", "adaLN_modulation", "token_embedding", "position_embedding",
    "final_layer_norm", "layer_norm1", "layer_norm2", "shared",
}
_MAX_COMPOUND = 3
# Top-level Flux (BFL) blocks: kohya keeps them under lora_unet_, ComfyUI under diffusion_model.
_FLUX_BLOCKS = ("double_blocks", "single_blocks", "img_in", "txt_in", "time_in", "vector_in",
                "guidance_in", "final_layer")
_SGM_BLOCKS = ("input_blocks", "middle_block", "output_blocks")
_CLIP_PROJECTIONS = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}


@dataclass(frozen=True)
class ParsedKey:
    """One tensor name split into its canonical module name, layout family and role."""

    module: str  # canonical dotted name with component prefix
    layout: str  # kohya | lycoris | peft | diffusers-old | loda
    role: str  # down | up | mid | alpha | dora_scale | hada_* | lokr_*


@functools.lru_cache(maxsize=65536)  # batches repeat the same architecture's keys
def parse_key(key: str) -> ParsedKey | None:
    """Split a tensor name; None for tensors that are not part of any known LoRA layout."""
    match = _PEFT_ADAPTER.search(key)
    if match:
        return ParsedKey(_canonical_dotted(key[: match.start()]), "peft", "down" if match.group(1) == "A" else "up")
    match = _SUFFIX_RE.search(key)
    if match is None:
        return None
    suffix = match.group(1)
    layout, role = _SUFFIX_INFO[suffix]
    module = _canonical(key[: match.start()], suffix.startswith("_lora."))
    return ParsedKey(module, layout, role)


@functools.lru_cache(maxsize=4096)
def _canonical(stem: str, old_processor: bool) -> str:
    module = _canonical_kohya(stem) if stem.startswith(_KOHYA_PREFIX_TUPLE) else _canonical_dotted(stem)
    if old_processor:  # old attention processors: to_q_lora ... to_out_lora, also on CLIP's self_attn
        head, _, leaf = module.rpartition(".")
        if head.endswith(".self_attn"):
            return f"{head}.{_CLIP_PROJECTIONS.get(leaf, leaf)}"
        if leaf == "to_out":
            return f"{module}.0"
    return module


def _canonical_kohya(stem: str) -> str:
    """``lora_unet_down_blocks_0_attentions_0_..._to_q`` -> ``unet.down_blocks.0.attentions.0....to_q``."""
    for prefix, component in sorted(_KOHYA_PREFIXES.items(), key=lambda kv: -len(kv[0])):
        if stem.startswith(prefix):
            body = unflatten(stem[len(prefix):])
            if component == "unet" and body.split(".", 1)[0] in _FLUX_BLOCKS:
                component = "transformer"
            if component == "unet":
                body = sgm_to_diffusers(body)
            return f"{component}.{body}"
    raise AssertionError(stem)


def _canonical_dotted(stem: str) -> str:
    """Dotted (diffusers / PEFT / ComfyUI) names: strip wrappers, drop old processor names, add a component."""
    stem = stem.removeprefix("base_model.model.").removeprefix("diffusion_model.")
    stem = stem.replace(".processor.", ".")
    first = stem.split(".", 1)[0]
    if first in _COMPONENTS:
        return stem
    if first == "text_model":
        return f"text_encoder.{stem}"
    if first in _FLUX_BLOCKS or first in ("transformer_blocks", "single_transformer_blocks"):
        return f"transformer.{stem}"
    if first in _SGM_BLOCKS:
        return f"unet.{sgm_to_diffusers(stem)}"
    return f"unet.{stem}"


def unflatten(body: str) -> str:
    """Undo kohya's ``.`` -> ``_`` flattening by re-joining known multi-word identifiers."""
    tokens = body.split("_")
    out: list[str] = []
    i = 0
    while i < len(tokens):
        for width in range(min(_MAX_COMPOUND, len(tokens) - i), 0, -1):
            candidate = "_".join(tokens[i : i + width])
            if width == 1 or candidate in _COMPOUNDS:
                out.append(candidate)
                i += width
                break
    return ".".join(out)


def sgm_to_diffusers(body: str) -> str:
    """Map SGM UNet block names (kohya SDXL) to diffusers names; other names pass through.

    ``input_blocks.4.1.transformer_blocks...`` -> ``down_blocks.1.attentions.0.transformer_blocks...``
    """
    parts = body.split(".")
    if parts[0] not in _SGM_BLOCKS or len(parts) < 3 or not parts[1].isdecimal() or (
            parts[0] != "middle_block" and not parts[2].isdecimal()):
        return body
    if parts[0] == "middle_block":
        index, rest = int(parts[1]), parts[2:]
        block = {0: "mid_block.resnets.0", 1: "mid_block.attentions.0", 2: "mid_block.resnets.1"}.get(index)
        if block is None:
            return body
        return ".".join([block, *_sgm_resnet_path(rest)]) if "resnets" in block else ".".join([block, *rest])
    index, sub, rest = int(parts[1]), int(parts[2]), parts[3:]
    if parts[0] == "input_blocks":
        if index == 0:
            return ".".join(["conv_in", *rest])
        level, slot = divmod(index - 1, 3)
        if slot == 2:  # the downsampler: input_blocks.3.0.op
            return ".".join([f"down_blocks.{level}.downsamplers.0.conv", *rest[1:]])
        if sub == 0:
            return ".".join([f"down_blocks.{level}.resnets.{slot}", *_sgm_resnet_path(rest)])
        return ".".join([f"down_blocks.{level}.attentions.{slot}", *rest])
    level, slot = divmod(index, 3)
    if sub == 0:
        return ".".join([f"up_blocks.{level}.resnets.{slot}", *_sgm_resnet_path(rest)])
    if rest and rest[0] == "conv":  # output_blocks.N.1.conv or .2.conv: the upsampler
        return ".".join([f"up_blocks.{level}.upsamplers.0", *rest])
    return ".".join([f"up_blocks.{level}.attentions.{slot}", *rest])


_SGM_RESNET = {("in_layers", "2"): "conv1", ("out_layers", "3"): "conv2", ("emb_layers", "1"): "time_emb_proj"}


def _sgm_resnet_path(rest: list[str]) -> list[str]:
    if len(rest) >= 2 and (rest[0], rest[1]) in _SGM_RESNET:
        return [_SGM_RESNET[(rest[0], rest[1])], *rest[2:]]
    if rest and rest[0] == "skip_connection":
        return ["conv_shortcut", *rest[1:]]
    return rest
