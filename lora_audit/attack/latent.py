"""The space z lives in: a whitened principal subspace of the base model's prompt embeddings of faces.

z replaces the text encoder's output, and the UNet only ever learned to read such outputs. So the
attack parameterises z = offset + c @ basis: offset is the mean embedding of many face descriptions,
the rows of basis are their top principal directions scaled by their standard deviations, and
c ~ N(0, I) is then the Gaussian fit of face-description embeddings: the VAE's prior. The encoder
predicts q(c | dW, r) over R coefficients instead of L x D numbers (32 x 64 for the toy base,
77 x 768 for SD1.5), and every sample of c decodes to an embedding-like z.

The descriptions are the attacker's public knowledge: for the toy world, captions in the toy
caption language of PUBLIC identities; for real bases, templated face descriptions.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from lora_audit.diffusion.base import DiffusionBase

_AGES = ("young", "middle-aged", "old")
_PEOPLE = ("man", "woman", "person")
_HAIR = ("blond", "brown", "black", "red", "grey", "white", "curly", "straight", "short", "long", "bald")
_EXTRAS = ("with glasses", "with a beard", "with a moustache", "smiling", "with freckles", "with blue eyes",
           "with brown eyes", "with green eyes", "with pale skin", "with dark skin", "with olive skin", "")


def face_prompts(family: str, count: int = 2000, seed: int = 0) -> list[str]:
    """``count`` descriptions of faces in the prompt language of ``family``."""
    if family == "toy":
        from lora_audit.toyworld.identities import PUBLIC
        from lora_audit.toyworld.renderer import caption, identity

        return [caption(identity(PUBLIC.start + i)) for i in range(count)]
    combos = [f"a photo of a {age} {who} with {hair} hair {extra}".strip()
              for age, who, hair, extra in itertools.product(_AGES, _PEOPLE, _HAIR, _EXTRAS)]
    rng = np.random.default_rng(seed)
    return [combos[i] for i in rng.permutation(len(combos))[:count]]


@torch.no_grad()
def prompt_subspace(base: DiffusionBase, prompts: list[str], rank: int,
                    batch: int = 256) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(offset [L, D], basis [R, L*D] = principal directions x their std, explained variance fraction)."""
    shape = base.encode_prompt(prompts[:1]).shape[1:]  # (L, D)
    embeds = torch.cat([base.encode_prompt(prompts[i: i + batch]).flatten(1).float().cpu()
                        for i in range(0, len(prompts), batch)])  # [N, L*D]
    mean = embeds.mean(0)  # [L*D]
    _, s, vh = torch.linalg.svd(embeds - mean, full_matrices=False)  # s [min(N, L*D)], vh [., L*D]
    rank = min(rank, len(s))
    std = s[:rank] / max(1, len(embeds) - 1) ** 0.5  # [R]
    explained = float((s[:rank] ** 2).sum() / (s ** 2).sum())
    return mean.view(shape), vh[:rank] * std[:, None], explained
