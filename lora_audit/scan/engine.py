"""The static scan: find files, read each safely, apply the rules, never let one bad file stop a batch."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Iterator

from lora_audit.scan.identity import IdentityAuditor
from lora_audit.errors import InvalidFileError, NothingToScanError
from lora_audit.scan.metadata import check_metadata
from lora_audit.policy import Policy
from lora_audit.results import FileResult, Finding
from lora_audit.rules import make_finding
from lora_audit.weights.lora_file import LoraFile
from lora_audit.weights.pickle_file import PICKLE_SUFFIXES, looks_like_pickle, pickle_imports
from lora_audit.weights.safetensors_file import check_file
from lora_audit.weights.stats import weight_stats

log = logging.getLogger("lora_audit")

SCANNED_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
_MAX_LISTED = 8  # evidence lists longer than this are cut


@dataclass
class ScanOptions:
    redact: bool = False
    policy: Policy = field(default_factory=Policy)
    weights: bool = True  # False: header only, no NaN/Inf check and no per-module dW statistics


def collect_files(paths: list[str]) -> list[str]:
    """Files given directly, plus LoRA / checkpoint files found recursively in given directories.

    Paths stay as given (never made absolute). A missing path is kept so that it becomes an
    error record; raises NothingToScanError when nothing at all is left.
    """
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                files.extend(os.path.join(root, n) for n in sorted(names) if n.lower().endswith(SCANNED_SUFFIXES))
        else:
            files.append(path)
    if not files:
        raise NothingToScanError(f"no .safetensors or checkpoint files found in {', '.join(paths) or 'the given paths'}")
    return files


def scan_file(path: str, options: ScanOptions | None = None) -> FileResult:
    """Scan one file. Any problem with the file becomes an error record, never an exception."""
    options = options or ScanOptions()
    start = time.perf_counter()
    result = FileResult(path=path)
    try:
        result.size_bytes = os.path.getsize(path) if os.path.isfile(path) else None
        _scan_into(path, options, result)
    except InvalidFileError as e:
        result.error = e.reason
        result.findings.append(make_finding("LA001", e.reason))
    except Exception as e:  # a bug must not stop a batch of thousands of files
        log.debug("internal error scanning %s", path, exc_info=True)
        result.error = f"internal error ({type(e).__name__}: {e}); please report it"
        result.findings.append(make_finding("LA001", result.error))
    result.findings = options.policy.apply(result.findings)
    result.seconds = time.perf_counter() - start
    return result


def scan_files(files: list[str], options: ScanOptions | None = None, jobs: int = 1,
               identity: IdentityAuditor | None = None) -> Iterator[FileResult]:
    """Scan ``files``, yielding each result as it finishes (input order when ``jobs`` is 1).

    With ``identity``, each readable LoRA is also attacked (in this process, after its static scan).
    """
    options = options or ScanOptions()
    for result in _static_results(files, options, jobs):
        if identity is not None and result.error is None and result.stats is not None and result.stats.module_count:
            start = time.perf_counter()
            result.findings.extend(options.policy.apply(identity.findings(result.path, result.stats.base_model)))
            result.seconds += time.perf_counter() - start
        yield result


def _static_results(files: list[str], options: ScanOptions, jobs: int) -> Iterator[FileResult]:
    if jobs <= 1 or len(files) < 2:
        for path in files:
            yield scan_file(path, options)
        return
    size = max(1, min(64, len(files) // (jobs * 4)))
    chunks = [files[i : i + size] for i in range(0, len(files), size)]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_scan_chunk, chunk, options) for chunk in chunks]
        for future in as_completed(futures):
            yield from future.result()


def _scan_chunk(paths: list[str], options: ScanOptions) -> list[FileResult]:
    return [scan_file(p, options) for p in paths]


def _scan_into(path: str, options: ScanOptions, result: FileResult) -> None:
    size = check_file(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if looks_like_pickle(path, head, size):
        result.findings.append(_pickle_finding(path))
        result.error = "pickle checkpoint: not loaded (unsafe format); convert it to safetensors to audit it"
        return
    with LoraFile(path) as lora:
        result.findings.extend(check_metadata(lora.metadata, redact=options.redact))
        result.findings.extend(_weight_findings(lora, options.weights))
        result.stats = weight_stats(lora, per_module=options.weights)


def _pickle_finding(path: str) -> Finding:
    imports, unsafe = pickle_imports(path)
    evidence = {"format": "pickle (torch.save / zip archive)" if imports else "pickle extension"}
    if unsafe:
        evidence["imports outside torch/numpy"] = _listing(unsafe)
    message = ("pickle checkpoint; unpickling it would import " + _listing(unsafe)
               if unsafe else "pickle checkpoint; lora-audit never unpickles files")
    return make_finding("LA002", message, evidence)


def _weight_findings(lora: LoraFile, read_data: bool) -> list[Finding]:
    findings = []
    bad = lora.file.non_finite() if read_data else []
    if bad:
        findings.append(make_finding("LA201", f"{len(bad)} tensor(s) hold NaN or Inf values",
                                     {"tensors": _listing(bad)}))
    if lora.problems.orphaned:
        findings.append(make_finding(
            "LA202", f"{len(lora.problems.orphaned)} module(s) lack a partner tensor",
            {name: "has only " + ", ".join(roles) for name, roles in list(lora.problems.orphaned.items())[:_MAX_LISTED]}))
    if lora.problems.mismatched:
        findings.append(make_finding(
            "LA203", f"{len(lora.problems.mismatched)} module(s) have incompatible shapes",
            dict(list(lora.problems.mismatched.items())[:_MAX_LISTED])))
    if not lora.modules and not lora.problems.orphaned and not lora.problems.mismatched:
        findings.append(make_finding("LA003", f"none of the {len(lora.tensors)} tensors belong to a known LoRA layout",
                                     {"tensors": _listing(lora.problems.unrecognised)}))
    return findings


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")
