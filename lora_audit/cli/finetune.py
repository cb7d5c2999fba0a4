"""``finetune``: DreamBooth-LoRA on a folder of photos, written as LoRA files."""

from __future__ import annotations

from typing import Optional

import typer

from lora_audit.cli.options import BaseOption, DeviceOption, checked_device, int_list
from lora_audit.cli.progress import stage_progress
from lora_audit.diffusion.dp import ACCOUNTANTS, DPConfig
from lora_audit.diffusion.finetune import FinetuneConfig
from lora_audit.errors import UsageError

_RECIPE = FinetuneConfig()

commands = typer.Typer()


@commands.command(epilog="Exit codes: 0 written; 2 bad input images; 4 usage error. "
                  "DP-SGD and LoDA: docs/defences.md.")
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
    adapter: str = typer.Option(_RECIPE.adapter, "--adapter", help="lora, or loda: a down-projection, GELU and "
                                "up-projection beside each target (with --dp: DP-LoDA), written in the LoDA layout."),
    dp: bool = typer.Option(False, "--dp", help="Train with DP-SGD: per-image gradient clipping, Gaussian noise, "
                            "Poisson sampling over the photos and class images. The epsilon protects ONE training "
                            "image; a person in all N photos gets only N x epsilon (group privacy)."),
    epsilon: Optional[float] = typer.Option(None, "--epsilon", help="Target epsilon (with --dp); "
                                            "the noise multiplier is derived by the accountant."),
    delta: float = typer.Option(DPConfig.delta, "--delta"),
    max_grad_norm: float = typer.Option(DPConfig.max_grad_norm, "--max-grad-norm",
                                        help="Per-image clipping norm C."),
    noise_multiplier: Optional[float] = typer.Option(None, "--noise-multiplier",
                                                     help="sigma, instead of --epsilon (the spent epsilon is reported)."),
    sample_rate: float = typer.Option(DPConfig.sample_rate, "--sample-rate",
                                      help="Each image's chance to be in a step's batch."),
    accountant: str = typer.Option(DPConfig.accountant, "--accountant", help="prv or rdp (Opacus)."),
    device: DeviceOption = None,
    force: bool = typer.Option(False, "--force", help="Replace OUTPUT (and its _step_N snapshots) if they exist."),
) -> int:
    """DreamBooth-LoRA fine-tuning of a base model on a folder of photos (the victims' recipe), or
    with the defences: LoDA adapters (--adapter loda) and DP-SGD (--dp --epsilon E)."""
    from pathlib import Path

    from lora_audit.families import get_family, load_base
    from lora_audit.diffusion.finetune import finetune_lora
    from lora_audit.diffusion.finetune import ADAPTERS
    from lora_audit.diffusion.lora_output import check_layout, check_outputs, save_finetune
    from lora_audit.images import load_image_folder
    from lora_audit.weights.writer import LAYOUTS

    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if adapter not in ADAPTERS:
        raise UsageError(f"unknown adapter {adapter!r}; expected one of {', '.join(ADAPTERS)}")
    check_layout(adapter, layout, kohya_metadata, dp)
    privacy = _dp_config(dp, epsilon, delta, max_grad_norm, noise_multiplier, sample_rate, accountant, steps)
    snapshots = int_list(snapshot_steps, "--snapshot-steps")
    check_outputs(Path(output), [step for step in snapshots if step != steps], force)  # before any training
    pipeline = load_base(base, checked_device(device))
    photos = load_image_folder(images, pipeline.image_size)
    config = FinetuneConfig(rank=rank, alpha=alpha, steps=steps, lr=lr, seed=seed, trigger=trigger,
                            snapshot_steps=snapshots, text_encoder_lora=text_encoder, adapter=adapter, dp=privacy)
    with stage_progress() as report:
        result = finetune_lora(pipeline, photos, config, progress=lambda s, t, m: report("finetune", s, t, m))
    save_finetune(result, Path(output), layout=layout, metadata=get_family(pipeline.family).lora_metadata(),
                  kohya_metadata=kohya_metadata, family=pipeline.family, num_images=len(photos))
    typer.echo(f"wrote {output} (trigger: \"{result.instance_prompt}\", {steps} steps, {result.seconds:.1f} s)")
    if result.privacy is not None:
        guarantee = result.privacy
        typer.echo(f"privacy spent: epsilon {guarantee.epsilon:.3f} at delta {guarantee.delta:g} "
                   f"(noise multiplier {guarantee.noise_multiplier:.4g}, clipping {guarantee.max_grad_norm:g}, "
                   f"sample rate {guarantee.sample_rate:g}, {guarantee.steps} steps, {guarantee.accountant}) "
                   f"per training image; {guarantee.person_protection()}")
    return 0


def _dp_config(dp, epsilon, delta, max_grad_norm, noise_multiplier, sample_rate, accountant, steps):
    """The DP-SGD setting the flags ask for (None without --dp); flag misuse is a usage error."""
    if not dp:
        if epsilon is not None or noise_multiplier is not None:
            raise UsageError("--epsilon and --noise-multiplier need --dp")
        return None
    if (epsilon is None) == (noise_multiplier is None):
        raise UsageError("--dp needs exactly one of --epsilon and --noise-multiplier")
    if accountant not in ACCOUNTANTS:
        raise UsageError(f"unknown accountant {accountant!r}; expected one of {', '.join(ACCOUNTANTS)}")
    config = DPConfig(epsilon=epsilon, delta=delta, max_grad_norm=max_grad_norm, noise_multiplier=noise_multiplier,
                      sample_rate=sample_rate, accountant=accountant)
    config.resolve(steps)  # the accountant's refusal comes now, before the base is loaded
    return config
