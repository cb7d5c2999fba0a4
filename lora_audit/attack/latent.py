"""The space z lives in: a whitened principal subspace of the base model's prompt embeddings of faces.

z replaces the text encoder's output, and the UNet only ever learned to read such outputs. So the
attack parameterises z = offset + c @ basis: offset is the mean embedding of many face descriptions,
the rows of basis are their top principal directions scaled by their standard deviations, and
c ~ N(0, I) is then the Gaussian fit of face-description embeddings: the VAE's prior. The encoder
predicts q(c | dW, r) over R coefficients instead of L x D numbers (32 x 64 for the toy base,
77 x 768 for SD1.5), and every sample of c decodes to an embedding-like z.

For SDXL, whose UNet also reads ``text_encoder_2``'s pooled embedding, the points are the flattened
embeddings with the pooled vector after them ([L*D + P], :meth:`Conditioning.flat`): one PCA covers
both, and z splits back into the two after ``to_latent``.

The descriptions are the attacker's public knowledge, given by the base's family
(:meth:`lora_audit.families.Family.face_prompts`): for the toy world, captions in the toy caption
language of PUBLIC identities; for real bases, templated face descriptions.
"""

from __future__ import annotations

import torch

from lora_audit.diffusion.base import Conditioning, DiffusionBase


@torch.no_grad()
def prompt_subspace(base: DiffusionBase, prompts: list[str], rank: int,
                    batch: int = 256) -> tuple[torch.Tensor | Conditioning, torch.Tensor, float]:
    """(offset [L, D], basis [R, L*D] = principal directions x their std, explained variance fraction).

    With a pooled embedding (SDXL): offset is an unbatched Conditioning ([L, D], [P]) and basis [R, L*D + P].
    """
    shape = base.encode_prompt(prompts[:1]).shape[1:]  # (L, D)
    pooled = base.pooled_dim
    if pooled:
        embeds = torch.cat([base.encode(prompts[i: i + batch]).flat().float().cpu()
                            for i in range(0, len(prompts), batch)])  # [N, L*D + P]
    else:
        embeds = torch.cat([base.encode_prompt(prompts[i: i + batch]).flatten(1).float().cpu()
                            for i in range(0, len(prompts), batch)])  # [N, L*D]
    mean = embeds.mean(0)  # [L*D]
    _, s, vh = torch.linalg.svd(embeds - mean, full_matrices=False)  # s [min(N, L*D)], vh [., L*D]
    rank = min(rank, len(s))
    std = s[:rank] / max(1, len(embeds) - 1) ** 0.5  # [R]
    explained = float((s[:rank] ** 2).sum() / (s ** 2).sum())
    if pooled:
        offset = Conditioning.from_flat(mean[None], tuple(shape), pooled)[0]  # [L, D], [P]
        return offset, vh[:rank] * std[:, None], explained
    return mean.view(shape), vh[:rank] * std[:, None], explained
