"""What the server holds of one client update, and the pieces every inversion method is made of.

:class:`ServerView`: the parameters the update is a gradient of and the gradient itself (for a LoRA
update, the server's own global LoRA and minus the update over the learning rate and steps: the
gradient for one SGD step, the mean gradient for more), the protocol's prompt, the batch size. A
method is a list of :class:`Phase`\\ s over named variables (``z``, ``pixels``, ``eps``, ``t_raw``);
:func:`match_distance` is the quantity every phase minimises.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Callable

import torch

from lora_audit.errors import InputError
from lora_audit.federated.objective import PROMPT, Schedule, diffusion_loss, gradient_distance, loss_gradient, prepare_unet


@dataclass
class InversionConfig:
    method: str = "gidm+"
    iterations: int = 300  # gradient-matching iterations in all (GIDM: both phases; DLG: L-BFGS evaluations)
    phase1_share: float = 0.4  # GIDM: share of the iterations on the generator's noise
    generator_steps: int = 2  # GIDM: differentiable DDIM steps of the base UNet from the noise z
    lr: float | None = None  # None: the method's default
    tv: float = 0.2  # Inverting Gradients: total-variation weight
    t_grid: int = 16  # GIDM+ and joint baselines: timesteps tried to start t
    layers: tuple[str, ...] = ()  # parameter-name prefixes the server matches (empty: the whole update)
    seed: int = 0
    checkpoint_every: int = 25


@dataclass
class Phase:
    """``iterations`` steps of ``optimizer`` on ``variables``; the batch is ``image(state)`` [B, C, H, W]."""

    name: str
    iterations: int
    variables: tuple[str, ...]
    image: Callable[[dict], torch.Tensor]
    optimizer: str = "adam"  # adam | signed-adam | lbfgs
    lr: float = 0.01
    distance: str = "l2"  # l2 | cosine
    tv: float = 0.0
    start: Callable[[dict], None] | None = None  # sets variables up when the phase begins
    project: bool = True  # pixels back into [-1, 1] after each step
    lr_decay: bool = False  # x0.1 at 3/8, 5/8, 7/8 of the phase (Inverting Gradients' schedule)


@dataclass
class ServerView:
    """What an honest-but-curious server holds of one client update."""

    base: object  # DiffusionBase
    names: list[str]
    params: list[torch.Tensor]
    target: list[torch.Tensor]  # the shared gradient, per parameter
    masks: list[torch.Tensor | None]  # sparsified updates: where entries were kept
    batch_size: int
    cond: torch.Tensor  # [1, L, D] the protocol prompt's embedding
    schedule: Schedule
    fingerprint: str  # of the update's tensors (checkpoints belong to one update)


@contextlib.contextmanager
def server_view(base, tensors: dict[str, torch.Tensor], metadata: dict[str, str], facts,
                layers: tuple[str, ...] = ()):
    """The :class:`ServerView` of an update file's contents, for the duration of the block (a LoRA
    update puts the server's global LoRA on the base UNet meanwhile). ``layers``: match only the
    parameters whose names (without ``unet.``) start so; the second derivative then runs through the
    backward pass of those layers only, which is cheaper for late layers."""
    from lora_audit.federated.client import ClientConfig, lora_adapter, model_id, shared_parameters

    prepare_unet(base.unet)
    base.unet.eval()
    if facts.model_id != "unknown" and facts.model_id != model_id(base):
        raise InputError("base", None, f"is not the model the update was computed on ({facts.model_id}); "
                         "pass the same base as the client used")
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].float().numpy().tobytes())
    schedule = Schedule.of(base.train_scheduler(), base.device)
    with torch.no_grad():
        cond = base.encode_prompt([metadata.get("lora_audit.fl.prompt", PROMPT)]).detach()
    sparse = bool(facts.defence and facts.defence.get("keep"))
    with contextlib.ExitStack() as stack:
        if facts.what == "gradient":
            params = shared_parameters(base)
            base.unet.requires_grad_(True)
            scale = 1.0
        else:
            m = metadata
            config = ClientConfig(what="lora-update", lora_rank=int(m["lora_audit.fl.lora_rank"]),
                                  lora_alpha=float(m["lora_audit.fl.lora_alpha"]),
                                  lora_targets=tuple(m["lora_audit.fl.lora_targets"].split(",")),
                                  lora_seed=int(m["lora_audit.fl.lora_seed"]))
            base.unet.requires_grad_(False)
            params = stack.enter_context(lora_adapter(base, config))
            scale = -1.0 / (float(m["lora_audit.fl.lr"]) * facts.local_steps)  # update -> mean gradient
        missing = sorted(set(tensors) - set(params))
        if missing or len(tensors) != len(params):
            raise InputError("update", None, f"does not fit this base: {len(missing)} tensors name no parameter "
                             f"(e.g. {missing[:1]}), {len(params)} parameters expected")
        names = [n for n in sorted(params) if not layers or n.removeprefix("unet.").startswith(tuple(layers))]
        if not names:
            raise InputError("layers", ",".join(layers), "match no parameter of the update")
        target = [tensors[n].to(base.device, torch.float32) * scale for n in names]
        masks = [(t != 0).float() if sparse else None for t in target]
        yield ServerView(base, names, [params[n] for n in names], target, masks, facts.batch_size, cond, schedule,
                         digest.hexdigest()[:16])


def noise_and_time(view: ServerView, state: dict, known: dict | None):
    if known is not None:
        return known["eps"], known["t"].float()
    t = (view.schedule.steps - 1) * torch.sigmoid(state["t_raw"])  # [B] continuous timesteps
    return state["eps"], t


def match_distance(view: ServerView, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, kind: str,
                   create_graph: bool = True) -> torch.Tensor:
    """Distance of the gradient x0, eps, t induce to the shared one (graph kept for double backprop)."""
    loss = diffusion_loss(view.base.unet, view.cond, view.schedule, x0, eps, t)
    grads = loss_gradient(loss, view.params, create_graph=create_graph)
    return gradient_distance(grads, view.target, kind, view.masks)


def start_timesteps(view: ServerView, state: dict, image: Callable, kind: str, candidates: int) -> None:
    """t_raw set to the grid timestep whose gradient is nearest the shared one for the current guess."""
    steps = view.schedule.steps
    best = None
    x0 = image(state).detach()
    for t in torch.linspace(1, steps - 2, candidates):
        tt = torch.full((view.batch_size,), float(t))
        d = float(match_distance(view, x0, state["eps"].detach(), tt, kind, create_graph=False))
        if best is None or d < best[0]:
            best = (d, float(t))
    frac = torch.tensor(best[1] / (steps - 1)).clamp(1e-4, 1 - 1e-4)
    with torch.no_grad():
        state["t_raw"].fill_(float(torch.logit(frac)))
