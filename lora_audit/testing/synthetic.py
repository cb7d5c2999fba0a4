"""Synthetic LoRA files in every common layout, for tests, benchmarks and the static samples.

Everything here is written independently of ``lora_audit.weights`` on purpose: tests compare the
reader against this second implementation of the naming conventions. Only numpy and the standard
library are used (no torch, no diffusers, no safetensors), so the generator runs anywhere.

Module names are diffusers-style dotted paths with a component prefix, e.g.
``unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k``,
``text_encoder_2.text_model.encoder.layers.3.mlp.fc1`` or ``transformer.double_blocks.0.img_attn.qkv``
(Flux keeps the Black Forest Labs names that kohya trains on).

Sources of the formats mirrored here:
- kohya sd-scripts ``networks/lora.py`` / ``networks/lora_flux.py`` (``lora_unet``/``lora_te``/
  ``lora_te1``/``lora_te2`` prefixes, ``.`` -> ``_``, 0-d ``alpha``), ``library/sdxl_original_unet.py``
  (SDXL is trained on the SGM/Stability UNet, so SDXL keys use ``input_blocks``/``middle_block``/
  ``output_blocks`` and ``in_layers.2``/``out_layers.3``/``skip_connection``/``emb_layers.1``/``op``),
  ``train_network.py`` and ``library/sai_model_spec.py`` (metadata keys, every value ``str()``-ed).
- diffusers 0.42 ``loaders/lora_base.py``: pipelines write ``{"format": "pt", "lora_adapter_metadata":
  json.dumps(config, indent=2, sort_keys=True)}`` where the per-component PEFT configs are flattened into
  one dict with component-prefixed keys (``"unet.r"``, ``"unet.lora_alpha"``, ``"text_encoder.r"``);
  ``ModelMixin.save_lora_adapter`` writes the same key un-prefixed and the tensor names without the
  component prefix. ``utils/state_dict_utils.py`` lists the older ``processor.to_q_lora.down`` /
  ``to_q.lora.down`` / ``lora_linear_layer`` names.
- LyCORIS ``lycoris/modules/{locon,loha,lokr}.py`` (``lora_mid``, ``hada_w1_a``..., ``lokr_w1``...,
  ``dora_scale`` of shape ``[1, in]`` by default, ``[out, 1]`` with ``wd_on_output``).
"""

from __future__ import annotations

import base64
import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FAMILIES = ("sd15", "sd2", "sdxl", "flux")
DTYPES = ("F16", "BF16", "F32", "F64")

# --------------------------------------------------------------------------- module inventories


@dataclass(frozen=True)
class _UNetSpec:
    channels: tuple[int, ...]  # block_out_channels
    attention: tuple[bool, ...]  # down block has cross-attention (up blocks mirror it)
    depth: tuple[int, ...]  # transformer_layers_per_block; the mid block uses the last one
    cross_dim: int  # cross_attention_dim
    linear_proj: bool  # proj_in/proj_out are Linear (else 1x1 Conv2d)


_UNETS = {
    "sd15": _UNetSpec((320, 640, 1280, 1280), (True, True, True, False), (1, 1, 1, 1), 768, False),
    "sd2": _UNetSpec((320, 640, 1280, 1280), (True, True, True, False), (1, 1, 1, 1), 1024, True),
    "sdxl": _UNetSpec((320, 640, 1280), (False, True, True), (1, 2, 10), 2048, True),
}
_LAYERS_PER_BLOCK = 2
_TIME_EMBED_DIM = 1280  # 4 * block_out_channels[0]

# name -> (hidden size, layers, MLP size)
_CLIPS = {
    "clip_l": (768, 12, 3072),  # SD1.x, SDXL text_encoder, Flux
    "openclip_h": (1024, 23, 4096),  # SD2.x (diffusers keeps 23 of 24 layers)
    "openclip_bigg": (1280, 32, 5120),  # SDXL text_encoder_2
}
_TEXT_ENCODERS = {
    "sd15": {"text_encoder": "clip_l"},
    "sd2": {"text_encoder": "openclip_h"},
    "sdxl": {"text_encoder": "clip_l", "text_encoder_2": "openclip_bigg"},
    "flux": {"text_encoder": "clip_l"},
}

_FLUX_HIDDEN, _FLUX_MLP, _FLUX_DOUBLE, _FLUX_SINGLE = 3072, 12288, 19, 38

_DEFAULT_TARGETS = {
    "unet": ("to_q", "to_k", "to_v", "to_out.0"),
    "transformer": (
        "img_attn.qkv", "img_attn.proj", "txt_attn.qkv", "txt_attn.proj",
        "img_mlp.0", "img_mlp.2", "txt_mlp.0", "txt_mlp.2", "linear1", "linear2",
    ),
}
_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def _unet_shapes(spec: _UNetSpec) -> dict[str, tuple[int, ...]]:
    """Linear/Conv2d weight shapes of a diffusers UNet2DConditionModel, inside the blocks."""
    shapes: dict[str, tuple[int, ...]] = {}

    def resnet(prefix: str, cin: int, cout: int) -> None:
        shapes[f"{prefix}.conv1"] = (cout, cin, 3, 3)
        shapes[f"{prefix}.time_emb_proj"] = (cout, _TIME_EMBED_DIM)
        shapes[f"{prefix}.conv2"] = (cout, cout, 3, 3)
        if cin != cout:
            shapes[f"{prefix}.conv_shortcut"] = (cout, cin, 1, 1)

    def attention(prefix: str, c: int, depth: int) -> None:
        proj = (c, c) if spec.linear_proj else (c, c, 1, 1)
        shapes[f"{prefix}.proj_in"] = proj
        for t in range(depth):
            block = f"{prefix}.transformer_blocks.{t}"
            for attn, kv_dim in (("attn1", c), ("attn2", spec.cross_dim)):
                shapes[f"{block}.{attn}.to_q"] = (c, c)
                shapes[f"{block}.{attn}.to_k"] = (c, kv_dim)
                shapes[f"{block}.{attn}.to_v"] = (c, kv_dim)
                shapes[f"{block}.{attn}.to_out.0"] = (c, c)
            shapes[f"{block}.ff.net.0.proj"] = (8 * c, c)  # GEGLU: 2 x (4c)
            shapes[f"{block}.ff.net.2"] = (c, 4 * c)
        shapes[f"{prefix}.proj_out"] = proj

    n = len(spec.channels)
    prev = spec.channels[0]
    for b, c in enumerate(spec.channels):
        for j in range(_LAYERS_PER_BLOCK):
            resnet(f"down_blocks.{b}.resnets.{j}", prev if j == 0 else c, c)
            if spec.attention[b]:
                attention(f"down_blocks.{b}.attentions.{j}", c, spec.depth[b])
        if b < n - 1:
            shapes[f"down_blocks.{b}.downsamplers.0.conv"] = (c, c, 3, 3)
        prev = c

    c = spec.channels[-1]
    resnet("mid_block.resnets.0", c, c)
    attention("mid_block.attentions.0", c, spec.depth[-1])
    resnet("mid_block.resnets.1", c, c)

    rev = spec.channels[::-1]
    prev = rev[0]
    for b, c in enumerate(rev):
        skip = rev[min(b + 1, n - 1)]
        for j in range(_LAYERS_PER_BLOCK + 1):
            res_in = prev if j == 0 else c
            res_skip = skip if j == _LAYERS_PER_BLOCK else c
            resnet(f"up_blocks.{b}.resnets.{j}", res_in + res_skip, c)
            if spec.attention[n - 1 - b]:
                attention(f"up_blocks.{b}.attentions.{j}", c, spec.depth[n - 1 - b])
        if b < n - 1:
            shapes[f"up_blocks.{b}.upsamplers.0.conv"] = (c, c, 3, 3)
        prev = c
    return shapes


def _clip_shapes(kind: str) -> dict[str, tuple[int, ...]]:
    """Linear weight shapes of a CLIP text encoder (transformers CLIPTextModel names)."""
    d, layers, mlp = _CLIPS[kind]
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(layers):
        layer = f"text_model.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{layer}.self_attn.{proj}"] = (d, d)
        shapes[f"{layer}.mlp.fc1"] = (mlp, d)
        shapes[f"{layer}.mlp.fc2"] = (d, mlp)
    return shapes


def _flux_shapes() -> dict[str, tuple[int, ...]]:
    """Linear weight shapes of the Flux.1 transformer blocks, in Black Forest Labs naming."""
    h, mlp = _FLUX_HIDDEN, _FLUX_MLP
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(_FLUX_DOUBLE):
        for stream in ("img", "txt"):
            block = f"double_blocks.{i}.{stream}"
            shapes[f"{block}_mod.lin"] = (6 * h, h)
            shapes[f"{block}_attn.qkv"] = (3 * h, h)
            shapes[f"{block}_attn.proj"] = (h, h)
            shapes[f"{block}_mlp.0"] = (mlp, h)
            shapes[f"{block}_mlp.2"] = (h, mlp)
    for i in range(_FLUX_SINGLE):
        shapes[f"single_blocks.{i}.linear1"] = (3 * h + mlp, h)  # qkv and MLP-in fused: 21504
        shapes[f"single_blocks.{i}.linear2"] = (h, h + mlp)  # attention-out and MLP-out fused: 15360
        shapes[f"single_blocks.{i}.modulation.lin"] = (3 * h, h)
    return shapes


def module_shapes(family: str, text_encoder: bool = True) -> dict[str, tuple[int, ...]]:
    """All LoRA-targetable weight shapes of a model family: ``{prefixed name: (out, in[, kh, kw])}``."""
    _check_family(family)
    if family == "flux":
        shapes = {f"transformer.{k}": v for k, v in _flux_shapes().items()}
    else:
        shapes = {f"unet.{k}": v for k, v in _unet_shapes(_UNETS[family]).items()}
    if text_encoder:
        for component, kind in _TEXT_ENCODERS[family].items():
            shapes.update({f"{component}.{k}": v for k, v in _clip_shapes(kind).items()})
    return shapes


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


# --------------------------------------------------------------------------- the LoRA itself


@dataclass
class SyntheticLora:
    """A LoRA as factors per module, independent of any file layout.

    ``modules[name] = (down [r, in] or [r, in, kh, kw], up [out, r] or [out, r, 1, 1], alpha)``;
    the update is ``alpha / r * up @ down``. ``tucker[name] = (down [r, in, 1, 1], mid [r, r, kh, kw])``
    holds the LoCon Tucker factors of a conv module (``down`` above is their product).
    ``lokr[name] = (w1 [a, b], w2_a [c, k], w2_b [k, d])`` holds native LoKr factors; the module
    then stores the equivalent low-rank factors ``up = kron(w1, w2_a)``, ``down = kron(I_b, w2_b)``
    with ``alpha = lokr_alpha * b`` so that ``alpha / r * up @ down`` is the same update.
    Arrays are float16/float32/float64 per ``dtype``; BF16 values are float32 on the bfloat16 grid.
    """

    family: str
    modules: dict[str, tuple[np.ndarray, np.ndarray, float]]
    tucker: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    lokr: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    dtype: str = "F32"


def make_lora(
    family: str,
    rank: int = 4,
    alpha: float | None = None,
    targets: tuple[str, ...] | None = None,
    text_encoder: bool = False,
    conv: bool = False,
    tucker: bool = False,
    lokr_factor: int | None = None,
    max_modules: int | None = None,
    seed: int = 0,
    dtype: str = "F32",
) -> SyntheticLora:
    """Random LoRA on real module shapes, deterministic per ``seed``.

    ``targets`` are module-name suffixes in the UNet/transformer (default: attention q/k/v/out for
    UNets, every attention and MLP projection for Flux); ``text_encoder`` adds every CLIP attention
    and MLP projection; ``conv`` adds the resnet 3x3 convs (LoCon) and ``tucker`` factors them with
    a Tucker core. ``lokr_factor`` (-1 for LyCORIS' balanced split) makes native LoKr factors
    instead (linear modules only). ``max_modules`` keeps that many, spread evenly over the model.
    ``alpha`` defaults to ``rank`` (scale 1). Down factors are N(0, 1/fan_in), up factors N(0, 0.01^2).
    """
    _check_family(family)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {DTYPES}")
    if conv and family == "flux":
        raise ValueError("Flux has no conv layers")
    if tucker and not conv:
        raise ValueError("tucker=True needs conv=True")
    if lokr_factor is not None and conv:
        raise ValueError("the LoKr generator covers linear modules only")
    base = "transformer" if family == "flux" else "unet"
    base_targets = tuple(targets or _DEFAULT_TARGETS[base]) + (("conv1", "conv2") if conv else ())

    shapes = module_shapes(family, text_encoder=text_encoder)
    names = [
        name for name in shapes
        if any(name.endswith("." + t) for t in (base_targets if name.startswith(base) else _TEXT_TARGETS))
    ]
    if not names:
        raise ValueError(f"no {family} module matches targets {base_targets}")
    if max_modules is not None and max_modules < len(names):
        picks = np.linspace(0, len(names) - 1, max_modules).round().astype(int)
        names = [names[i] for i in sorted(set(picks))]

    rng = np.random.default_rng(seed)
    alpha = float(rank if alpha is None else alpha)
    lora = SyntheticLora(family=family, modules={}, dtype=dtype)
    for name in names:
        shape = shapes[name]
        out, inp, kernel = shape[0], shape[1], shape[2:]
        if lokr_factor is not None:
            (a, c), (b, d) = _split(out, lokr_factor), _split(inp, lokr_factor)
            factors = (
                _quantize(rng.normal(0.0, 1.0, (a, b)), dtype),  # w1
                _quantize(rng.normal(0.0, 1e-2, (c, rank)), dtype),  # w2_a
                _quantize(rng.normal(0.0, 1 / math.sqrt(d), (rank, d)), dtype),  # w2_b
            )
            lora.lokr[name] = factors
            down, up = _lokr_as_lora(*factors)
            lora.modules[name] = (_quantize(down, dtype), _quantize(up, dtype), alpha * b)
            continue
        up = rng.normal(0.0, 1e-2, (out, rank, *(1,) * len(kernel)))  # [out, r(, 1, 1)]
        if tucker and math.prod(kernel) > 1:  # 3x3 convs only
            down1 = _quantize(rng.normal(0.0, 1 / math.sqrt(inp), (rank, inp, 1, 1)), dtype)
            mid = _quantize(rng.normal(0.0, 1 / math.sqrt(rank * math.prod(kernel)), (rank, rank, *kernel)), dtype)
            lora.tucker[name] = (down1, mid)
            down = _tucker_down(down1, mid)  # [r, in, kh, kw]
        else:
            down = rng.normal(0.0, 1 / math.sqrt(inp * math.prod(kernel)), (rank, inp, *kernel))
        lora.modules[name] = (_quantize(down, dtype), _quantize(up, dtype), alpha)
    return lora


def _split(dim: int, factor: int) -> tuple[int, int]:
    """``(m, n)`` with ``m * n == dim``, ``m`` the largest divisor <= sqrt(dim) (and <= factor if > 0)."""
    cap = math.isqrt(dim) if factor <= 0 else min(math.isqrt(dim), factor)
    m = max(k for k in range(1, cap + 1) if dim % k == 0)
    return m, dim // m


def _lokr_as_lora(w1: np.ndarray, w2_a: np.ndarray, w2_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Low-rank factors of ``kron(w1, w2_a @ w2_b)``: ``(down [b*k, b*d], up [a*c, b*k])``."""
    w1, w2_a, w2_b = (x.astype(np.float64) for x in (w1, w2_a, w2_b))
    eye = np.eye(w1.shape[1])
    return np.kron(eye, w2_b), np.kron(w1, w2_a)  # kron(w1, A) @ kron(I, B) = kron(w1, A @ B)


def _tucker_down(down1: np.ndarray, mid: np.ndarray) -> np.ndarray:
    """``[r, in, kh, kw]`` down factor of a Tucker LoCon: ``mid`` applied after the 1x1 ``down1``."""
    return np.einsum("abhw,bi->aihw", mid.astype(np.float64), down1[:, :, 0, 0].astype(np.float64))


def _quantize(x: np.ndarray, dtype: str) -> np.ndarray:
    """``x`` as the numpy array a ``dtype`` file would hold (BF16: float32 on the bfloat16 grid)."""
    if dtype == "BF16":
        return round_to_bf16(x)
    return np.asarray(x, dtype={"F16": np.float16, "F32": np.float32, "F64": np.float64}[dtype])


def delta_weights(lora: SyntheticLora) -> dict[str, np.ndarray]:
    """Ground-truth update per module, float64 in the module's weight shape.

    ``dW = alpha / r * up @ down`` (convs flattened to ``(out, in*kh*kw)`` and back); Tucker and LoKr
    modules are computed from their native factors, which is exact for the files written from them.
    """
    deltas = {}
    for name, (down, up, alpha) in lora.modules.items():
        r = down.shape[0]
        if name in lora.lokr:
            w1, w2_a, w2_b = (x.astype(np.float64) for x in lora.lokr[name])
            mat = np.kron(w1, w2_a @ w2_b)  # [out, in]
        else:
            full_down = _tucker_down(*lora.tucker[name]) if name in lora.tucker else down
            mat = up.reshape(up.shape[0], r).astype(np.float64) @ full_down.reshape(r, -1).astype(np.float64)
        deltas[name] = (alpha / r * mat).reshape((up.shape[0],) + down.shape[1:])
    return deltas


def refactorize(lora: SyntheticLora, seed: int) -> SyntheticLora:
    """Same updates through other factors: ``up @ G^-1`` and ``G @ down`` for a random invertible G.

    Tucker cores become ``G @ mid``; LoKr modules get ``w2_a @ G^-1`` and ``G @ w2_b``.
    Exact in F64, up to rounding of the lora's dtype otherwise.
    """
    rng = np.random.default_rng(seed)
    new = SyntheticLora(family=lora.family, modules={}, dtype=lora.dtype)
    for name, (down, up, alpha) in lora.modules.items():
        if name in lora.lokr:
            w1, w2_a, w2_b = lora.lokr[name]
            g = _random_invertible(rng, w2_b.shape[0])
            factors = (w1, _quantize(w2_a @ np.linalg.inv(g), lora.dtype), _quantize(g @ w2_b, lora.dtype))
            new.lokr[name] = factors
            new_down, new_up = _lokr_as_lora(*factors)
        else:
            r = down.shape[0]
            g = _random_invertible(rng, r)
            new_up = (up.reshape(up.shape[0], r) @ np.linalg.inv(g)).reshape(up.shape)
            new_down = np.tensordot(g, down.astype(np.float64), axes=1)  # [r, in(, kh, kw)]
            if name in lora.tucker:
                down1, mid = lora.tucker[name]
                new.tucker[name] = (down1, _quantize(np.tensordot(g, mid.astype(np.float64), axes=1), lora.dtype))
        new.modules[name] = (_quantize(new_down, lora.dtype), _quantize(new_up, lora.dtype), alpha)
    return new


def _random_invertible(rng: np.random.Generator, r: int) -> np.ndarray:
    """A random ``[r, r]`` matrix with condition number <= 4 (orthogonal times a diagonal)."""
    q, _ = np.linalg.qr(rng.normal(size=(r, r)))
    return q * rng.uniform(0.5, 2.0, r)


# --------------------------------------------------------------------------- kohya / LyCORIS layouts

_SGM_RESNET = {"conv1": "in_layers.2", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
               "time_emb_proj": "emb_layers.1"}
_MID_SLOTS = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}


def _sgm_path(path: str) -> str:
    """SDXL diffusers UNet path -> kohya's SGM (Stability) path, e.g. down_blocks.1.attentions.0 -> input_blocks.4.1."""
    per_level = _LAYERS_PER_BLOCK + 1
    parts = path.split(".")
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), parts[3:]
        head = f"middle_block.{_MID_SLOTS[kind, index]}"
    else:
        level, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        if kind == "downsamplers":
            head, rest = f"input_blocks.{per_level * (level + 1)}.0", ["op"]
        elif kind == "upsamplers":
            has_attention = _UNETS["sdxl"].attention[::-1][level]
            head = f"output_blocks.{per_level * level + _LAYERS_PER_BLOCK}.{2 if has_attention else 1}"
        elif parts[0] == "down_blocks":
            head = f"input_blocks.{1 + per_level * level + index}.{0 if kind == 'resnets' else 1}"
        else:
            head = f"output_blocks.{per_level * level + index}.{0 if kind == 'resnets' else 1}"
    if kind == "resnets":
        rest = [_SGM_RESNET[rest[0]]]
    return ".".join([head, *rest])


def kohya_module_name(family: str, name: str) -> str:
    """kohya/LyCORIS module name: ``unet.down_blocks.0...to_q`` -> ``lora_unet_down_blocks_0_..._to_q``."""
    component, path = name.split(".", 1)
    if component in ("unet", "transformer"):
        prefix = "lora_unet"
        if family == "sdxl":
            path = _sgm_path(path)
    elif family in ("sdxl", "flux"):
        prefix = {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}[component]
    else:
        prefix = "lora_te"
    return f"{prefix}_{path.replace('.', '_')}"


def _alpha(value: float, like: np.ndarray) -> np.ndarray:
    return np.array(value, dtype=like.dtype)  # 0-d, as kohya's register_buffer("alpha", tensor(alpha))


def as_kohya(lora: SyntheticLora) -> dict[str, np.ndarray]:
    """kohya sd-scripts keys: ``<name>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``."""
    tensors = {}
    for name, (down, up, alpha) in lora.modules.items():
        base = kohya_module_name(lora.family, name)
        tensors[f"{base}.lora_down.weight"] = down
        tensors[f"{base}.lora_up.weight"] = up
        tensors[f"{base}.alpha"] = _alpha(alpha, down)
    return tensors


def as_locon(lora: SyntheticLora) -> dict[str, np.ndarray]:
    """LyCORIS LoCon: kohya keys; Tucker conv modules get a 1x1 ``lora_down`` plus ``.lora_mid.weight``."""
    tensors = as_kohya(lora)
    for name, (down1, mid) in lora.tucker.items():
        base = kohya_module_name(lora.family, name)
        tensors[f"{base}.lora_down.weight"] = down1  # [r, in, 1, 1]
        tensors[f"{base}.lora_mid.weight"] = mid  # [r, r, kh, kw]
    return tensors


def as_dora(lora: SyntheticLora, wd_on_output: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """LyCORIS DoRA: kohya keys plus a positive ``.dora_scale`` (the base weight's norms).

    Shape ``[1, in(, 1, 1)]`` by default, ``[out, 1(, 1, 1)]`` with ``wd_on_output``. The magnitude
    needs the base weight to apply, so ``delta_weights`` covers only the low-rank direction update.
    """
    rng = np.random.default_rng(seed)
    tensors = as_kohya(lora)
    for name, (down, up, _) in lora.modules.items():
        ones = (1,) * (down.ndim - 2)
        shape = (up.shape[0], 1, *ones) if wd_on_output else (1, down.shape[1], *ones)
        scale = _quantize(rng.uniform(0.5, 2.0, shape), lora.dtype)
        tensors[f"{kohya_module_name(lora.family, name)}.dora_scale"] = scale
    return tensors


def as_loha(lora: SyntheticLora, seed: int = 0) -> dict[str, np.ndarray]:
    """LyCORIS LoHa with the same updates: ``(w1_a @ w1_b) * (w2_a @ w2_b) * alpha / r``.

    ``w1 = up @ down / (u v^T)`` and ``w2 = u v^T`` for random positive vectors u, v; convs use the
    flattened ``[r, in*kh*kw]`` factors as LyCORIS does without Tucker.
    """
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, (down, up, alpha) in lora.modules.items():
        r, out = down.shape[0], up.shape[0]
        down2 = down.reshape(r, -1)  # [r, in*kh*kw]
        u = rng.uniform(0.5, 1.5, out)
        v = rng.uniform(0.5, 1.5, down2.shape[1])
        base = kohya_module_name(lora.family, name)
        tensors[f"{base}.hada_w1_a"] = _quantize(up.reshape(out, r) / u[:, None], lora.dtype)  # [out, r]
        tensors[f"{base}.hada_w1_b"] = _quantize(down2 / v[None, :], lora.dtype)  # [r, in*k]
        tensors[f"{base}.hada_w2_a"] = _quantize(np.repeat(u[:, None] / r, r, axis=1), lora.dtype)  # [out, r]
        tensors[f"{base}.hada_w2_b"] = _quantize(np.repeat(v[None, :], r, axis=0), lora.dtype)  # [r, in*k]
        tensors[f"{base}.alpha"] = _alpha(alpha, down)
    return tensors


def as_lokr(lora: SyntheticLora, full_w2: bool = False) -> dict[str, np.ndarray]:
    """LyCORIS LoKr: ``lokr_w1`` and ``lokr_w2_a``/``lokr_w2_b`` (update ``kron(w1, w2_a @ w2_b) * alpha / k``).

    With ``full_w2`` the scale is folded into a full ``lokr_w2`` and ``alpha`` is set to ``k``; readers
    (ComfyUI, LyCORIS) use scale 1 when neither w1 nor w2 is factored. Needs ``make_lora(lokr_factor=...)``.
    """
    if not lora.lokr:
        raise ValueError("this LoRA has no LoKr factors; make it with make_lora(..., lokr_factor=-1)")
    tensors = {}
    for name, (w1, w2_a, w2_b) in lora.lokr.items():
        down, _, alpha_eq = lora.modules[name]
        k = w2_b.shape[0]
        alpha = alpha_eq * k / down.shape[0]  # native LoKr alpha
        base = kohya_module_name(lora.family, name)
        tensors[f"{base}.lokr_w1"] = w1  # [a, b]
        if full_w2:
            w2 = w2_a.astype(np.float64) @ w2_b.astype(np.float64) * (alpha / k)
            tensors[f"{base}.lokr_w2"] = _quantize(w2, lora.dtype)  # [c, d]
            tensors[f"{base}.alpha"] = _alpha(k, w1)
        else:
            tensors[f"{base}.lokr_w2_a"] = w2_a  # [c, k]
            tensors[f"{base}.lokr_w2_b"] = w2_b  # [k, d]
            tensors[f"{base}.alpha"] = _alpha(alpha, w1)
    return tensors


# --------------------------------------------------------------------------- diffusers / PEFT layouts


def _target_name(path: str) -> str:
    """The PEFT ``target_modules`` entry for a path: its leaf, with the parent if the leaf is an index."""
    parts = path.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]


def as_peft(
    lora: SyntheticLora, rslora: bool = False, component_prefix: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """diffusers/PEFT keys ``unet.<path>.lora_A.weight`` / ``.lora_B.weight`` and their metadata.

    Metadata is what diffusers writes: ``{"format": "pt", "lora_adapter_metadata": json}`` whose
    JSON holds each component's LoraConfig with prefixed keys (``"unet.r"``, ``"unet.lora_alpha"``,
    ``"unet.use_rslora"``, ...). ``component_prefix=False`` gives ``ModelMixin.save_lora_adapter``
    output instead: one component, no prefix on tensor names or config keys. With ``rslora`` the
    stored ``lora_alpha`` is ``alpha / sqrt(r)`` so that ``lora_alpha / sqrt(r)`` keeps the update.
    """
    tensors: dict[str, np.ndarray] = {}
    configs: dict[str, dict] = {}
    for name, (down, up, alpha) in lora.modules.items():
        component, path = name.split(".", 1)
        key = name if component_prefix else path
        r = down.shape[0]
        lora_alpha = alpha / math.sqrt(r) if rslora else alpha
        tensors[f"{key}.lora_A.weight"] = down
        tensors[f"{key}.lora_B.weight"] = up
        config = configs.setdefault(component, {
            "r": r, "lora_alpha": lora_alpha, "use_rslora": rslora,
            "use_dora": False, "peft_type": "LORA", "bias": "none", "lora_dropout": 0.0,
            "init_lora_weights": "gaussian", "fan_in_fan_out": False, "rank_pattern": {},
            "alpha_pattern": {}, "target_modules": [],
        })
        if (config["r"], config["lora_alpha"]) != (r, lora_alpha):
            raise ValueError(f"{component}: modules with different rank or alpha are not supported")
        if _target_name(path) not in config["target_modules"]:
            config["target_modules"].append(_target_name(path))
    if component_prefix:
        flat = {f"{c}.{k}": v for c, config in configs.items() for k, v in config.items()}
    elif len(configs) == 1:
        (flat,) = configs.values()
    else:
        raise ValueError("component_prefix=False needs a LoRA on a single component")
    return tensors, {"format": "pt", "lora_adapter_metadata": json.dumps(flat, indent=2, sort_keys=True)}


_PROCESSOR_UNET = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora"}
_PROCESSOR_TEXT = {"q_proj": "to_q_lora", "k_proj": "to_k_lora", "v_proj": "to_v_lora", "out_proj": "to_out_lora"}


def _old_diffusers_base(name: str, style: str) -> str:
    unet = name.startswith("unet.")
    if style == "processor":
        for leaf, new in (_PROCESSOR_UNET if unet else _PROCESSOR_TEXT).items():
            if name.endswith("." + leaf):
                parent = name[: -len(leaf) - 1]
                return f"{parent}.processor.{new}" if unet else f"{parent}.{new}"
    return f"{name}.lora" if unet else f"{name}.lora_linear_layer"


def as_old_diffusers(lora: SyntheticLora, style: str = "processor") -> dict[str, np.ndarray]:
    """Pre-PEFT diffusers keys, ``.down.weight`` / ``.up.weight``, with ``alpha / r`` folded into up.

    ``style="processor"`` (diffusers <= 0.19 attention processors): ``...attn1.processor.to_q_lora``,
    text encoder ``...self_attn.to_q_lora``; other modules fall back to the ``"lora"`` style
    (diffusers 0.20-0.24): ``...attn1.to_q.lora`` and text encoder ``...q_proj.lora_linear_layer``.
    These files carry no alpha, so loaders use scale 1.
    """
    if style not in ("processor", "lora"):
        raise ValueError(f"unknown style {style!r}; expected 'processor' or 'lora'")
    if lora.family == "flux":
        raise ValueError("old diffusers LoRA formats predate Flux")
    tensors = {}
    for name, (down, up, alpha) in lora.modules.items():
        base = _old_diffusers_base(name, style)
        tensors[f"{base}.down.weight"] = down
        tensors[f"{base}.up.weight"] = _quantize(up.astype(np.float64) * (alpha / down.shape[0]), lora.dtype)
    return tensors


# --------------------------------------------------------------------------- safetensors writer

_ST_CODES = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32", np.dtype(np.float64): "F64"}
_LE_TYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    """float -> bfloat16 bit patterns (uint16), round-to-nearest-even on the float32 bits; NaN stays NaN."""
    x = np.asarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16
    quiet_nan = (bits >> 16) | np.uint32(0x0040)
    return np.where(np.isnan(x), quiet_nan, rounded).astype(np.uint16)


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to bfloat16, returned as float32."""
    return (_bf16_bits(x).astype(np.uint32) << 16).view(np.float32)


def _tensor_bytes(array: np.ndarray, dtype: str | None) -> tuple[str, bytes]:
    code = dtype or _ST_CODES.get(np.asarray(array).dtype)
    if code == "BF16":
        return code, _bf16_bits(array).astype("<u2").tobytes()
    if code not in _LE_TYPES:
        raise ValueError(f"unsupported dtype {dtype or np.asarray(array).dtype}; expected one of {DTYPES}")
    return code, np.ascontiguousarray(array, dtype=_LE_TYPES[code]).tobytes()


def encode_safetensors(
    tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None, dtype: str | None = None
) -> bytes:
    """Serialize to safetensors: 8-byte LE header length, JSON header padded with spaces to a multiple
    of 8, then the tensor data back to back.

    ``dtype`` (F16, BF16, F32, F64) converts every tensor; ``None`` keeps each array's own float dtype.
    Tensors are ordered by element size (largest first) then name, as the Rust writer does, so every
    tensor stays aligned. Metadata values are written as given (a valid file needs ``str`` values).
    """
    header: dict = {} if metadata is None else {"__metadata__": dict(metadata)}
    blobs, offset = [], 0
    encoded = {name: _tensor_bytes(array, dtype) for name, array in tensors.items()}
    itemsize = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
    for name in sorted(encoded, key=lambda n: (-itemsize[encoded[n][0]], n)):
        code, blob = encoded[name]
        header[name] = {"dtype": code, "shape": list(np.shape(tensors[name])),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


def save_synthetic(
    path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None,
    dtype: str | None = None,
) -> Path:
    """Write ``encode_safetensors(tensors, metadata, dtype)`` to ``path``."""
    path = Path(path)
    path.write_bytes(encode_safetensors(tensors, metadata, dtype))
    return path


# --------------------------------------------------------------------------- training metadata

_BASE_VERSIONS = {"sd15": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "flux": "flux1"}
_ARCHITECTURES = {"sd15": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-512",
                  "sdxl": "stable-diffusion-xl-v1-base", "flux": "flux-1-dev"}
_IMPLEMENTATIONS = {"sd15": "diffusers", "sd2": "diffusers",
                    "sdxl": "https://github.com/Stability-AI/generative-models",
                    "flux": "https://github.com/black-forest-labs/flux"}
_BASE_FILES = {"sd15": "v1-5-pruned.safetensors", "sd2": "v2-1_512-ema-pruned.safetensors",
               "sdxl": "sd_xl_base_1.0.safetensors", "flux": "flux1-dev.safetensors"}
_RESOLUTIONS = {"sd15": 512, "sd2": 512, "sdxl": 1024, "flux": 1024}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_text(text: dict[str, str], width: int = 32, height: int = 32) -> bytes:
    """A small RGB gradient PNG with one ``tEXt`` chunk per ``text`` entry (Latin-1 keys and values)."""
    x = np.arange(width, dtype=np.uint16) * 255 // max(width - 1, 1)
    y = np.arange(height, dtype=np.uint16) * 255 // max(height - 1, 1)
    pixels = np.zeros((height, width, 3), dtype=np.uint8)  # [h, w, rgb]
    pixels[..., 0] = x[None, :]
    pixels[..., 1] = y[:, None]
    pixels[..., 2] = 160
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)  # filter type 0 per scanline
    chunks = [_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))]
    chunks += [_png_chunk(b"tEXt", k.encode("latin-1") + b"\x00" + v.encode("latin-1")) for k, v in text.items()]
    chunks += [_png_chunk(b"IDAT", zlib.compress(rows, 9)), _png_chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def leaky_kohya_metadata(
    name: str = "jane doe", trigger: str = "sks", with_cover_image: bool = True,
    family: str = "sd15", rank: int = 4, alpha: float | None = None,
) -> dict[str, str]:
    """kohya sd-scripts training metadata that leaks the subject: name, trigger, folders, paths, images.

    Mirrors ``train_network.py``: every value is ``str()``-ed, JSON for nested values. It combines
    the DreamBooth-folder keys (``ss_dataset_dirs``, ``ss_reg_dataset_dirs``) with the dataset-config
    key ``ss_datasets`` so that one file carries every leak. ``ss_sd_model_name`` is an absolute path
    as older kohya versions wrote it. Cover images (``ssmd_cover_images``, ``modelspec.thumbnail``)
    are PNGs whose ``parameters`` text chunk holds an AUTOMATIC1111-style prompt naming the trigger.
    """
    _check_family(family)
    user = name.split()[0].lower()
    output_name = name.replace(" ", "_") + "_v1"
    class_tokens = f"{trigger} woman"
    train_dir, reg_dir = f"10_{name} woman", "1_woman"
    reso = _RESOLUTIONS[family]
    tag_frequency = {train_dir: {class_tokens: 20, "smiling": 4, "portrait": 12, name: 3}}
    subset = {"img_count": 20, "num_repeats": 10, "color_aug": False, "flip_aug": False, "random_crop": False,
              "shuffle_caption": False, "keep_tokens": 0, "image_dir": train_dir, "class_tokens": class_tokens,
              "is_reg": False}
    reg_subset = {**subset, "img_count": 200, "num_repeats": 1, "image_dir": reg_dir, "class_tokens": "woman",
                  "is_reg": True}
    datasets = [{"is_dreambooth": True, "batch_size_per_device": 2, "num_train_images": 400,
                 "num_reg_images": 200, "resolution": [reso, reso], "enable_bucket": True,
                 "min_bucket_reso": 256, "max_bucket_reso": 2 * reso, "tag_frequency": tag_frequency,
                 "bucket_info": None, "subsets": [subset, reg_subset]}]
    metadata = {
        "ss_session_id": "1843752911",
        "ss_training_started_at": "1700000000.0",
        "ss_training_finished_at": "1700003600.0",
        "ss_output_name": output_name,
        "ss_training_comment": f"photos of {name} from my phone, trigger word {trigger}",
        "ss_sd_model_name": f"/home/{user}/models/{_BASE_FILES[family]}",
        "ss_vae_name": f"/home/{user}/models/vae-ft-mse-840000-ema-pruned.safetensors",
        "ss_base_model_version": _BASE_VERSIONS[family],
        "ss_v2": str(family == "sd2"),
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(rank if alpha is None else alpha)),
        "ss_network_args": json.dumps({"rank_dropout": "0.1"}),
        "ss_learning_rate": "0.0001",
        "ss_unet_lr": "0.0001",
        "ss_text_encoder_lr": "5e-05",
        "ss_num_train_images": "400",
        "ss_num_reg_images": "200",
        "ss_num_epochs": "10",
        "ss_epoch": "10",
        "ss_steps": "2000",
        "ss_max_train_steps": "2000",
        "ss_resolution": f"({reso}, {reso})",
        "ss_mixed_precision": "fp16",
        "ss_seed": "42",
        "ss_clip_skip": "None",
        "ss_tag_frequency": json.dumps(tag_frequency),
        "ss_dataset_dirs": json.dumps({train_dir: {"n_repeats": 10, "img_count": 20}}),
        "ss_reg_dataset_dirs": json.dumps({reg_dir: {"n_repeats": 1, "img_count": 200}}),
        "ss_datasets": json.dumps(datasets),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{_ARCHITECTURES[family]}/lora",
        "modelspec.implementation": _IMPLEMENTATIONS[family],
        "modelspec.title": output_name,
        "modelspec.author": name.title(),
        "modelspec.description": f"LoRA of {name}, trained on 20 photos. Prompt with '{class_tokens}'.",
        "modelspec.trigger_phrase": class_tokens,
        "modelspec.date": "2023-11-14T22:13:20",
        "modelspec.resolution": f"{reso}x{reso}",
        "ssmd_display_name": name.title(),
        "ssmd_keywords": class_tokens,
    }
    if family != "flux":
        metadata["modelspec.prediction_type"] = "epsilon"
    if with_cover_image:
        parameters = (
            f"photo of {class_tokens}, {name}, smiling, portrait, <lora:{output_name}:0.8>\n"
            "Negative prompt: blurry, lowres\n"
            f"Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234567, Size: {reso}x{reso}, "
            f"Model: {Path(_BASE_FILES[family]).stem}"
        )
        cover = base64.b64encode(png_with_text({"parameters": parameters})).decode("ascii")
        metadata["ssmd_cover_images"] = json.dumps([cover])
        metadata["modelspec.thumbnail"] = f"data:image/png;base64,{cover}"
    return metadata


def clean_metadata(family: str = "sd15", rank: int = 4, alpha: float | None = None) -> dict[str, str]:
    """Only harmless training facts: network size, base model, ModelSpec architecture."""
    _check_family(family)
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(rank if alpha is None else alpha)),
        "ss_base_model_version": _BASE_VERSIONS[family],
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{_ARCHITECTURES[family]}/lora",
    }


def write_static_samples(out: str | Path) -> list[Path]:
    """The synthetic real-world-layout samples shipped in ``weights_samples/`` (fixed seeds, byte-identical):

    ``sd15_kohya_leaky`` (kohya SD1.5, F16, leaky training metadata with a cover image),
    ``sd15_peft_clean`` (diffusers/PEFT SD1.5, only the metadata diffusers writes) and
    ``sdxl_kohya`` (kohya SDXL with SGM block names, BF16, an absolute base-model path).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sd15 = make_lora("sd15", rank=4, alpha=1, max_modules=48, seed=1, dtype="F16")
    leaky = leaky_kohya_metadata(name="jane doe", trigger="sks", with_cover_image=True, rank=4, alpha=1)
    paths = [save_synthetic(out / "sd15_kohya_leaky.safetensors", as_kohya(sd15), leaky)]
    peft = make_lora("sd15", rank=4, max_modules=32, seed=2, dtype="F16")
    paths.append(save_synthetic(out / "sd15_peft_clean.safetensors", *as_peft(peft)))
    sdxl = make_lora("sdxl", rank=8, alpha=4, max_modules=16, seed=3, dtype="BF16")
    sdxl_metadata = {**clean_metadata("sdxl", rank=8, alpha=4), "ss_output_name": "watercolor_style_xl",
                     "ss_sd_model_name": "/home/jane/models/sd_xl_base_1.0.safetensors"}
    paths.append(save_synthetic(out / "sdxl_kohya.safetensors", as_kohya(sdxl), sdxl_metadata, dtype="BF16"))
    return paths
