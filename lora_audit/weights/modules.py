"""Grouping a file's tensors into adapted modules, and each module's weight delta dW.

Whatever the layout, a module ends up as a :class:`LoraModule` with a canonical name, its kind
(lora, locon, dora, loha, lokr), rank, alpha and scale, and :func:`delta_weight` gives
dW = scale * B @ A (or the LoHa / LoKr / Tucker equivalent) as a numpy array.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from lora_audit.weights.keys import parse_key
from lora_audit.weights.safetensors_file import FLOAT_DTYPES, TensorInfo

Reader = Callable[[str], np.ndarray]


@dataclass
class LoraModule:
    """One adapted module, in canonical form."""

    name: str  # e.g. unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q
    kind: str  # lora | locon | dora | loha | lokr
    layout: str  # kohya | lycoris | peft | diffusers-old
    keys: dict[str, str]  # role -> tensor name in the file
    rank: int
    alpha: float
    scale: float
    shape: tuple[int, ...]  # shape of dW: (out, in) or (out, in, kh, kw)


@dataclass
class ModuleProblems:
    orphaned: dict[str, list[str]] = field(default_factory=dict)  # module -> roles present
    mismatched: dict[str, str] = field(default_factory=dict)  # module -> shapes description
    unrecognised: list[str] = field(default_factory=list)  # tensor names of no known layout


def group_modules(tensors: dict[str, TensorInfo], metadata: dict[str, str],
                  read: Reader) -> tuple[list[LoraModule], ModuleProblems]:
    """Group tensors by canonical module; ``read`` loads a tensor (used for kohya alpha scalars)."""
    roles: dict[str, dict[str, str]] = defaultdict(dict)
    layouts: dict[str, set[str]] = defaultdict(set)
    problems = ModuleProblems()
    for key in tensors:
        parsed = parse_key(key)
        if parsed is None:
            problems.unrecognised.append(key)
            continue
        roles[parsed.module][parsed.role] = key
        if parsed.role != "alpha":
            layouts[parsed.module].add(parsed.layout)
    peft_config = _PeftAlphas(metadata)
    modules = []
    for name, keys in roles.items():
        found = layouts[name]
        layout = "lycoris" if "lycoris" in found else min(found, default="kohya")
        module = _build_module(name, keys, layout, tensors, read, peft_config, problems)
        if module is not None:
            modules.append(module)
    return modules, problems


def file_layout(modules: list[LoraModule]) -> str:
    """The layout that most of the file's modules use ("unknown" when there are none)."""
    counts = Counter(m.layout for m in modules)
    return counts.most_common(1)[0][0] if counts else "unknown"


def _build_module(name, keys, layout, tensors, read, peft_config, problems) -> LoraModule | None:
    roles = set(keys) - {"alpha", "dora_scale"}
    if not roles:
        problems.orphaned[name] = sorted(keys)
        return None
    if any(r.startswith("hada_") for r in roles):
        return _build_loha(name, keys, layout, tensors, read, problems)
    if any(r.startswith("lokr_") for r in roles):
        return _build_lokr(name, keys, layout, tensors, read, problems)
    if not {"down", "up"} <= roles:
        problems.orphaned[name] = sorted(keys)
        return None
    down, up = tensors[keys["down"]], tensors[keys["up"]]
    rank = down.shape[0] if down.shape else 0
    if len(down.shape) < 2 or len(up.shape) < 2 or up.shape[1] != rank or (
            "mid" in keys and tensors[keys["mid"]].shape[:2] != (rank, rank)):
        problems.mismatched[name] = _shapes(keys, tensors)
        return None
    if layout == "peft":
        alpha, scale = peft_config.alpha_and_scale(name, rank)
    else:
        alpha = _read_alpha(keys, read, rank)
        scale = alpha / rank
    if "mid" in keys:  # Tucker: up [out, r, 1, 1], mid [r, r, kh, kw], down [r, in, 1, 1]
        shape = (up.shape[0], down.shape[1], *tensors[keys["mid"]].shape[2:])
    else:  # up [out, r(, 1, 1)], down [r, in(, kh, kw)]
        shape = (up.shape[0], *down.shape[1:])
    kind = "dora" if "dora_scale" in keys else "locon" if len(shape) == 4 else "lora"
    return LoraModule(name, kind, layout, keys, rank, alpha, scale, shape)


def _build_loha(name, keys, layout, tensors, read, problems) -> LoraModule | None:
    needed = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}
    if not needed <= set(keys):
        problems.orphaned[name] = sorted(keys)
        return None
    w1a, w1b = tensors[keys["hada_w1_a"]], tensors[keys["hada_w1_b"]]
    w2a, w2b = tensors[keys["hada_w2_a"]], tensors[keys["hada_w2_b"]]
    rank = w1b.shape[0]
    if w1a.shape[-1] != rank or w2a.shape[-1] != w2b.shape[0] or w1a.shape[0] != w2a.shape[0]:
        problems.mismatched[name] = _shapes(keys, tensors)
        return None
    alpha = _read_alpha(keys, read, rank)
    shape = (w1a.shape[0], *w1b.shape[1:]) if "hada_t1" not in keys else (w1a.shape[0],)
    return LoraModule(name, "loha", "lycoris", keys, rank, alpha, alpha / rank, shape)


def _build_lokr(name, keys, layout, tensors, read, problems) -> LoraModule | None:
    has_w1 = "lokr_w1" in keys or {"lokr_w1_a", "lokr_w1_b"} <= set(keys)
    has_w2 = "lokr_w2" in keys or {"lokr_w2_a", "lokr_w2_b"} <= set(keys)
    if not (has_w1 and has_w2):
        problems.orphaned[name] = sorted(keys)
        return None
    factor = keys.get("lokr_w2_b") or keys.get("lokr_w1_b")
    rank = tensors[factor].shape[0] if factor else 0
    alpha = _read_alpha(keys, read, rank) if rank else 0.0
    w1 = _lokr_shape(tensors, keys, "1")
    w2 = _lokr_shape(tensors, keys, "2")
    shape = (w1[0] * w2[0], w1[1] * w2[1], *w2[2:])
    return LoraModule(name, "lokr", "lycoris", keys, rank, alpha, alpha / rank if rank else 1.0, shape)


def _lokr_shape(tensors, keys, i: str) -> tuple[int, ...]:
    if f"lokr_w{i}" in keys:
        return tensors[keys[f"lokr_w{i}"]].shape
    a, b = tensors[keys[f"lokr_w{i}_a"]].shape, tensors[keys[f"lokr_w{i}_b"]].shape
    return (a[0], *b[1:])


def _read_alpha(keys: dict[str, str], read: Reader, rank: int) -> float:
    """kohya alpha: a scalar tensor; missing or 0 means alpha = rank (scale 1)."""
    if "alpha" not in keys:
        return float(rank)
    try:
        value = float(np.asarray(read(keys["alpha"]), dtype=np.float64).reshape(-1)[0])
    except (ValueError, IndexError):
        return float(rank)
    return value if value and math.isfinite(value) else float(rank)


def _shapes(keys: dict[str, str], tensors: dict[str, TensorInfo]) -> str:
    return ", ".join(f"{role} {list(tensors[k].shape)}" for role, k in sorted(keys.items()))


class _PeftAlphas:
    """lora_alpha / r / rsLoRA from diffusers' ``lora_adapter_metadata`` (flat or per-component keys)."""

    def __init__(self, metadata: dict[str, str]):
        try:
            config = json.loads(metadata.get("lora_adapter_metadata", "{}"))
        except (json.JSONDecodeError, TypeError):
            config = {}
        self.config = config if isinstance(config, dict) else {}

    def _get(self, component: str, key: str):
        return self.config.get(f"{component}.{key}", self.config.get(key))

    def alpha_and_scale(self, module: str, rank: int) -> tuple[float, float]:
        component, _, path = module.partition(".")
        alpha = self._get(component, "lora_alpha")
        pattern = self._get(component, "alpha_pattern") or {}
        for suffix, value in pattern.items() if isinstance(pattern, dict) else ():
            if re.fullmatch(rf"(.*\.)?{suffix}", path):
                alpha = value
        try:
            alpha = float(alpha) if alpha is not None else float(rank)
        except (TypeError, ValueError):
            alpha = float(rank)
        root = math.sqrt(rank) if self._get(component, "use_rslora") is True else rank
        return alpha, alpha / root


def delta_weight(module: LoraModule, read: Reader) -> np.ndarray:
    """dW of ``module`` in float32/64, shaped ``module.shape``."""
    k = module.keys
    if module.kind == "loha":
        if "hada_t1" in k:
            raise ValueError(f"{module.name}: Tucker LoHa deltas are not computed")
        w1 = read(k["hada_w1_a"]) @ read(k["hada_w1_b"]).reshape(module.rank, -1)
        w2 = read(k["hada_w2_a"]) @ read(k["hada_w2_b"]).reshape(read(k["hada_w2_b"]).shape[0], -1)
        return (module.scale * w1 * w2).reshape(module.shape)
    if module.kind == "lokr":
        w1 = _lokr_factor(k, "1", read)
        w2 = _lokr_factor(k, "2", read)
        if w2.ndim == 4:
            w1 = w1.reshape(*w1.shape[:2], 1, 1)
        return (module.scale * np.kron(w1, w2)).reshape(module.shape)
    up = read(k["up"]).reshape(module.shape[0], module.rank)  # [out, r]
    down = read(k["down"])
    if "mid" in k:  # Tucker core [r, r, kh, kw]
        mid = read(k["mid"])
        dw = np.einsum("oa,abhw,bi->oihw", up, mid, down.reshape(module.rank, -1), optimize=True)
        return module.scale * dw
    return (module.scale * (up @ down.reshape(module.rank, -1))).reshape(module.shape)


def _lokr_factor(k: dict[str, str], i: str, read: Reader) -> np.ndarray:
    if f"lokr_w{i}" in k:
        return read(k[f"lokr_w{i}"])
    a, b = read(k[f"lokr_w{i}_a"]), read(k[f"lokr_w{i}_b"])
    return (a @ b.reshape(b.shape[0], -1)).reshape(a.shape[0], *b.shape[1:])


def has_float_tensors(module: LoraModule, tensors: dict[str, TensorInfo]) -> bool:
    return all(tensors[key].dtype in FLOAT_DTYPES for key in module.keys.values())
