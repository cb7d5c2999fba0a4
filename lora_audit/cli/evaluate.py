"""``evaluate``: the attack and its baselines on held-out toy victims, written as results.md;
``evaluate-defences``: utility and leak of the DP-SGD and LoDA defences."""

from __future__ import annotations

from typing import Optional

import typer

from lora_audit.cli.options import (AttackModelOption, BaseOption, DeviceOption, LatentsOption, SamplingStepsOption,
                                    SeedsOption, checked_device)
from lora_audit.cli.progress import stage_progress
from lora_audit.diffusion.dp import DPConfig
from lora_audit.errors import UsageError
from lora_audit.toyworld.lab.defence_config import DEFENCE_IDENTITIES, DefenceConfig
from lora_audit.toyworld.lab.evaluate import EvaluationConfig

commands = typer.Typer()


@commands.command(epilog="Exit codes: 0 written; 4 usage error.")
def evaluate(
    victims: str = typer.Argument(..., help="Trajectories of held-out victims (`lora-audit shadow --first-identity 300000`).", show_default=False),
    attack_model: AttackModelOption = None,
    ablation_model: Optional[str] = typer.Option(None, "--ablation-model", help="A VAE trained with `train-attack --final-only` (the ablation row)."),
    training_seeds: Optional[str] = typer.Option(None, "--training-seeds", help="More attack models trained at other seeds, as STEP_MODEL:FINAL_ONLY_MODEL pairs, comma-separated (with --ablation-model): both rows' rank-1 and mean similarity over the seeds, mean and spread."),
    base: BaseOption = None,
    out: str = typer.Option("build/eval/results", "--out", "-o", help="Working directory (the victims' LoRA files, results.json)."),
    docs: str = typer.Option("docs", "--docs", help="Where results.md and its images go."),
    far: float = typer.Option(EvaluationConfig.far, "--far", min=0.0, max=1.0, help="False accept rate of the TAR column."),
    latents: LatentsOption = EvaluationConfig.latents,
    seeds: SeedsOption = EvaluationConfig.seeds,
    sampling_steps: SamplingStepsOption = EvaluationConfig.sampling_steps,
    owner_far: float = typer.Option(EvaluationConfig.owner_far, "--owner-far", min=0.0, max=1.0, help="Target FAR of the scan verdict's row (the owner_far policy key)."),
    steps_curve: bool = typer.Option(False, "--steps-curve", help="Also attack every snapshot of each victim: accuracy against the fine-tuning step r."),
    guidance_weights: Optional[str] = typer.Option(None, "--guidance-weights", help="Comma-separated w of the guidance-extraction rows (training-free, one row each); none: no such row \\[default: the w scan uses, 3]."),
    device: DeviceOption = None,
) -> int:
    """Toy world: the attack against the oracle, latent-ceiling, class-prompt, base and final-only baselines, and the training-free attacks (guidance extraction, the metadata trigger), on held-out victims."""
    import shlex
    from pathlib import Path

    from lora_audit.toyworld.lab.evaluate import run_evaluation

    device = checked_device(device)
    pairs = _seed_pairs(training_seeds, ablation_model) if training_seeds is not None else []
    config = EvaluationConfig(latents=latents, seeds=seeds, sampling_steps=sampling_steps, far=far,
                              owner_far=owner_far, steps_curve=steps_curve,
                              guidance_weights=_weights(guidance_weights) if guidance_weights is not None else None)
    given = [("--attack-model", attack_model), ("--ablation-model", ablation_model), ("--base", base), ("-o", out),
             ("--docs", docs), ("--far", far), ("--latents", latents), ("--seeds", seeds),
             ("--sampling-steps", sampling_steps), ("--owner-far", owner_far), ("--guidance-weights", guidance_weights),
             ("--training-seeds", training_seeds)]
    command = shlex.join(["lora-audit", "evaluate", victims, *[str(x) for flag, v in given if v is not None for x in (flag, v)],
                          *(["--steps-curve"] if steps_curve else [])])
    with stage_progress() as report:
        result = run_evaluation(Path(victims), Path(attack_model) if attack_model else None,
                                Path(ablation_model) if ablation_model else None, base, Path(out), Path(docs),
                                config, command, progress=lambda d, t, m: report("evaluate", d, t, m),
                                device=device, seed_pairs=pairs)
    vae = result["summary"]["vae"]
    if result["seeds"]:
        spread = {m: result["seeds"][m]["rank1"] for m in ("vae", "vae_final_only")}
        typer.echo(f"over {len(pairs) + 1} training seeds: VAE rank-1 {spread['vae']['mean']:.0%} (sd {spread['vae']['sd']:.0%}), "
                   f"final only {spread['vae_final_only']['mean']:.0%} (sd {spread['vae_final_only']['sd']:.0%})")
    verdict = result["verdict"]
    typer.echo(f"wrote {result['results_path']}: VAE rank-1 {vae['rank1']:.0%}, mean similarity {vae['mean_similarity']:.3f} "
               f"(oracle {result['summary']['oracle']['mean_similarity']:.3f}); owner verdict TPR {verdict['tpr']:.0%}, "
               f"FPR {verdict['fpr']:.0%}")
    return 0


@commands.command("evaluate-defences", epilog="Exit codes: 0 written; 4 usage error. Resumes: runs already "
                  "under OUT are kept. See docs/defences.md.")
def evaluate_defences(
    out: str = typer.Option("build/defences", "--out", "-o", help="Working directory (one adapter file and JSON per run)."),
    identities: int = typer.Option(DefenceConfig.identities, "--identities", min=2, max=len(DEFENCE_IDENTITIES),
                                   help="Held-out toy identities (ids from 302000)."),
    epsilons: str = typer.Option("none,16,8,4,1", "--epsilons", help="Comma-separated target epsilons; none = no DP."),
    adapters: str = typer.Option("lora,loda", "--adapters", help="Comma-separated: lora, loda."),
    steps: int = typer.Option(DefenceConfig.steps, "--steps", min=1, help="Fine-tuning steps of every run (DP or not)."),
    sample_rate: float = typer.Option(DPConfig.sample_rate, "--sample-rate", help="DP-SGD sampling rate over the 21 training images."),
    max_grad_norm: float = typer.Option(DPConfig.max_grad_norm, "--max-grad-norm", help="DP-SGD per-image clipping norm."),
    attack_model: AttackModelOption = None,
    docs: Optional[str] = typer.Option(None, "--docs", help="Also write the table and the leak-utility plot here "
                                       "(defences_table.md, img/defences/leak_vs_utility.png)."),
    summary_only: bool = typer.Option(False, "--summary-only", help="Run nothing: summarise the finished runs under OUT of the settings --adapters and --epsilons name."),
    device: DeviceOption = None,
) -> int:
    """Toy world: utility and leak of DP-SGD and LoDA fine-tunes, adapter x epsilon, on held-out identities."""
    from pathlib import Path

    from lora_audit.diffusion.finetune import ADAPTERS
    from lora_audit.toyworld.lab.defences import defences_markdown, plot_leak_against_utility, run_defences

    wanted = [a.strip() for a in adapters.split(",") if a.strip()]
    if not wanted or any(a not in ADAPTERS for a in wanted):
        raise UsageError(f"--adapters {adapters!r}: expected a comma-separated list of {', '.join(ADAPTERS)}")
    config = DefenceConfig(identities=identities, epsilons=_epsilons(epsilons), adapters=tuple(wanted), steps=steps,
                           dp=DPConfig(epsilon=1.0, sample_rate=sample_rate, max_grad_norm=max_grad_norm))
    if docs is not None and not Path(docs).is_dir():
        raise UsageError(f"--docs {docs}: no such folder")
    with stage_progress() as report:
        summary = run_defences(Path(out), config, attack_model=attack_model, device=checked_device(device),
                               progress=lambda d, t, m: report("defences", d, t, m), run=not summary_only)
    if not summary["settings"]:
        raise UsageError(f"-o {out}: no setting has finished runs for two identities yet")
    table = defences_markdown(summary)
    if docs is not None:
        (Path(docs) / "defences_table.md").write_text(table)
        plot_leak_against_utility(summary, Path(docs) / "img" / "defences" / "leak_vs_utility.png")
    typer.echo(table, nl=False)
    typer.echo(f"wrote {Path(out) / 'defences.json'}" + (f" and the table and plot under {docs}" if docs else ""))
    return 0


def _weights(text: str) -> tuple[float, ...]:
    """``--guidance-weights``: comma-separated numbers >= 0, or none."""
    if text.strip().lower() == "none":
        return ()
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--guidance-weights {text!r}: expected comma-separated numbers, or none") from None
    if not values or any(not 0 <= w < float("inf") for w in values):
        raise UsageError(f"--guidance-weights {text!r}: expected comma-separated numbers >= 0, or none")
    return values


def _epsilons(text: str) -> tuple[float | None, ...]:
    values = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        try:
            value = None if part == "none" else float(part)
        except ValueError:
            raise UsageError(f"--epsilons {text!r}: {part!r} is neither a number nor none") from None
        if value is not None and not value > 0:
            raise UsageError(f"--epsilons {text!r}: epsilons must be > 0")
        values.append(value)
    if not values:
        raise UsageError("--epsilons is empty")
    return tuple(values)


def _seed_pairs(value: str, ablation_model: str | None) -> list:
    """``--training-seeds`` as (step-embedding, final-only) attack model directories, each checked."""
    from pathlib import Path

    if ablation_model is None:
        raise UsageError("--training-seeds compares with the final-only ablation: give --ablation-model too")
    pairs = []
    for item in value.split(","):
        parts = [p.strip() for p in item.split(":")]
        if len(parts) != 2 or not all(parts):
            raise UsageError(f"--training-seeds {item!r}: expected STEP_MODEL:FINAL_ONLY_MODEL")
        for part in parts:
            if not (Path(part) / "attack.json").is_file():
                raise UsageError(f"--training-seeds: {part} is not an attack model directory (no attack.json)")
        pairs.append((Path(parts[0]), Path(parts[1])))
    return pairs
