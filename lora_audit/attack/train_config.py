"""The attack trainer's settings (torch-free, so the CLI can show the defaults without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    steps: int = 2000
    shadows_per_step: int = 8
    images_per_shadow: int = 2
    lr: float = 5e-4
    beta: float = 1e-4  # KL weight after warm-up (KL and MSE are both per-dimension means)
    beta_warmup: float = 0.5  # fraction of the steps over which beta rises from 0
    latent_rank: int = 48  # coefficients of z in the prompt-embedding subspace
    prompts: int = 2000  # face descriptions that span that subspace
    final_only: bool = False  # the ablation: last snapshot only, no step token
    module_dropout: float = 0.5  # share of module tokens hidden from the encoder at each training step
    validation: int = 8  # shadow identities held out of training (the last ones)
    sketch_k: int = 16
    width: int = 128
    layers: int = 2
    heads: int = 4
    log_every: int = 25
    checkpoint_every: int = 200
    seed: int = 0

    @classmethod
    def tiny(cls) -> "TrainConfig":
        return cls(steps=6, shadows_per_step=2, images_per_shadow=1, validation=1, sketch_k=4, width=16,
                   latent_rank=4, prompts=16,
                   layers=1, heads=2, log_every=2, checkpoint_every=3)
