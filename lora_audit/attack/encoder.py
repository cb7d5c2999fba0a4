"""The attack's VAE encoder: module sketches plus the fine-tuning step r -> a Gaussian over the latent.

One token per module of the base family (a linear map of its sketch plus a learned position
embedding), a learned task token and a token for the fine-tuning step r (a sinusoid of r through a
small MLP) are mixed by a transformer; heads on the task token's output give mu and log sigma^2 of
the latent's R coefficients, which :mod:`lora_audit.attack.latent` maps to z shaped like the text
encoder's prompt embeddings ([32, 64] for the toy base, [77, 768] for SD1.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class EncoderConfig:
    module_names: list[str]  # the fixed module order of the base family
    sketch_k: int = 8
    width: int = 128
    layers: int = 2
    heads: int = 4
    latent_len: int = 32  # z is [latent_len, latent_dim], the prompt embeddings' shape
    latent_dim: int = 64
    latent_rank: int = 48  # coefficients c of z in the prompt-embedding subspace
    max_step: int = 2000  # the longest sinusoid period of the step embedding
    use_step: bool = True  # False: no step token (the final-weights-only ablation)


def step_embedding(step: torch.Tensor, dim: int, max_period: float) -> torch.Tensor:
    """Transformer sinusoid of the fine-tuning step: [B] -> [B, dim] (dim even)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=step.device) / half)  # [half]
    angles = step.float()[:, None] * freqs[None, :]  # [B, half]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # [B, dim]


class WeightEncoder(nn.Module):
    """q(c | dW at step r): ``forward(sketches, step, padding) -> (mu, logvar)``, each [B, R]."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        c = config
        self.module_proj = nn.Linear(c.sketch_k ** 2, c.width)
        self.position = nn.Parameter(0.02 * torch.randn(len(c.module_names), c.width))  # [M, W]
        self.task_token = nn.Parameter(0.02 * torch.randn(1, 1, c.width))  # [1, 1, W]
        if c.use_step:
            self.step_mlp = nn.Sequential(nn.Linear(c.width, c.width), nn.SiLU(), nn.Linear(c.width, c.width))
        layer = nn.TransformerEncoderLayer(c.width, c.heads, dim_feedforward=4 * c.width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.mixer = nn.TransformerEncoder(layer, c.layers, norm=nn.LayerNorm(c.width), enable_nested_tensor=False)
        self.mu_head = nn.Linear(c.width, c.latent_rank)
        self.logvar_head = nn.Linear(c.width, c.latent_rank)

    def forward(self, sketches: torch.Tensor, step: torch.Tensor,
                padding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """sketches [B, M, k*k], step [B], padding [B, M] (True = module missing) -> mu, logvar [B, R]."""
        c, batch = self.config, sketches.shape[0]
        modules = self.module_proj(sketches) + self.position  # [B, M, W]
        task = self.task_token.expand(batch, -1, -1)  # [B, 1, W]
        extra = [task]
        if c.use_step:
            extra.append(self.step_mlp(step_embedding(step, c.width, c.max_step))[:, None])  # [B, 1, W]
        tokens = torch.cat([*extra, modules], dim=1)  # [B, E + M, W], E = 2 (task, step) or 1 (task)
        if padding is not None:
            always = torch.zeros(batch, len(extra), dtype=torch.bool, device=padding.device)  # [B, E]
            padding = torch.cat([always, padding], dim=1)  # [B, E + M]
        pooled = self.mixer(tokens, src_key_padding_mask=padding)[:, 0]  # [B, E + M, W] -> [B, W]
        return self.mu_head(pooled), self.logvar_head(pooled)  # [B, R] each

    @staticmethod
    def sample(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised c = mu + sigma * eps, [B, R]."""
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)  # [B, R]
        return mu + torch.exp(0.5 * logvar) * eps
