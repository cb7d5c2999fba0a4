"""Train the toy face embedder: a small CNN with a CosFace head over the EMBEDDER identities.

The loop reads top to bottom: render the training set once (in memory), then for each step draw a
batch, degrade it like a diffusion model's sample would be (shift/scale, colour cast, blur, noise),
and take an AdamW step on the CosFace loss. Every random draw of step ``s`` comes from a generator
seeded by ``(config.seed, s)``, and the checkpoint holds model, head and optimizer state, so a run
resumed from its checkpoint ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lora_audit.toyworld.embedder import ToyFaceEmbedder, ToyFaceNet, ToyNetConfig
from lora_audit.toyworld import identities
from lora_audit.toyworld.lab.eval_embedder import gaussian_blur
from lora_audit.toyworld.renderer import render_batch

CHECKPOINT_NAME = "checkpoint.safetensors"

Progress = Callable[[int, int, dict], None]


@dataclass
class EmbedderConfig:
    """Everything that decides the trained embedder (besides the renderer)."""

    identities: int = 2000  # classes: EMBEDDER ids 0 .. identities-1
    images_per_identity: int = 16
    render_seed: int = 0  # which views of each identity are rendered
    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 128, 128)
    dim: int = 128
    steps: int = 4000
    batch_size: int = 128
    lr: float = 3e-3
    warmup_steps: int = 200  # linear warm-up, then cosine decay to 0
    weight_decay: float = 5e-4
    margin: float = 0.35  # CosFace: the true class's logit is scale * (cos - margin)
    scale: float = 30.0
    max_shift: float = 0.08  # augmentations: translation (fraction of the image side) ...
    max_zoom: float = 0.08  # ... zoom in/out ...
    colour_std: float = 0.06  # ... per-channel gain and offset ...
    blur_prob: float = 0.5  # ... gaussian blur of sigma U(0, max_blur) on this share of images ...
    max_blur: float = 1.2
    max_noise: float = 0.06  # ... gaussian noise of std U(0, max_noise)
    seed: int = 0
    checkpoint_every: int = 500

    @classmethod
    def tiny(cls) -> "EmbedderConfig":
        """Seconds on a CPU: for tests."""
        return cls(identities=8, images_per_identity=4, image_size=16, channels=(8, 16, 16, 16), dim=16,
                   steps=30, batch_size=32, warmup_steps=5, checkpoint_every=10)

    def __post_init__(self):
        self.channels = tuple(self.channels)
        if self.identities > len(identities.EMBEDDER):
            raise ValueError(f"at most {len(identities.EMBEDDER)} embedder identities, got {self.identities}")


class CosFaceHead(nn.Module):
    """Large-margin cosine loss (CosFace): class centres on the unit sphere, margin on the true class."""

    def __init__(self, dim: int, classes: int, margin: float, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))  # [classes, dim]
        self.margin, self.scale = margin, scale

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and accuracy (by cosine, without margin) of [B, dim] embeddings with [B] labels."""
        cos = F.normalize(embeddings, dim=1) @ F.normalize(self.weight, dim=1).T  # [B, classes]
        logits = self.scale * (cos - self.margin * F.one_hot(labels, len(self.weight)))
        return F.cross_entropy(logits, labels), (cos.argmax(1) == labels).float().mean()


def augment(x: torch.Tensor, config: EmbedderConfig, g: torch.Generator) -> torch.Tensor:
    """[B, 3, S, S] in [0, 1] -> the same, shifted, zoomed, colour-cast, blurred and noised at random."""
    b = len(x)

    def uniform(*shape: int) -> torch.Tensor:  # U(-1, 1), drawn on the CPU generator
        return (torch.rand(shape, generator=g) * 2 - 1).to(x.device)

    zoom = 1 + config.max_zoom * uniform(b)
    theta = torch.zeros(b, 2, 3, device=x.device)  # affine map from output to input coordinates
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
    theta[:, :, 2] = 2 * config.max_shift * uniform(b, 2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # [B, S, S, 2]
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gain = 1 + config.colour_std * torch.randn(b, 3, 1, 1, generator=g).to(x.device)
    offset = config.colour_std * torch.randn(b, 3, 1, 1, generator=g).to(x.device)
    x = x * gain + offset
    blurred = torch.rand(b, generator=g) < config.blur_prob
    x = gaussian_blur(x, (torch.rand(b, generator=g) * config.max_blur * blurred).to(x.device))
    noise = config.max_noise * torch.rand(b, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
    return (x + noise.to(x.device)).clamp(0, 1)


def render_training_set(config: EmbedderConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 3, S, S] of EMBEDDER ids 0 .. identities-1 and their [N] class labels."""
    labels = np.repeat(np.arange(config.identities), config.images_per_identity)  # [N]
    ids = identities.EMBEDDER.start + labels
    views = np.tile(np.arange(config.images_per_identity), config.identities)  # [N]
    images = render_batch(ids, views, config.render_seed, config.image_size)  # [N, S, S, 3] float
    images = torch.from_numpy(np.rint(images * 255).astype(np.uint8)).permute(0, 3, 1, 2).contiguous()
    return images, torch.from_numpy(labels)


def learning_rate(step: int, config: EmbedderConfig) -> float:
    """Linear warm-up to ``config.lr`` over ``warmup_steps``, then cosine decay to 0 at ``steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def train_embedder(config: EmbedderConfig, out_dir: str | Path, progress: Progress | None = None,
                   device: str | torch.device | None = None) -> dict:
    """Train (or resume training) the toy embedder into ``out_dir`` and save it with ``ToyFaceEmbedder.save``.

    ``progress(step, total, {"loss", "accuracy", "lr"})`` is called after every step. Returns a summary:
    steps, parameter count, training seconds (over all resumed runs), final loss and accuracy (moving
    averages over about the last 100 steps).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(config.seed)
    model = ToyFaceNet(ToyNetConfig(config.image_size, config.channels, config.dim))
    head = CosFaceHead(config.dim, config.identities, config.margin, config.scale)
    model, head = model.to(device, memory_format=torch.channels_last), head.to(device)
    optimizer = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=config.lr,
                                  weight_decay=config.weight_decay)
    state = {"step": 0, "elapsed_s": 0.0, "loss": 0.0, "accuracy": 0.0}
    if (out_dir / CHECKPOINT_NAME).is_file():
        state = _load_checkpoint(out_dir / CHECKPOINT_NAME, config, model, head, optimizer)

    images, labels = render_training_set(config)  # [N, 3, S, S] uint8, [N]
    images, labels = images.to(device), labels.to(device)
    model.train()
    started = time.perf_counter() - state["elapsed_s"]
    while state["step"] < config.steps:
        step = state["step"]
        g = torch.Generator().manual_seed(config.seed * 1_000_000_007 + step)
        batch = torch.randint(len(images), (config.batch_size,), generator=g).to(device)  # [B]
        x = augment(images[batch].float() / 255, config, g)  # [B, 3, S, S]
        lr = learning_rate(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr

        loss, accuracy = head(model(x.contiguous(memory_format=torch.channels_last)), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        decay = 0.0 if step == 0 else 0.99  # moving averages for the summary
        state["loss"] = decay * state["loss"] + (1 - decay) * loss.item()
        state["accuracy"] = decay * state["accuracy"] + (1 - decay) * accuracy.item()
        state["step"] = step + 1
        state["elapsed_s"] = time.perf_counter() - started
        if state["step"] % config.checkpoint_every == 0 or state["step"] == config.steps:
            _save_checkpoint(out_dir / CHECKPOINT_NAME, config, state, model, head, optimizer)
        if progress is not None:
            progress(state["step"], config.steps, {"loss": loss.item(), "accuracy": accuracy.item(), "lr": lr})

    ToyFaceEmbedder(model.eval()).save(out_dir)
    return {"steps": state["step"], "identities": config.identities, "images": len(images),
            "params": sum(p.numel() for p in model.parameters()), "train_seconds": round(state["elapsed_s"], 1),
            "final_loss": state["loss"], "final_accuracy": state["accuracy"], "out_dir": str(out_dir)}


def _save_checkpoint(path: Path, config: EmbedderConfig, state: dict, model: nn.Module, head: nn.Module,
                     optimizer: torch.optim.Optimizer) -> None:
    """Model, head and optimizer tensors in one safetensors file; step and config in its metadata."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"head.{k}": v for k, v in head.state_dict().items()}
    for index, param_state in optimizer.state_dict()["state"].items():
        tensors |= {f"optimizer.{index}.{k}": v for k, v in param_state.items()}
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp,
              metadata={"state": json.dumps(state), "config": _config_json(config)})
    tmp.replace(path)  # atomic: an interrupted save leaves the previous checkpoint intact


def _load_checkpoint(path: Path, config: EmbedderConfig, model: nn.Module, head: nn.Module,
                     optimizer: torch.optim.Optimizer) -> dict:
    """Restore what :func:`_save_checkpoint` wrote; returns the saved training state (step, ...)."""
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    saved, wanted = json.loads(metadata["config"]), json.loads(_config_json(config))
    if {**saved, "checkpoint_every": 0} != {**wanted, "checkpoint_every": 0}:
        raise ValueError(f"{path} was written by a run with another config; use a fresh out_dir to start over")
    tensors = load_file(path, device=str(next(model.parameters()).device))
    groups = defaultdict(dict)
    for key, value in tensors.items():
        kind, name = key.split(".", 1)
        groups[kind][name] = value
    model.load_state_dict(groups["model"])
    head.load_state_dict(groups["head"])
    optimizer_state = defaultdict(dict)
    for key, value in groups["optimizer"].items():
        index, name = key.split(".", 1)
        optimizer_state[int(index)][name] = value
    optimizer.load_state_dict({"state": dict(optimizer_state),
                               "param_groups": optimizer.state_dict()["param_groups"]})
    return json.loads(metadata["state"])


def _config_json(config: EmbedderConfig) -> str:
    return json.dumps(asdict(config), sort_keys=True)
