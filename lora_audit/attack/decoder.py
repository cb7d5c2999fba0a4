"""The attack's decoder: the base diffusion model patched with the audited LoRA, conditioned on z.

z takes the place of the text encoder's output (``prompt_embeds``; for SDXL also the pooled
embedding: z is then a :class:`~lora_audit.diffusion.base.Conditioning`), so only the UNet's weight deltas
matter here; a text-encoder LoRA still reaches the attack through the encoder's input.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import numpy as np
import torch

from lora_audit.errors import UsageError
from lora_audit.diffusion.base import DiffusionBase, Prompt

UNET = "unet."


@contextlib.contextmanager
def per_sample_deltas(base: DiffusionBase, deltas: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Within the block, UNet linear module ``name`` computes x W^T + x dW_s^T for the samples of group s.

    ``deltas`` maps canonical names (``unet.<path>``) to dW stacked per group, [S, out, in]; a batch of
    S * P samples is S consecutive groups of P (one LoRA's images): one UNet call then runs S
    differently patched models (training batches many shadow LoRAs at once).
    Text-encoder deltas are ignored (z replaces the text encoder's output). Differentiable in the
    inputs; the base weights are not modified.
    """
    handles = []
    try:
        for name, dw in deltas.items():
            if not name.startswith(UNET):
                continue
            module = base.unet.get_submodule(name[len(UNET):])
            if not isinstance(module, torch.nn.Linear):
                raise UsageError(f"{name}: per-sample LoRA deltas are implemented for linear layers only")
            handles.append(module.register_forward_hook(_add_delta(dw)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _add_delta(dw: torch.Tensor):
    def hook(module, inputs, output):  # inputs[0]: [S * P, ..., in]; output: [S * P, ..., out]
        x = inputs[0]
        groups = x.reshape(len(dw), -1, x.shape[-1])  # [S, P * ..., in]: each group shares one dW
        return output + torch.einsum("sni,soi->sno", groups, dw.to(x.dtype)).reshape(output.shape)
    return hook


def decode(base: DiffusionBase, deltas: Mapping[str, np.ndarray | torch.Tensor], z: Prompt, *,
           seed: int = 0, steps: int = 25, guidance_scale: float = 3.0) -> np.ndarray:
    """Sample one image per latent z [B, L, D] (SDXL: a Conditioning with the pooled embedding) from the
    LoRA-patched base: [B, H, W, 3] in [0, 1]."""
    with base.patched(deltas):
        return base.generate(z, guidance_scale=guidance_scale, steps=steps, seed=seed)
