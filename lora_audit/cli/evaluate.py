"""``evaluate``: the attack and its baselines on held-out toy victims, written as results.md."""

from __future__ import annotations

from typing import Optional

import typer

from lora_audit.cli.options import (AttackModelOption, BaseOption, DeviceOption, LatentsOption, SamplingStepsOption,
                                    SeedsOption, checked_device)
from lora_audit.cli.progress import stage_progress
from lora_audit.toyworld.lab.evaluate import EvaluationConfig

commands = typer.Typer()


@commands.command(epilog="Exit codes: 0 written; 4 usage error.")
def evaluate(
    victims: str = typer.Argument(..., help="Trajectories of held-out victims (`lora-audit shadow --first-identity 300000`).", show_default=False),
    attack_model: AttackModelOption = None,
    ablation_model: Optional[str] = typer.Option(None, "--ablation-model", help="A VAE trained with `train-attack --final-only` (the ablation row)."),
    base: BaseOption = None,
    out: str = typer.Option("build/eval/results", "--out", "-o", help="Working directory (the victims' LoRA files, results.json)."),
    docs: str = typer.Option("docs", "--docs", help="Where results.md and its images go."),
    far: float = typer.Option(EvaluationConfig.far, "--far", min=0.0, max=1.0, help="False accept rate of the TAR column."),
    latents: LatentsOption = EvaluationConfig.latents,
    seeds: SeedsOption = EvaluationConfig.seeds,
    sampling_steps: SamplingStepsOption = EvaluationConfig.sampling_steps,
    owner_far: float = typer.Option(EvaluationConfig.owner_far, "--owner-far", min=0.0, max=1.0, help="Target FAR of the scan verdict's row (the owner_far policy key)."),
    steps_curve: bool = typer.Option(False, "--steps-curve", help="Also attack every snapshot of each victim: accuracy against the fine-tuning step r."),
    device: DeviceOption = None,
) -> int:
    """Toy world: the attack against the oracle, latent-ceiling, class-prompt, base and final-only baselines on held-out victims."""
    import shlex
    from pathlib import Path

    from lora_audit.toyworld.lab.evaluate import run_evaluation

    device = checked_device(device)
    config = EvaluationConfig(latents=latents, seeds=seeds, sampling_steps=sampling_steps, far=far,
                              owner_far=owner_far, steps_curve=steps_curve)
    given = [("--attack-model", attack_model), ("--ablation-model", ablation_model), ("--base", base), ("-o", out),
             ("--docs", docs), ("--far", far), ("--latents", latents), ("--seeds", seeds),
             ("--sampling-steps", sampling_steps), ("--owner-far", owner_far)]
    command = shlex.join(["lora-audit", "evaluate", victims, *[str(x) for flag, v in given if v is not None for x in (flag, v)],
                          *(["--steps-curve"] if steps_curve else [])])
    with stage_progress() as report:
        result = run_evaluation(Path(victims), Path(attack_model) if attack_model else None,
                                Path(ablation_model) if ablation_model else None, base, Path(out), Path(docs),
                                config, command, progress=lambda d, t, m: report("evaluate", d, t, m),
                                device=device)
    vae = result["summary"]["vae"]
    verdict = result["verdict"]
    typer.echo(f"wrote {result['results_path']}: VAE rank-1 {vae['rank1']:.0%}, mean similarity {vae['mean_similarity']:.3f} "
               f"(oracle {result['summary']['oracle']['mean_similarity']:.3f}); owner verdict TPR {verdict['tpr']:.0%}, "
               f"FPR {verdict['fpr']:.0%}")
    return 0
