"""The trained attack model: weight encoder, input normalisation, latent prior and step estimator.

Saved as two files side by side: ``attack.json`` (the configuration and training summary, with a
``format_version``) and ``attack.safetensors`` (the encoder's weights and the statistics fitted on the
shadow set).

The latent z stands in for the base model's prompt embeddings: z = offset + c @ basis, with the
whitened prompt-embedding subspace of :mod:`lora_audit.attack.latent`, prior c ~ N(0, I), and the
encoder predicting q(c | dW, r). For a base whose UNet also reads a pooled text embedding (SDXL,
``AttackConfig.pooled_dim`` > 0) z covers both: the basis rows are [L*D + P], the flattened
embeddings then the pooled vector, and z is a :class:`~lora_audit.diffusion.base.Conditioning`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from lora_audit.attack.encoder import EncoderConfig, WeightEncoder
from lora_audit.attack.features import ModuleSketcher
from lora_audit.errors import InputError, InvalidFileError, NotAttackableError
from lora_audit.versioned import read_versioned, versioned

CONFIG_FILE = "attack.json"
WEIGHTS_FILE = "attack.safetensors"
FORMAT_VERSION = 1  # of attack.json; files without one were written before versioning: 1


@dataclass
class AttackConfig:
    family: str  # the base family the attack decodes with ("toy", "sd1", ...)
    encoder: EncoderConfig
    sketch_seed: int = 0
    class_prompt: str = "a face of a person"  # the generic faces scan compares with
    training: dict = field(default_factory=dict)  # what the trainer records: data, cost, curves summary
    evaluation: dict = field(default_factory=dict)  # held-out figures, and the generic-face baseline scan uses
    pooled_dim: int = 0  # width of the pooled text embedding z also carries (SDXL: 1280; 0: none)

    @classmethod
    def from_dict(cls, data: dict) -> "AttackConfig":
        return cls(**{**data, "encoder": EncoderConfig(**data["encoder"])})


class AttackModel(nn.Module):
    """q(z | dW, r) for one base family, plus the statistics that normalise its inputs."""

    def __init__(self, config: AttackConfig):
        super().__init__()
        self.config = config
        e = config.encoder
        m, kk = len(e.module_names), e.sketch_k ** 2
        self.encoder = WeightEncoder(e)
        with torch.no_grad():  # start at the prior N(0, I)
            for head in (self.encoder.mu_head, self.encoder.logvar_head):
                head.weight.mul_(1e-2)
                head.bias.zero_()
        self.sketcher = ModuleSketcher(e.sketch_k, config.sketch_seed)
        self.register_buffer("feature_mean", torch.zeros(m, kk))  # [M, k*k]
        self.register_buffer("feature_std", torch.ones(m, kk))  # [M, k*k]
        self.register_buffer("latent_offset", torch.zeros(e.latent_len, e.latent_dim))  # [L, D]
        if config.pooled_dim:
            self.register_buffer("latent_pooled_offset", torch.zeros(config.pooled_dim))  # [P]
        self.register_buffer("latent_basis", torch.zeros(e.latent_rank, e.latent_len * e.latent_dim
                                                         + config.pooled_dim))  # [R, L*D (+ P)]
        self.register_buffer("log_norm_mean", torch.zeros(m))  # [M], imputes missing modules for the step estimate
        self.register_buffer("step_coef", torch.zeros(m + 1))  # log r ~ coef[0] + log|sketch| @ coef[1:]

    # -- inputs --------------------------------------------------------------------------------
    def module_inputs(self, sketches: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw sketches by module name -> ([M, k*k] float32 in this family's module order, padding [M]).

        Modules the family does not know are left out; modules the LoRA lacks are zeros and padded.
        """
        names = self.config.encoder.module_names
        raw = torch.zeros(len(names), self.config.encoder.sketch_k ** 2)  # [M, k*k]
        padding = torch.ones(len(names), dtype=torch.bool)  # [M]
        for i, name in enumerate(names):
            if name in sketches:
                raw[i] = torch.as_tensor(sketches[name], dtype=torch.float32)
                padding[i] = False
        return raw, padding

    def file_inputs(self, lora_file) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs of an opened :class:`~lora_audit.weights.LoraFile` (any layout, any rank)."""
        known = set(self.config.encoder.module_names)
        sketches = {m.name: self.sketcher.sketch_module(lora_file, m) for m in lora_file.modules if m.name in known}
        if not sketches:
            raise NotAttackableError(f"none of its modules is one the {self.config.family} attack model knows")
        return self.module_inputs(sketches)

    # -- the encoder ---------------------------------------------------------------------------
    def posterior(self, raw: torch.Tensor, padding: torch.Tensor,
                  step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """raw [B, M, k*k], padding [B, M], step [B] -> mu, logvar of the coefficients c, [B, R] each."""
        x = (raw - self.feature_mean) / self.feature_std  # [B, M, k*k]
        x = x.masked_fill(padding[..., None], 0.0)
        return self.encoder(x, step, padding)

    def set_subspace(self, offset, basis: torch.Tensor) -> None:
        """Store the latent subspace of :func:`~lora_audit.attack.latent.prompt_subspace`: offset [L, D]
        (with a pooled embedding: an unbatched Conditioning of [L, D] and [P]) and basis [R, L*D (+ P)]."""
        with torch.no_grad():
            if self.config.pooled_dim:
                self.latent_offset.copy_(offset.prompt_embeds)
                self.latent_pooled_offset.copy_(offset.pooled)
            else:
                self.latent_offset.copy_(offset)
            self.latent_basis.copy_(basis)

    def _flat_offset(self) -> torch.Tensor:
        """The offset in the basis' layout, [L*D (+ P)]."""
        flat = self.latent_offset.flatten()
        return torch.cat([flat, self.latent_pooled_offset]) if self.config.pooled_dim else flat

    def to_latent(self, c: torch.Tensor):
        """Coefficients c [B, R] -> z = offset + c @ basis, [B, L, D] (in place of prompt embeddings);
        with a pooled embedding, a :class:`~lora_audit.diffusion.base.Conditioning` of [B, L, D] and [B, P]."""
        if not self.config.pooled_dim:
            return self.latent_offset + (c @ self.latent_basis).view(len(c), *self.latent_offset.shape)
        from lora_audit.diffusion.base import Conditioning

        flat = self._flat_offset() + c @ self.latent_basis  # [B, L*D + P]
        return Conditioning.from_flat(flat, tuple(self.latent_offset.shape), self.config.pooled_dim)

    def from_latent(self, embeds) -> torch.Tensor:
        """Prompt embeddings [B, L, D] (with a pooled embedding: a Conditioning) -> the coefficients
        c [B, R] whose z is closest (least squares).

        The basis rows are orthogonal (principal directions x std), so the projection is one product.
        """
        if self.config.pooled_dim:
            residual = embeds.flat().to(self.latent_basis) - self._flat_offset()  # [B, L*D + P]
        else:
            residual = (embeds.to(self.latent_basis) - self.latent_offset).flatten(1)  # [B, L*D]
        squared = (self.latent_basis ** 2).sum(1).clamp_min(torch.finfo(self.latent_basis.dtype).tiny)  # [R]
        return residual @ self.latent_basis.T / squared  # [B, R]

    @staticmethod
    def kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(q(c) || N(0, I)) per coefficient, averaged: [B, R] -> scalar."""
        return 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).mean()

    @staticmethod
    def sample(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """c = mu + sigma * eps, [B, R]."""
        return WeightEncoder.sample(mu, logvar, generator)

    # -- the fine-tuning step ------------------------------------------------------------------
    def _log_norms(self, raw: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        norms = torch.log(raw.norm(dim=-1) + 1e-12)  # [B, M]
        return torch.where(padding, self.log_norm_mean, norms)

    def estimate_step(self, raw: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """The fine-tuning step r a LoRA was saved at, estimated from its module norms: [B] floats."""
        log_r = self.step_coef[0] + self._log_norms(raw, padding) @ self.step_coef[1:]  # [B]
        return log_r.exp().clamp(1.0, float(self.config.encoder.max_step))

    @torch.no_grad()
    def fit_statistics(self, raw: torch.Tensor, padding: torch.Tensor, steps: torch.Tensor, ridge: float = 1e-2) -> None:
        """Fit the input normalisation and the step estimator on training pairs raw [N, M, k*k], steps [N]."""
        present = (~padding).float()[..., None]  # [N, M, 1]
        count = present.sum(0).clamp(min=1)  # [M, 1]
        mean = (raw * present).sum(0) / count  # [M, k*k]
        var = (((raw - mean) ** 2) * present).sum(0) / count
        self.feature_mean.copy_(mean)
        std = var.sqrt()
        self.feature_std.copy_(torch.where(std > 1e-12, std, torch.ones_like(std)))  # constant / never seen: unscaled
        norms = torch.log(raw.norm(dim=-1) + 1e-12)  # [N, M]
        self.log_norm_mean.copy_((norms * present[..., 0]).sum(0) / count[:, 0])
        x = torch.cat([torch.ones(len(raw), 1), self._log_norms(raw, padding)], 1).double()  # [N, 1 + M]
        gram = x.T @ x + ridge * torch.eye(x.shape[1], dtype=torch.float64)
        self.step_coef.copy_(torch.linalg.solve(gram, x.T @ torch.log(steps.double())).float())

    # -- files ---------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        import safetensors.torch

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        safetensors.torch.save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        tmp = directory / f".{CONFIG_FILE}.tmp"
        tmp.write_text(json.dumps(versioned(asdict(self.config), FORMAT_VERSION), indent=2))
        tmp.replace(directory / CONFIG_FILE)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> "AttackModel":
        import safetensors.torch

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        if not config_path.is_file() or not weights_path.is_file():
            raise InputError("attack_model", directory,
                             f"is not an attack model (expected {CONFIG_FILE} and {WEIGHTS_FILE})")
        data = read_versioned(config_path, "attack-model", FORMAT_VERSION)
        try:
            config = AttackConfig.from_dict(data)
        except (ValueError, TypeError, KeyError) as e:
            raise InvalidFileError(str(config_path), f"not a valid attack configuration ({e})") from None
        model = cls(config)
        try:
            model.load_state_dict(safetensors.torch.load_file(str(weights_path)))
        except Exception as e:  # a corrupt file or weights of another configuration
            raise InvalidFileError(str(weights_path), "does not hold this attack model's weights "
                                   f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
        return model.to(device).eval()
