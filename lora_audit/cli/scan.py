"""``scan``, ``strip`` and ``rules``: the static audit of LoRA files and the metadata cleaner."""

from __future__ import annotations

import contextlib
import logging
import os
from enum import Enum
from typing import List, Optional

import typer

from lora_audit.cli.options import AttackModelOption, BaseOption, DeviceOption, checked_device
from lora_audit.cli.output import Interrupted, check_report_path, interrupts_held, open_output
from lora_audit.cli.progress import errors_only, scan_progress
from lora_audit.errors import UsageError

EXIT_CODES = """Exit codes: 0 no finding at or above --fail-on; 1 findings at or above it;
2 a file could not be scanned; 3 nothing was scanned; 4 usage error; 130 interrupted (SIGINT);
141 stdout was closed early (| head); 143 terminated (SIGTERM)."""

commands = typer.Typer()


class Format(str, Enum):
    console = "console"
    json = "json"
    jsonl = "jsonl"
    sarif = "sarif"
    html = "html"


class AttackMode(str, Enum):
    auto = "auto"
    require = "require"
    off = "off"


class Engine(str, Enum):
    local = "local"
    ray = "ray"


@commands.command(epilog=EXIT_CODES)
def scan(
    paths: List[str] = typer.Argument(..., help="LoRA files or directories (searched recursively).", show_default=False),
    format: Format = typer.Option(Format.console, "--format", "-f", help="Report format."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Write the report to this file instead of stdout."),
    fail_on: Optional[str] = typer.Option(None, "--fail-on", help="Lowest severity that makes the exit code 1: info, low, medium, high, critical. \\[default: high]"),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="Files scanned in parallel. \\[default: 1]"),
    engine: Engine = typer.Option(Engine.local, "--engine", help="local: this machine, --jobs processes; ray: a Ray cluster's CPUs for the static checks and its GPUs (else CPUs) for the attack (pip install 'lora-privacy-audit\\[ray]')."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="With --engine ray: the cluster to join (auto: the one `ray start` runs here) \\[default: RAY_ADDRESS, else a local Ray for this scan]."),
    redact: bool = typer.Option(False, "--redact", help="Mask metadata values in the evidence (keys stay)."),
    policy: Optional[str] = typer.Option(None, "--policy", help="Policy file (default: ./lora-audit.toml, or the \\[tool.lora-audit] table of ./pyproject.toml)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Errors only on stderr: no progress bar, no warnings (the report itself is unchanged)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Per-module weight statistics in the console report."),
    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: scan only the i-th of n deterministic shards of the batch (by a hash of each path; the shards' union is the batch exactly once)."),
    resume: bool = typer.Option(False, "--resume", help="With -f jsonl -o FILE: skip the files FILE already records (same path, size and mtime) and append the rest."),
    device: DeviceOption = None,
    follow_links: bool = typer.Option(False, "--follow-links", help="Also read symbolic links under a scanned folder that point out of it (otherwise: LA004, not read)."),
    skip_weights: bool = typer.Option(False, "--skip-weights", help="Read headers only: metadata, layout, base model and tensor pairing; no NaN/Inf check, no dW statistics, no attack (fast triage)."),
    attack_mode: AttackMode = typer.Option(AttackMode.auto, "--attack", help="auto: the identity attacks wherever they can run: the weight-to-image VAE where an attack model serves the file's base family (the toy one ships), else guidance extraction with --base alone, and the metadata's trigger; a LoRA none can run on gets LA303. require: the same, but such a LoRA's audit is incomplete (LA307, exit 2): a CI gate that must not pass unaudited. off: static checks only."),
    no_attack: bool = typer.Option(False, "--no-attack", help="Same as --attack off."),
    sampling_steps: Optional[int] = typer.Option(None, "--sampling-steps", min=1, help="Sampler steps per attack image \\[default: the family's: toy 6, where the toy attack's rank-1 and verdict are those of 25 steps at 0.24 of the cost (docs/scale.md); sd1, sd2, sdxl 25]."),
    attack_batch: Optional[int] = typer.Option(None, "--attack-batch", min=1, help="LoRAs of one family whose attack images are decoded in one batch: the same images, fewer UNet calls; for a GPU (on a CPU it saves nothing: docs/scale.md) \\[default: 1]."),
    attack_model: AttackModelOption = None,
    base: BaseOption = None,
    face_weights: Optional[str] = typer.Option(None, "--face-weights", help="facenet-pytorch InceptionResnetV1 checkpoint: score real families' faces with FaceNet \\[default: dlib's ResNet descriptor, installed with lora-privacy-audit\\[faces]]."),
    references: Optional[str] = typer.Option(None, "--references", help="Folder of the owner's photos: score the reconstructions against them and against other people's photo sets of as many photos (toy: 200 identities; the FAR, policy key owner_far, default 0.01), or FaceNet's published operating point with the base's generic faces as a measured null; a verdict LA304/LA305 (unusable photos: LA306, none usable: LA307)."),
    reconstructions: Optional[str] = typer.Option(None, "--reconstructions", help="Directory for the reconstruction PNGs and grids \\[default: next to --output, else ./lora-audit-reconstructions]."),
) -> int:
    """Audit LoRA files: metadata leaks, unsafe formats, broken weights, and the identity the weights reveal."""
    from lora_audit.policy import load_policy
    from lora_audit.reports import write_report
    from lora_audit.reports.json_report import jsonl_file_line, jsonl_incomplete_line, jsonl_summary_line
    from lora_audit.results import Severity
    from lora_audit.scan.collect import collect_files
    from lora_audit.scan.engine import ScanOptions, scan_batch

    if no_attack and attack_mode is AttackMode.require:
        raise UsageError("--no-attack and --attack require contradict each other")
    attack = not no_attack and attack_mode is not AttackMode.off
    device = checked_device(device) if attack and not skip_weights else device  # a static scan imports no torch
    given = [flag for flag, value in (("--references", references), ("--attack-model", attack_model), ("--base", base),
                                      ("--face-weights", face_weights), ("--reconstructions", reconstructions),
                                      ("--sampling-steps", sampling_steps), ("--attack-batch", attack_batch))
             if value is not None]
    if given and (not attack or skip_weights):
        raise UsageError(f"{', '.join(given)} need the attack, which --attack off (--no-attack) and --skip-weights turn off")
    if ray_address is not None and engine is not Engine.ray:
        raise UsageError("--ray-address needs --engine ray")
    if engine is Engine.ray and jobs is not None and jobs > 1:
        raise UsageError("--jobs is the local engine's; --engine ray runs on every CPU of the Ray cluster")
    rules = load_policy(policy)
    threshold = Severity.parse(fail_on) if fail_on is not None else rules.fail_on or Severity.HIGH
    options = ScanOptions(redact=redact or bool(rules.redact), policy=rules, weights=not skip_weights)
    collected = collect_files(paths, follow_links=follow_links)
    if shard is not None:
        collected = collected.shard(*_shard(shard))
    earlier = []
    if resume:
        if format is not Format.jsonl or output is None:
            raise UsageError("--resume needs -f jsonl -o FILE (the report it resumes)")
        from lora_audit.scan.resume import recorded, still_to_scan

        earlier = recorded(output)
        collected = still_to_scan(collected, earlier)
    files = collected.files
    if output is not None:
        check_report_path(output, files)
    identity = None
    if attack and not skip_weights:
        from pathlib import Path

        from lora_audit.scan.identity import IdentityCheck, IdentityOptions

        beside = output is not None and not (os.path.exists(output) and not os.path.isfile(output))  # not a device
        where = reconstructions or (f"{os.path.splitext(output)[0]}_reconstructions" if beside else "lora-audit-reconstructions")
        identity = IdentityCheck(IdentityOptions(attack_model=attack_model, base=base, face_weights=face_weights,
                                                 references=references, out_dir=Path(where), device=device,
                                                 required=attack_mode is AttackMode.require,
                                                 sampling_steps=sampling_steps, batch=attack_batch or 1,
                                                 **{key: getattr(rules, key) for key in ("owner_far", "crowd_far")
                                                    if getattr(rules, key)}))
    streamed = 0
    with _scan_engine(engine, ray_address, quiet) as scan_engine, \
            open_output(output, keep_partial=format is Format.jsonl, keep_lines=_file_line if resume else None) as stream, \
            scan_progress(len(files) + len(collected.not_followed), quiet) as advance, errors_only(quiet):
        if identity is not None:
            identity.on_attack = advance.starting
        def on_result(file_result) -> None:
            nonlocal streamed
            advance(file_result)
            if format is Format.jsonl:
                line = jsonl_file_line(file_result) + "\n"
                with interrupts_held():
                    stream.write(line)
                    stream.flush()
                    streamed += 1

        try:
            result = scan_batch(files, options, fail_on=threshold, jobs=jobs or rules.jobs or 1,
                                identity=identity, on_result=on_result, not_followed=collected.not_followed,
                                hub=collected.hub, earlier=earlier, engine=scan_engine)
        except (Interrupted, KeyboardInterrupt) as e:  # the lines streamed so far stay, marked incomplete
            if format is Format.jsonl:
                reason = e.word if isinstance(e, Interrupted) else "interrupted"
                stream.write(jsonl_incomplete_line(reason, streamed, len(files)) + "\n")
            raise
        if format is Format.jsonl:
            stream.write(jsonl_summary_line(result) + "\n")
        else:
            write_report(result, format.value, stream, verbose=verbose,
                         color=None if output is None else False)
    return result.exit_code


STRIP_HELP = (
    "Write a copy without privacy-sensitive metadata; tensors stay byte-identical.\n\n"
    "Only regular files are replaced, never a device or a FIFO. A symbolic link (as in a Hugging Face cache, "
    "snapshots/REV/x.safetensors -> ../../blobs/HASH) given to --in-place, or to --output with --force, is "
    "written through: the file it points to is replaced and the link is kept."
)


@commands.command(help=STRIP_HELP, epilog="Exit codes: 0 written; 2 the input could not be read; 4 usage error.")
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
    if not in_place and os.path.realpath(destination) == os.path.realpath(source):
        raise UsageError("--output is the input file; use --in-place to replace it")
    done = strip_metadata(source, destination, overwrite=force or in_place,
                          extra_keys=tuple(remove), keep_keys=tuple(keep))
    through = f" (through the link {destination})" if done.destination != destination else ""
    typer.echo(f"wrote {done.destination}{through}: removed {len(done.removed)} metadata key(s)"
               + (f" ({', '.join(done.removed)})" if done.removed else "") + f", kept {len(done.kept)}")
    return 0


class RulesFormat(str, Enum):
    text = "text"
    json = "json"


@commands.command()
def rules(
    format: RulesFormat = typer.Option(RulesFormat.text, "--format", "-f", help="text: one line per rule; json: a list of {id, name, severity, title, remediation, help_uri}."),
) -> int:
    """List the rules: id, name, default severity and title."""
    from lora_audit.reports.sarif import rule_help_uri
    from lora_audit.rules import RULES

    if format is RulesFormat.json:
        import json

        typer.echo(json.dumps([{"id": r.id, "name": r.name, "severity": r.severity.label, "title": r.title,
                                "remediation": r.remediation, "help_uri": rule_help_uri(r.id)}
                               for r in RULES.values()], indent=2))
        return 0
    for rule in RULES.values():
        typer.echo(f"{rule.id}  {rule.name:<20} {rule.severity.label:<8} {rule.title}")
    return 0


def _scan_engine(engine: Engine, address: str | None, quiet: bool):
    """A context holding the scan engine: None for the local one (``scan_batch``'s default), or a Ray session."""
    if engine is Engine.local:
        return contextlib.nullcontext()
    from lora_audit.scan.ray_engine import ray_engine

    return ray_engine(address, logging_level=logging.ERROR if quiet else logging.WARNING)


def _shard(text: str) -> tuple[int, int]:
    """``"2/8"`` -> (2, 8), or a usage error (the range is checked by ``Collection.shard``)."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit()):
        raise UsageError(f"--shard must be i/n with 1 <= i <= n, got {text!r}")
    return int(index), int(count)


def _file_line(line: str) -> bool:
    """Whether a line of a report being resumed is kept: the file records (the new summary replaces the old)."""
    import json

    try:
        return json.loads(line).get("type") == "file"
    except (ValueError, AttributeError):
        return False
