"""The attack's decoder: the base diffusion model patched with the audited LoRA, conditioned on z.

z takes the place of the text encoder's output (``prompt_embeds``; for SDXL also the pooled
embedding: z is then a :class:`~lora_audit.diffusion.base.Conditioning`), so only the UNet's weight deltas
matter here; a text-encoder LoRA still reaches the attack through the encoder's input.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Union

import numpy as np
import torch

from lora_audit.errors import UsageError
from lora_audit.diffusion.base import DiffusionBase, Prompt

UNET = "unet."
Delta = Union[np.ndarray, torch.Tensor, tuple]  # dW, or its factors (scale * up [out, r], down [r, in])


@contextlib.contextmanager
def per_sample_deltas(base: DiffusionBase, deltas: Mapping[str, torch.Tensor], per_group: int | None = None) -> Iterator[None]:
    """Within the block, UNet linear module ``name`` computes x W^T + x dW_s^T for the samples of group s.

    ``deltas`` maps canonical names (``unet.<path>``) to dW stacked per group, [S, out, in], or to its
    factors (up [S, out, R], down [S, R, in]: x dW^T = (x down^T) up^T, cheaper for a low rank); a batch of
    S * P samples is S consecutive groups of P (one LoRA's images): one UNet call then runs S
    differently patched models (training batches many shadow LoRAs at once). With ``per_group`` = P,
    a call may also take the batch C times over, [C, S, P] (classifier-free guidance concatenates the
    unconditional and the conditional branch: C = 2).
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
            handles.append(module.register_forward_hook(_add_delta(dw, per_group)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _add_delta(dw: torch.Tensor | tuple[torch.Tensor, torch.Tensor], per_group: int | None):
    count = len(dw[0] if isinstance(dw, tuple) else dw)  # S

    def hook(module, inputs, output):  # inputs[0]: [C * S * P, ..., in]; output: [C * S * P, ..., out]
        x = inputs[0]
        copies = 1 if per_group is None else len(x) // (count * per_group)
        groups = x.reshape(copies, count, -1, x.shape[-1])  # [C, S, P * ..., in]: each group shares one dW
        if isinstance(dw, tuple):
            up, down = (f.to(x.dtype) for f in dw)  # [S, out, R], [S, R, in]
            added = torch.einsum("csnr,sor->csno", torch.einsum("csni,sri->csnr", groups, down), up)
        else:
            added = torch.einsum("csni,soi->csno", groups, dw.to(x.dtype))
        return output + added.reshape(output.shape)
    return hook


_STOCHASTIC_SAMPLERS = ("Ancestral", "DDPM", "LCM", "TCD", "SDE")  # scheduler class names that draw noise every step


def batchable(base: DiffusionBase, names) -> bool:
    """Whether a LoRA whose deltas have these canonical names can share a batch (:func:`decode_many`):
    every UNet delta is on a linear layer the base has, and the base's sampler draws no noise after the
    first step (a stochastic one would give a LoRA's images other noise in a batch than alone)."""
    scheduler = base.pipe.scheduler
    if any(word in type(scheduler).__name__ for word in _STOCHASTIC_SAMPLERS) or \
            "sde" in str(getattr(scheduler.config, "algorithm_type", "")):
        return False
    try:
        return all(isinstance(base.unet.get_submodule(name[len(UNET):]), torch.nn.Linear)
                   for name in names if name.startswith(UNET))
    except AttributeError:  # a module the base lacks: decoded alone, which reports it
        return False


def decode(base: DiffusionBase, deltas: Mapping[str, np.ndarray | torch.Tensor], z: Prompt, *,
           seed: int = 0, steps: int = 25, guidance_scale: float = 3.0) -> np.ndarray:
    """Sample one image per latent z [B, L, D] (SDXL: a Conditioning with the pooled embedding) from the
    LoRA-patched base: [B, H, W, 3] in [0, 1]."""
    with base.patched(deltas):
        return base.generate(z, guidance_scale=guidance_scale, steps=steps, seed=seed)


def decode_many(base: DiffusionBase, deltas: list[Mapping[str, Delta]], z: Prompt, *,
                seed: int = 0, steps: int = 25, guidance_scale: float = 3.0) -> np.ndarray:
    """:func:`decode` of S LoRAs in one batch: z [S * P, L, D] holds P latents per LoRA, in the order of
    ``deltas``; each LoRA's images start from the noise :func:`decode` would give it (``seed``) and its own
    unconditional branch (the empty prompt through its patched text encoder), so that they equal
    :func:`decode`'s up to float rounding. The UNet deltas must be :func:`batchable`; each may be given as its
    factors (:meth:`~lora_audit.weights.LoraFile.factors`), the text encoders' as dW. [S * P, H, W, 3]."""
    count, per_group = len(deltas), len(z) // len(deltas)
    negative = []
    for lora in deltas:  # [P, L, D] each: the LoRA's own text encoder(s) encode the empty prompt
        with base.patched({name: dw for name, dw in lora.items() if not name.startswith(UNET)}):
            negative.append(base.unconditional(per_group) if base.vae is not None
                            else base.encode_prompt([""]).expand(per_group, -1, -1))
    stacked = _stacked([{name: dw for name, dw in lora.items() if name.startswith(UNET)} for lora in deltas], base)
    with per_sample_deltas(base, stacked, per_group=per_group):
        return base.generate(z, guidance_scale=guidance_scale, steps=steps, seed=seed, negative=_cat(negative),
                             noise=base.initial_noise(per_group, seed).repeat(count, 1, 1, 1))


def _stacked(deltas: list[Mapping[str, Delta]], base: DiffusionBase) -> dict:
    """Canonical name -> dW [S, out, in], or (up [S, out, R], down [S, R, in]) where every LoRA with the module
    gives factors (R: the largest rank, the others padded with zeros), on the UNet's device and dtype; zeros
    for a LoRA without the module."""
    out = {}
    for name in dict.fromkeys(name for lora in deltas for name in lora):
        weight = base.weight_of(name)
        given = [lora.get(name) for lora in deltas]
        if all(g is None or isinstance(g, tuple) for g in given):
            rank = max(g[1].shape[0] for g in given if g is not None)
            ups, downs = zip(*[_padded(g, rank, weight.shape) for g in given])
            out[name] = tuple(torch.stack(f).to(weight.device, weight.dtype) for f in (ups, downs))
        else:
            out[name] = torch.stack([_dense(g, weight.shape) for g in given]).to(weight.device, weight.dtype)
    return out


def _padded(given, rank: int, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """(up [out, rank], down [rank, in]) of a factored delta, zero-padded to ``rank`` (zeros: no module)."""
    up, down = (torch.zeros(shape[0], rank), torch.zeros(rank, shape[1]))
    if given is not None:
        r = given[1].shape[0]
        up[:, :r], down[:r] = torch.as_tensor(given[0]), torch.as_tensor(given[1])
    return up, down


def _dense(given, shape) -> torch.Tensor:
    if given is None:
        return torch.zeros(shape)
    if isinstance(given, tuple):
        return torch.as_tensor(given[0]) @ torch.as_tensor(given[1])
    return torch.as_tensor(given).reshape(shape)


def _cat(prompts: list[Prompt]) -> Prompt:
    """Prompts (tensors or Conditionings) concatenated along the batch."""
    if isinstance(prompts[0], torch.Tensor):
        return torch.cat(prompts)
    pooled = None if prompts[0].pooled is None else torch.cat([p.pooled for p in prompts])
    return type(prompts[0])(torch.cat([p.prompt_embeds for p in prompts]), pooled)
