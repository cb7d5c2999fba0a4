"""The arithmetic the models run in: mixed precision (torch.autocast) on a GPU, full precision elsewhere.

``auto`` (the default) is bfloat16 autocast on a CUDA device that supports it, float16 on one that does
not, and float32 on the CPU and other devices. The weights stay float32 either way (a LoRA's deltas and
the trained adapters keep full precision); only the matrix products of the forward passes run narrower.
``LORA_AUDIT_PRECISION`` (auto, fp32, fp16, bf16) overrides it for every command, e.g. fp32 on a GPU for
figures comparable with CPU runs, or bf16 on the CPU.
"""

from __future__ import annotations

import contextlib
import os

from lora_audit.errors import UsageError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
ENV = "LORA_AUDIT_PRECISION"


def chosen_precision(precision: str | None = None) -> str:
    """``precision``, else ``$LORA_AUDIT_PRECISION``, else auto; a usage error for any other value."""
    value = (precision or os.environ.get(ENV) or "auto").strip().lower()
    if value not in PRECISIONS:
        raise UsageError(f"{ENV}={value!r}: expected one of {', '.join(PRECISIONS)}")
    return value


def autocast_dtype(device_type: str, precision: str):
    """The torch dtype autocast runs in for ``precision`` on a device of ``device_type``; None: float32."""
    import torch

    if precision == "fp32" or (precision == "auto" and device_type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device, precision: str):
    """A context in which ``device``'s forward passes run in ``precision`` (nothing changes for float32)."""
    import torch

    device_type = torch.device(device).type
    dtype = autocast_dtype(device_type, precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)
