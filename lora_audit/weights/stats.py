"""Weight statistics of a LoRA file: counts, ranks, dtypes, per-module dW norms and effective rank."""

from __future__ import annotations

from collections import Counter

import numpy as np

from lora_audit.results import ModuleStats, WeightStats
from lora_audit.weights.lora_file import LoraFile
from lora_audit.weights.modules import LoraModule, has_float_tensors

_FULL_SVD_MAX_ELEMENTS = 1_000_000  # LoHa/LoKr/Tucker deltas: above this only the norm is computed


def weight_stats(lora: LoraFile, per_module: bool = True) -> WeightStats:
    """Counts over the file and, with ``per_module``, each module's dW norm and effective rank."""
    measurable = [m for m in lora.modules if per_module and has_float_tensors(m, lora.tensors)]
    with np.errstate(over="ignore", invalid="ignore"):  # absurd alphas give inf/NaN norms, not warnings
        singular = _factored_singular_values(lora, [m for m in measurable if _is_factored(m)])
        modules = [module_stats(lora, m, singular.get(m.name)) for m in measurable]
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


def module_stats(lora: LoraFile, module: LoraModule, singular: np.ndarray | None = None) -> ModuleStats:
    if singular is None and not _is_factored(module):
        singular = _full_singular_values(lora, module)
    if singular is None:
        norm, eff = float(np.linalg.norm(lora.delta(module))), float("nan")
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


def _is_factored(module: LoraModule) -> bool:
    return module.kind in ("lora", "locon", "dora") and "mid" not in module.keys


def _factored_singular_values(lora: LoraFile, modules: list[LoraModule]) -> dict[str, np.ndarray]:
    """Singular values of dW = s * U @ D without forming dW: sigma^2 = eig(U^T U  D D^T) (r x r).

    Modules of equal rank share one batched eigenvalue call; modules with non-finite factors are left out.
    """
    grams: dict[int, list[tuple[str, np.ndarray]]] = {}
    for m in modules:
        up = lora.file.read(m.keys["up"]).reshape(m.shape[0], m.rank)  # [out, r]
        down = lora.file.read(m.keys["down"]).reshape(m.rank, -1)  # [r, in]
        gram_up, gram_down = (up.T @ up).astype(np.float64), (down @ down.T).astype(np.float64)  # [r, r]
        product = np.float64(m.scale) ** 2 * gram_up @ gram_down  # eigenvalues = sigma^2
        if np.isfinite(product).all():
            grams.setdefault(m.rank, []).append((m.name, product))
    out = {}
    for items in grams.values():
        eig = np.linalg.eigvals(np.stack([g for _, g in items]))  # [M, r]
        sigma = np.sqrt(np.clip(eig.real, 0, None))
        out.update({name: np.sort(s)[::-1] for (name, _), s in zip(items, sigma)})
    return out


def _full_singular_values(lora: LoraFile, module: LoraModule) -> np.ndarray | None:
    """Singular values of a LoHa / LoKr / Tucker dW, formed explicitly when it is small enough."""
    if int(np.prod(module.shape)) > _FULL_SVD_MAX_ELEMENTS:
        return None
    dw = lora.delta(module).reshape(module.shape[0], -1)
    if not np.isfinite(dw).all():
        return None
    return np.linalg.svd(dw.astype(np.float64), compute_uv=False)


def _fmt(x: float) -> str:
    return f"{x:g}"
