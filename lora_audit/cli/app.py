"""The ``lora-audit`` command line. Each command parses flags, calls one library function and hands
the result to a report writer; :func:`main` turns errors into one line and an exit code."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from enum import Enum
from typing import Iterator, List, Optional, TextIO

import typer

from lora_audit import __version__
from lora_audit.errors import LoraAuditError, UsageError
from lora_audit.attack.shadow import ShadowConfig
from lora_audit.attack.train_config import TrainConfig
from lora_audit.toyworld.lab.evaluate import EvaluationConfig
from lora_audit.diffusion.finetune import FinetuneConfig

_RECIPE = FinetuneConfig()
_TRAIN = TrainConfig()

log = logging.getLogger("lora_audit")

EXIT_CODES = """Exit codes: 0 no finding at or above --fail-on; 1 findings at or above it;
2 a file could not be scanned; 3 nothing was scanned; 4 usage error."""

app = typer.Typer(
    name="lora-audit",
    help="Privacy-risk audit of LoRA weights for text-to-image diffusion models.\n\n" + EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Format(str, Enum):
    console = "console"
    json = "json"
    jsonl = "jsonl"
    sarif = "sarif"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lora-audit {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Privacy-risk audit of LoRA weights for text-to-image diffusion models."""


@app.command(epilog=EXIT_CODES)
def scan(
    paths: List[str] = typer.Argument(..., help="LoRA files or directories (searched recursively).", show_default=False),
    format: Format = typer.Option(Format.console, "--format", "-f", help="Report format."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Write the report to this file instead of stdout."),
    fail_on: Optional[str] = typer.Option(None, "--fail-on", help="Lowest severity that makes the exit code 1: info, low, medium, high, critical. \\[default: high]"),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="Files scanned in parallel. \\[default: 1]"),
    redact: bool = typer.Option(False, "--redact", help="Mask metadata values in the evidence (keys stay)."),
    policy: Optional[str] = typer.Option(None, "--policy", help="Policy file (default: ./lora-audit.toml, or the \\[tool.lora-audit] table of ./pyproject.toml)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Per-module weight statistics in the console report."),
    skip_weights: bool = typer.Option(False, "--skip-weights", help="Read headers only: metadata, layout, base model and tensor pairing; no NaN/Inf check, no dW statistics, no attack (fast triage)."),
    attack: bool = typer.Option(True, "--attack/--no-attack", help="Run the weight-to-image attack where an attack model for the file's base family is available (the toy one ships)."),
    attack_model: Optional[str] = typer.Option(None, "--attack-model", help="Attack model directory for non-toy families (from `lora-audit train-attack`)."),
    base: Optional[str] = typer.Option(None, "--base", help="Local diffusers pipeline directory of the base model, for non-toy families."),
    face_weights: Optional[str] = typer.Option(None, "--face-weights", help="facenet-pytorch InceptionResnetV1 checkpoint for non-toy families \\[default: the torch hub cache]."),
    references: Optional[str] = typer.Option(None, "--references", help="Folder of the owner's photos: score the reconstructions against them (similarity, SSIM/PSNR; toy: impostor FAR, FaceNet: a fixed published threshold) and add a verdict (LA304/LA305; unusable photos: LA306)."),
    reconstructions: Optional[str] = typer.Option(None, "--reconstructions", help="Directory for the reconstruction PNGs and grids \\[default: next to --output, else ./lora-audit-reconstructions]."),
) -> int:
    """Audit LoRA files: metadata leaks, unsafe formats, broken weights, and the identity the weights reveal."""
    from lora_audit.policy import load_policy
    from lora_audit.reports import write_report
    from lora_audit.reports.json_report import jsonl_file_line, jsonl_summary_line
    from lora_audit.results import ScanResult, Severity
    from lora_audit.scan.engine import ScanOptions, collect_files, scan_files

    rules = load_policy(policy)
    threshold = Severity.parse(fail_on) if fail_on else rules.fail_on or Severity.HIGH
    options = ScanOptions(redact=redact or bool(rules.redact), policy=rules, weights=not skip_weights)
    files = collect_files(paths)
    if output is not None:
        _check_report_path(output, files)
    identity = None
    if attack and not skip_weights:
        from pathlib import Path

        from lora_audit.scan.identity import AttackOptions, IdentityAuditor, check_inputs

        where = reconstructions or (f"{os.path.splitext(output)[0]}_reconstructions" if output else "lora-audit-reconstructions")
        attack_options = AttackOptions(attack_model=attack_model, base=base, face_weights=face_weights,
                                       references=references, out_dir=Path(where))
        check_inputs(attack_options)
        identity = IdentityAuditor(attack_options)
    order = {path: i for i, path in enumerate(files)}
    results = []
    with _open_output(output) as stream, _progress(len(files), quiet) as advance:
        for file_result in scan_files(files, options, jobs=jobs or rules.jobs or 1, identity=identity):
            results.append(file_result)
            advance()
            if format is Format.jsonl:
                stream.write(jsonl_file_line(file_result) + "\n")
                stream.flush()
        results.sort(key=lambda r: order[r.path])
        result = ScanResult(results, fail_on=threshold)
        if format is Format.jsonl:
            stream.write(jsonl_summary_line(result) + "\n")
        else:
            write_report(result, format.value, stream, verbose=verbose,
                         color=None if output is None else False)
    return result.exit_code


@app.command(epilog="Exit codes: 0 written; 2 the input could not be read; 4 usage error.")
def strip(
    source: str = typer.Argument(..., help="LoRA file to clean.", show_default=False),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Where to write the cleaned copy."),
    in_place: bool = typer.Option(False, "--in-place", help="Replace the input file itself."),
    force: bool = typer.Option(False, "--force", help="Replace OUTPUT if it exists."),
    remove: List[str] = typer.Option([], "--remove", help="Also remove this metadata key (repeatable)."),
    keep: List[str] = typer.Option([], "--keep", help="Keep this metadata key even if it is sensitive (repeatable)."),
) -> int:
    """Write a copy without privacy-sensitive metadata; tensors stay byte-identical."""
    from lora_audit.scan.strip import strip_metadata

    if in_place == (output is not None):
        raise UsageError("give exactly one of --output FILE or --in-place")
    destination = source if in_place else output
    if not in_place and os.path.abspath(destination) == os.path.abspath(source):
        raise UsageError("--output is the input file; use --in-place to replace it")
    done = strip_metadata(source, destination, overwrite=force or in_place,
                          extra_keys=tuple(remove), keep_keys=tuple(keep))
    typer.echo(f"wrote {done.destination}: removed {len(done.removed)} metadata key(s)"
               + (f" ({', '.join(done.removed)})" if done.removed else "") + f", kept {len(done.kept)}")
    return 0


@app.command()
def rules() -> int:
    """List the rules: id, name, default severity and title."""
    from lora_audit.rules import RULES

    for rule in RULES.values():
        typer.echo(f"{rule.id}  {rule.name:<20} {rule.severity.label:<8} {rule.title}")
    return 0


toy_app = typer.Typer(help="The embedded toy face world: rebuild it from fixed seeds.", no_args_is_help=True)
app.add_typer(toy_app, name="toy")


@toy_app.command("build")
def toy_build(
    out: str = typer.Option("build/toy", "--out", help="Working directory for checkpoints and stage outputs."),
    stage: List[str] = typer.Option([], "--stage", help="Run only these stages (repeatable): embedder, base, victims, shadows, attack, install."),
    tiny: bool = typer.Option(False, "--tiny", help="Tiny sizes (seconds), installed under OUT/installed: a smoke test."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Processes for the shadows stage."),
) -> int:
    """Rebuild the toy world (embedder, base, victims, shadow trajectories, attack model) resumably, then install it."""
    from pathlib import Path

    from lora_audit.toyworld.lab.build import STAGES, BuildConfig, build

    config = BuildConfig.tiny(Path(out), Path(out) / "installed") if tiny else BuildConfig(out=Path(out))
    config.jobs = jobs
    with _stage_progress() as report:
        metrics = build(config, tuple(stage) or STAGES, report)
    typer.echo(f"toy world built in {out}: stages {', '.join(metrics)}")
    return 0


@app.command(epilog="Exit codes: 0 written; 2 bad input images; 4 usage error.")
def finetune(
    images: str = typer.Argument(..., help="Folder of the subject's photos (PNG/JPEG).", show_default=False),
    output: str = typer.Option(..., "--output", "-o", help="LoRA file to write (.safetensors)."),
    base: Optional[str] = typer.Option(None, "--base", help="Local diffusers pipeline directory \\[default: the toy base]."),
    rank: int = typer.Option(_RECIPE.rank, "--rank", min=1),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="\\[default: rank]"),
    steps: int = typer.Option(_RECIPE.steps, "--steps", min=1), lr: float = typer.Option(_RECIPE.lr, "--lr"),
    seed: int = typer.Option(0, "--seed"), trigger: Optional[str] = typer.Option(None, "--trigger", help="[default: a random rare word]"),
    layout: str = typer.Option("peft", "--layout", help="peft (diffusers) or kohya."),
    kohya_metadata: bool = typer.Option(False, "--kohya-metadata", help="Write kohya-style ss_* training metadata (leaky, for realistic samples)."),
    snapshot_steps: str = typer.Option("", "--snapshot-steps", help="Comma-separated steps whose LoRA is also written (OUTPUT stem + _step_N)."),
    text_encoder: bool = typer.Option(_RECIPE.text_encoder_lora, "--text-encoder/--no-text-encoder", help="Also train a LoRA on the text encoder."),
) -> int:
    """DreamBooth-LoRA fine-tuning of a base model on a folder of photos (the victims' recipe)."""
    from pathlib import Path

    from lora_audit.diffusion.finetune import FinetuneConfig, finetune_lora
    from lora_audit.images import load_image_folder
    from lora_audit.diffusion.base import load_base
    from lora_audit.toyworld.lab.victims import TOY_METADATA
    from lora_audit.weights.writer import LAYOUTS, kohya_training_metadata, save_lora

    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    snapshots = _int_list(snapshot_steps, "--snapshot-steps")
    pipeline = load_base(base)
    photos = load_image_folder(images, pipeline.image_size)
    config = FinetuneConfig(rank=rank, alpha=alpha, steps=steps, lr=lr, seed=seed, trigger=trigger,
                            snapshot_steps=snapshots, text_encoder_lora=text_encoder)
    with _stage_progress() as report:
        result = finetune_lora(pipeline, photos, config, progress=lambda s, t, m: report("finetune", s, t, m))
    metadata = dict(TOY_METADATA) if pipeline.family == "toy" else {}
    out, alpha_value = Path(output), alpha if alpha is not None else rank
    for step, state in sorted(result.snapshots.items()):
        path = out if step == steps else out.with_name(f"{out.stem}_step_{step}{out.suffix}")
        meta = dict(metadata)
        if kohya_metadata:
            meta.update(kohya_training_metadata(trigger=result.trigger, class_word="person", num_images=len(photos),
                                                steps=step, rank=rank, alpha=alpha_value,
                                                base_model_version=pipeline.family, output_name=out.stem))
        save_lora(str(path), state, layout=layout, rank=rank, alpha=alpha_value, metadata=meta)
    typer.echo(f"wrote {output} (trigger: \"{result.instance_prompt}\", {steps} steps, {result.seconds:.1f} s)")
    return 0


@app.command(epilog="Exit codes: 0 written; 2 bad input images; 4 usage error.")
def shadow(
    out: str = typer.Option(..., "--out", "-o", help="Directory for the trajectory shards (resumes what is there)."),
    identities: int = typer.Option(ShadowConfig.identities, "--identities", "-n", min=1, help="Shadow identities to fine-tune."),
    images: Optional[str] = typer.Option(None, "--images", help="One sub-folder of photos per shadow identity \\[default: toy-world SHADOW identities]."),
    first_identity: int = typer.Option(ShadowConfig.first_identity, "--first-identity", min=0, help="Toy world: id of the first identity (e.g. 300000 for held-out PRIVATE evaluation victims)."),
    base: Optional[str] = typer.Option(None, "--base", help="Local diffusers pipeline directory \\[default: the toy base]."),
    steps: int = typer.Option(_RECIPE.steps, "--steps", min=1, help="Fine-tuning steps per identity."),
    snapshot_steps: str = typer.Option(",".join(map(str, ShadowConfig.snapshot_steps)), "--snapshot-steps", help="Comma-separated steps r stored per trajectory (each <= --steps)."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Identities fine-tuned in parallel (processes)."),
) -> int:
    """Fine-tune shadow LoRAs with the victims' recipe and store their trajectories (the attack's training data)."""
    from dataclasses import replace
    from pathlib import Path

    from lora_audit.attack.shadow import build_shadows

    snapshots = _int_list(snapshot_steps, "--snapshot-steps")
    size = ShadowConfig.image_size
    if base is not None:  # photos at the base model's resolution
        from lora_audit.diffusion.base import load_base

        size = load_base(base).image_size
    config = ShadowConfig(identities=identities, first_identity=first_identity, snapshot_steps=snapshots,
                          images_dir=images, image_size=size,
                          finetune=replace(_RECIPE, steps=steps))
    with _stage_progress() as report:
        summary = build_shadows(config, Path(out), base, jobs, lambda d, t, m: report("shadow", d, t, m))
    typer.echo(f"{summary['identities']} shadow trajectories in {out} ({summary['trained_now']} fine-tuned now)")
    return 0


@app.command("train-attack", epilog="Exit codes: 0 written; 4 usage error.")
def train_attack(
    shadows: str = typer.Argument(..., help="Directory of shadow trajectories (from `lora-audit shadow`).", show_default=False),
    out: str = typer.Option(..., "--out", "-o", help="Directory for the attack model (attack.json + attack.safetensors), curves and checkpoints; resumes what is there."),
    base: Optional[str] = typer.Option(None, "--base", help="Local diffusers pipeline directory the shadows were fine-tuned on \\[default: the toy base]."),
    steps: int = typer.Option(_TRAIN.steps, "--steps", min=1, help="Optimiser steps."),
    shadows_per_step: int = typer.Option(_TRAIN.shadows_per_step, "--shadows-per-step", min=1),
    lr: float = typer.Option(_TRAIN.lr, "--lr"),
    beta: float = typer.Option(_TRAIN.beta, "--beta", help="KL weight after warm-up."),
    validation: int = typer.Option(_TRAIN.validation, "--validation", min=0, help="Shadow identities held out of training."),
    final_only: bool = typer.Option(False, "--final-only", help="Ablation: train on final weights only, without the step embedding."),
    module_dropout: float = typer.Option(_TRAIN.module_dropout, "--module-dropout", min=0.0, max=0.95, help="Share of module tokens hidden from the encoder at each training step (a regulariser)."),
) -> int:
    """Train the weight-to-image VAE attack on shadow trajectories."""
    from dataclasses import replace
    from pathlib import Path

    from lora_audit.attack.shadow import load_trajectories
    from lora_audit.attack.train import train_attack as train
    from lora_audit.diffusion.base import load_base

    trajectories = load_trajectories(Path(shadows))
    pipeline = load_base(base)
    config = replace(_TRAIN, steps=steps, shadows_per_step=shadows_per_step, lr=lr, beta=beta,
                     validation=validation, final_only=final_only, module_dropout=module_dropout)
    with _stage_progress() as report:
        model = train(pipeline, trajectories, config, Path(out), lambda s, t, m: report("train", s, t, m))
    held_out = model.config.training["final"].get("val_mse")
    typer.echo(f"wrote the attack model to {out} ({model.config.training['seconds']:.0f} s"
               + (f"; held-out diffusion MSE {held_out:.4f})" if held_out is not None else ")"))
    return 0


@app.command(epilog="Exit codes: 0 written; 2 the LoRA could not be read; 4 usage error.")
def reconstruct(
    lora: str = typer.Argument(..., help="LoRA file (.safetensors).", show_default=False),
    out: str = typer.Option(..., "--out", "-o", help="Directory for the PNGs and the grid."),
    attack_model: Optional[str] = typer.Option(None, "--attack-model", help="Attack model directory \\[default: the shipped toy attack, for toy LoRAs]."),
    base: Optional[str] = typer.Option(None, "--base", help="Local diffusers pipeline directory \\[default: the toy base]."),
    latents: int = typer.Option(4, "--latents", min=1, help="Samples of z."),
    seeds: int = typer.Option(2, "--seeds", min=1, help="Sampler seeds per z."),
    step: Optional[float] = typer.Option(None, "--step", min=1, help="Fine-tuning step r \\[default: from metadata, else estimated]."),
    sampling_steps: int = typer.Option(25, "--sampling-steps", min=1),
    seed: int = typer.Option(0, "--seed"),
) -> int:
    """Reconstruct the identity behind a LoRA file from its weights (K = latents x seeds images and a grid)."""
    from pathlib import Path

    from lora_audit.scan.identity import AttackOptions, check_inputs
    from lora_audit.attack.reconstruct import load_attack, reconstruct as run, save_reconstruction
    from lora_audit.weights import open_lora

    check_inputs(AttackOptions(attack_model=attack_model, base=base))
    with open_lora(lora) as lora_file:
        attack, pipeline = load_attack(lora_file.base_model, attack_model, base)
        result = run(attack, pipeline, lora_file, latents=latents, seeds=seeds, step=step,
                     sampling_steps=sampling_steps, seed=seed)
    paths = save_reconstruction(result, Path(out), Path(lora).stem)
    typer.echo(f"wrote {len(paths) - 1} reconstructions and {paths[-1]} (step r = {result.step:.0f}, {result.step_source})")
    return 0


@app.command(epilog="Exit codes: 0 written; 4 usage error.")
def evaluate(
    victims: str = typer.Argument(..., help="Trajectories of held-out victims (`lora-audit shadow --first-identity 300000`).", show_default=False),
    attack_model: Optional[str] = typer.Option(None, "--attack-model", help="\\[default: the shipped toy attack]"),
    ablation_model: Optional[str] = typer.Option(None, "--ablation-model", help="A VAE trained with `train-attack --final-only` (the ablation row)."),
    base: Optional[str] = typer.Option(None, "--base", help="\\[default: the toy base]"),
    out: str = typer.Option("build/eval/results", "--out", "-o", help="Working directory (the victims' LoRA files, results.json)."),
    docs: str = typer.Option("docs", "--docs", help="Where results.md and its images go."),
    far: float = typer.Option(EvaluationConfig.far, "--far", min=0.0, max=1.0, help="False accept rate of the TAR column."),
    latents: int = typer.Option(4, "--latents", min=1), seeds: int = typer.Option(2, "--seeds", min=1),
    sampling_steps: int = typer.Option(25, "--sampling-steps", min=1),
) -> int:
    """Toy world: the attack against the oracle, latent-ceiling, class-prompt, base and final-only baselines on held-out victims."""
    import json
    import shlex
    from pathlib import Path

    from lora_audit.toyworld.lab.evaluate import evaluate as run, write_results

    config = EvaluationConfig(latents=latents, seeds=seeds, sampling_steps=sampling_steps, far=far)
    with _stage_progress() as report:
        result = run(Path(victims), Path(attack_model) if attack_model else None,
                     Path(ablation_model) if ablation_model else None, base, Path(out), config,
                     lambda d, t, m: report("evaluate", d, t, m))
    (Path(out) / "results.json").write_text(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    given = [("--attack-model", attack_model), ("--ablation-model", ablation_model), ("--base", base), ("-o", out),
             ("--docs", docs), ("--far", far), ("--latents", latents), ("--seeds", seeds),
             ("--sampling-steps", sampling_steps)]
    command = shlex.join(["lora-audit", "evaluate", victims, *[str(x) for flag, v in given if v is not None for x in (flag, v)]])
    path = write_results(result, command, Path(docs))
    vae = result["summary"]["vae"]
    typer.echo(f"wrote {path}: VAE rank-1 {vae['rank1']:.0%}, mean similarity {vae['mean_similarity']:.3f} "
               f"(oracle {result['summary']['oracle']['mean_similarity']:.3f})")
    return 0


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UsageError(f"{flag} must be comma-separated integers, got {text!r}") from None


@contextlib.contextmanager
def _stage_progress():
    """A progress callback ``(stage, step, total, metrics)``: rich bars on a terminal, else a line on
    stderr at most every 30 s (logs of background runs)."""
    if not sys.stderr.isatty():
        import time

        last = {"time": 0.0}

        def line(stage: str, step: int, total: int, metrics: dict) -> None:
            if step == total or time.monotonic() - last["time"] >= 30:
                last["time"] = time.monotonic()
                print(f"{stage} {step}/{total} {_shown(metrics)}", file=sys.stderr, flush=True)

        yield line
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=False) as progress:
        tasks: dict[str, int] = {}

        def report(stage: str, step: int, total: int, metrics: dict) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=step, description=f"{stage} {_shown(metrics)}")

        yield report


def _shown(metrics: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def _check_report_path(path: str, files: list[str]) -> None:
    """Refuse a report path that could overwrite a scanned file, or that is a directory."""
    from lora_audit.scan.engine import SCANNED_SUFFIXES

    if path.lower().endswith(SCANNED_SUFFIXES):
        raise UsageError(f"--output {path} has the suffix of a file lora-audit scans; choose e.g. report.json")
    if os.path.isdir(path):
        raise UsageError(f"--output {path} is a directory")
    if os.path.exists(path) and any(os.path.exists(f) and os.path.samefile(path, f) for f in files):
        raise UsageError(f"--output {path} is one of the scanned files")


@contextlib.contextmanager
def _open_output(path: str | None) -> Iterator[TextIO]:
    """stdout, or ``path`` written through a temporary file renamed at the end, so that a failed scan
    leaves no half report (devices such as /dev/null are written directly)."""
    if path is None:
        yield sys.stdout
        return
    direct = os.path.exists(path) and not os.path.isfile(path)
    tmp = path if direct else os.path.join(os.path.dirname(path) or ".",
                                           f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        stream = open(tmp, "w" if direct else "x", encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot write report to {path}: {e.strerror}") from None
    try:
        with stream:
            yield stream
        if not direct:
            os.replace(tmp, path)
    except BaseException:
        if not direct:
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _progress(total: int, quiet: bool):
    """A rich progress bar on stderr for batches, only on a terminal and without --quiet."""
    if quiet or total < 2 or not sys.stderr.isatty():
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("scanning", total=total)
        yield lambda: progress.advance(task)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app, maps errors to one line on stderr and the documented exit code."""
    logging.basicConfig(level=os.environ.get("LORA_AUDIT_LOG", "WARNING").upper(), format="%(levelname)s %(message)s")
    click_usage_error = typer.BadParameter.__mro__[1]  # click's UsageError, vendored or not

    try:
        code = app(args=argv, prog_name="lora-audit", standalone_mode=False)
    except click_usage_error as e:
        e.show()
        return 4
    except LoraAuditError as e:
        typer.echo(f"lora-audit: error: {e}", err=True)
        return e.exit_code
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("lora-audit: interrupted", err=True)
        return 130
    except Exception as e:  # a bug: never exit 1, which means "findings"
        log.debug("internal error", exc_info=True)
        typer.echo(f"lora-audit: internal error: {e!r} (LORA_AUDIT_LOG=debug shows the traceback)", err=True)
        return 2
    return code if isinstance(code, int) else 0


def run() -> None:
    sys.exit(main())
