"""GIDM and GIDM+ (Huang, Hong, Roos, Chen, arXiv 2405.20380): gradient inversion with a diffusion prior.

Phase 1 optimises the input noise z of a trained diffusion model used as the generator, so that the
gradient its image induces matches the shared one; phase 2 fine-tunes the pixels from there. The
generator here is the base UNet itself, sampled with ``generator_steps`` deterministic DDIM steps
from z (differentiable end to end; no guidance: one UNet call per step). GIDM takes the client's
noise and timestep as known; GIDM+ optimises both with the image: epsilon as a free tensor and t as a
continuous timestep over the whole schedule (t = (T - 1) * sigmoid(t_raw), alpha-bar interpolated), t
started at the grid timestep whose gradient is nearest the shared one. The paper's code instead took
t as an argmax over 16 logits updated at iterations 200-210 and epsilon as the true noise plus 1e-4.
"""

from __future__ import annotations

import torch

from lora_audit.federated.server import InversionConfig, Phase, ServerView, start_timesteps


def ddim_generator(view: ServerView, steps: int):
    """z [B, C, H, W] -> x0 [B, C, H, W] in [-1, 1]: ``steps`` DDIM steps of the base UNet from t = T-1."""
    schedule, unet = view.schedule, view.base.unet
    times = torch.linspace(schedule.steps - 1, 0, steps + 1)[:-1].round()  # e.g. 999, 500 for 2 steps

    def generate(z: torch.Tensor) -> torch.Tensor:
        x = z
        cond = view.cond.expand(len(z), -1, -1)
        for i, t in enumerate(times):
            tt = torch.full((len(z),), float(t), device=z.device)
            ab = schedule.alpha_bar(tt)[:, None, None, None]
            out = unet(x, tt, encoder_hidden_states=cond).sample
            if schedule.prediction_type == "v_prediction":
                x0, eps = ab.sqrt() * x - (1 - ab).sqrt() * out, (1 - ab).sqrt() * x + ab.sqrt() * out
            else:
                x0, eps = (x - (1 - ab).sqrt() * out) / ab.sqrt(), out
            x0 = x0.clamp(-1, 1)
            if i + 1 < len(times):
                ab_next = schedule.alpha_bar(torch.full_like(tt, float(times[i + 1])))[:, None, None, None]
                x = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps
        return x0

    return generate


def phases(view: ServerView, config: InversionConfig, shape: tuple[int, ...], joint: bool):
    """The state (z, pixels and, when ``joint``, eps and t_raw) and GIDM's two phases."""
    state = {"z": torch.randn(shape), "pixels": torch.zeros(shape)}
    if joint:
        state.update({"eps": torch.randn(shape), "t_raw": torch.zeros(shape[0])})
    for v in state.values():
        v.requires_grad_(True)
    generate = ddim_generator(view, config.generator_steps)
    extra = ("eps", "t_raw") if joint else ()
    lr = config.lr or 0.05
    first = max(1, int(round(config.iterations * config.phase1_share)))

    def start_noise(s: dict) -> None:
        if joint:
            start_timesteps(view, s, lambda st: generate(st["z"]), "l2", config.t_grid)

    def start_pixels(s: dict) -> None:
        with torch.no_grad():
            s["pixels"].copy_(generate(s["z"]))

    return state, [
        Phase("noise", first, ("z", *extra), lambda s: generate(s["z"]), lr=lr, start=start_noise),
        Phase("pixels", max(1, config.iterations - first), ("pixels", *extra), lambda s: s["pixels"],
              optimizer="lbfgs", lr=1.0, start=start_pixels, project=False),
    ]
