"""The LoDA adapter file layout: what a LoDA file holds and how its first-order dW is read.

A LoDA adapter (low-dimensional adaptation, Liu et al., arXiv 2406.05257) sits beside a frozen
linear layer W: y = W x + scale * up(act(down(x))), down [r, in], up [out, r], scale = alpha / r.
Files name its factors ``<component>.<module>.loda_down.weight`` and ``...loda_up.weight`` (the
module as diffusers names it, e.g. ``unet.down_blocks.1...attn1.to_q``), and carry
``lora_audit.adapter = loda`` with the rank, alpha and activation in ``lora_audit.loda.*``.

Because of the activation a LoDA module has no exact dW. Around x = 0 it acts as the linear map
act'(0) * scale * up @ down; the reader, the weight statistics and the attack use that
first-order dW (rule LA204 says so in every report).
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import safetensors.numpy

DOWN_SUFFIX = ".loda_down.weight"
UP_SUFFIX = ".loda_up.weight"
ADAPTER_KEY = "lora_audit.adapter"
RANK_KEY = "lora_audit.loda.rank"
ALPHA_KEY = "lora_audit.loda.alpha"
ACTIVATION_KEY = "lora_audit.loda.activation"
LAYOUT = "loda"
# act'(0) of each activation LoDA files may name (ReLU: the mean of its one-sided slopes).
SLOPE_AT_ZERO = {"gelu": 0.5, "silu": 0.5, "relu": 0.5, "tanh": 1.0, "identity": 1.0}
DEFAULT_ACTIVATION = "gelu"


def linear_scale(metadata: Mapping[str, str], rank: int) -> tuple[float, float, str | None]:
    """(alpha, scale of the first-order dW, problem) of a rank-``rank`` LoDA module of a file with
    ``metadata``: scale = act'(0) * alpha / rank. An unusable alpha falls back to alpha = rank and an
    unknown activation to act'(0) = 1; the third value says why (a module problem)."""
    problems = []
    try:
        alpha = float(metadata.get(ALPHA_KEY, rank))
    except (TypeError, ValueError, OverflowError):
        alpha = math.nan
    if not math.isfinite(alpha):
        problems.append(f"{ALPHA_KEY} {str(metadata.get(ALPHA_KEY))[:40]!r} is not a finite number; alpha = rank ({rank}) used")
        alpha = float(rank)
    activation = str(metadata.get(ACTIVATION_KEY, DEFAULT_ACTIVATION)).lower()
    slope = SLOPE_AT_ZERO.get(activation)
    if slope is None:
        problems.append(f"unknown LoDA activation {activation[:40]!r}; act'(0) = 1 used")
        slope = 1.0
    return alpha, slope * alpha / rank, "; ".join(problems) or None


def save_loda(path: str, state_dict: Mapping[str, object], *, rank: int, alpha: float,
              activation: str = DEFAULT_ACTIVATION, metadata: Mapping[str, str] | None = None) -> None:
    """Write LoDA factors (``<component>.<module>.loda_down.weight`` / ``loda_up.weight``) with their
    ``lora_audit.loda.*`` metadata, as float32."""
    if activation not in SLOPE_AT_ZERO:
        raise ValueError(f"unknown LoDA activation {activation!r}; expected one of {', '.join(SLOPE_AT_ZERO)}")
    wrong = [k for k in state_dict if not k.endswith((DOWN_SUFFIX, UP_SUFFIX))]
    if wrong:
        raise ValueError(f"not LoDA factors: {', '.join(wrong[:3])}")
    arrays = {k: np.ascontiguousarray(_numpy(v)) for k, v in state_dict.items()}
    meta = {"format": "pt", **(metadata or {}), ADAPTER_KEY: LAYOUT, RANK_KEY: str(rank),
            ALPHA_KEY: repr(float(alpha)), ACTIVATION_KEY: activation}
    safetensors.numpy.save_file(arrays, path, metadata=meta)


def _numpy(value: object) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32)
