"""Weight statistics of a LoRA file: counts, ranks, dtypes, per-module dW norms and effective rank."""

from __future__ import annotations

from collections import Counter

import numpy as np

from lora_audit.results import ModuleStats, WeightStats
from lora_audit.weights.lora_file import LoraFile
from lora_audit.weights.modules import LoraModule, has_float_tensors

_FULL_SVD_MAX_ELEMENTS = 1_000_000  # LoHa/LoKr/Tucker deltas: above this only the norm is computed


def weight_stats(lora: LoraFile) -> WeightStats:
    """Counts over the file and per-module dW norm / effective rank (factored SVD for plain LoRA)."""
    modules = [module_stats(lora, m) for m in lora.modules if has_float_tensors(m, lora.tensors)]
    return WeightStats(
        layout=lora.layout,
        base_model=lora.base_model,
        base_model_evidence=lora.base_model_evidence,
        module_count=len(lora.modules),
        tensor_count=len(lora.tensors),
        parameter_count=sum(t.numel for t in lora.tensors.values()),
        dtypes=dict(Counter(t.dtype for t in lora.tensors.values())),
        ranks={str(k): v for k, v in sorted(Counter(m.rank for m in lora.modules).items())},
        alphas={_fmt(k): v for k, v in sorted(Counter(m.alpha for m in lora.modules).items())},
        kinds=dict(Counter(m.kind for m in lora.modules)),
        modules=modules,
    )


def module_stats(lora: LoraFile, module: LoraModule) -> ModuleStats:
    singular = _singular_values(lora, module)
    if singular is None:
        try:
            norm = float(np.linalg.norm(lora.delta(module)))
        except ValueError:  # a delta lora-audit does not compute (Tucker LoHa)
            norm = float("nan")
        eff = float("nan")
    else:
        norm, eff = float(np.linalg.norm(singular)), effective_rank(singular)
    return ModuleStats(module.name, module.kind, module.rank, module.alpha, module.scale,
                       list(module.shape), norm, eff)


def effective_rank(singular_values: np.ndarray) -> float:
    """exp(Shannon entropy of the normalised singular values); 0 for a zero matrix."""
    s = np.abs(np.asarray(singular_values, dtype=np.float64))
    total = s.sum()
    if not np.isfinite(total) or total == 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def _singular_values(lora: LoraFile, module: LoraModule) -> np.ndarray | None:
    """Singular values of dW; for scale*B@A from two r x r QR factors, without forming dW."""
    if module.kind in ("lora", "locon", "dora") and "mid" not in module.keys:
        up = lora.file.read(module.keys["up"]).reshape(module.shape[0], module.rank).astype(np.float64)
        down = lora.file.read(module.keys["down"]).reshape(module.rank, -1).astype(np.float64)
        if not (np.isfinite(up).all() and np.isfinite(down).all()):
            return None
        r_up = np.linalg.qr(up, mode="r")  # [r, r] (or [out, r] when out < r)
        r_down = np.linalg.qr(down.T, mode="r")
        return np.linalg.svd(module.scale * r_up @ r_down.T, compute_uv=False)
    if int(np.prod(module.shape)) > _FULL_SVD_MAX_ELEMENTS:
        return None
    try:
        dw = lora.delta(module).reshape(module.shape[0], -1)
    except ValueError:
        return None
    if not np.isfinite(dw).all():
        return None
    return np.linalg.svd(dw.astype(np.float64), compute_uv=False)


def _fmt(x: float) -> str:
    return f"{x:g}"
