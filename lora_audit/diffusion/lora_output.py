"""Writing a fine-tuning result as adapter files (LoRA, or LoDA): the final adapter and its snapshots."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from lora_audit.errors import InputError
from lora_audit.weights.loda import save_loda
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


def check_layout(adapter: str, layout: str, kohya_metadata: bool = False, dp: bool = False) -> None:
    """Refuse, before any training, a LoRA-only layout or kohya metadata for LoDA adapters, and
    kohya's leaky training metadata (captions, folder names) in a file that claims DP."""
    if dp and kohya_metadata:
        raise InputError("kohya_metadata", None, "writes the training captions and folder names into the file, "
                         "outside any DP guarantee; leave it out with --dp")
    if adapter == "loda" and layout != "peft":
        raise InputError("layout", layout, "is a LoRA layout; LoDA adapters are written in their own")
    if adapter == "loda" and kohya_metadata:
        raise InputError("kohya_metadata", None, "describes kohya LoRA training, not LoDA adapters")


def save_finetune(result: FinetuneResult, output: Path, *, layout: str = "peft",
                  metadata: Mapping[str, str] | None = None, kohya_metadata: bool = False,
                  family: str, num_images: int) -> list[Path]:
    """Write the final LoRA of ``result`` to ``output`` and each earlier snapshot next to it
    (:func:`snapshot_path`); return the paths written, in step order.

    Rank and alpha are the recipe's (``result.config``). Every file carries ``metadata``; with
    ``kohya_metadata`` also kohya's leaky ``ss_*`` training keys (trigger, ``num_images``, steps,
    ``family`` as the base model version) for that snapshot's step. A LoDA result is written in the
    LoDA layout (``layout`` must be peft, the default); a DP-SGD result's final file states its
    guarantee (``lora_audit.dp.*``; a snapshot's would be another epsilon, so snapshots do not).
    """
    config = result.config
    alpha = config.alpha if config.alpha is not None else config.rank
    check_layout(config.adapter, layout, kohya_metadata, result.privacy is not None)
    paths = []
    for step, state in sorted(result.snapshots.items()):
        final = step == config.steps
        path = output if final else snapshot_path(output, step)
        meta = dict(metadata or {})
        if kohya_metadata:
            meta.update(kohya_training_metadata(trigger=result.trigger, class_word="person", num_images=num_images,
                                                steps=step, rank=config.rank, alpha=alpha,
                                                base_model_version=family, output_name=output.stem))
        if final and result.privacy is not None:
            meta.update(result.privacy.metadata())
        if config.adapter == "loda":
            save_loda(str(path), state, rank=config.rank, alpha=alpha, activation=config.loda_activation, metadata=meta)
        else:
            save_lora(str(path), state, layout=layout, rank=config.rank, alpha=alpha, metadata=meta)
        paths.append(path)
    return paths
