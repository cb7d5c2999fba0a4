"""``finetune``: DreamBooth-LoRA on a folder of photos, written as LoRA files."""

from __future__ import annotations

from typing import Optional

import typer

from lora_audit.cli.options import BaseOption, DeviceOption, checked_device, int_list
from lora_audit.cli.progress import stage_progress
from lora_audit.diffusion.finetune import FinetuneConfig
from lora_audit.errors import UsageError

_RECIPE = FinetuneConfig()

commands = typer.Typer()


@commands.command(epilog="Exit codes: 0 written; 2 bad input images; 4 usage error.")
def finetune(
    images: str = typer.Argument(..., help="Folder of the subject's photos (PNG/JPEG).", show_default=False),
    output: str = typer.Option(..., "--output", "-o", help="LoRA file to write (.safetensors)."),
    base: BaseOption = None,
    rank: int = typer.Option(_RECIPE.rank, "--rank", min=1),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="\\[default: rank]"),
    steps: int = typer.Option(_RECIPE.steps, "--steps", min=1), lr: float = typer.Option(_RECIPE.lr, "--lr"),
    seed: int = typer.Option(0, "--seed"), trigger: Optional[str] = typer.Option(None, "--trigger", help="[default: a random rare word]"),
    layout: str = typer.Option("peft", "--layout", help="peft (diffusers) or kohya."),
    kohya_metadata: bool = typer.Option(False, "--kohya-metadata", help="Write kohya-style ss_* training metadata (leaky, for realistic samples)."),
    snapshot_steps: str = typer.Option("", "--snapshot-steps", help="Comma-separated steps whose LoRA is also written (OUTPUT stem + _step_N)."),
    text_encoder: bool = typer.Option(_RECIPE.text_encoder_lora, "--text-encoder/--no-text-encoder", help="Also train a LoRA on the text encoder (SDXL: both)."),
    device: DeviceOption = None,
    force: bool = typer.Option(False, "--force", help="Replace OUTPUT (and its _step_N snapshots) if they exist."),
) -> int:
    """DreamBooth-LoRA fine-tuning of a base model on a folder of photos (the victims' recipe)."""
    from pathlib import Path

    from lora_audit.families import get_family, load_base
    from lora_audit.diffusion.finetune import finetune_lora
    from lora_audit.diffusion.lora_output import check_outputs, save_finetune
    from lora_audit.images import load_image_folder
    from lora_audit.weights.writer import LAYOUTS

    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    snapshots = int_list(snapshot_steps, "--snapshot-steps")
    check_outputs(Path(output), [step for step in snapshots if step != steps], force)  # before any training
    pipeline = load_base(base, checked_device(device))
    photos = load_image_folder(images, pipeline.image_size)
    config = FinetuneConfig(rank=rank, alpha=alpha, steps=steps, lr=lr, seed=seed, trigger=trigger,
                            snapshot_steps=snapshots, text_encoder_lora=text_encoder)
    with stage_progress() as report:
        result = finetune_lora(pipeline, photos, config, progress=lambda s, t, m: report("finetune", s, t, m))
    save_finetune(result, Path(output), layout=layout, metadata=get_family(pipeline.family).lora_metadata(),
                  kohya_metadata=kohya_metadata, family=pipeline.family, num_images=len(photos))
    typer.echo(f"wrote {output} (trigger: \"{result.instance_prompt}\", {steps} steps, {result.seconds:.1f} s)")
    return 0
