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
    stage: List[str] = typer.Option([], "--stage", help="Run only these stages (repeatable): embedder, base, victims, shadows, attack, install."),
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
