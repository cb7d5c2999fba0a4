"""Option types shared by several commands, declared once, and the wording of library errors as flags."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from lora_audit.errors import InputError, LoraAuditError, UsageError

BaseOption = Annotated[Optional[str], typer.Option(
    "--base", help="Local diffusers pipeline directory of the base model \\[default: the toy base].")]
AttackModelOption = Annotated[Optional[str], typer.Option(
    "--attack-model", help="Attack model directory (from `lora-audit train-attack`) "
                           "\\[default: the shipped toy attack, for toy LoRAs].")]
JobsOption = Annotated[int, typer.Option(
    "--jobs", "-j", min=1, help="Shadow identities fine-tuned in parallel (processes).")]
LatentsOption = Annotated[int, typer.Option("--latents", min=1, help="Samples of z.")]
SeedsOption = Annotated[int, typer.Option("--seeds", min=1, help="Sampler seeds per z.")]
SamplingStepsOption = Annotated[int, typer.Option("--sampling-steps", min=1, help="Sampler steps per image.")]

def flag_of(input: str) -> str:
    """The command-line wording of a library input: ``"attack_model"`` -> ``"--attack-model"``."""
    return "--" + input.replace("_", "-")


def error_message(error: LoraAuditError) -> str:
    """The one-line message of ``error``, with the inputs of an :class:`InputError` worded as flags."""
    if isinstance(error, InputError):
        return error.describe(flag_of, verb="pass")
    return str(error)


def printable(text: str) -> str:
    """``text`` with control and other non-printable characters escaped (``\\x1b``, ``\\n``), so that
    a value quoted in a message (a policy key, a file name) cannot drive the terminal."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def int_list(text: str, flag: str) -> tuple[int, ...]:
    """Comma-separated integers (``"1,5,10"``), or a usage error naming ``flag``."""
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated integers, got {text!r}") from None


DeviceOption = Annotated[Optional[str], typer.Option(
    "--device", help="Torch device the models run on (cpu, cuda, cuda:1, mps) \\[default: cuda when available, else cpu].")]


def checked_device(device: str | None) -> str | None:
    """``--device`` as given (None: the default), or a usage error when torch cannot use it."""
    if device is None:
        return None
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:0, mps)") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available to this torch")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available to this torch")
    return device
