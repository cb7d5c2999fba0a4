"""Train the toy base model on captioned public identities, like a (very) small Stable Diffusion.

Top to bottom: render the data set, build a fresh pipeline, resume from ``checkpoint.pt`` when
present, train the UNet and the text encoder jointly on the diffusion MSE (target: v or epsilon, as
the config's prediction_type says) at random timesteps, with captions dropped to "" at random for
classifier-free guidance; keep an EMA of both, checkpoint every ``checkpoint_every`` steps, and save
the EMA pipeline with ``save_pretrained``.
Each step draws its batch from a generator seeded by (seed, step), so a resumed run follows the same
path as an uninterrupted one. No horizontal flips: the renderer parts hair left or right by identity.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from lora_audit.toyworld.identities import PUBLIC
from lora_audit.toyworld.pipeline import ToyBaseConfig, make_toy_pipeline
from lora_audit.toyworld.renderer import caption, identity, render_batch

CHECKPOINT = "checkpoint.pt"

Progress = Callable[[int, int, dict], None]


def _learning_rate(config: ToyBaseConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    done = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * done))


def train_base_model(config: ToyBaseConfig, out_dir: str | Path, progress: Progress | None = None) -> dict:
    """Train (or resume training) the toy base model; save the pipeline to ``out_dir``; return metrics.

    ``out_dir`` gets the pipeline (``model_index.json``, ``unet/``, ``text_encoder/``, ``tokenizer/``,
    ``scheduler/``) and ``checkpoint.pt`` (training state, not part of the pipeline). ``progress``, if
    given, is called after every step as ``progress(step, total_steps, {"loss": ..., "lr": ...})``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # data: images [N, 3, H, W] uint8, image n shows identity n // images_per_identity
    ids = range(PUBLIC.start, PUBLIC.start + config.identities)
    per = config.images_per_identity
    pixels = render_batch([i for i in ids for _ in range(per)], [k for _ in ids for k in range(per)],
                          seed=config.seed, size=config.image_size)
    images = torch.from_numpy((pixels * 255 + 0.5).astype("uint8")).permute(0, 3, 1, 2).contiguous()
    del pixels

    # model, tokenised captions (one row per identity), optimiser, EMA
    pipe = make_toy_pipeline(config)
    tokens = pipe.tokenize([caption(identity(i)) for i in ids])  # [I, L]
    empty = pipe.tokenize([""])  # [1, L]
    noise_scheduler = pipe.training_scheduler()
    model = torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder}).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    step, seconds, losses = 0, 0.0, []

    checkpoint = out_dir / CHECKPOINT
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state["config"] != dataclasses.asdict(config):
            raise ValueError(f"{checkpoint} was written with another ToyBaseConfig; delete it or use another out_dir")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step, seconds, losses = state["step"], state["seconds"], state["losses"]

    while step < config.steps:
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(config.seed * 2**32 + step)
        batch = torch.randint(len(images), (config.batch_size,), generator=generator)
        x0 = images[batch].float() / 127.5 - 1  # [B, 3, H, W] in [-1, 1]
        drop = torch.rand(config.batch_size, generator=generator) < config.caption_dropout
        input_ids = torch.where(drop[:, None], empty, tokens[batch // per])  # [B, L]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(config.num_train_timesteps, (config.batch_size,), generator=generator)
        xt = noise_scheduler.add_noise(x0, noise, t)

        lr = _learning_rate(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        hidden = model["text_encoder"](input_ids).last_hidden_state  # [B, L, D]
        pred = model["unet"](xt, t, encoder_hidden_states=hidden).sample  # [B, 3, H, W]
        loss = F.mse_loss(pred, pipe.training_target(x0, noise, t))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for averaged, current in zip(ema.parameters(), model.parameters()):
                averaged.lerp_(current, 1 - decay)

        step += 1
        seconds += time.perf_counter() - started
        losses.append(loss.item())
        if progress is not None:
            progress(step, config.steps, {"loss": losses[-1], "lr": lr})
        if step % config.checkpoint_every == 0 or step == config.steps:
            state = {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                     "step": step, "seconds": seconds, "losses": losses, "config": dataclasses.asdict(config)}
            torch.save(state, out_dir / (CHECKPOINT + ".tmp"))
            (out_dir / (CHECKPOINT + ".tmp")).replace(checkpoint)

    model.load_state_dict(ema.state_dict())  # the pipeline's modules now hold the EMA weights
    pipe.save_pretrained(out_dir)
    tail = losses[-100:]
    return {"steps": step, "batch_size": config.batch_size, "final_loss": sum(tail) / max(1, len(tail)),
            "train_seconds": seconds, "seconds_per_step": seconds / max(1, step),
            "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
            "text_encoder_parameters": sum(p.numel() for p in pipe.text_encoder.parameters()),
            "path": str(out_dir)}
