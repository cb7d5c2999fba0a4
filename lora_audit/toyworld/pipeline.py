"""The toy base model: a miniature Stable Diffusion pipeline in pixel space.

Same parts and interfaces as SD, smaller: a CLIP tokenizer and ``CLIPTextModel`` whose
``last_hidden_state`` ([B, L, D]) is the UNet's ``encoder_hidden_states``; a diffusers
``UNet2DConditionModel`` that predicts v (as SD 2.x does; epsilon on request) for 32x32 RGB images
in [-1, 1] (no VAE); a DPM-Solver++ sampler with classifier-free guidance against the empty prompt.
``prompt_embeds`` may replace the text encoder's output, exactly as in SD pipelines: the
weight-to-image attack decodes its latent z that way. The pipeline saves and loads like any diffusers
pipeline (``model_index.json`` and one folder of config + safetensors per component), plus the one
file lora-audit writes itself: ``toy_pipeline.json``, the ``format_version`` of that layout.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from lora_audit.versioned import read_versioned, versioned
from lora_audit.toyworld.tokenizer import MODEL_MAX_LENGTH, build_tokenizer

FORMAT_FILE = "toy_pipeline.json"
FORMAT_VERSION = 1  # a pipeline directory without FORMAT_FILE was written before versioning: 1


@dataclass
class ToyBaseConfig:
    """Architecture and training recipe of the toy base model; the defaults build the shipped one."""

    # UNet: DownBlock2D at full resolution, cross-attention blocks below it (16x16 and 8x8 for 32 px)
    image_size: int = 32
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention_heads: int = 2  # per attention layer; head size 32 is the fastest on CPU here
    norm_num_groups: int = 8
    # text encoder (CLIPTextModel); its hidden size is the UNet's cross_attention_dim
    text_hidden_size: int = 64
    text_layers: int = 3
    text_heads: int = 4
    max_length: int = MODEL_MAX_LENGTH
    # noise schedule and what the UNet predicts
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "v_prediction"  # as in SD 2.x; epsilon made 32x32 pixel samples unstable
    # data: images 0 .. images_per_identity-1 of the first `identities` public identities
    identities: int = 6000
    images_per_identity: int = 3
    # training
    steps: int = 1600
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    caption_dropout: float = 0.1  # share of captions replaced by "" so classifier-free guidance works
    ema_decay: float = 0.999  # upper bound; the EMA warms up as (1 + step) / (10 + step)
    checkpoint_every: int = 100
    seed: int = 0

    @classmethod
    def tiny(cls) -> "ToyBaseConfig":
        """A seconds-fast model for tests: 16x16 images, a few channels, a handful of identities."""
        return cls(image_size=16, block_out_channels=(8, 16), attention_heads=1, norm_num_groups=4,
                   text_hidden_size=16, text_layers=1, text_heads=2, identities=8, images_per_identity=2,
                   steps=4, batch_size=4, warmup_steps=2, checkpoint_every=2)


class ToyFacePipeline(DiffusionPipeline):
    """Text-to-image pipeline of the toy face world; call it with a prompt or with ``prompt_embeds``."""

    def __init__(self, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, tokenizer,
                 scheduler: DPMSolverMultistepScheduler):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """diffusers' ``save_pretrained``, then ``toy_pipeline.json`` with the format version."""
        super().save_pretrained(save_directory, **kwargs)
        (Path(save_directory) / FORMAT_FILE).write_text(json.dumps(versioned({}, FORMAT_VERSION), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> "ToyFacePipeline":
        """diffusers' ``from_pretrained`` of a local directory, after checking its format version."""
        path = Path(pretrained_model_name_or_path) / FORMAT_FILE
        if path.is_file():
            read_versioned(path, "toy-pipeline", FORMAT_VERSION)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def training_scheduler(self) -> DDPMScheduler:
        """The forward (noising) process of training: DDPM with the sampler's noise schedule."""
        return DDPMScheduler.from_config(self.scheduler.config)

    def training_target(self, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the UNet learns to output for ``training_scheduler().add_noise(images, noise, timesteps)``."""
        if self.scheduler.config.prediction_type == "epsilon":
            return noise
        return self.training_scheduler().get_velocity(images, noise, timesteps)

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """Token ids [B, L], padded with <|endoftext|> to the tokenizer's model_max_length (as in SD)."""
        return self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids

    def encode_prompt(self, prompts: Sequence[str]) -> torch.Tensor:
        """The text encoder's last hidden state [B, L, D]: what the UNet attends to."""
        ids = self.tokenize(prompts).to(self.device)
        return self.text_encoder(ids).last_hidden_state

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str] | None = None, prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None, guidance_scale: float = 3.0,
                 num_inference_steps: int = 25, seed: int = 0, generator: torch.Generator | None = None,
                 num_images_per_prompt: int = 1, latents: torch.Tensor | None = None) -> np.ndarray:
        """Sample images as a float32 array [B, H, W, 3] in [0, 1], B = prompts x num_images_per_prompt.

        ``prompt_embeds`` [P, L, D] replaces the encoded prompt; ``negative_prompt_embeds`` ([1 or P, L, D],
        default: the empty prompt) is the unconditional branch of classifier-free guidance, which is
        skipped when ``guidance_scale`` is 1. The initial noise is ``latents`` [B, 3, H, W] (unscaled, as
        diffusers takes it) or comes from ``generator`` or, without one, from a CPU generator seeded with
        ``seed``: the same arguments always give the same images.
        """
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of `prompt` and `prompt_embeds`")
        if prompt is not None:
            prompt_embeds = self.encode_prompt([prompt] if isinstance(prompt, str) else prompt)
        dtype = self.unet.dtype
        cond = prompt_embeds.to(self.device, dtype).repeat_interleave(num_images_per_prompt, dim=0)  # [B, L, D]
        batch = cond.shape[0]
        if negative_prompt_embeds is None:
            negative_prompt_embeds = self.encode_prompt([""])
        uncond = negative_prompt_embeds.to(self.device, dtype)
        uncond = uncond.expand(batch, -1, -1) if len(uncond) == 1 else uncond.repeat_interleave(
            num_images_per_prompt, dim=0)  # [B, L, D]
        guided = guidance_scale != 1.0

        generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        size, channels = self.unet.config.sample_size, self.unet.config.in_channels
        x = torch.randn((batch, channels, size, size), generator=generator, dtype=torch.float32) \
            if latents is None else latents.float().cpu()
        x = (x * self.scheduler.init_noise_sigma).to(self.device, dtype)  # [B, 3, H, W]
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for t in self.scheduler.timesteps:
            if guided:  # the UNet's output (v or epsilon), pushed away from the unconditional one
                out_uncond, out_cond = self.unet(torch.cat([x, x]), t, torch.cat([uncond, cond])).sample.chunk(2)
                out = out_uncond + guidance_scale * (out_cond - out_uncond)
            else:
                out = self.unet(x, t, cond).sample
            x = self.scheduler.step(out, t, x).prev_sample
        images = (x.float().clamp(-1, 1) + 1) / 2  # [B, 3, H, W] in [0, 1]
        return images.permute(0, 2, 3, 1).cpu().numpy()


def make_toy_pipeline(config: ToyBaseConfig) -> ToyFacePipeline:
    """Freshly initialised components (deterministic in ``config.seed``), assembled into a pipeline."""
    tokenizer = build_tokenizer(config.max_length)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=config.text_hidden_size,
        intermediate_size=4 * config.text_hidden_size, num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads, max_position_embeddings=config.max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    levels = len(config.block_out_channels)
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        text_encoder = CLIPTextModel(text_config)
        unet = UNet2DConditionModel(
            sample_size=config.image_size, in_channels=3, out_channels=3,
            layers_per_block=config.layers_per_block, block_out_channels=config.block_out_channels,
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
            cross_attention_dim=config.text_hidden_size,
            attention_head_dim=config.attention_heads,  # diffusers' historical name for the number of heads
            norm_num_groups=config.norm_num_groups)
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        algorithm_type="dpmsolver++", solver_order=2,
        thresholding=True, sample_max_value=1.0,  # clip predicted images to [-1, 1] (pixel space)
        lambda_min_clipped=-5.1)  # needed with the cosine schedule
    return ToyFacePipeline(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def sample_grid(pipe: ToyFacePipeline, identity_ids: Sequence[int], seeds: Sequence[int], path: str | Path,
                guidance_scale: float = 3.0, num_inference_steps: int = 25, scale: int = 3) -> Path:
    """Write a PNG: one row per identity with its caption, its real render (image 0), then one sample per seed.

    Each sample is ``pipe(caption, seed=seed)``, so any tile can be reproduced on its own.
    """
    from lora_audit.figures import save_labelled_grid
    from lora_audit.toyworld.renderer import caption, identity, render

    size = pipe.unet.config.sample_size
    rows, labels = [], []
    for identity_id in identity_ids:
        text = caption(identity(identity_id))
        samples = [pipe(text, guidance_scale=guidance_scale, num_inference_steps=num_inference_steps, seed=seed)[0]
                   for seed in seeds]
        rows.append([render(identity_id, 0, size=size), None, *samples])
        labels.append(f"identity {identity_id}\n" + textwrap.fill(text.removeprefix("a face of a person with "), 44))
    headers = ["real render", ("", 1), (f"the base model prompted with the caption (guidance {guidance_scale:g}, "
                                        f"{num_inference_steps} steps), seeds {', '.join(map(str, seeds))}", len(seeds))]
    return save_labelled_grid(path, rows, labels, headers, scale=scale)

