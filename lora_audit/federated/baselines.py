"""The classic baselines, as the ``breaching`` framework runs them, on the same diffusion loss.

DLG (Zhu et al. 2019): L-BFGS on the dummy data and its "labels" jointly, squared-L2 gradient
distance; here the labels are the client's noise and timestep when they are unknown. Inverting
Gradients (Geiping et al. 2020): 1 - cosine of the whole gradient plus total variation, Adam on the
sign of the gradient (lr 0.1, x0.1 at 3/8, 5/8 and 7/8 of the run), pixels kept in range. When the
noise and timestep are unknown both optimise them as GIDM+ does (same start for t), so the
comparison isolates the prior.
"""

from __future__ import annotations

import torch

from lora_audit.federated.server import InversionConfig, Phase, ServerView, start_timesteps


def phases(view: ServerView, config: InversionConfig, shape: tuple[int, ...], joint: bool):
    state = {"pixels": (0.5 * torch.randn(shape)).clamp(-1, 1)}
    if joint:
        state.update({"eps": torch.randn(shape), "t_raw": torch.zeros(shape[0])})
    for v in state.values():
        v.requires_grad_(True)
    extra = ("eps", "t_raw") if joint else ()
    image = lambda s: s["pixels"]  # noqa: E731

    if config.method == "ig":
        def start(s: dict) -> None:
            if joint:
                start_timesteps(view, s, image, "cosine", config.t_grid)

        return state, [Phase("pixels", config.iterations, ("pixels", *extra), image, optimizer="signed-adam",
                             lr=config.lr or 0.1, distance="cosine", tv=config.tv, start=start, lr_decay=True)]

    def start_dlg(s: dict) -> None:
        if joint:
            start_timesteps(view, s, image, "l2", config.t_grid)

    return state, [Phase("pixels", config.iterations, ("pixels", *extra), image, optimizer="lbfgs",
                         lr=config.lr or 1.0, distance="l2", start=start_dlg, project=False)]
