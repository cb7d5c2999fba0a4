"""``toy build``: rebuild the embedded toy face world from fixed seeds."""

from __future__ import annotations

from typing import List, Optional

import typer

from lora_audit.cli.options import JobsOption
from lora_audit.cli.progress import stage_progress

commands = typer.Typer(help="The embedded toy face world: rebuild it from fixed seeds.", no_args_is_help=True)


@commands.command("build")
def build(
    out: str = typer.Option("build/toy", "--out", help="Working directory for checkpoints and stage outputs."),
    stage: List[str] = typer.Option([], "--stage", help="Run only these stages (repeatable): embedder, base, victims, shadows, attack, install, references (the generic faces' consistency at the toy family's scan steps, stored in the installed attack model: `--stage references --install .` refreshes a checkout's), crowd (LA301's null: LoRAs of several people and of objects fine-tuned on the installed base, and both identity attacks' consistency on them: `--stage crowd --install .` measures a checkout's), figures (the docs' toy-world figures, from the installed models: `--stage figures --install .` redraws a checkout's)."),
    tiny: bool = typer.Option(False, "--tiny", help="Tiny sizes (seconds): a smoke test."),
    install: Optional[str] = typer.Option(None, "--install", help="Source checkout to install the final artefacts into (its lora_audit/toyworld/data, weights_samples/ and docs/) \\[default: OUT/installed]."),
    jobs: JobsOption = 1,
) -> int:
    """Rebuild the toy world (embedder, base, victims, shadow trajectories, attack model) resumably, then install it."""
    from pathlib import Path

    from lora_audit.toyworld.lab.build import STAGES, BuildConfig, build as run

    root = Path(install) if install else None
    config = BuildConfig.tiny(Path(out), root) if tiny else BuildConfig(out=Path(out), install_root=root)
    config.jobs = jobs
    with stage_progress() as report:
        metrics = run(config, tuple(stage) or STAGES, report)
    typer.echo(f"toy world built in {out}: stages {', '.join(metrics)}")
    return 0


@commands.command("photos")
def photos(
    identity: int = typer.Argument(..., min=0, help="Toy identity id (see docs/toyworld.md for the ranges).", show_default=False),
    out: str = typer.Option(..., "--out", "-o", help="Folder for photo_<view>.png."),
    count: int = typer.Option(5, "--count", "-n", min=1, help="Photos to draw."),
    first_view: int = typer.Option(0, "--first-view", min=0, help="View index of the first photo (views differ in pose, light, background; a victim's LoRA trains on views 0-4)."),
    seed: int = typer.Option(0, "--seed", help="Renderer seed (the toy victims use 0)."),
    size: int = typer.Option(32, "--size", min=8, help="Side in pixels (the toy base's resolution is 32)."),
    force: bool = typer.Option(False, "--force", help="Replace photos already in OUT."),
) -> int:
    """Photos of any toy identity: try `finetune` and `scan --references` on identities of your choosing."""
    from pathlib import Path

    from lora_audit.toyworld.photos import save_identity_photos

    paths = save_identity_photos(identity, count, Path(out), first_view=first_view, seed=seed, size=size,
                                 overwrite=force)
    typer.echo(f"wrote {len(paths)} photos of toy identity {identity} to {out}")
    return 0
