"""Base diffusion models behind one small interface: the toy pixel-space pipeline and diffusers SD.

Fine-tuning and the attack only need: the UNet, what the UNet reads of a prompt (a
:class:`Conditioning`), images mapped to the UNet's input space (pixels for the toy, VAE latents
for SD), the training noise schedule, and sampling from a conditioning. :class:`DiffusionBase`
gives exactly that for every family, so the same code fine-tunes and attacks the toy world and a
local SD 1.x, SD 2.x or SDXL checkpoint.

What the UNet reads: the toy, SD1 and SD2 read the text encoder's hidden states [B, L, D] only.
SDXL reads the penultimate hidden states of both text encoders, concatenated ([B, 77, 768 + 1280]),
and through ``added_cond_kwargs`` the pooled, projected embedding of ``text_encoder_2`` [B, 1280]
with the six size/crop "time ids" (original size, crop top-left, target size, here all the
pipeline's resolution and no crop, as the SDXL pipeline's defaults).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Mapping, Union

import numpy as np
import torch

from lora_audit.errors import UsageError


@dataclass
class Conditioning:
    """What the UNet reads of a batch of prompts: ``prompt_embeds`` [B, L, D] and, for families whose
    UNet also reads a pooled text embedding (SDXL), ``pooled`` [B, P] (None otherwise).

    It batches like the embeddings do (``detach``, ``to``, ``expand``, ``repeat_interleave``,
    indexing on the batch dimension, ``len``, ``shape`` = the embeddings' shape), so code written for
    prompt-embedding tensors runs unchanged on it. Unbatched (``prompt_embeds`` [L, D], ``pooled``
    [P]) it is a single point, e.g. the attack latent's offset.
    """

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        return self.prompt_embeds.shape

    @property
    def device(self) -> torch.device:
        return self.prompt_embeds.device

    @property
    def dtype(self) -> torch.dtype:
        return self.prompt_embeds.dtype

    def __len__(self) -> int:
        return len(self.prompt_embeds)

    def _map(self, embeds_fn, pooled_fn=None) -> "Conditioning":
        pooled_fn = pooled_fn or embeds_fn
        return Conditioning(embeds_fn(self.prompt_embeds), None if self.pooled is None else pooled_fn(self.pooled))

    def detach(self) -> "Conditioning":
        return self._map(lambda t: t.detach())

    def to(self, *args, **kwargs) -> "Conditioning":
        return self._map(lambda t: t.to(*args, **kwargs))

    def expand(self, batch: int, *_rest) -> "Conditioning":
        """Batch ``batch`` copies of a batch of one (``expand(n, -1, -1)`` as on the embeddings)."""
        return self._map(lambda t: t.expand(batch, -1, -1), lambda t: t.expand(batch, -1))

    def expand_as(self, other: "Conditioning | torch.Tensor") -> "Conditioning":
        return self.expand(len(other))

    def repeat_interleave(self, repeats: int, dim: int = 0) -> "Conditioning":
        if dim != 0:
            raise ValueError("a Conditioning repeats along the batch dimension only")
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def __getitem__(self, index) -> "Conditioning":
        if isinstance(index, tuple):
            raise IndexError("a Conditioning is indexed along the batch dimension only")
        return self._map(lambda t: t[index])

    def flat(self) -> torch.Tensor:
        """[B, L*D (+ P)]: the embeddings flattened, the pooled vector after them (the attack's latent layout)."""
        parts = [self.prompt_embeds.flatten(1)] + ([] if self.pooled is None else [self.pooled])
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    @classmethod
    def from_flat(cls, flat: torch.Tensor, shape: tuple[int, int], pooled_dim: int = 0) -> "Conditioning":
        """The inverse of :meth:`flat`: [B, L*D + P] -> prompt_embeds [B, L, D], pooled [B, P] (or None)."""
        length = shape[0] * shape[1]
        embeds = flat[:, :length].reshape(len(flat), *shape)
        return cls(embeds, flat[:, length:] if pooled_dim else None)


Prompt = Union[torch.Tensor, Conditioning]  # prompt embeddings [B, L, D], or a Conditioning
"""A prompt as the UNet reads it: a tensor of prompt embeddings where the family reads nothing else."""


class DiffusionBase:
    """A loaded base pipeline (diffusers ``DiffusionPipeline``) with the interface lora-audit uses."""

    def __init__(self, pipe, family: str, precision: str = "auto"):
        self.pipe = pipe
        self.family = family  # toy | sd1 | sd2 | sdxl ...
        self.precision = precision  # auto | fp32 | fp16 | bf16 (diffusion/precision.py)
        self.unet = pipe.unet
        self.text_encoder = pipe.text_encoder
        self.tokenizer = pipe.tokenizer
        self.text_encoder_2 = getattr(pipe, "text_encoder_2", None)  # SDXL: OpenCLIP ViT-bigG with projection
        self.tokenizer_2 = getattr(pipe, "tokenizer_2", None)
        self.vae = getattr(pipe, "vae", None)

    @property
    def pooled_dim(self) -> int:
        """Width of the pooled text embedding the UNet reads (0: it reads none)."""
        if self.text_encoder_2 is None:
            return 0
        return int(self.text_encoder_2.config.projection_dim)

    def text_encoders(self) -> list:
        """The text encoders whose outputs the UNet reads (one, or SDXL's two)."""
        return [e for e in (self.text_encoder, self.text_encoder_2) if e is not None]

    def components(self, text_encoders: bool = True) -> dict:
        """The adaptable models by the component name LoRA files use: ``unet`` and (unless
        ``text_encoders`` is False) ``text_encoder`` (and SDXL's ``text_encoder_2``)."""
        names = ("text_encoder", "text_encoder_2")
        return {"unet": self.unet, **(dict(zip(names, self.text_encoders())) if text_encoders else {})}

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def autocast(self):
        """The context the models' forward passes run in: mixed precision on a GPU (:mod:`~lora_audit.diffusion.precision`)."""
        from lora_audit.diffusion.precision import autocast

        return autocast(self.device, self.precision)

    @property
    def image_size(self) -> int:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        return self.unet.config.sample_size * factor

    def train_scheduler(self):
        """The DDPM noise schedule the base was trained with (for add_noise and targets)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.pipe.scheduler.config)

    def _ids(self, tokenizer, prompts: list[str]) -> torch.Tensor:
        return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(self.device)

    def encode(self, prompts: list[str]) -> Conditioning:
        """What the UNet reads of ``prompts``: what the attack's latent z replaces.

        Toy, SD1, SD2: the text encoder's last hidden state [B, L, D]. SDXL: the penultimate hidden
        states of both text encoders concatenated, [B, 77, 2048], and ``text_encoder_2``'s pooled,
        projected embedding [B, 1280] (as ``StableDiffusionXLPipeline.encode_prompt``, no clip skip).
        """
        return self.encode_tokens(self.tokenize(prompts))

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, ...]:
        """Token ids of ``prompts`` for each text encoder, [B, L] each (one, or SDXL's two)."""
        tokenizers = (self.tokenizer,) if self.text_encoder_2 is None else (self.tokenizer, self.tokenizer_2)
        return tuple(self._ids(tokenizer, prompts) for tokenizer in tokenizers)

    def encode_tokens(self, ids: tuple[torch.Tensor, ...]) -> Conditioning:
        """:meth:`encode` from token ids (:meth:`tokenize`): a pure function of the ids and the
        encoders' parameters, which per-example gradients (``torch.func``) need."""
        if self.text_encoder_2 is None:
            return Conditioning(self.text_encoder(ids[0])[0])
        hidden, pooled = [], None
        for tokens, encoder in zip(ids, (self.text_encoder, self.text_encoder_2)):
            out = encoder(tokens, output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds [B, P]
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        return Conditioning(torch.cat(hidden, dim=-1), pooled)

    def encode_prompt(self, prompts: list[str]) -> Prompt:
        """:meth:`encode` as a plain tensor [B, L, D] where that is all the UNet reads (toy, SD1, SD2);
        for SDXL the :class:`Conditioning` itself (it batches like the tensor)."""
        cond = self.encode(prompts)
        return cond.prompt_embeds if cond.pooled is None else cond

    def conditioning(self, prompt: Prompt) -> Conditioning:
        """``prompt`` as a :class:`Conditioning`; a bare tensor is refused where the UNet needs more."""
        if isinstance(prompt, Conditioning):
            return prompt
        if self.pooled_dim:
            raise UsageError(f"the {self.family} UNet also reads a pooled text embedding: "
                             "pass a Conditioning (DiffusionBase.encode), not prompt embeddings alone")
        return Conditioning(prompt)

    def add_time_ids(self, batch: int) -> torch.Tensor:
        """SDXL's size and crop conditioning, [B, 6]: original size, crop top-left (0, 0), target size."""
        size = self.image_size
        ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=self.unet.dtype, device=self.device)
        return ids.expand(batch, -1)

    def unet_kwargs(self, prompt: Prompt) -> dict:
        """The UNet's conditioning arguments for ``prompt``: ``unet(x, t, **base.unet_kwargs(cond))``."""
        cond = self.conditioning(prompt)
        kwargs = {"encoder_hidden_states": cond.prompt_embeds}
        if cond.pooled is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": cond.pooled, "time_ids": self.add_time_ids(len(cond))}
        return kwargs

    def unconditional(self, batch: int) -> Conditioning:
        """The unconditional branch of classifier-free guidance: the empty prompt, or zeros where the
        pipeline says so (SDXL's ``force_zeros_for_empty_prompt``), ``batch`` times."""
        cond = self.encode([""])
        if getattr(self.pipe.config, "force_zeros_for_empty_prompt", False):
            cond = cond._map(torch.zeros_like)
        return cond.expand(batch)

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
                for weight, original in reversed(saved):  # last in, first out: a weight named twice
                    weight.copy_(original)  # (``text_model.`` given and not) ends as it was before the first

    def weight_of(self, name: str) -> torch.nn.Parameter:
        """The weight of a canonical module name (``unet.<path>``, ``text_encoder.<path>``,
        ``text_encoder_2.<path>``).

        A text-encoder path resolves with or without its ``text_model.`` level: LoRA files name it
        (kohya ``lora_te_text_model_...``) or not (PEFT state dicts of a transformers-5
        ``CLIPTextModel``, which has no such level, while ``CLIPTextModelWithProjection`` has).
        """
        component, _, path = name.partition(".")
        model = {"unet": self.unet, "text_encoder": self.text_encoder,
                 "text_encoder_2": self.text_encoder_2}.get(component)
        candidates = [path]
        if component.startswith("text_encoder"):
            candidates.append(path.removeprefix("text_model.") if path.startswith("text_model.") else f"text_model.{path}")
        for candidate in candidates if model is not None else ():
            try:
                return model.get_submodule(candidate).weight
            except AttributeError:  # no such module, or a module without a weight
                continue
        raise UsageError(f"the LoRA adapts {name}, which this {self.family} base model does not have")

    @torch.no_grad()
    def generate(self, prompt: Prompt, *, guidance_scale: float = 3.0, steps: int = 25, seed: int = 0,
                 negative: Prompt | None = None, noise: torch.Tensor | None = None) -> np.ndarray:
        """Sample one image per row of ``prompt`` (embeddings [B, L, D] or a :class:`Conditioning`);
        returns [B, H, W, 3] floats in [0, 1] at the pipeline's resolution. ``negative``: the unconditional
        branch per row (default: the empty prompt encoded now); ``noise``: the initial noise
        (default: :meth:`initial_noise` of ``seed``)."""
        with self.autocast():
            if self.vae is None:  # the toy pipeline: pixel space, its own sampler
                uncond = self.encode_prompt([""]).expand_as(prompt) if negative is None else negative
                generator = torch.Generator(device="cpu").manual_seed(seed)
                return self.pipe(prompt_embeds=prompt, negative_prompt_embeds=uncond, latents=noise,
                                 guidance_scale=guidance_scale, num_inference_steps=steps, generator=generator)
            cond = self.conditioning(prompt)
            uncond = self.unconditional(len(cond)) if negative is None else self.conditioning(negative)
            generator = torch.Generator(device="cpu").manual_seed(seed)
            kwargs = {}
            if cond.pooled is not None:
                kwargs = {"pooled_prompt_embeds": cond.pooled, "negative_pooled_prompt_embeds": uncond.pooled}
            out = self.pipe(prompt_embeds=cond.prompt_embeds, negative_prompt_embeds=uncond.prompt_embeds,
                            guidance_scale=guidance_scale, num_inference_steps=steps, generator=generator, latents=noise,
                            output_type="np", height=self.image_size, width=self.image_size, **kwargs)
        return np.asarray(out.images, dtype=np.float32)

    def initial_noise(self, batch: int, seed: int = 0) -> torch.Tensor:
        """The initial noise :meth:`generate` draws for ``batch`` images from ``seed`` (unscaled): several
        LoRAs' images decoded in one batch start from the noise each would get alone."""
        generator = torch.Generator(device="cpu").manual_seed(seed)
        if self.vae is None:
            size = self.unet.config.sample_size
            return torch.randn((batch, self.unet.config.in_channels, size, size), generator=generator, dtype=torch.float32)
        size = self.image_size // self.pipe.vae_scale_factor
        dtype = (self.text_encoder_2 or self.text_encoder or self.unet).dtype  # the pipelines' prompt-embedding dtype
        shape = (batch, self.unet.config.in_channels, size, size)
        return torch.randn(shape, generator=generator, device="cpu", dtype=dtype).to(self.device)


class Denoiser(torch.nn.Module):
    """A base's text encoders and UNet as one module tree, (noisy, t, token ids) -> UNet output, so
    that ``torch.func.functional_call`` swaps the adapter parameters of all of them at once (the
    per-example gradients of DP-SGD)."""

    def __init__(self, base: DiffusionBase):
        super().__init__()
        self.unet = base.unet
        self.text_encoders = torch.nn.ModuleList(base.text_encoders())
        self._base = [base]  # not a submodule: the tree above already holds its parts

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, ids: tuple[torch.Tensor, ...]) -> torch.Tensor:
        base = self._base[0]  # noisy [b, C, h, w], t [b], ids ([b, L], ...) -> [b, C, h, w]
        return base.unet(noisy, t, **base.unet_kwargs(base.encode_tokens(ids))).sample
