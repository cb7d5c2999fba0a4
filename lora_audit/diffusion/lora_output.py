"""Writing a fine-tuning result as LoRA files: the final LoRA and its snapshots."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from lora_audit.errors import InputError
from lora_audit.weights.writer import kohya_training_metadata, save_lora

if TYPE_CHECKING:
    from lora_audit.diffusion.finetune import FinetuneResult


def snapshot_path(output: Path, step: int) -> Path:
    """Where the snapshot at ``step`` of a LoRA written to ``output`` goes: ``<stem>_step_N<suffix>``."""
    return output.with_name(f"{output.stem}_step_{step}{output.suffix}")


def check_outputs(output: Path, snapshot_steps: list[int], overwrite: bool = False) -> None:
    """Refuse, before any training, an ``output`` whose folder is missing, or that (or a snapshot of it)
    exists unless ``overwrite``."""
    if not output.parent.is_dir():
        raise InputError("output", output, "is in a folder that does not exist")
    taken = [p.name for p in (output, *(snapshot_path(output, s) for s in snapshot_steps)) if p.exists()]
    if taken and not overwrite:
        raise InputError("output", output, f"{', '.join(taken)} already exist(s)", fix=("force", "to replace"))


def save_finetune(result: FinetuneResult, output: Path, *, layout: str = "peft",
                  metadata: Mapping[str, str] | None = None, kohya_metadata: bool = False,
                  family: str, num_images: int) -> list[Path]:
    """Write the final LoRA of ``result`` to ``output`` and each earlier snapshot next to it
    (:func:`snapshot_path`); return the paths written, in step order.

    Rank and alpha are the recipe's (``result.config``). Every file carries ``metadata``; with
    ``kohya_metadata`` also kohya's leaky ``ss_*`` training keys (trigger, ``num_images``, steps,
    ``family`` as the base model version) for that snapshot's step.
    """
    config = result.config
    alpha = config.alpha if config.alpha is not None else config.rank
    paths = []
    for step, state in sorted(result.snapshots.items()):
        path = output if step == config.steps else snapshot_path(output, step)
        meta = dict(metadata or {})
        if kohya_metadata:
            meta.update(kohya_training_metadata(trigger=result.trigger, class_word="person", num_images=num_images,
                                                steps=step, rank=config.rank, alpha=alpha,
                                                base_model_version=family, output_name=output.stem))
        save_lora(str(path), state, layout=layout, rank=config.rank, alpha=alpha, metadata=meta)
        paths.append(path)
    return paths
