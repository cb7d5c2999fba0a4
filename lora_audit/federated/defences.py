"""Defences of a shared update: DP-SGD's per-example clipping with Gaussian noise, and sparsification.

Clipping with noise is the DP-SGD mechanism: each example's gradient is scaled to an L2 norm of at
most C, the clipped gradients are summed, Gaussian noise of standard deviation sigma * C is added to
the sum and it is divided by the batch size. The epsilon it buys is Opacus's RDP accountant's for
(sigma, sampling rate = batch / the client's photos, steps, delta): one photo is the privacy unit.
Sparsification keeps the largest ``keep`` share of entries (by magnitude, over all tensors) and zeroes
the rest, as gradient-compression schemes do; it promises nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lora_audit.federated.objective import diffusion_loss


@dataclass
class Defence:
    clip_norm: float | None = None  # C; None: no clipping (and no noise)
    noise_multiplier: float = 0.0  # sigma
    keep: float | None = None  # sparsification: share of entries kept (None: all)
    delta: float = 1e-5

    @property
    def active(self) -> bool:
        return self.clip_norm is not None or self.keep is not None


def dp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Opacus RDP accountant's epsilon of ``steps`` noisy steps (inf without noise)."""
    if noise_multiplier <= 0:
        return math.inf
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, min(1.0, sample_rate), steps)]
    return float(accountant.get_epsilon(delta))


def sparsify(grads: list[torch.Tensor], keep: float) -> list[torch.Tensor]:
    """The largest ``keep`` share of all entries of ``grads`` by magnitude, the others zero."""
    flat = torch.cat([g.flatten().abs() for g in grads])  # [P]
    k = max(1, int(round(keep * flat.numel())))
    threshold = torch.topk(flat, k, sorted=False).values.min()
    return [torch.where(g.abs() >= threshold, g, torch.zeros_like(g)) for g in grads]


def apply_defence(unet, params: list[torch.Tensor], cond, schedule, x0, eps, t, defence: Defence,
                  generator: torch.Generator, dataset_size: int, steps: int) -> tuple[list[torch.Tensor], dict | None]:
    """The gradient of the batch's mean loss w.r.t. ``params``, defended as ``defence`` says; and what
    was applied (None: nothing) with the accountant's epsilon."""
    if defence.clip_norm is None:
        loss = diffusion_loss(unet, cond, schedule, x0, eps, t)
        grads = [g.detach() for g in torch.autograd.grad(loss, params)]
    else:
        total = [torch.zeros_like(p) for p in params]
        for i in range(len(x0)):  # per-example gradients, exactly (a loop: batches are small)
            loss = diffusion_loss(unet, cond, schedule, x0[i:i + 1], eps[i:i + 1], t[i:i + 1])
            g = torch.autograd.grad(loss, params)
            norm = torch.sqrt(sum((gi.detach() ** 2).sum() for gi in g))
            scale = min(1.0, defence.clip_norm / (float(norm) + 1e-12))
            for acc, gi in zip(total, g):
                acc += gi.detach() * scale
        for acc in total:
            if defence.noise_multiplier > 0:
                acc += defence.noise_multiplier * defence.clip_norm * torch.randn(
                    acc.shape, generator=generator).to(acc.device)
        grads = [acc / len(x0) for acc in total]
    if defence.keep is not None:
        grads = sparsify(grads, defence.keep)
    if not defence.active:
        return grads, None
    report = {"clip_norm": defence.clip_norm, "noise_multiplier": defence.noise_multiplier, "keep": defence.keep}
    if defence.clip_norm is not None:
        eps_dp = dp_epsilon(defence.noise_multiplier, len(x0) / dataset_size, steps, defence.delta)
        report.update({"epsilon": eps_dp if math.isfinite(eps_dp) else "inf", "delta": defence.delta,
                       "accountant": "rdp", "sample_rate": len(x0) / dataset_size, "privacy_unit": "photo"})
    return grads, report
