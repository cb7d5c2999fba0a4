"""The attack's VAE encoder: module sketches plus the fine-tuning step r -> a Gaussian over z [L, D].

One token per module of the base family (a linear map of its sketch plus a learned position
embedding), a learned task token and a token for the fine-tuning step r (a sinusoid of r through a
small MLP) are mixed by a transformer; heads on the task token's output give mu and log sigma^2 of z,
which stands in for the text encoder's prompt embeddings ([32, 64] for the toy base, [77, 768] for SD1.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lora_audit.attack.features import ModuleSketcher
from lora_audit.weights import LoraFile


@dataclass
class EncoderConfig:
    module_names: list[str]  # the fixed module order of the base family
    sketch_k: int = 8
    width: int = 128
    layers: int = 2
    heads: int = 4
    latent_len: int = 32
    latent_dim: int = 64
    max_step: int = 2000  # the longest sinusoid period of the step embedding


def step_embedding(step: torch.Tensor, dim: int, max_period: float) -> torch.Tensor:
    """Transformer sinusoid of the fine-tuning step: [B] -> [B, dim] (dim even)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=step.device) / half)  # [half]
    angles = step.float()[:, None] * freqs[None, :]  # [B, half]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # [B, dim]


class WeightEncoder(nn.Module):
    """q(z | dW at step r): ``forward(sketches, step, padding) -> (mu, logvar)``, each [B, L, D]."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        c = config
        self.module_proj = nn.Linear(c.sketch_k ** 2, c.width)
        self.position = nn.Parameter(0.02 * torch.randn(len(c.module_names), c.width))  # [M, W]
        self.task_token = nn.Parameter(0.02 * torch.randn(1, 1, c.width))  # [1, 1, W]
        self.step_mlp = nn.Sequential(nn.Linear(c.width, c.width), nn.SiLU(), nn.Linear(c.width, c.width))
        layer = nn.TransformerEncoderLayer(c.width, c.heads, dim_feedforward=4 * c.width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.mixer = nn.TransformerEncoder(layer, c.layers, norm=nn.LayerNorm(c.width), enable_nested_tensor=False)
        self.mu_head = nn.Linear(c.width, c.latent_len * c.latent_dim)
        self.logvar_head = nn.Linear(c.width, c.latent_len * c.latent_dim)

    def forward(self, sketches: torch.Tensor, step: torch.Tensor,
                padding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """sketches [B, M, k*k], step [B], padding [B, M] (True = module missing) -> mu, logvar [B, L, D]."""
        c, batch = self.config, sketches.shape[0]
        modules = self.module_proj(sketches) + self.position  # [B, M, W]
        task = self.task_token.expand(batch, -1, -1)  # [B, 1, W]
        step_token = self.step_mlp(step_embedding(step, c.width, c.max_step))[:, None]  # [B, 1, W]
        tokens = torch.cat([task, step_token, modules], dim=1)  # [B, 2 + M, W]
        if padding is not None:
            always = torch.zeros(batch, 2, dtype=torch.bool, device=padding.device)  # [B, 2]
            padding = torch.cat([always, padding], dim=1)  # [B, 2 + M]
        pooled = self.mixer(tokens, src_key_padding_mask=padding)[:, 0]  # [B, 2 + M, W] -> [B, W]
        shape = (batch, c.latent_len, c.latent_dim)
        return self.mu_head(pooled).view(shape), self.logvar_head(pooled).view(shape)  # [B, L*D] -> [B, L, D]

    @staticmethod
    def sample(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised z = mu + sigma * eps, [B, L, D]."""
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)  # [B, L, D]
        return mu + torch.exp(0.5 * logvar) * eps


def sketch_batch(sketcher: ModuleSketcher, lora_files: list[LoraFile],
                 module_names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sketches [B, M, k*k] float32 in ``module_names`` order, and padding [B, M] (True = module missing).

    Missing modules are zeros; modules outside ``module_names`` are left out.
    """
    index = {name: i for i, name in enumerate(module_names)}
    sketches = np.zeros((len(lora_files), len(module_names), sketcher.k ** 2), dtype=np.float32)  # [B, M, k*k]
    padding = np.ones((len(lora_files), len(module_names)), dtype=bool)  # [B, M]
    for b, lora_file in enumerate(lora_files):
        for module in lora_file.modules:
            if module.name in index:
                sketches[b, index[module.name]] = sketcher.sketch_module(lora_file, module)
                padding[b, index[module.name]] = False
    return torch.from_numpy(sketches), torch.from_numpy(padding)
