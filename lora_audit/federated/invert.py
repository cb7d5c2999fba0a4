"""One gradient inversion: the optimisation loop and the checkpoints that let it resume.

What the server holds is :class:`~lora_audit.federated.server.ServerView`. A method (:mod:`lora_audit.federated.gidm`,
:mod:`lora_audit.federated.baselines`) is a list of :class:`Phase`\\ s over named variables (``z``,
``pixels``, ``eps``, ``t_raw``); every iteration builds the candidate batch, its loss at the candidate
(or known) noise and timestep, the gradient of that loss with ``create_graph=True`` and the
distance to the shared gradient, and steps on the distance's gradient (double backprop).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from lora_audit.errors import InputError, UsageError
from lora_audit.federated.objective import total_variation
from lora_audit.federated.server import (InversionConfig, Phase, ServerView, match_distance, noise_and_time,
                                         server_view, start_timesteps)

__all__ = ["InversionConfig", "InversionResult", "Phase", "ServerView", "match_distance", "run_inversion",
           "server_view", "start_timesteps"]

METHODS = ("gidm", "gidm+", "ig", "dlg")
CHECKPOINT = "checkpoint.pt"


@dataclass
class InversionResult:
    images: torch.Tensor  # [B, H, W, 3] in [0, 1]: the reconstruction with the lowest gradient distance
    distance: float
    iterations: int
    seconds: float
    t_estimate: list[float] | None  # GIDM+ / joint baselines: the estimated timesteps
    history: list[float] = field(default_factory=list)  # distance every checkpoint interval


def _optimizer(phase: Phase, variables: list[torch.Tensor]):
    if phase.optimizer == "lbfgs":
        return torch.optim.LBFGS(variables, lr=phase.lr, max_iter=phase.iterations, history_size=100,
                                 line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-14)
    return torch.optim.Adam(variables, lr=phase.lr)


def run_inversion(view: ServerView, config: InversionConfig, known: dict | None = None,
                  out: Path | None = None, progress: Callable[[str, int, int, dict], None] | None = None
                  ) -> InversionResult:
    """Invert ``view`` with ``config.method``; ``known``: the client's eps [B, C, H, W] and t [B] (the
    "known" condition: the method does not optimise them). With ``out``, a checkpoint is written there
    every ``checkpoint_every`` iterations and a run that finds one resumes from it."""
    from lora_audit.federated import baselines, gidm

    if config.method not in METHODS:
        raise UsageError(f"unknown method {config.method!r}; expected one of {', '.join(METHODS)}")
    if config.method == "gidm" and known is None:
        raise UsageError("gidm assumes the client's noise and timestep are known (pass the client's secrets); "
                         "gidm+ estimates them")
    if config.method == "gidm+":
        known = None  # GIDM+ treats them as unknown, always
    torch.manual_seed(config.seed)
    size = view.base.unet.config.sample_size
    channels = view.base.unet.config.in_channels
    shape = (view.batch_size, channels, size, size)
    build = gidm.phases if config.method.startswith("gidm") else baselines.phases
    state, phases = build(view, config, shape, joint=known is None)
    fingerprint = json.dumps({"config": asdict(config), "update": view.fingerprint, "known": known is not None},
                             sort_keys=True)
    start_phase, start_iter, history, best, done_iters, seconds = 0, 0, [], None, 0, 0.0
    ckpt_path = out / CHECKPOINT if out is not None else None
    if ckpt_path is not None and ckpt_path.is_file():
        saved = torch.load(ckpt_path, weights_only=True)
        if saved["fingerprint"] != fingerprint:
            raise InputError("output", out, "holds a checkpoint of another inversion (other update, method or "
                             "settings)", fix=("force", "to start over"))
        for k, v in saved["state"].items():
            state[k].data.copy_(v)
        start_phase, start_iter, history = saved["phase"], saved["iteration"], saved["history"]
        best, done_iters, seconds = (saved["best_distance"], saved["best_images"]), saved["done"], saved["seconds"]
        opt_state = saved["optimizer"]
    else:
        opt_state = None
    total = sum(p.iterations for p in phases)
    clock = time.perf_counter()
    for index in range(start_phase, len(phases)):
        phase = phases[index]
        resumed = index == start_phase and start_iter > 0
        if phase.start is not None and not resumed:
            phase.start(state)
        variables = [state[v] for v in phase.variables]
        optimizer = _optimizer(phase, variables)
        if resumed and opt_state is not None:
            optimizer.load_state_dict(opt_state)
        first = start_iter if index == start_phase else 0

        def evaluate() -> torch.Tensor:
            nonlocal best, done_iters
            optimizer.zero_grad(set_to_none=True)
            x0 = phase.image(state)
            eps, t = noise_and_time(view, state, known)
            d = match_distance(view, x0, eps, t, phase.distance)
            loss = d + phase.tv * total_variation(x0) if phase.tv else d
            loss.backward()
            value = float(d.detach())
            if best is None or value < best[0]:
                best = (value, x0.detach().clamp(-1, 1).clone())
            done_iters += 1
            return loss

        if phase.optimizer == "lbfgs":
            it = first
            while it < phase.iterations:
                chunk = min(config.checkpoint_every, phase.iterations - it)
                optimizer.param_groups[0]["max_iter"] = chunk
                optimizer.param_groups[0]["max_eval"] = chunk
                before = done_iters
                optimizer.step(evaluate)
                it += max(1, done_iters - before)
                history.append(best[0])
                _checkpoint(ckpt_path, fingerprint, state, optimizer, index, it, history, best, done_iters,
                            seconds + time.perf_counter() - clock)
                if progress:
                    progress(config.method, min(total, done_iters), total, {"phase": phase.name, "distance": best[0]})
                if done_iters - before < chunk:  # converged: L-BFGS stopped early
                    break
            start_iter = 0
            continue
        for it in range(first, phase.iterations):
            if phase.lr_decay:
                for group in optimizer.param_groups:
                    group["lr"] = phase.lr * 0.1 ** sum(it >= phase.iterations * f for f in (3 / 8, 5 / 8, 7 / 8))
            evaluate()
            if phase.optimizer == "signed-adam":
                for v in variables:
                    if v.grad is not None:
                        v.grad.sign_()
            optimizer.step()
            if phase.project and "pixels" in phase.variables:
                with torch.no_grad():
                    state["pixels"].clamp_(-1, 1)
            if (it + 1) % config.checkpoint_every == 0 or it + 1 == phase.iterations:
                history.append(best[0])
                nxt = (index, it + 1) if it + 1 < phase.iterations else (index + 1, 0)
                _checkpoint(ckpt_path, fingerprint, state, optimizer if it + 1 < phase.iterations else None,
                            nxt[0], nxt[1], history, best, done_iters, seconds + time.perf_counter() - clock)
            if progress:
                progress(config.method, min(total, done_iters), total, {"phase": phase.name, "distance": best[0]})
        start_iter = 0
    seconds += time.perf_counter() - clock
    t_est = None
    if "t_raw" in state and known is None:
        t_est = [round(float(x), 2) for x in (view.schedule.steps - 1) * torch.sigmoid(state["t_raw"].detach())]
    images = ((best[1] + 1) / 2).permute(0, 2, 3, 1).cpu()  # [B, H, W, 3] in [0, 1]
    return InversionResult(images, best[0], done_iters, seconds, t_est, history)


def _checkpoint(path, fingerprint, state, optimizer, phase, iteration, history, best, done, seconds) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"fingerprint": fingerprint, "state": {k: v.detach() for k, v in state.items()},
                "optimizer": optimizer.state_dict() if optimizer is not None else None, "phase": phase,
                "iteration": iteration, "history": history, "best_distance": best[0], "best_images": best[1],
                "done": done, "seconds": seconds}, tmp)
    os.replace(tmp, path)
