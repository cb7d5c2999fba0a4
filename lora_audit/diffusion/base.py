"""Base diffusion models behind one small interface: the toy pixel-space pipeline and diffusers SD.

Fine-tuning and the attack only need: the UNet, prompt embeddings, images mapped to the UNet's
input space (pixels for the toy, VAE latents for SD), the training noise schedule, and sampling
from ``prompt_embeds``. :class:`DiffusionBase` gives exactly that for both, so the same code
fine-tunes and attacks the toy world and a local Stable Diffusion checkpoint.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import numpy as np
import torch

from lora_audit.errors import UsageError


class DiffusionBase:
    """A loaded base pipeline (diffusers ``DiffusionPipeline``) with the interface lora-audit uses."""

    def __init__(self, pipe, family: str):
        self.pipe = pipe
        self.family = family  # toy | sd1 | sd2 | sdxl ...
        self.unet = pipe.unet
        self.text_encoder = pipe.text_encoder
        self.tokenizer = pipe.tokenizer
        self.vae = getattr(pipe, "vae", None)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def image_size(self) -> int:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        return self.unet.config.sample_size * factor

    def train_scheduler(self):
        """The DDPM noise schedule the base was trained with (for add_noise and targets)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.pipe.scheduler.config)

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Text-encoder output, [B, L, D]: what the attack's latent z replaces."""
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0]

    def to_model_input(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, H, W, 3] in [0, 1] -> UNet input [B, C, h, w] (pixels in [-1, 1], or VAE latents)."""
        x = images.permute(0, 3, 1, 2).to(self.device, self.unet.dtype) * 2 - 1  # [B, 3, H, W]
        if self.vae is None:
            return x
        return self.vae.encode(x.to(self.vae.dtype)).latent_dist.sample() * self.vae.config.scaling_factor

    @contextlib.contextmanager
    def patched(self, deltas: Mapping[str, np.ndarray | torch.Tensor]) -> Iterator["DiffusionBase"]:
        """Add each weight delta dW to its module for the duration of the block, then restore.

        ``deltas`` maps canonical module names (``unet.<path>``, ``text_encoder.<path>``) to dW, as
        :meth:`lora_audit.weights.LoraFile.deltas` gives them: any layout and any rank patch the same way.
        """
        saved = []
        try:
            for name, dw in deltas.items():
                weight = self.weight_of(name)
                dw = torch.as_tensor(dw).to(weight.device, weight.dtype)
                if dw.numel() != weight.numel():
                    raise UsageError(f"{name}: LoRA delta shape {tuple(dw.shape)} does not fit weight {tuple(weight.shape)}")
                saved.append((weight, weight.detach().clone()))
                with torch.no_grad():
                    weight += dw.reshape(weight.shape)
            yield self
        finally:
            with torch.no_grad():
                for weight, original in saved:
                    weight.copy_(original)

    def weight_of(self, name: str) -> torch.nn.Parameter:
        """The weight of a canonical module name (``unet.<path>``, ``text_encoder.<path>``)."""
        component, _, path = name.partition(".")
        model = {"unet": self.unet, "text_encoder": self.text_encoder}.get(component)
        try:
            return model.get_submodule(path).weight
        except AttributeError:  # no such component, module, or a module without a weight
            raise UsageError(f"the LoRA adapts {name}, which this {self.family} base model does not have") from None

    @torch.no_grad()
    def generate(self, prompt_embeds: torch.Tensor, *, guidance_scale: float = 3.0, steps: int = 25,
                 seed: int = 0) -> np.ndarray:
        """Sample one image per row of ``prompt_embeds`` [B, L, D]; returns [B, H, W, 3] floats in [0, 1]."""
        uncond = self.encode_prompt([""]).expand_as(prompt_embeds)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        if self.vae is None:
            return self.pipe(prompt_embeds=prompt_embeds, negative_prompt_embeds=uncond,
                             guidance_scale=guidance_scale, num_inference_steps=steps, generator=generator)
        out = self.pipe(prompt_embeds=prompt_embeds, negative_prompt_embeds=uncond, guidance_scale=guidance_scale,
                        num_inference_steps=steps, generator=generator, output_type="np")
        return np.asarray(out.images, dtype=np.float32)
