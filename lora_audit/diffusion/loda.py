"""LoDA adapters (Liu et al., arXiv 2406.05257) on a frozen model: inject, read out, load, remove.

Each adapted ``nn.Linear`` W becomes :class:`LodaLinear`: y = W x + (alpha / r) * up(act(down(x))),
down [r, in] initialised normal with std 1/r, up [out, r] initialised to zero, so a fresh adapter changes
nothing. Target modules are matched like PEFT's ``target_modules`` (the module path, or a suffix of
it after a dot). The file layout is :mod:`lora_audit.weights.loda`'s.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import torch
from torch import nn

from lora_audit.weights.loda import DOWN_SUFFIX, SLOPE_AT_ZERO, UP_SUFFIX

_ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU, "tanh": nn.Tanh, "identity": nn.Identity}
assert _ACTIVATIONS.keys() == SLOPE_AT_ZERO.keys()  # every activation a file may name, and only those


class LodaLinear(nn.Module):
    """A frozen linear layer with a low-dimensional non-linear adapter beside it."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, activation: str = "gelu"):
        super().__init__()
        self.base = base
        self.loda_down = nn.Linear(base.in_features, rank, bias=False, device=base.weight.device, dtype=base.weight.dtype)
        self.loda_up = nn.Linear(rank, base.out_features, bias=False, device=base.weight.device, dtype=base.weight.dtype)
        self.act = _ACTIVATIONS[activation]()
        self.scale = alpha / rank
        nn.init.normal_(self.loda_down.weight, std=1.0 / rank)
        nn.init.zeros_(self.loda_up.weight)

    @property
    def weight(self) -> torch.Tensor:  # code that reads the adapted layer's weight sees the frozen one
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        return self.base(x) + self.scale * self.loda_up(self.act(self.loda_down(x)))


def _targets(model: nn.Module, target_modules: tuple[str, ...]) -> list[str]:
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in target_modules)]


def inject_loda(model: nn.Module, target_modules: tuple[str, ...], rank: int, alpha: float,
                activation: str = "gelu") -> list[str]:
    """Replace each target linear layer of ``model`` by a :class:`LodaLinear`; return their paths."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown LoDA activation {activation!r}; expected one of {', '.join(_ACTIVATIONS)}")
    names = _targets(model, target_modules)
    for name in names:
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, leaf, LodaLinear(getattr(owner, leaf), rank, alpha, activation))
    return names


def remove_loda(model: nn.Module) -> None:
    """Put every adapted layer's frozen linear layer back."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LodaLinear):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, module.base)


def loda_state_dict(models: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The adapters' factors of each component (``unet``, ``text_encoder``...) as detached CPU copies,
    named ``<component>.<module>.loda_down.weight`` / ``loda_up.weight``."""
    state = {}
    for component, model in models.items():
        for name, module in model.named_modules():
            if isinstance(module, LodaLinear):
                state[f"{component}.{name}{DOWN_SUFFIX}"] = module.loda_down.weight.detach().clone().cpu()
                state[f"{component}.{name}{UP_SUFFIX}"] = module.loda_up.weight.detach().clone().cpu()
    return state


@contextlib.contextmanager
def loda_applied(models: Mapping[str, nn.Module], state: Mapping[str, object], *, rank: int, alpha: float,
                 activation: str = "gelu") -> Iterator[None]:
    """Run the block with the LoDA adapters of ``state`` (as :func:`loda_state_dict` names them) in
    ``models``, non-linear as trained; the models are restored after."""
    try:
        for component, model in models.items():
            prefix = component + "."
            paths = sorted({k[len(prefix):-len(DOWN_SUFFIX)] for k in state if k.startswith(prefix) and k.endswith(DOWN_SUFFIX)})
            for path in inject_loda(model, tuple(paths), rank, alpha, activation) if paths else ():
                module = model.get_submodule(path)
                with torch.no_grad():
                    module.loda_down.weight.copy_(torch.as_tensor(state[f"{prefix}{path}{DOWN_SUFFIX}"]))
                    module.loda_up.weight.copy_(torch.as_tensor(state[f"{prefix}{path}{UP_SUFFIX}"]))
        yield
    finally:
        for model in models.values():
            remove_loda(model)
