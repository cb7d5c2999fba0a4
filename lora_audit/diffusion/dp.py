"""DP-SGD for adapter fine-tuning: per-example gradients, clipping, Gaussian noise, an accountant.

The mechanism (Abadi et al. 2016): at each step every training record is drawn independently with
probability q (Poisson sampling); each drawn record's gradient over the trainable (adapter)
parameters is clipped to L2 norm C; the sum gets Gaussian noise N(0, (sigma C)^2 I) and is divided
by the expected batch size q N. The (epsilon, delta) spent over the steps comes from Opacus' PRV
(default) or RDP accountant; the noise multiplier sigma for a target epsilon from Opacus as well.

Per-example gradients come from ``torch.func`` (``vmap`` of ``grad`` of a functional call): no module
hooks, so nothing like Opacus issue #820 (hooks that miss PEFT's LoRA layers) can corrupt them; the
tests compare them with a loop of single-example backward passes.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

import numpy as np

from lora_audit.errors import UsageError

if TYPE_CHECKING:  # torch is imported where it is used: the CLI reads DPConfig's defaults cheaply
    import torch

ACCOUNTANTS = ("prv", "rdp")


@dataclass
class DPConfig:
    """What DP-SGD needs besides the recipe: a target epsilon or a noise multiplier (exactly one)."""

    epsilon: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 0.01  # C; below every per-example norm measured on toy LoRAs (0.03-0.13)
    noise_multiplier: float | None = None  # sigma; None: derived from epsilon by the accountant
    sample_rate: float = 0.1  # q: each record's chance to be in a step's batch (21 toy records: about 2, as the recipe)
    accountant: str = "prv"
    microbatch: int = 8  # examples per vmap chunk (memory, not privacy)
    noise_seed: int | None = None  # None: drawn from the OS's secure source per run; set only for experiments

    def resolve(self, steps: int) -> tuple[float, float]:
        """(sigma, epsilon spent) for ``steps`` steps: the accountant's answer, or its refusal
        (a :class:`UsageError`) before any training."""
        sigma = self.noise_multiplier or noise_multiplier_for(self.epsilon, self.delta, self.sample_rate, steps,
                                                              self.accountant)
        return sigma, epsilon_spent(sigma, self.sample_rate, steps, self.delta, self.accountant)

    def generator(self) -> "torch.Generator":
        """The generator of the Poisson batches and the noise: seeded from ``secrets`` unless
        ``noise_seed`` is given (anyone who knows the seed can subtract the noise)."""
        import secrets

        import torch

        return torch.Generator().manual_seed(self.noise_seed if self.noise_seed is not None else secrets.randbits(63))

    def __post_init__(self):
        if (self.epsilon is None) == (self.noise_multiplier is None):
            raise UsageError("DP-SGD needs exactly one of a target epsilon and a noise multiplier")
        checks = {"epsilon": self.epsilon is None or self.epsilon > 0, "delta": 0 < self.delta < 1,
                  "max_grad_norm": self.max_grad_norm > 0, "sample_rate": 0 < self.sample_rate <= 1,
                  "noise_multiplier": self.noise_multiplier is None or self.noise_multiplier > 0,
                  "accountant": self.accountant in ACCOUNTANTS, "microbatch": self.microbatch >= 1}
        wrong = [name for name, ok in checks.items() if not ok]
        if wrong:
            raise UsageError(f"DP-SGD setting out of range: {', '.join(wrong)} (epsilon, noise multiplier, "
                             f"clipping norm > 0; 0 < delta < 1; 0 < sample rate <= 1; accountant {'|'.join(ACCOUNTANTS)})")


def noise_multiplier_for(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "prv") -> float:
    """The smallest sigma (to Opacus' tolerance) whose ``steps`` Poisson-sampled steps spend at most ``epsilon``."""
    get_noise_multiplier = _opacus().accountants.utils.get_noise_multiplier
    try:
        with _accountant_notes_silenced():
            return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                              steps=steps, accountant=accountant))
    except (MemoryError, ValueError, OverflowError) as e:  # e.g. "The privacy budget is too low."
        raise UsageError(f"no noise multiplier reaches epsilon {epsilon:g} at delta {delta:g}, sample rate "
                         f"{sample_rate:g} and {steps} steps ({e}); allow a larger epsilon or fewer steps") from None


def _opacus():
    """Opacus (the ``dp`` extra), or a usage error that says how to install it."""
    try:
        import opacus.accountants.utils  # noqa: F401  (loads opacus.accountants with it)
    except ImportError:
        raise UsageError("DP-SGD's accountant needs Opacus: pip install 'lora-privacy-audit[dp]'") from None
    return opacus


@contextlib.contextmanager
def _accountant_notes_silenced() -> Iterator[None]:
    """Opacus' accountants warn about their RDP order range and, at sample rate 1, log(0) in the PRV
    grid; neither changes the bound they return (the library never prints)."""
    with warnings.catch_warnings(), np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha")
        yield


def epsilon_spent(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "prv") -> float:
    """The epsilon of ``steps`` Poisson-sampled Gaussian-mechanism steps, by Opacus' accountant.

    A noise multiplier too small for the PRV accountant's grid (it would need petabytes) is a
    :class:`UsageError` that says so, not a MemoryError.
    """
    ledger = _opacus().accountants.create_accountant(accountant)
    ledger.history = [(noise_multiplier, sample_rate, steps)]
    try:
        with _accountant_notes_silenced():
            return float(ledger.get_epsilon(delta=delta))
    except (MemoryError, ValueError, OverflowError) as e:
        raise UsageError(f"the {accountant} accountant cannot bound noise multiplier {noise_multiplier:g} at sample "
                         f"rate {sample_rate:g} over {steps} steps ({type(e).__name__}); use more noise, or the "
                         "rdp accountant") from None


def per_example_gradients(loss: Callable[..., torch.Tensor], params: Mapping[str, torch.Tensor],
                          examples: tuple[torch.Tensor, ...], *, method: str = "vmap",
                          chunk: int = 8) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Gradient of ``loss(params, *example)`` for each example, name -> [B, *param.shape], and
    each example's loss [B].

    ``examples`` are tensors batched on dimension 0; ``loss`` takes one example (no batch
    dimension). ``method="loop"`` runs one backward pass per example (the reference).
    """
    import torch

    from torch.func import grad_and_value, vmap

    detached = {name: p.detach() for name, p in params.items()}
    if method == "vmap":
        per_example = vmap(grad_and_value(loss), in_dims=(None, *([0] * len(examples))), randomness="different",
                           chunk_size=chunk)
        with warnings.catch_warnings():  # CPU attention has no batching rule yet: vmap loops there, correctly
            warnings.filterwarnings("ignore", message="There is a performance drop")
            return per_example(detached, *examples)
    if method != "loop":
        raise ValueError(f"unknown per-example gradient method {method!r}")
    rows, values = [], []
    for i in range(len(examples[0])):
        leaves = {name: t.clone().requires_grad_(True) for name, t in detached.items()}
        value = loss(leaves, *(e[i] for e in examples))
        rows.append(dict(zip(leaves, torch.autograd.grad(value, list(leaves.values())))))
        values.append(value.detach())
    return {name: torch.stack([row[name] for row in rows]) for name in detached}, torch.stack(values)


def clipped_sum(grads: Mapping[str, torch.Tensor], max_norm: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Sum over examples of each example's gradient scaled to L2 norm at most ``max_norm`` (over all
    parameters together); also the per-example norms before clipping, [B]."""
    import torch

    flat = torch.cat([g.reshape(len(g), -1) for g in grads.values()], dim=1)  # [B, P]
    norms = flat.norm(dim=1)  # [B]
    factors = (max_norm / (norms + 1e-12)).clamp(max=1.0)  # [B]
    return {name: torch.einsum("b,b...->...", factors, g) for name, g in grads.items()}, norms


def privatised_gradient(summed: Mapping[str, torch.Tensor], *, noise_multiplier: float, max_norm: float,
                        expected_batch: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """(clipped sum + N(0, (sigma C)^2 I)) / (q N): the gradient DP-SGD steps with."""
    import torch

    return {name: (s + noise_multiplier * max_norm * torch.randn(s.shape, generator=generator,
                                                                  dtype=s.dtype).to(s.device)) / expected_batch
            for name, s in summed.items()}


def poisson_batch(size: int, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of the records drawn for one step, each independently with probability ``sample_rate``."""
    import torch

    return torch.nonzero(torch.rand(size, generator=generator) < sample_rate).flatten()
