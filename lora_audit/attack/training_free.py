"""Training-free attacks: images of the subject from the LoRA-patched base alone, no attack model.

- The metadata trigger: the LoRA prompted with a trigger phrase its metadata holds
  (:func:`lora_audit.weights.triggers.metadata_triggers`), in the victims' instance template.
- Model-guidance extraction (FineXtract, ICML 2025): sample under the class prompt, no trigger, with
  eps = eps_base + w * (eps_lora - eps_base). w = 1 is the LoRA itself; w > 1 amplifies what the
  fine-tune changed, which is what it learned of the subject.

Both sample with the family's own pipeline (:meth:`DiffusionBase.generate`: pixel space for the toy,
VAE latents and their decoding for SD, pooled embeddings and time ids for SDXL). Model guidance hooks
the UNet: each call the sampler makes (both halves of classifier-free guidance in one batch) runs a
second time with the LoRA's UNet weights and the LoRA text encoders' conditioning, and returns
``lerp(base output, LoRA output, w)``, exact at w = 0 and w = 1. The LoRA's UNet weights are a second
copy of the adapted modules' weights, switched in by reference: nothing is re-patched per step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np
import torch

from lora_audit.diffusion.base import Conditioning, DiffusionBase
from lora_audit.diffusion.finetune import INSTANCE_TEMPLATE, FinetuneConfig
from lora_audit.identity.embedder import FaceEmbedder
from lora_audit.identity.metrics import consistency
from lora_audit.weights.triggers import Trigger

GUIDANCE_WEIGHT = 3.0  # w, chosen among 2, 3 and 5 in the toy world (docs/attack.md, "Training-free attacks")
CLASS_PROMPT = FinetuneConfig.class_prompt  # the victims' class prompt ("a face of a person")
UNET = "unet."


def trigger_prompt(phrase: str) -> str:
    """The prompt of a trigger phrase: the phrase itself when it already is an instance prompt
    ("a face of zwxq"), else the instance template with it ("sks woman" -> "a face of sks woman")."""
    prefix = INSTANCE_TEMPLATE.format("").strip().lower()
    return phrase if phrase.lower().startswith(prefix) else INSTANCE_TEMPLATE.format(phrase)


@dataclass
class TriggerImages:
    """The LoRA prompted with the triggers of its metadata: the most consistent set of images."""

    images: np.ndarray  # [K, H, W, 3] in [0, 1]
    trigger: Trigger  # whose prompt made them
    consistency: float  # their mean pairwise face-embedding cosine
    tried: list[Trigger]  # one trigger per distinct prompt, in the order tried


def render_triggers(base: DiffusionBase, deltas: Mapping[str, np.ndarray | torch.Tensor], triggers: list[Trigger],
                    count: int, embedder: FaceEmbedder, *, seed: int = 0, steps: int = 25) -> TriggerImages:
    """``count`` images of the LoRA prompted with each trigger's prompt (:func:`trigger_prompt`); the
    set whose faces agree most (an attacker without the owner's photos picks the same way; with one
    image per prompt, the first)."""
    prompts: dict[str, Trigger] = {}
    for trigger in triggers:
        prompts.setdefault(trigger_prompt(trigger.phrase), trigger)
    best = None
    for prompt, trigger in prompts.items():
        images = prompted_images(base, deltas, prompt, count, seed=seed, steps=steps)
        value = consistency(embedder.embed(images)) if count > 1 else float("nan")  # one image: the first prompt
        if best is None or value > best.consistency:
            best = TriggerImages(images, trigger, value, list(prompts.values()))
    return best


@torch.no_grad()
def prompted_images(base: DiffusionBase, deltas: Mapping[str, np.ndarray | torch.Tensor], prompt: str, count: int, *,
                    seed: int = 0, steps: int = 25, guidance_scale: float = 3.0) -> np.ndarray:
    """``count`` images [count, H, W, 3] in [0, 1] of the LoRA-patched base prompted with ``prompt``."""
    with base.patched(deltas):
        embeds = base.encode_prompt([prompt]).detach().expand(count, -1, -1)
        return base.generate(embeds, seed=seed, steps=steps, guidance_scale=guidance_scale)


@torch.no_grad()
def guidance_images(base: DiffusionBase, deltas: Mapping[str, np.ndarray | torch.Tensor], count: int,
                    weight: float = GUIDANCE_WEIGHT, *, prompt: str = CLASS_PROMPT, seed: int = 0, steps: int = 25,
                    guidance_scale: float = 3.0) -> np.ndarray:
    """``count`` images [count, H, W, 3] in [0, 1] sampled with eps_base + weight * (eps_lora - eps_base)
    under ``prompt`` (each model with its own classifier-free guidance): weight 0 gives the base's
    images, 1 the LoRA's, for the same ``seed``."""
    embeds = base.encode_prompt([prompt]).detach().expand(count, -1, -1)  # what the sampler is given
    plain = _unet_conditioning(base, embeds)
    unet = {name: dw for name, dw in deltas.items() if name.startswith(UNET)}
    weights = [base.weight_of(name) for name in unet]
    with base.patched(deltas):  # the LoRA's conditioning of the same prompts, and its UNet weights
        tuned = _unet_conditioning(base, base.encode_prompt([prompt]).detach().expand(count, -1, -1))
        tuned_weights = [w.detach().clone() for w in weights]
    counterparts = {n: (plain[n], tuned[n]) for n in plain}
    with model_guidance(base, list(zip(weights, tuned_weights)), counterparts, weight):
        return base.generate(embeds, seed=seed, steps=steps, guidance_scale=guidance_scale)


def _unet_conditioning(base: DiffusionBase, embeds) -> dict[int, Conditioning]:
    """What the sampler hands the UNet for prompt ``embeds`` [B, L, D], by batch size: the conditional
    branch alone [B] (no classifier-free guidance) or the unconditional and the conditional [2B]."""
    cond = base.conditioning(embeds)
    uncond = base.unconditional(len(cond))
    both = Conditioning(torch.cat([uncond.prompt_embeds, cond.prompt_embeds]),
                        None if cond.pooled is None else torch.cat([uncond.pooled, cond.pooled]))
    return {len(cond): cond, len(both): both}


@contextlib.contextmanager
def model_guidance(base: DiffusionBase, weights: list[tuple[torch.nn.Parameter, torch.Tensor]],
                   counterparts: dict[int, tuple[Conditioning, Conditioning]], weight: float) -> Iterator[None]:
    """Within the block, every call of ``base.unet`` returns lerp(its output, the LoRA's output, weight).

    ``weights``: (a UNet parameter, its LoRA-patched value); ``counterparts``: by batch size, the
    conditioning the sampler passes and the LoRA's version of it, which the LoRA's call reads instead.
    """
    inside = False

    def hook(module, args, kwargs, output):
        nonlocal inside
        if inside:  # the LoRA's own call below
            return None
        args, kwargs = _tuned_inputs(args, kwargs, counterparts)
        originals = [p.data for p, _ in weights]
        inside = True
        try:
            for p, tuned in weights:
                p.data = tuned
            tuned_output = module(*args, **kwargs)
        finally:
            for (p, _), original in zip(weights, originals):
                p.data = original
            inside = False
        sample = torch.lerp(output[0], tuned_output[0], weight)  # [2B, C, h, w]: eps (or v) of both branches
        return (sample, *output[1:]) if isinstance(output, tuple) else type(output)(sample=sample)

    handle = base.unet.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _tuned_inputs(args: tuple, kwargs: dict, counterparts: dict[int, tuple[Conditioning, Conditioning]]):
    """The UNet call's (args, kwargs) with the LoRA's conditioning in place of the sampler's."""
    positional = "encoder_hidden_states" not in kwargs  # the toy pipeline: unet(x, t, embeds)
    embeds = args[2] if positional else kwargs["encoder_hidden_states"]
    plain, tuned = counterparts.get(len(embeds), (None, None))
    if plain is None or not torch.equal(embeds, plain.prompt_embeds):
        raise RuntimeError("model guidance: the sampler passed the UNet a conditioning it was not prepared for")
    args = (*args[:2], tuned.prompt_embeds, *args[3:]) if positional else args
    kwargs = kwargs if positional else {**kwargs, "encoder_hidden_states": tuned.prompt_embeds}
    added = kwargs.get("added_cond_kwargs")
    if added and "text_embeds" in added:  # SDXL's pooled embedding (the time ids are the same for both)
        if not torch.equal(added["text_embeds"], plain.pooled):
            raise RuntimeError("model guidance: the sampler passed a pooled embedding it was not prepared for")
        kwargs = {**kwargs, "added_cond_kwargs": {**added, "text_embeds": tuned.pooled}}
    return args, kwargs
