"""``shadow``, ``train-attack`` and ``reconstruct``: build the weight-to-image attack and run it on a LoRA."""

from __future__ import annotations

from typing import Optional

import typer

from lora_audit.attack.shadow import ShadowConfig
from lora_audit.attack.train_config import TrainConfig
from lora_audit.cli.options import (AttackModelOption, BaseOption, DeviceOption, JobsOption, LatentsOption,
                                    SamplingStepsOption, SeedsOption, checked_device, int_list)
from lora_audit.cli.progress import stage_progress
from lora_audit.diffusion.finetune import FinetuneConfig

_RECIPE = FinetuneConfig()
_TRAIN = TrainConfig()

commands = typer.Typer()


@commands.command(epilog="Exit codes: 0 written; 2 bad input images; 4 usage error.")
def shadow(
    out: str = typer.Option(..., "--out", "-o", help="Directory for the trajectory shards (resumes what is there)."),
    identities: int = typer.Option(ShadowConfig.identities, "--identities", "-n", min=1, help="Shadow identities to fine-tune."),
    images: Optional[str] = typer.Option(None, "--images", help="One sub-folder of photos per shadow identity \\[default: toy-world SHADOW identities]."),
    first_identity: Optional[int] = typer.Option(ShadowConfig.first_identity, "--first-identity", min=0, help="Built-in identities (toy world): id of the first one, e.g. 300000 for held-out PRIVATE evaluation victims \\[default: the family's first shadow identity, 201000 for toy]."),
    base: BaseOption = None,
    steps: int = typer.Option(_RECIPE.steps, "--steps", min=1, help="Fine-tuning steps per identity."),
    snapshot_steps: str = typer.Option(",".join(map(str, ShadowConfig.snapshot_steps)), "--snapshot-steps", help="Comma-separated steps r stored per trajectory (each <= --steps)."),
    dp_epsilon: Optional[float] = typer.Option(None, "--dp-epsilon", help="Fine-tune the shadows with DP-SGD at this "
                                               "epsilon (finetune --dp's defaults): an adaptive attacker's shadows."),
    jobs: JobsOption = 1,
    device: DeviceOption = None,
) -> int:
    """Fine-tune shadow LoRAs with the victims' recipe and store their trajectories (the attack's training data)."""
    from dataclasses import replace
    from pathlib import Path

    from lora_audit.attack.shadow import build_shadows
    from lora_audit.diffusion.dp import DPConfig

    snapshots, device = int_list(snapshot_steps, "--snapshot-steps"), checked_device(device)
    size = ShadowConfig.image_size
    if base is not None:  # photos at the base model's resolution
        from lora_audit.families import load_base

        size = load_base(base, device).image_size
    config = ShadowConfig(identities=identities, first_identity=first_identity, snapshot_steps=snapshots,
                          images_dir=images, image_size=size,
                          finetune=replace(_RECIPE, steps=steps, dp=None if dp_epsilon is None else DPConfig(epsilon=dp_epsilon)))
    with stage_progress() as report:
        summary = build_shadows(config, Path(out), base, jobs, lambda d, t, m: report("shadow", d, t, m), device)
    typer.echo(f"{summary['identities']} shadow trajectories in {out} ({summary['trained_now']} fine-tuned now)")
    return 0


@commands.command("train-attack", epilog="Exit codes: 0 written; 4 usage error.")
def train_attack(
    shadows: str = typer.Argument(..., help="Directory of shadow trajectories (from `lora-audit shadow`, fine-tuned on --base).", show_default=False),
    out: str = typer.Option(..., "--out", "-o", help="Directory for the attack model (attack.json + attack.safetensors), curves and checkpoints; resumes what is there."),
    base: BaseOption = None,
    steps: int = typer.Option(_TRAIN.steps, "--steps", min=1, help="Optimiser steps."),
    shadows_per_step: int = typer.Option(_TRAIN.shadows_per_step, "--shadows-per-step", min=1),
    lr: float = typer.Option(_TRAIN.lr, "--lr"),
    beta: float = typer.Option(_TRAIN.beta, "--beta", help="KL weight after warm-up."),
    validation: int = typer.Option(_TRAIN.validation, "--validation", min=0, help="Shadow identities held out of training."),
    final_only: bool = typer.Option(False, "--final-only", help="Ablation: train on final weights only, without the step embedding."),
    module_dropout: float = typer.Option(_TRAIN.module_dropout, "--module-dropout", min=0.0, max=0.95, help="Share of module tokens hidden from the encoder at each training step (a regulariser)."),
    latent_rank: int = typer.Option(_TRAIN.latent_rank, "--latent-rank", min=1, help="Coefficients of z: principal directions of the face-description embeddings kept."),
    prompts: int = typer.Option(_TRAIN.prompts, "--prompts", min=2, help="Face descriptions embedded to span the latent (a family may have fewer)."),
    seed: int = typer.Option(_TRAIN.seed, "--seed", min=0, help="Training seed (initialisation, batches, noise): repeat a training at several seeds to see its spread."),
    device: DeviceOption = None,
) -> int:
    """Train the weight-to-image VAE attack on shadow trajectories."""
    from dataclasses import replace
    from pathlib import Path

    from lora_audit.attack.shadow import load_trajectories
    from lora_audit.attack.train import train_attack as train
    from lora_audit.families import load_base

    device = checked_device(device)
    trajectories = load_trajectories(Path(shadows))
    pipeline = load_base(base, device)
    config = replace(_TRAIN, steps=steps, shadows_per_step=shadows_per_step, lr=lr, beta=beta,
                     validation=validation, final_only=final_only, module_dropout=module_dropout,
                     latent_rank=latent_rank, prompts=prompts, seed=seed)
    with stage_progress() as report:
        model = train(pipeline, trajectories, config, Path(out), lambda s, t, m: report("train", s, t, m))
    held_out = model.config.training["final"].get("val_mse")
    typer.echo(f"wrote the attack model to {out} ({model.config.training['seconds']:.0f} s"
               + (f"; held-out diffusion MSE {held_out:.4f})" if held_out is not None else ")"))
    return 0


@commands.command(epilog="Exit codes: 0 written; 2 the LoRA could not be read; 4 usage error.")
def reconstruct(
    lora: str = typer.Argument(..., help="LoRA file (.safetensors).", show_default=False),
    out: str = typer.Option(..., "--out", "-o", help="Directory for the PNGs and the grid."),
    attack_model: AttackModelOption = None,
    base: BaseOption = None,
    latents: LatentsOption = 4,
    seeds: SeedsOption = 2,
    step: Optional[float] = typer.Option(None, "--step", min=1, help="Fine-tuning step r \\[default: from metadata, else estimated]."),
    sampling_steps: SamplingStepsOption = 25,
    seed: int = typer.Option(0, "--seed"),
    device: DeviceOption = None,
) -> int:
    """Reconstruct the identity behind a LoRA file from its weights (K = latents x seeds images and a grid)."""
    from pathlib import Path

    from lora_audit.attack.reconstruct import reconstruct_file, save_reconstruction
    from lora_audit.attack.resolve import AttackSources

    result = reconstruct_file(lora, AttackSources(attack_model, base), latents=latents, seeds=seeds, step=step,
                              sampling_steps=sampling_steps, seed=seed, device=checked_device(device))
    paths = save_reconstruction(result, Path(out), Path(lora).stem)
    typer.echo(f"wrote {len(paths) - 1} reconstructions and {paths[-1]} (step r = {result.step:.0f}, {result.step_source})")
    return 0
