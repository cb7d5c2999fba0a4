"""Reconstructing the identity behind a LoRA file from its weights alone (``lora-audit reconstruct``).

K = latents x seeds images: several samples z ~ q(z | dW, r) (the VAE's spread of plausible faces),
each decoded with several sampler noises by the base model patched with the LoRA (one batch, one
generator seed: the whole set is reproducible from ``seed``). The fine-tuning
step r comes from kohya's metadata when the file has it, else from the attack model's estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lora_audit.attack.decoder import batchable, decode, decode_many
from lora_audit.attack.model import AttackModel
from lora_audit.attack.resolve import AttackPlan, AttackSources
from lora_audit.errors import InputError, UsageError
from lora_audit.diffusion.base import DiffusionBase

STEP_KEYS = ("ss_max_train_steps", "ss_steps")  # kohya's total steps, then the steps actually run


@dataclass
class Reconstruction:
    images: np.ndarray  # [latents * seeds, H, W, 3] in [0, 1], latent-major
    latents: int
    seeds: int
    step: float  # the fine-tuning step r the encoder was conditioned on
    step_source: str  # "metadata:<key>", "estimate" or "given"


def load_attack(plan: AttackPlan, device: str | None = None) -> tuple[AttackModel, DiffusionBase]:
    """The attack model and base pipeline of a ready ``plan`` (see :mod:`lora_audit.attack.resolve`)."""
    from lora_audit.families import load_base

    pipeline = load_base(plan.base, device)
    attack = AttackModel.load(plan.attack_dir, device=pipeline.device)
    if attack.config.family != pipeline.family:
        raise InputError("attack_model", plan.attack_dir, f"attacks {attack.config.family} LoRAs, but the base "
                         f"{plan.base} is a {pipeline.family} pipeline")
    return attack, pipeline


def step_from_metadata(metadata: dict[str, str]) -> tuple[int, str] | None:
    """(r, key) from kohya's ``ss_max_train_steps`` / ``ss_steps`` when present and a positive integer."""
    for key in STEP_KEYS:
        value = str(metadata.get(key, "")).strip()
        if value.isdigit() and int(value) > 0:
            return int(value), key
    return None


@torch.no_grad()
def reconstruct(attack: AttackModel, base: DiffusionBase, lora_file, *, latents: int = 4, seeds: int = 2,
                step: float | None = None, sampling_steps: int = 25, guidance_scale: float = 3.0,
                seed: int = 0) -> Reconstruction:
    """Reconstruct ``latents * seeds`` images of the identity behind an opened LoRA file."""
    c, step, source = _coefficients(attack, base, lora_file, latents, step, seed)
    z = attack.to_latent(c).repeat_interleave(seeds, dim=0)  # [latents * seeds, L, D], latent-major
    images = decode(base, lora_file.deltas(), z, seed=seed, steps=sampling_steps, guidance_scale=guidance_scale)
    return Reconstruction(images, latents, seeds, step, source)


@torch.no_grad()
def reconstruct_many(attack: AttackModel, base: DiffusionBase, lora_files: list, *, latents: int = 4, seeds: int = 2,
                     sampling_steps: int = 25, guidance_scale: float = 3.0, seed: int = 0) -> list[Reconstruction]:
    """:func:`reconstruct` of several opened LoRA files, their images decoded in one batch where their deltas
    allow it (:func:`~lora_audit.attack.decoder.batchable`; the others one at a time): the same images,
    up to float rounding, whichever files share the batch."""
    together = [i for i, f in enumerate(lora_files) if batchable(base, [m.name for m in f.modules])]
    together = together if len(together) > 1 else []  # a LoRA alone: the patched base of reconstruct()
    deltas = {i: {m.name: (lora_files[i].factors(m) if m.name.startswith("unet.") else None) or lora_files[i].delta(m)
                  for m in lora_files[i].modules} for i in together}  # UNet deltas as factors where they are a product
    results: dict[int, Reconstruction] = {}
    if together:
        found = [_coefficients(attack, base, lora_files[i], latents, None, seed) for i in together]
        z = attack.to_latent(torch.cat([c for c, _, _ in found])).repeat_interleave(seeds, dim=0)  # [S * K, L, D]
        images = decode_many(base, [deltas[i] for i in together], z, seed=seed, steps=sampling_steps,
                             guidance_scale=guidance_scale)
        k = latents * seeds
        for n, (i, (_, step, source)) in enumerate(zip(together, found)):
            results[i] = Reconstruction(images[n * k : (n + 1) * k], latents, seeds, step, source)
    for i, lora_file in enumerate(lora_files):
        if i not in results:
            results[i] = reconstruct(attack, base, lora_file, latents=latents, seeds=seeds,
                                     sampling_steps=sampling_steps, guidance_scale=guidance_scale, seed=seed)
    return [results[i] for i in range(len(lora_files))]


def _coefficients(attack: AttackModel, base: DiffusionBase, lora_file, latents: int, step: float | None,
                  seed: int) -> tuple[torch.Tensor, float, str]:
    """``latents`` samples c ~ q(c | dW, r) [latents, R] (generator seeded with ``seed``), the step r and its source."""
    if attack.config.family != base.family:
        raise UsageError(f"the attack model was trained for the {attack.config.family} base, "
                         f"but the base model given is {base.family}")
    device = attack.feature_mean.device
    raw, padding = attack.file_inputs(lora_file)
    raw, padding = raw[None].to(device), padding[None].to(device)  # [1, M, k*k], [1, M]
    if step is not None:
        source = "given"
    elif (found := step_from_metadata(lora_file.metadata)) is not None:
        step, source = found[0], f"metadata:{found[1]}"
    else:
        step, source = attack.estimate_step(raw, padding).item(), "estimate"
    mu, logvar = attack.posterior(raw, padding, torch.tensor([float(step)], device=device))  # [1, R] each
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return attack.sample(mu.expand(latents, -1), logvar.expand(latents, -1), generator), float(step), source


def reconstruct_file(path: str, sources: AttackSources, *, latents: int = 4, seeds: int = 2,
                     step: float | None = None, sampling_steps: int = 25, seed: int = 0,
                     device: str | None = None) -> Reconstruction:
    """Reconstruct the identity behind the LoRA file at ``path`` with the attack ``sources`` give for its
    family, on ``device`` (default: CUDA when there is one)."""
    from lora_audit.weights import open_lora

    with open_lora(path) as lora_file:
        attack, base = load_attack(sources.plan(lora_file.base_model).require(), device)
        return reconstruct(attack, base, lora_file, latents=latents, seeds=seeds, step=step,
                           sampling_steps=sampling_steps, seed=seed)


def save_reconstruction(result: Reconstruction, out: Path, name: str, scale: int = 4) -> list[Path]:
    """``<name>_z<i>_seed<j>.png`` per image and ``<name>_grid.png`` (rows: z samples, columns: seeds)."""
    tiles = [f"{name}_z{k // result.seeds}_seed{k % result.seeds}" for k in range(len(result.images))]
    return save_images(result.images, out, name, tiles, columns=result.seeds, scale=scale)


def save_images(images: np.ndarray, out: Path, name: str, tiles: list[str], columns: int, scale: int = 4) -> list[Path]:
    """Images [K, H, W, 3] in [0, 1] as ``<tile>.png`` each, then ``<name>_grid.png`` (rows of ``columns``)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    pixels = (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)  # [K, H, W, 3]
    for tile, image in zip(tiles, pixels):
        path = out / f"{tile}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    rows = len(pixels) // columns
    grid = pixels.reshape(rows, columns, *pixels.shape[1:])  # [rows, columns, H, W, 3]
    grid = grid.transpose(0, 2, 1, 3, 4).reshape(rows * pixels.shape[1], columns * pixels.shape[2], 3)
    grid_path = out / f"{name}_grid.png"
    image = Image.fromarray(grid)
    image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(grid_path)
    return [*paths, grid_path]
