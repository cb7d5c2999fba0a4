"""Training the weight-to-image VAE on shadow trajectories (``lora-audit train-attack``).

Each step draws shadow identities, one snapshot step r of each, and a few of the identity's images.
The encoder maps (dW at r, r) to q(z); a sample z conditions the base UNet patched with that dW,
and the loss is the diffusion loss (epsilon- or v-MSE, as the base was trained) on the identity's
images at random diffusion times plus beta * KL(q || N(0, I)), with beta raised linearly from 0 over
the first ``beta_warmup`` of training (z = offset + c @ basis, see :mod:`lora_audit.attack.latent`). Checkpoints every ``checkpoint_every`` steps make it resumable.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lora_audit.attack.decoder import per_sample_deltas
from lora_audit.attack.encoder import EncoderConfig
from lora_audit.attack.latent import prompt_subspace
from lora_audit.attack.model import AttackConfig, AttackModel
from lora_audit.attack.shadow import Trajectory
from lora_audit.attack.train_config import TrainConfig
from lora_audit.errors import UsageError
from lora_audit.diffusion.base import DiffusionBase
from lora_audit.families import get_family

CHECKPOINT = "checkpoint.pt"
CURVES = "curves.json"
Progress = Callable[[int, int, dict], None]


@dataclass
class _Pair:
    """One training pair: a trajectory at one snapshot step, with its tensors ready."""

    trajectory: int
    step: int
    raw: torch.Tensor  # [M, k*k]
    padding: torch.Tensor  # [M]
    factors: list[tuple[str, torch.Tensor, torch.Tensor, float]]  # UNet modules: (name, B, A, scale)


def split(trajectories: list[Trajectory], validation: int) -> tuple[list[Trajectory], list[Trajectory]]:
    """Training and held-out validation trajectories (the last ``validation`` ones are held out)."""
    if len(trajectories) <= validation:
        raise UsageError(f"{len(trajectories)} shadow trajectories, but {validation} are held out for validation: "
                         "make more shadows or lower --validation")
    return trajectories[: len(trajectories) - validation], trajectories[len(trajectories) - validation:]


def train_attack(base: DiffusionBase, trajectories: list[Trajectory], config: TrainConfig, out: Path,
                 progress: Progress | None = None) -> AttackModel:
    """Train (or resume) an attack model under ``out``; writes attack.json/.safetensors and curves."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    train, held_out = split(trajectories, config.validation)
    for module in (base.unet, *base.text_encoders(), base.vae):  # only the encoder learns
        if module is not None:
            module.requires_grad_(False)
    offset, basis, explained = prompt_subspace(base, get_family(base.family).face_prompts(config.prompts), config.latent_rank)
    model = AttackModel(_attack_config(base, trajectories, config, len(basis)))
    model.set_subspace(offset, basis)
    pairs = _pairs(model, train, config.final_only)
    val_pairs = _pairs(model, held_out, True, first_index=len(train))
    raw = torch.stack([p.raw for p in pairs])  # [N, M, k*k]
    model.fit_statistics(raw, torch.stack([p.padding for p in pairs]), torch.tensor([float(p.step) for p in pairs]))
    model.to(base.device)
    optimizer = torch.optim.AdamW(model.encoder.parameters(), lr=config.lr)
    start, curves, seconds, rng = _resume(out, model, optimizer, _identity(config, train))
    images = [torch.as_tensor(t.images, dtype=torch.float32) / 255 for t in trajectories]  # [N, H, W, 3] each
    scheduler = base.train_scheduler()
    clock = time.perf_counter()
    model.train()
    for step in range(start + 1, config.steps + 1):
        batch = [pairs[i] for i in rng.integers(len(pairs), size=config.shadows_per_step)]
        beta = config.beta * min(1.0, step / max(1.0, config.beta_warmup * config.steps))
        mse, kl = _loss(base, model, scheduler, batch, images, config, rng)
        loss = mse + beta * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.encoder.parameters(), 1.0)
        optimizer.step()
        if step % config.log_every == 0 or step == config.steps:
            row = {"step": step, "loss": loss.item(), "mse": mse.item(), "kl": kl.item(), "beta": beta,
                   "val_mse": _validation_mse(base, model, scheduler, val_pairs, images, config)}
            curves.append(row)
            if progress:
                progress(step, config.steps, {k: v for k, v in row.items() if k in ("mse", "kl", "val_mse")})
        if step % config.checkpoint_every == 0 and step < config.steps:
            _checkpoint(out, model, optimizer, step, curves, seconds + time.perf_counter() - clock, rng,
                        _identity(config, train))
    model.eval()
    seconds += time.perf_counter() - clock
    model.config.training = {
        "config": asdict(config), "shadow_identities": len(train), "held_out_identities": len(held_out),
        "held_out": [t.identity for t in held_out], "training_pairs": len(pairs),
        "snapshot_steps": sorted({p.step for p in pairs}), "seconds": round(seconds, 1),
        "latent_explained_variance": round(explained, 4),
        "final": curves[-1] if curves else {}, "step_estimate": _step_estimate_error(model, held_out)}
    model.save(out)
    (out / CURVES).write_text(json.dumps(curves, indent=1))
    plot_curves(curves, out / "curves.png")
    return model


def _attack_config(base: DiffusionBase, trajectories: list[Trajectory], config: TrainConfig, rank: int) -> AttackConfig:
    names = sorted({name for t in trajectories for name, *_ in t.factors(t.steps[-1])})
    embeds = base.encode_prompt([""])  # [1, L, D]
    encoder = EncoderConfig(module_names=names, sketch_k=config.sketch_k, width=config.width, layers=config.layers,
                            heads=config.heads, latent_len=embeds.shape[1], latent_dim=embeds.shape[2], latent_rank=rank,
                            max_step=max(2000, 2 * max(t.steps[-1] for t in trajectories)),
                            use_step=not config.final_only)
    return AttackConfig(family=base.family, encoder=encoder, pooled_dim=base.pooled_dim)


def _pairs(model: AttackModel, trajectories: list[Trajectory], final_only: bool, first_index: int = 0) -> list[_Pair]:
    """Training pairs; ``_Pair.trajectory`` indexes all trajectories (``trajectories`` start at ``first_index``)."""
    pairs = []
    for index, t in enumerate(trajectories, start=first_index):
        for step in t.steps[-1:] if final_only else t.steps:
            factors = list(t.factors(step))
            raw, padding = model.module_inputs({name: model.sketcher.sketch_factors(up, down, scale)
                                                for name, up, down, scale in factors})
            unet = [(name, torch.as_tensor(up), torch.as_tensor(down), scale)
                    for name, up, down, scale in factors if name.startswith("unet.")]
            pairs.append(_Pair(index, step, raw, padding, unet))
    return pairs


def _stacked_deltas(batch: list[_Pair], device) -> dict[str, torch.Tensor]:
    """dW of every UNet module, one per pair: [S, out, in]."""
    stacked = {}
    for m, (name, *_) in enumerate(batch[0].factors):
        stacked[name] = torch.stack([scale * up @ down for _, up, down, scale in (p.factors[m] for p in batch)]).to(device)
    return stacked


def _loss(base, model, scheduler, batch, images, config, rng, z_from_mean=False):
    """Diffusion MSE of the LoRA-patched UNet conditioned on z, and the KL, for a batch of pairs.

    All pairs go through one UNet call: each sample carries its own shadow's dW (per_sample_deltas).
    """
    device, p = base.device, config.images_per_shadow
    raw = torch.stack([pair.raw for pair in batch]).to(device)  # [S, M, k*k]
    padding = torch.stack([pair.padding for pair in batch]).to(device)  # [S, M]
    if model.training and config.module_dropout > 0:  # hide random modules (never all of them)
        hidden = padding | (torch.rand(padding.shape) < config.module_dropout).to(device)  # [S, M]
        padding = torch.where(hidden.all(dim=1, keepdim=True), padding, hidden)
    steps = torch.tensor([float(pair.step) for pair in batch], device=device)  # [S]
    mu, logvar = model.posterior(raw, padding, steps)  # [S, R] each
    z = model.to_latent(mu if z_from_mean else model.sample(mu, logvar))  # [S, L, D] (SDXL: + pooled [S, P])
    picked = torch.cat([images[pair.trajectory][rng.integers(len(images[pair.trajectory]), size=p)]
                        for pair in batch])  # [S * P, H, W, 3]
    with torch.no_grad():
        x0 = base.to_model_input(picked)  # [S * P, C, h, w]
    noise = torch.randn_like(x0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), device=device)
    noisy = scheduler.add_noise(x0, noise, t)
    target = scheduler.get_velocity(x0, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise
    with per_sample_deltas(base, _stacked_deltas(batch, device)), base.autocast():
        pred = base.unet(noisy, t, **base.unet_kwargs(z.repeat_interleave(p, dim=0))).sample  # [S * P, C, h, w]
    return F.mse_loss(pred.float(), target.float()), model.kl(mu, logvar)


@torch.no_grad()
def _validation_mse(base, model, scheduler, val_pairs, images, config) -> float | None:
    """Diffusion MSE on held-out identities with z = mu, under a fixed noise seed (comparable across steps)."""
    if not val_pairs:
        return None
    devices = [base.device] if base.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the training noise stream is left untouched
        torch.manual_seed(1234)
        model.eval()
        mse, _ = _loss(base, model, scheduler, val_pairs, images, config, np.random.default_rng(1234), z_from_mean=True)
        model.train()
    return mse.item()


def _step_estimate_error(model: AttackModel, held_out: list[Trajectory]) -> dict:
    """Median relative error of the step estimate on held-out trajectories (every snapshot)."""
    errors = []
    for t in held_out:
        for step in t.steps:
            raw, padding = model.module_inputs({n: model.sketcher.sketch_factors(u, d, s) for n, u, d, s in t.factors(step)})
            estimate = model.estimate_step(raw[None].to(model.feature_mean.device), padding[None].to(model.feature_mean.device))
            errors.append(abs(estimate.item() - step) / step)
    return {"median_relative_error": round(float(np.median(errors)), 3), "pairs": len(errors)} if errors else {}


def _identity(config: TrainConfig, train: list[Trajectory]) -> dict:
    """What a checkpoint must match to be resumed: the configuration and the training identities."""
    return {"config": asdict(config), "identities": [t.identity for t in train]}


def _resume(out: Path, model, optimizer, identity: dict):
    path = out / CHECKPOINT
    rng = np.random.default_rng(identity["config"]["seed"])
    if not path.is_file():
        return 0, [], 0.0, rng
    state = torch.load(path, map_location=model.feature_mean.device, weights_only=False)
    saved = state["identity"]
    saved = {**saved, "config": {**asdict(TrainConfig()), **saved["config"]}}  # fields added since: defaults
    if saved != identity:
        raise UsageError(f"{path} was written with another training configuration or shadow set; "
                         "use a new output directory")
    model.encoder.load_state_dict(state["encoder"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    rng.bit_generator.state = state["numpy_rng"]
    return state["step"], state["curves"], state["seconds"], rng


def _checkpoint(out: Path, model, optimizer, step, curves, seconds, rng, identity: dict) -> None:
    state = {"encoder": model.encoder.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "curves": curves, "seconds": seconds, "torch_rng": torch.get_rng_state(),
             "numpy_rng": rng.bit_generator.state, "identity": identity,
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    tmp = out / f".{CHECKPOINT}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, out / CHECKPOINT)


def plot_curves(curves: list[dict], path: Path) -> None:
    """Training and held-out diffusion loss, and the KL, against the step (PNG)."""
    if not curves:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [c["step"] for c in curves]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.plot(steps, [c["mse"] for c in curves], label="train diffusion MSE", alpha=0.6)
    if curves[0]["val_mse"] is not None:
        left.plot(steps, [c["val_mse"] for c in curves], label="held-out MSE (z = mu)")
    left.set_xlabel("attack training step")
    left.set_ylabel("diffusion loss (MSE)")
    left.legend()
    right.plot(steps, [c["kl"] for c in curves], color="tab:red")
    right.set_xlabel("attack training step")
    right.set_ylabel("KL per dimension")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
