"""Grouping a file's tensors into adapted modules, and each module's weight delta dW.

Whatever the layout, a module ends up as a :class:`LoraModule` with a canonical name, its kind
(lora, locon, dora, loha, lokr), rank, alpha and scale, and :func:`delta_weight` gives
dW = scale * B @ A (or the LoHa / LoKr / Tucker equivalent) as a numpy array.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from lora_audit.weights.json_text import parse_json
from lora_audit.weights.keys import parse_key
from lora_audit.weights.loda import LAYOUT as LODA, linear_scale
from lora_audit.weights.safetensors_file import FLOAT_DTYPES, TensorInfo

Reader = Callable[[str], np.ndarray]  # a tensor as a float array (SafetensorsFile.read)
Scalar = Callable[[str], float]  # a tensor's first element (SafetensorsFile.scalar)
_KINDS = ("hada_", "lokr_")  # role prefixes of LoHa and LoKr factors; a module has one kind of factors


@dataclass
class LoraModule:
    """One adapted module, in canonical form."""

    name: str  # e.g. unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q
    kind: str  # lora | locon | dora | loha | lokr | loda
    layout: str  # kohya | lycoris | peft | diffusers-old | loda
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
    conflicting: dict[str, str] = field(default_factory=dict)  # module -> its layouts and roles (not merged)
    bad_alpha: dict[str, str] = field(default_factory=dict)  # module -> why its alpha was unusable


def group_modules(tensors: dict[str, TensorInfo], metadata: dict[str, str],
                  read: Scalar) -> tuple[list[LoraModule], ModuleProblems]:
    """Group tensors by canonical module; ``read`` gives a tensor's first element (alpha scalars)."""
    names = tuple(tensors)
    grouping = _grouping(names) if len(names) <= _CACHED_NAMES else _grouping.__wrapped__(names)
    problems = ModuleProblems(conflicting=dict(grouping.conflicting), unrecognised=list(grouping.unrecognised))
    peft_config = _PeftAlphas(metadata)
    modules = []
    for name, keys, layout in grouping.candidates:
        module = _build_module(name, dict(keys), layout, tensors, read, peft_config, metadata, problems)
        if module is not None:
            modules.append(module)
    return modules, problems


@dataclass(frozen=True)
class _Grouping:
    """How a file's tensor names group into modules: the same for every file of one architecture and
    adapter, so a batch works it out once per kind of file (:func:`_grouping`)."""

    candidates: list[tuple[str, dict[str, str], str]]  # (module, role -> tensor name, layout), in file order
    conflicting: dict[str, str]  # module -> its layouts and roles (factors that must not be merged)
    unrecognised: list[str]  # tensor names of no known layout


_CACHED_NAMES = 10_000  # a file with more tensors (a crafted header) is grouped, not kept: 16 of those
# would hold gigabytes in a worker that lives for the whole batch


@functools.lru_cache(maxsize=16)
def _grouping(names: tuple[str, ...]) -> _Grouping:
    roles: dict[str, dict[str, str]] = {}  # module -> role -> tensor name
    by_layout: dict[str, dict[str, set[str]]] = {}  # module -> layout -> roles
    clashes: set[str] = set()  # modules with one role given by two tensors
    unrecognised = []
    for key in names:
        parsed = parse_key(key)
        if parsed is None:
            unrecognised.append(key)
            continue
        module, layout, role = parsed.module, parsed.layout, parsed.role
        if module not in roles:
            roles[module], by_layout[module] = {}, {}
        elif role in roles[module]:
            clashes.add(module)
        roles[module][role] = key
        by_layout[module].setdefault(layout, set()).add(role)
    candidates, conflicting = [], {}
    for name, keys in roles.items():
        per_layout = by_layout[name]
        if name in clashes or (len(per_layout) > 1 or not keys.keys() <= _PAIR_ROLES) and _conflicting(keys, per_layout):
            conflicting[name] = "; ".join(  # e.g. a kohya and a PEFT pair: never merged
                f"{layout}: {', '.join(sorted(r))}" for layout, r in sorted(per_layout.items()))
            continue
        found = [layout for layout, found in per_layout.items() if found != {"alpha"}]  # alpha alone says nothing
        candidates.append((name, keys, "lycoris" if "lycoris" in found else min(found, default="kohya")))
    return _Grouping(candidates, conflicting, unrecognised)


_PAIR_ROLES = frozenset(("down", "up", "alpha"))


def _conflicting(keys: dict[str, str], per_layout: dict[str, set[str]]) -> bool:
    """Factors that must not be merged into one module: pairs of two layouts, or two kinds of factors."""
    pairs = [layout for layout, found in per_layout.items() if "down" in found or "up" in found]
    kinds = {"pair" if r in ("down", "up") else r[:5] for r in keys if r in ("down", "up") or r[:5] in _KINDS}
    return len(pairs) > 1 or len(kinds) > 1


def file_layout(modules: list[LoraModule]) -> str:
    """The layout that most of the file's modules use ("unknown" when there are none)."""
    counts = Counter(m.layout for m in modules)
    return counts.most_common(1)[0][0] if counts else "unknown"


def _build_module(name, keys, layout, tensors, read, peft_config, metadata, problems) -> LoraModule | None:
    roles = [r for r in keys if r != "alpha" and r != "dora_scale"]
    if not roles:
        problems.orphaned[name] = sorted(keys)
        return None
    if any(tensors[keys[r]].numel == 0 for r in roles):  # rank 0 or an empty dimension
        problems.mismatched[name] = _shapes(keys, tensors)
        return None
    if "down" not in keys or "up" not in keys:
        if any(r.startswith("hada_") for r in roles):
            return _build_loha(name, keys, tensors, read, problems)
        if any(r.startswith("lokr_") for r in roles):
            return _build_lokr(name, keys, tensors, read, problems)
        problems.orphaned[name] = sorted(keys)
        return None
    # up [out, r(, 1, 1)], down [r, in(, kh, kw)]; Tucker: down [r, in, 1, 1], mid [r, r, kh, kw]
    down, up = tensors[keys["down"]].shape, tensors[keys["up"]].shape
    mid = tensors[keys["mid"]].shape if "mid" in keys else None
    valid = len(down) >= 2 and len(up) >= 2 and up[1] == down[0] and _ones(up[2:])
    if valid and mid is not None:
        valid = len(mid) == len(down) >= 3 and mid[:2] == (down[0], down[0]) and _ones(down[2:])
    if not valid:
        problems.mismatched[name] = _shapes(keys, tensors)
        return None
    rank = down[0]
    if layout == LODA:  # non-linear: its first-order dW (weights/loda.py)
        alpha, scale, bad = linear_scale(metadata, rank)
    elif layout == "peft" and (peft_config.present or "alpha" not in keys):
        alpha, scale, bad = peft_config.alpha_and_scale(name, rank)
    else:  # kohya, or diffusers' network_alphas (PEFT names with .alpha tensors)
        alpha, bad = _read_alpha(keys, read, rank)
        scale = alpha / rank
    if bad:
        problems.bad_alpha[name] = bad
    shape = (up[0], down[1], *(mid or down)[2:])
    kind = "loda" if layout == LODA else "dora" if "dora_scale" in keys else "locon" if len(shape) == 4 else "lora"
    return LoraModule(name, kind, layout, keys, rank, alpha, scale, shape)


def _build_loha(name, keys, tensors, read, problems) -> LoraModule | None:
    """LoHa: (w1_a @ w1_b) * (w2_a @ w2_b), w*_a [out, r], w*_b [r, in(*kh*kw)]; Tucker (LyCORIS
    ``use_tucker``): w*_a [r, out], w*_b [r, in], t* [r, r, kh, kw]."""
    tucker = "hada_t1" in keys or "hada_t2" in keys
    needed = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} | ({"hada_t1", "hada_t2"} if tucker else set())
    if not needed <= set(keys):
        problems.orphaned[name] = sorted(keys)
        return None
    w1a, w1b, w2a, w2b = (tensors[keys[f"hada_w{i}"]].shape for i in ("1_a", "1_b", "2_a", "2_b"))
    if tucker:
        t1, t2 = tensors[keys["hada_t1"]].shape, tensors[keys["hada_t2"]].shape
        valid = (all(len(w) == 2 for w in (w1a, w1b, w2a, w2b)) and len(t1) >= 3 and t1[2:] == t2[2:]
                 and w1a[0] == w1b[0] == t1[0] == t1[1] and w2a[0] == w2b[0] == t2[0] == t2[1]
                 and w1a[1] == w2a[1] and w1b[1] == w2b[1])
    else:
        valid = (len(w1a) == len(w2a) == 2 and len(w1b) == len(w2b) >= 2
                 and w1a[1] == w1b[0] and w2a[1] == w2b[0] and w1a[0] == w2a[0] and w1b[1:] == w2b[1:])
    if not valid:
        problems.mismatched[name] = _shapes(keys, tensors)
        return None
    rank = w1b[0]
    shape = (w1a[1], w1b[1], *t1[2:]) if tucker else (w1a[0], *w1b[1:])
    alpha = _alpha_of(name, keys, read, rank, problems)
    return LoraModule(name, "loha", "lycoris", keys, rank, alpha, alpha / rank, shape)


def _build_lokr(name, keys, tensors, read, problems) -> LoraModule | None:
    """LoKr: kron(w1, w2), each factor whole or as a low-rank product; w2 may be a Tucker product (lokr_t2)."""
    has_w1 = "lokr_w1" in keys or {"lokr_w1_a", "lokr_w1_b"} <= set(keys)
    has_w2 = "lokr_w2" in keys or {"lokr_w2_a", "lokr_w2_b"} <= set(keys)
    if not (has_w1 and has_w2):
        problems.orphaned[name] = sorted(keys)
        return None
    w1, w2 = _lokr_shape(tensors, keys, "1"), _lokr_shape(tensors, keys, "2")
    if w1 is None or w2 is None or len(w1) != 2:
        problems.mismatched[name] = _shapes(keys, tensors)
        return None
    factor = keys.get("lokr_w2_b") or keys.get("lokr_w1_b")
    rank = tensors[factor].shape[0] if factor else 0
    alpha = _alpha_of(name, keys, read, rank, problems) if rank else 0.0
    shape = (w1[0] * w2[0], w1[1] * w2[1], *w2[2:])
    return LoraModule(name, "lokr", "lycoris", keys, rank, alpha, alpha / rank if rank else 1.0, shape)


def _lokr_shape(tensors, keys, i: str) -> tuple[int, ...] | None:
    """Shape of LoKr factor w1 or w2, or None when its parts do not fit together."""
    if f"lokr_w{i}" in keys:
        shape = tensors[keys[f"lokr_w{i}"]].shape
        return shape if len(shape) >= 2 else None
    a, b = tensors[keys[f"lokr_w{i}_a"]].shape, tensors[keys[f"lokr_w{i}_b"]].shape
    if i == "2" and "lokr_t2" in keys:  # Tucker: t2 [r, r, kh, kw], w2_a [r, out], w2_b [r, in]
        t = tensors[keys["lokr_t2"]].shape
        fits = len(a) == len(b) == 2 and len(t) >= 3 and a[0] == b[0] == t[0] == t[1]
        return (a[1], b[1], *t[2:]) if fits else None
    fits = len(a) == 2 and len(b) >= 2 and a[1] == b[0]  # a [out, r], b [r, in(, kh, kw)]
    return (a[0], *b[1:]) if fits else None


def _ones(dims: tuple[int, ...]) -> bool:
    return dims.count(1) == len(dims)


def _read_alpha(keys: dict[str, str], read: Scalar, rank: int) -> tuple[float, str | None]:
    """kohya alpha: a scalar tensor; missing or 0 means alpha = rank (scale 1). An unreadable or
    non-finite one also gives alpha = rank, with the reason as second value (a module problem)."""
    if "alpha" not in keys:
        return float(rank), None
    try:
        value = read(keys["alpha"])
    except (ValueError, IndexError):
        return float(rank), f"alpha tensor is unreadable; alpha = rank ({rank}) used"
    if not math.isfinite(value):
        return float(rank), f"alpha tensor is {value}; alpha = rank ({rank}) used"
    return (value if value else float(rank)), None


def _alpha_of(name: str, keys: dict[str, str], read: Scalar, rank: int, problems: ModuleProblems) -> float:
    alpha, bad = _read_alpha(keys, read, rank)
    if bad:
        problems.bad_alpha[name] = bad
    return alpha


def _shapes(keys: dict[str, str], tensors: dict[str, TensorInfo]) -> str:
    return ", ".join(f"{role} {list(tensors[k].shape)}" for role, k in sorted(keys.items()))


class _PeftAlphas:
    """lora_alpha / r / rsLoRA from diffusers' ``lora_adapter_metadata`` (flat or per-component keys)."""

    def __init__(self, metadata: dict[str, str]):
        self.present = "lora_adapter_metadata" in metadata
        config = parse_json(metadata.get("lora_adapter_metadata", "{}"))
        self.config = config if isinstance(config, dict) else {}

    def _get(self, component: str, key: str):
        return self.config.get(f"{component}.{key}", self.config.get(key))

    def alpha_and_scale(self, module: str, rank: int) -> tuple[float, float, str | None]:
        """(alpha, scale, problem): an alpha that is not a finite number (NaN, 10**400, a list, ...)
        falls back to alpha = rank, and the third value says why (a module problem)."""
        component, _, path = module.partition(".")
        alpha = self._get(component, "lora_alpha")
        pattern = self._get(component, "alpha_pattern") or {}
        for key, value in pattern.items() if isinstance(pattern, dict) else ():
            if path == key or path.endswith("." + key):  # PEFT matches module-path suffixes
                alpha = value
        bad = None
        if alpha is None:
            alpha = float(rank)
        else:
            try:
                value = float(alpha)
            except (TypeError, ValueError, OverflowError):  # OverflowError: ints past float range
                value = math.nan
            if not math.isfinite(value):
                bad = f"lora_alpha {_short(alpha)} is not a finite number; alpha = rank ({rank}) used"
                value = float(rank)
            alpha = value
        root = math.sqrt(rank) if self._get(component, "use_rslora") is True else rank
        return alpha, alpha / root, bad


def _short(value) -> str:
    """A metadata value for a message: at most 40 characters (10**400 has 401 digits)."""
    try:
        text = repr(value)
    except ValueError:  # an int past sys.get_int_max_str_digits()
        text = type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def delta_weight(module: LoraModule, read: Reader) -> np.ndarray:
    """dW of ``module`` in float32/64, shaped ``module.shape``."""
    k = module.keys
    if module.kind == "loha":
        w1, w2 = (_loha_factor(k, i, read) for i in "12")
        return (module.scale * w1 * w2).reshape(module.shape)
    if module.kind == "lokr":
        w1 = _lokr_factor(k, "1", read)
        w2 = _lokr_factor(k, "2", read)
        w1 = w1.reshape(w1.shape + (1,) * (w2.ndim - w1.ndim))
        return (module.scale * np.kron(w1, w2)).reshape(module.shape)
    up = read(k["up"]).reshape(module.shape[0], module.rank)  # [out, r]
    down = read(k["down"])
    if "mid" in k:  # Tucker core [r, r, kh, kw]
        mid = read(k["mid"])
        dw = np.einsum("oa,abhw,bi->oihw", up, mid, down.reshape(module.rank, -1), optimize=True)
        return module.scale * dw
    return (module.scale * (up @ down.reshape(module.rank, -1))).reshape(module.shape)


def low_rank_factors(module: LoraModule, read: Reader) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale * up [out, r], down [r, in]) of a module whose dW is their product (LoRA, DoRA's direction,
    LoDA's first order; a linear layer), so that x dW^T costs r (in + out) per row; None for the others."""
    if module.kind in ("loha", "lokr") or "mid" in module.keys or len(module.shape) != 2:
        return None
    up = read(module.keys["up"]).reshape(module.shape[0], module.rank)  # [out, r]
    return module.scale * up, read(module.keys["down"]).reshape(module.rank, -1)  # [r, in]


def _loha_factor(k: dict[str, str], i: str, read: Reader) -> np.ndarray:
    """w_a @ w_b, [out, in(*kh*kw)]; Tucker: t x w_a x w_b, [out, in, kh, kw]."""
    a, b = read(k[f"hada_w{i}_a"]), read(k[f"hada_w{i}_b"])
    if f"hada_t{i}" in k:
        return np.einsum("ij...,io,jn->on...", read(k[f"hada_t{i}"]), a, b, optimize=True)
    return (a @ b.reshape(b.shape[0], -1)).reshape(a.shape[0], *b.shape[1:])


def _lokr_factor(k: dict[str, str], i: str, read: Reader) -> np.ndarray:
    if f"lokr_w{i}" in k:
        return read(k[f"lokr_w{i}"])
    a, b = read(k[f"lokr_w{i}_a"]), read(k[f"lokr_w{i}_b"])
    if i == "2" and "lokr_t2" in k:
        return np.einsum("ij...,io,jn->on...", read(k["lokr_t2"]), a, b, optimize=True)
    return (a @ b.reshape(b.shape[0], -1)).reshape(a.shape[0], *b.shape[1:])


def has_float_tensors(module: LoraModule, tensors: dict[str, TensorInfo]) -> bool:
    """Whether the factors (not alpha or dora_scale) are float tensors that dW can be computed from."""
    return all(tensors[key].dtype in FLOAT_DTYPES for role, key in module.keys.items()
               if role not in ("alpha", "dora_scale"))
