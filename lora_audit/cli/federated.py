"""``fl-client``, ``invert-gradients``, ``evaluate-gradients``: what a federated client's shared update
leaks of its photos, measured in the toy world (docs/gradient_inversion.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lora_audit.cli.options import BaseOption, DeviceOption, checked_device, int_list
from lora_audit.cli.progress import stage_progress
from lora_audit.errors import InputError, UsageError

commands = typer.Typer()

METHODS = ("gidm", "gidm+", "ig", "dlg")
LATE_LAYERS = "up_blocks.2,conv_norm_out,conv_out"  # the decoder's last block: 2.4x cheaper to match than all


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated numbers, got {text!r}") from None


def _refuse_existing(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise InputError("output", path, "already exists", fix=("force", "to replace it"))


@commands.command("fl-client", epilog="Exit codes: 0 written; 2 unreadable photos; 4 usage error.")
def fl_client(
    photos: str = typer.Argument(..., help="Folder of the client's private photos.", show_default=False),
    output: str = typer.Option(..., "--output", "-o", help="Update file to write (.safetensors)."),
    batch: int = typer.Option(1, "--batch", min=1, help="Photos in the client's batch."),
    what: str = typer.Option("gradient", "--what", help="gradient (FedSGD: the UNet's gradient) or lora-update "
                             "(FedAvg: the change of a LoRA after local steps)."),
    local_steps: int = typer.Option(1, "--local-steps", min=1, help="Local SGD steps (lora-update)."),
    lr: float = typer.Option(1e-2, "--lr", help="Local SGD learning rate (lora-update)."),
    seed: int = typer.Option(0, "--seed", help="The client's randomness: batch, noise, timesteps."),
    clip_norm: Optional[float] = typer.Option(None, "--clip-norm", help="DP-SGD: clip each example's gradient to this L2 norm."),
    noise_multiplier: float = typer.Option(0.0, "--noise-multiplier", min=0.0, help="DP-SGD: Gaussian noise std / clip norm."),
    keep: Optional[float] = typer.Option(None, "--keep", min=0.0, max=1.0, help="Sparsify: share of entries kept."),
    save_secrets: Optional[str] = typer.Option(None, "--save-secrets", help="Also write the client's noise and "
                                               "timesteps here (for audits; never part of the update)."),
    base: BaseOption = None, device: DeviceOption = None,
    force: bool = typer.Option(False, "--force", help="Replace OUTPUT if it exists."),
) -> int:
    """One federated client round on private photos: writes only what the client shares."""
    from lora_audit.families import load_base
    from lora_audit.federated.client import ClientConfig, client_update
    from lora_audit.federated.defences import Defence
    from lora_audit.images import load_image_folder
    from lora_audit.weights.update_file import write_update

    if what not in ("gradient", "lora-update"):
        raise UsageError(f"--what must be gradient or lora-update, got {what!r}")
    if noise_multiplier > 0 and clip_norm is None:
        raise UsageError("--noise-multiplier needs --clip-norm (noise is scaled to the clipping norm)")
    if clip_norm is not None and clip_norm <= 0:
        raise UsageError("--clip-norm must be positive")
    _refuse_existing(Path(output), force)
    pipeline = load_base(base, checked_device(device))
    images = load_image_folder(photos, pipeline.image_size)
    config = ClientConfig(what=what, batch_size=batch, local_steps=local_steps, lr=lr, seed=seed,
                          defence=Defence(clip_norm, noise_multiplier, keep))
    update = client_update(pipeline, images, config)
    write_update(output, update.tensors, update.metadata)
    if save_secrets:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in update.secrets.items()}, save_secrets)
    extra = f", DP epsilon {update.defence_report['epsilon']}" if update.defence_report and "epsilon" in update.defence_report else ""
    typer.echo(f"wrote {output} ({what}, batch {batch}, {len(update.tensors)} tensors{extra})")
    return 0


@commands.command("invert-gradients", epilog="Exit codes: 0 written; 2 unreadable update or photos; 4 usage error.")
def invert_gradients(
    update: str = typer.Argument(..., help="A client update file (from fl-client).", show_default=False),
    output: str = typer.Option(..., "--output", "-o", help="Folder for the reconstructions, grid and report.json."),
    method: str = typer.Option("gidm+", "--method", help="gidm | gidm+ | ig | dlg."),
    references: Optional[str] = typer.Option(None, "--references", help="Folder of the private photos to score against."),
    iterations: int = typer.Option(300, "--iterations", min=1, help="Gradient-matching iterations in all."),
    generator_steps: int = typer.Option(2, "--generator-steps", min=1, help="GIDM: DDIM steps of the generator."),
    secrets: Optional[str] = typer.Option(None, "--secrets", help="The client's noise and timesteps (fl-client "
                                          "--save-secrets): the known condition; gidm needs them."),
    seed: int = typer.Option(0, "--seed"),
    layers: str = typer.Option("", "--layers", help="Match only parameters whose names start so "
                               f"(comma-separated, e.g. {LATE_LAYERS}) \\[default: the whole update]."),
    base: BaseOption = None, device: DeviceOption = None,
    force: bool = typer.Option(False, "--force", help="Start over: discard OUTPUT's checkpoint of another inversion."),
) -> int:
    """Reconstruct a client's private photos from its shared update (an honest-but-curious server).

    Resumes from OUTPUT/checkpoint.pt when it exists."""
    from lora_audit.federated.audit import invert_update, read_secrets
    from lora_audit.federated.invert import InversionConfig
    from lora_audit.weights.update_file import read_update

    if method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "gidm" and secrets is None:
        raise UsageError("--method gidm takes the client's noise and timestep as known: pass --secrets, "
                         "or use --method gidm+, which estimates them")
    read_update(update)  # a file that is no update fails here, before any model loads
    from lora_audit.federated.invert import CHECKPOINT

    if force and (Path(output) / CHECKPOINT).is_file():
        (Path(output) / CHECKPOINT).unlink()
    known = read_secrets(secrets) if secrets else None
    from lora_audit.families import get_family, load_base

    pipeline = load_base(base, checked_device(device))
    refs, embedder = None, None
    if references:
        from lora_audit.images import load_image_folder

        refs = load_image_folder(references, pipeline.image_size)
        family = get_family(pipeline.family)
        embedder = family.face_embedder(pipeline.device) if family is not None else None
    config = InversionConfig(method=method, iterations=iterations, generator_steps=generator_steps, seed=seed,
                             layers=tuple(x for x in layers.split(",") if x))
    with stage_progress() as report:
        result = invert_update(update, Path(output), config, pipeline, refs, embedder, known,
                               progress=lambda s, i, n, m: report(s, i, n, m))
    scores = f", PSNR {result['mean_psnr']:.2f} dB, SSIM {result['mean_ssim']:.3f}" if "mean_psnr" in result else ""
    typer.echo(f"wrote {output} ({method}, {result['iterations']} iterations, {result['seconds']} s{scores})")
    return 0


@commands.command("evaluate-gradients", epilog="Exit codes: 0 done; 4 usage error.")
def evaluate_gradients(
    output: str = typer.Option("build/federated/eval", "--output", "-o", help="Folder of the per-run results (resumable)."),
    identities: int = typer.Option(20, "--identities", min=2, help="Held-out toy identities (private split)."),
    first_identity: Optional[int] = typer.Option(None, "--first-identity", help="\\[default: the private split's start + 2000]"),
    batches: str = typer.Option("1,4", "--batches"),
    conditions: str = typer.Option("known,unknown", "--conditions", help="Client noise and timestep known and/or unknown."),
    methods: str = typer.Option("gidm,ig,dlg", "--methods", help="gidm runs as gidm+ where they are unknown."),
    iterations: int = typer.Option(200, "--iterations", min=1),
    generator_steps: int = typer.Option(2, "--generator-steps", min=1),
    clip_norm: float = typer.Option(1.0, "--clip-norm", help="Defence curve: per-example clipping norm C."),
    noise_multipliers: str = typer.Option("", "--noise-multipliers", help="Defence curve: comma-separated sigmas."),
    keep: str = typer.Option("", "--keep", help="Defence curve: comma-separated shares kept by sparsification."),
    layers: str = typer.Option(LATE_LAYERS, "--layers", help="Parameter-name prefixes the server matches "
                               "(comma-separated; '' for the whole update)."),
    shard: str = typer.Option("0/1", "--shard", help="i/n: run every n-th run from i (parallel processes)."),
    base: BaseOption = None, device: DeviceOption = None,
) -> int:
    """Evaluate gradient inversion on held-out toy identities: PSNR, SSIM, identity rank-1, cost."""
    from lora_audit.families import get_family, load_base
    from lora_audit.federated.evaluate import GridConfig, evaluate_grid
    from lora_audit.toyworld.identities import PRIVATE
    from lora_audit.toyworld.photos import identity_photos, reference_views

    try:
        index, count = (int(x) for x in shard.split("/"))
        assert 0 <= index < count
    except (ValueError, AssertionError):
        raise UsageError(f"--shard must be i/n with 0 <= i < n, got {shard!r}") from None
    names = tuple(m for m in methods.split(",") if m)
    if not set(names) <= {"gidm", "ig", "dlg"}:
        raise UsageError(f"--methods takes gidm, ig, dlg, got {methods!r}")
    conds = tuple(c for c in conditions.split(",") if c)
    if not set(conds) <= {"known", "unknown"}:
        raise UsageError(f"--conditions takes known, unknown, got {conditions!r}")
    start = PRIVATE.start + 2000 if first_identity is None else first_identity
    pipeline = load_base(base, checked_device(device))
    size = pipeline.image_size
    config = GridConfig(identities=list(range(start, start + identities)), batches=int_list(batches, "--batches"),
                        conditions=conds, methods=names, iterations=iterations, generator_steps=generator_steps,
                        clip_norm=clip_norm, noise_multipliers=_floats(noise_multipliers, "--noise-multipliers"),
                        keep=_floats(keep, "--keep"), layers=tuple(x for x in layers.split(",") if x),
                        shard=(index, count))
    embedder = get_family(pipeline.family).face_embedder(pipeline.device)
    with stage_progress() as report:
        summary = evaluate_grid(pipeline, config, lambda i, n: identity_photos(i, n, size),
                                lambda i: reference_views([i], size), embedder, Path(output), progress=report)
    for cell, row in summary["cells"].items():
        typer.echo(f"{cell}: n={row['images']} PSNR {row['psnr']} {row['psnr_ci']} SSIM {row['ssim']} "
                   f"rank-1 {row['rank1']} {row['rank1_ci']} {row['seconds_per_client']} s/client")
    return 0
