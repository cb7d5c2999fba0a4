"""The client's training loss as a function of everything a server may not know, and gradient distances.

The loss is the fine-tune's (:mod:`lora_audit.diffusion.finetune`): DDPM ``add_noise`` of x0 with noise
epsilon at timestep t, the epsilon or v target of the scheduler, the mean squared error of the
UNet's prediction. Here t may be a float: alpha-bar is interpolated linearly between the schedule's
integer steps (exact at integers, so the client's integer t gives the scheduler's values) and the
UNet's sinusoidal timestep embedding reads the float, so the loss is differentiable in t as well as
in x0 and epsilon: GIDM+ optimises all three.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

PROMPT = "a face of a person"  # the federation's training prompt: part of the protocol, known to the server


def prepare_unet(unet) -> None:
    """Attention without the fused SDPA kernel, whose backward has no derivative (double backprop)."""
    from diffusers.models.attention_processor import AttnProcessor

    unet.set_attn_processor(AttnProcessor())


@dataclass
class Schedule:
    """The training noise schedule: alpha-bar [T] and what the UNet predicts."""

    alphas_cumprod: torch.Tensor  # [T]
    prediction_type: str  # epsilon | v_prediction

    @classmethod
    def of(cls, scheduler, device=None) -> "Schedule":
        return cls(scheduler.alphas_cumprod.to(device or "cpu", torch.float32), scheduler.config.prediction_type)

    @property
    def steps(self) -> int:
        return len(self.alphas_cumprod)

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """alpha-bar at float timesteps t [B] (clamped to [0, T-1]), linear between integer steps: [B]."""
        t = t.float().clamp(0, self.steps - 1)
        low = t.detach().floor().long().clamp(max=self.steps - 2)
        frac = t - low
        ab = self.alphas_cumprod
        return ab[low] * (1 - frac) + ab[low + 1] * frac

    def noised(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(noisy input, training target), each [B, C, H, W], as ``add_noise`` and ``get_velocity``."""
        ab = self.alpha_bar(t)[:, None, None, None]  # [B, 1, 1, 1]
        a, s = ab.sqrt(), (1 - ab).sqrt()
        noisy = a * x0 + s * eps
        target = a * eps - s * x0 if self.prediction_type == "v_prediction" else eps
        return noisy, target


def diffusion_loss(unet, cond: torch.Tensor, schedule: Schedule, x0: torch.Tensor, eps: torch.Tensor,
                   t: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The fine-tune's loss of x0 [B, C, H, W] in [-1, 1] at noise eps [B, C, H, W] and timesteps t [B];
    ``reduction="none"``: one loss per example [B]."""
    noisy, target = schedule.noised(x0, eps, t)
    pred = unet(noisy, t, encoder_hidden_states=cond.expand(len(x0), -1, -1)).sample  # [B, C, H, W]
    if reduction == "none":
        return ((pred.float() - target.float()) ** 2).flatten(1).mean(1)
    return F.mse_loss(pred.float(), target.float())


def loss_gradient(loss: torch.Tensor, params: list[torch.Tensor], create_graph: bool) -> list[torch.Tensor]:
    """d loss / d params (with the graph kept for a second derivative when ``create_graph``)."""
    return list(torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True))


def gradient_distance(grads: list[torch.Tensor], target: list[torch.Tensor], kind: str = "l2",
                      masks: list[torch.Tensor | None] | None = None) -> torch.Tensor:
    """Distance of a candidate's gradient to the shared one: squared L2 (GIDM, DLG) or 1 - cosine of the
    whole flattened gradient (Inverting Gradients). ``masks``: entries the client kept (sparsification)."""
    dot = torch.zeros(())
    sq_a = torch.zeros(())
    sq_b = torch.zeros(())
    l2 = torch.zeros(())
    for k, (g, h) in enumerate(zip(grads, target)):
        if g is None:
            continue
        if masks is not None and masks[k] is not None:
            g = g * masks[k]
        if kind == "l2":
            l2 = l2 + ((g - h) ** 2).sum()
        else:
            dot, sq_a, sq_b = dot + (g * h).sum(), sq_a + (g * g).sum(), sq_b + (h * h).sum()
    if kind == "l2":
        return l2
    return 1 - dot / (sq_a.sqrt() * sq_b.sqrt() + 1e-12)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels of x [B, C, H, W] (Inverting Gradients' prior)."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
