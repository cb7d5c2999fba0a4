"""SARIF 2.1.0 report, in the subset GitHub code scanning accepts.

Locations. The current directory is ``%SRCROOT%`` (``run.originalUriBaseIds``, an absolute ``file:``
URI): a scanned file under it gets a relative ``uri`` (normalised with ``os.path.normpath``, forward
slashes, percent-encoded, undecodable bytes of a filename kept as bytes) with ``uriBaseId: SRCROOT``,
so ``./x``, ``x`` and ``$PWD/x`` are one artifact; a file outside it keeps an absolute ``file://`` URI
and no base id. Weight files have no lines, so each result points at line 1 (GitHub requires a region).
In message text, evidence follows the message as ``key=value`` pairs (lists joined, an object's
items as ``name=value``) and undecodable bytes are written ``\\xff``, as in the JSON report.

Fingerprints. ``partialFingerprints`` hash the rule id, that normalised relative path, the
finding's evidence *keys* and the item names of its per-item objects (metadata keys, module names,
photo names): never timings, measured scores, the grid's path or evidence values (which
``--redact`` masks), so an alert keeps its identity from scan to scan and from ``./x`` to ``x``,
and two different leaking metadata keys are two alerts. Only a file outside ``%SRCROOT%`` is named by its
normalised absolute path, the one stable name it has. Two findings that would share a fingerprint
are numbered.

Status outcomes are not alerts. GitHub code scanning turns every ``result`` into an alert whatever
its ``kind`` (``pass`` and ``notApplicable`` results show up as alerts too), so the findings that
report how the audit went rather than a problem of the file (:data:`STATUS_KINDS`: LA302 attack
clean, LA305 no match to the owner, LA303 attack not run, LA004 link not followed, LA306 reference
photos unused, LA309 the metadata's trigger clean) are written as
``invocations[].toolExecutionNotifications`` (level ``note``, the rule in ``associatedRule``, the
SARIF kind they stand for in ``properties.kind``), which GitHub never raises as alerts. A policy that raises such a rule above ``info`` makes it an ordinary result again.

Runs. One run per :data:`MAX_RESULTS_PER_RUN` results (GitHub's limit per run); a bigger scan is split
by files into several runs, each with its own rules, artifacts and notifications. GitHub refuses
several runs of one tool under one category, so each part gets its own category in
``automationDetails.id``: ``lora-audit/scan[/<category>][/part-N]/<UTC date>`` (the part before the
last ``/`` is GitHub's category; a caller-given category ends the id with ``/``). A file that could
not be scanned has its LA001 result (unless a policy disabled the rule) and an error notification.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from lora_audit import evidence
from lora_audit.reports.json_report import json_ready
from lora_audit.results import FileResult, Finding, ScanResult, Severity
from lora_audit.rules import RULES

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
# Where the project lives. It has no public repository yet: this placeholder (a reserved, never
# resolving domain, RFC 2606) is the one place in the code to set the real URL (pyproject.toml's
# [project.urls] says the same); informationUri and every rule's helpUri (docs/rules.md#<rule id>)
# derive from it.
PROJECT_URL = "https://example.invalid/lora-audit"
RULES_DOC_URL = f"{PROJECT_URL}/docs/rules.md"
FINGERPRINT_KEY = "loraAuditFinding/v2"  # v2: evidence keys of report schema 2.0, with per-item names
SRCROOT = "SRCROOT"
MAX_RESULTS_PER_RUN = 25_000
# Findings that report on the audit itself, as the SARIF result kind they stand for (see above).
STATUS_KINDS = {
    "LA302": "pass",  # the identity attack ran and found no consistent identity
    "LA305": "pass",  # the reconstructions do not match the owner's photos
    "LA303": "notApplicable",  # the attack was not run
    "LA004": "notApplicable",  # a link out of the scanned folder was not followed
    "LA306": "informational",  # some reference photos were not used
    "LA309": "pass",  # the metadata's trigger renders no consistent identity
}
# Evidence keys whose presence says nothing about the finding's identity (left out of fingerprints):
# the grid's path, and the crowd null's keys, present or not as a null is installed (LA301/LA310).
_VOLATILE_EVIDENCE = {"grid", "crowd_far", "crowd_far_target", "crowd_loras", "crowd_at_least", "crowd_null"}

LEVELS = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
}
# GitHub maps security-severity to critical (> 9.0), high (7.0-8.9), medium (4.0-6.9), low (0.1-3.9).
SECURITY_SEVERITY = {
    Severity.CRITICAL: "9.5",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "3.0",
    Severity.INFO: "0.0",
}


def write_sarif(result: ScanResult, stream: TextIO, *, category: str | None = None) -> None:
    """Write ``result`` as an indented SARIF 2.1.0 log."""
    json.dump(json_ready(to_sarif(result, category=category)), stream, indent=2, allow_nan=False)
    stream.write("\n")


def to_sarif(result: ScanResult, *, category: str | None = None, root: str | None = None) -> dict[str, Any]:
    """The SARIF log of ``result`` as a JSON-ready dict; ``root``: ``%SRCROOT%`` (default: the
    current directory); ``category``: the analysis category in ``automationDetails.id``."""
    root = os.path.abspath(root or os.getcwd())
    parts = _split(result.files, MAX_RESULTS_PER_RUN)
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [_run(files, result, root, _automation_id(category, i + 1 if len(parts) > 1 else None))
                 for i, files in enumerate(parts)],
    }


def is_status(finding: Finding) -> bool:
    """Whether ``finding`` reports how the audit went (a notification), not an alert."""
    return finding.rule_id in STATUS_KINDS and finding.severity == Severity.INFO


def relative_path(path: str, root: str | None = None) -> str | None:
    """``path`` relative to ``root`` (default: the current directory), normalised, with forward
    slashes; None when it lies outside ``root``."""
    root = os.path.abspath(root or os.getcwd())
    relative = os.path.normpath(os.path.relpath(os.path.abspath(path), root)).replace("\\", "/")
    return None if relative == ".." or relative.startswith("../") else relative


def path_to_uri(path: str) -> str:
    """A percent-encoded URI reference for a relative ``path`` (forward slashes, no ``./``)."""
    uri = os.path.normpath(path).replace("\\", "/")
    return quote(uri.encode("utf-8", "surrogateescape"), safe="/")


def artifact_location(path: str, root: str) -> dict[str, Any]:
    """``{"uri", "uriBaseId"}`` relative to ``%SRCROOT%`` for a file under ``root``, else an absolute
    ``file://`` URI."""
    relative = relative_path(path, root)
    if relative is None:
        return {"uri": Path(os.path.abspath(path)).as_uri()}
    return {"uri": path_to_uri(relative), "uriBaseId": SRCROOT}


def _split(files: list[FileResult], limit: int) -> list[list[FileResult]]:
    """Consecutive groups of ``files`` with at most ``limit`` findings each (a file with more
    findings than that is cut into several records of the same path)."""
    pieces = [dataclasses.replace(file, findings=file.findings[i:i + limit])
              for file in files for i in range(0, max(len(file.findings), 1), limit)]
    groups: list[list[FileResult]] = [[]]
    count = 0
    for piece in pieces:
        if groups[-1] and count + len(piece.findings) > limit:
            groups.append([])
            count = 0
        groups[-1].append(piece)
        count += len(piece.findings)
    return groups


def _automation_id(category: str | None, part: int | None) -> str:
    prefix = "lora-audit/scan" + (f"/{category.strip('/')}" if category else "") + (f"/part-{part}" if part else "")
    if category:
        return prefix + "/"
    return f"{prefix}/{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}"


def _run(files: list[FileResult], result: ScanResult, root: str, automation_id: str) -> dict[str, Any]:
    from lora_audit import __version__

    pairs = [(index, finding) for index, file in enumerate(files) for finding in file.findings]
    rule_ids = sorted({finding.rule_id for _, finding in pairs})
    rule_index = {rule_id: i for i, rule_id in enumerate(rule_ids)}
    rules = [_rule(rule_id, [f for _, f in pairs if f.rule_id == rule_id]) for rule_id in rule_ids]
    locations = [artifact_location(file.path, root) for file in files]
    fingerprints = _fingerprints(files, root)
    results, statuses = [], []
    for (index, finding), fingerprint in zip(pairs, fingerprints):
        location = {"physicalLocation": {"artifactLocation": {**locations[index], "index": index},
                                         "region": {"startLine": 1}}}
        if is_status(finding):
            statuses.append(_status(finding, location, rule_index[finding.rule_id]))
        else:
            results.append(_result(finding, location, rule_index[finding.rule_id], fingerprint))
    return {
        "tool": {"driver": {"name": "lora-audit", "version": __version__,
                            "informationUri": PROJECT_URL, "rules": rules}},
        "automationDetails": {"id": automation_id},
        "originalUriBaseIds": {SRCROOT: {"uri": _directory_uri(root)}},
        "invocations": [_invocation(files, result, locations, statuses)],
        "artifacts": [_artifact(file, location) for file, location in zip(files, locations)],
        "results": results,
    }


def _directory_uri(path: str) -> str:
    """The absolute ``file:`` URI of a directory, ending with ``/`` (as a base URI must)."""
    uri = Path(path).as_uri()
    return uri if uri.endswith("/") else uri + "/"


def _rule(rule_id: str, findings: list[Finding]) -> dict[str, Any]:
    """The reportingDescriptor of ``rule_id``; its level is the highest among ``findings``
    (a policy may have changed the rule's default severity)."""
    severity = max(f.severity for f in findings)
    known = RULES.get(rule_id)
    title = known.title if known else findings[0].title
    remediation = known.remediation if known else findings[0].remediation
    help_uri = rule_help_uri(rule_id)
    return {
        "id": rule_id,
        "name": known.name if known else rule_id,
        "shortDescription": {"text": title},
        "fullDescription": {"text": f"{title}. {remediation}" if remediation else title},
        "helpUri": help_uri,
        "help": {"text": remediation or title,
                 "markdown": f"**{title}**\n\n{remediation}\n\n[{rule_id} in the rule catalogue]({help_uri})"},
        "defaultConfiguration": {"level": "none" if all(is_status(f) for f in findings) else LEVELS[severity]},
        "properties": {"security-severity": SECURITY_SEVERITY[severity],
                       "tags": ["security", "privacy"]},
    }


def rule_help_uri(rule_id: str) -> str:
    """The absolute URL of ``rule_id``'s entry in docs/rules.md."""
    return f"{RULES_DOC_URL}#{rule_id.lower()}"


def _text(finding: Finding) -> str:
    text = finding.message
    if finding.evidence:
        text += " Evidence: " + "; ".join(f"{key}={evidence.text(value, more)}"
                                          for key, value, more in evidence.entries(finding.evidence))
    return text


def _result(finding: Finding, location: dict, rule_index: int, fingerprint: str) -> dict[str, Any]:
    return {
        "ruleId": finding.rule_id,
        "ruleIndex": rule_index,
        "level": LEVELS[finding.severity],
        "message": {"text": _text(finding)},
        "locations": [location],
        "partialFingerprints": {FINGERPRINT_KEY: fingerprint},
        "properties": {"severity": finding.severity.label},
    }


def _status(finding: Finding, location: dict, rule_index: int) -> dict[str, Any]:
    return {
        "level": "note",
        "message": {"text": f"{finding.rule_id}: {_text(finding)}"},
        "locations": [location],
        "associatedRule": {"id": finding.rule_id, "index": rule_index},
        "properties": {"kind": STATUS_KINDS[finding.rule_id], "severity": finding.severity.label},
    }


def fingerprint(finding: Finding, path: str, root: str | None = None) -> str:
    """The hash of rule id, normalised path, evidence keys and the item names of per-item objects
    (``metadata/ss_dataset_dirs``): stable across runs and spellings of the path, blind to values."""
    where = relative_path(path, root) or os.path.normpath(os.path.abspath(path))
    keys = sorted(set(finding.evidence) - _VOLATILE_EVIDENCE)
    names = sorted(f"{key}/{name}" for key in keys if isinstance(finding.evidence[key], dict)
                   for name in finding.evidence[key])
    parts = [finding.rule_id, where, *keys, *names]
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def _fingerprints(files: list[FileResult], root: str) -> list[str]:
    """The fingerprint of every finding of ``files`` in order; repeats get ``:2``, ``:3``..."""
    seen: dict[str, int] = {}
    prints = []
    for file in files:
        for finding in file.findings:
            value = fingerprint(finding, file.path, root)
            seen[value] = seen.get(value, 0) + 1
            prints.append(value if seen[value] == 1 else f"{value}:{seen[value]}")
    return prints


def _artifact(file: FileResult, location: dict) -> dict[str, Any]:
    artifact: dict[str, Any] = {"location": dict(location), "roles": ["analysisTarget"]}
    if file.size_bytes is not None:
        artifact["length"] = file.size_bytes
    return artifact


def _invocation(files: list[FileResult], result: ScanResult, locations: list[dict],
                statuses: list[dict]) -> dict[str, Any]:
    errors = [{
        "level": "error",
        "message": {"text": f"could not scan {file.path}: {file.error}"},
        "locations": [{"physicalLocation": {"artifactLocation": location}}],
    } for file, location in zip(files, locations) if file.error is not None]
    invocation: dict[str, Any] = {"executionSuccessful": result.exit_code in (0, 1),
                                  "exitCode": result.exit_code}
    if errors or statuses:
        invocation["toolExecutionNotifications"] = errors + statuses
    return invocation
