"""SARIF 2.1.0 report, in the subset GitHub code scanning accepts.

One run; one rule (reportingDescriptor) per rule id that produced a result; one artifact per file.
A file that could not be scanned has its LA001 finding (unless a policy disabled the rule), and
every such error is also a tool execution notification. Paths are the ones given, with forward
slashes, percent-encoded as URI references (undecodable bytes of a filename kept as bytes) and
never made absolute; in message text such bytes are written ``\\xff``, as in the JSON report.
Weight files have no lines, so each result points at line 1 (GitHub requires a region).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, TextIO
from urllib.parse import quote

from lora_audit.reports.json_report import json_ready
from lora_audit.results import FileResult, Finding, ScanResult, Severity
from lora_audit.rules import RULES

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://pypi.org/project/lora-audit/"
FINGERPRINT_KEY = "loraAuditFinding/v1"

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


def write_sarif(result: ScanResult, stream: TextIO) -> None:
    """Write ``result`` as an indented SARIF 2.1.0 log."""
    json.dump(json_ready(to_sarif(result)), stream, indent=2, allow_nan=False)
    stream.write("\n")


def to_sarif(result: ScanResult) -> dict[str, Any]:
    """The SARIF log of ``result`` as a JSON-ready dict."""
    from lora_audit import __version__

    pairs = [(index, finding) for index, file in enumerate(result.files) for finding in file.findings]
    rule_ids = sorted({finding.rule_id for _, finding in pairs})
    rule_index = {rule_id: i for i, rule_id in enumerate(rule_ids)}
    rules = [_rule(rule_id, [f for _, f in pairs if f.rule_id == rule_id]) for rule_id in rule_ids]
    results = [_result(finding, result.files[index], index, rule_index[finding.rule_id])
               for index, finding in pairs]
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "lora-audit", "version": __version__,
                                "informationUri": INFORMATION_URI, "rules": rules}},
            "invocations": [_invocation(result)],
            "artifacts": [_artifact(file) for file in result.files],
            "results": results,
        }],
    }


def path_to_uri(path: str) -> str:
    """A relative URI reference for ``path``: forward slashes, no leading ``./``, percent-encoded."""
    uri = path.replace("\\", "/")
    while uri.startswith("./"):
        uri = uri[2:]
    return quote(uri.encode("utf-8", "surrogateescape"), safe="/")


def _rule(rule_id: str, findings: list[Finding]) -> dict[str, Any]:
    """The reportingDescriptor of ``rule_id``; its level is the highest among ``findings``
    (a policy may have changed the rule's default severity)."""
    severity = max(f.severity for f in findings)
    known = RULES.get(rule_id)
    title = known.title if known else findings[0].title
    remediation = known.remediation if known else findings[0].remediation
    return {
        "id": rule_id,
        "name": known.name if known else rule_id,
        "shortDescription": {"text": title},
        "fullDescription": {"text": f"{title}. {remediation}" if remediation else title},
        "help": {"text": remediation or title},
        "defaultConfiguration": {"level": LEVELS[severity]},
        "properties": {"security-severity": SECURITY_SEVERITY[severity],
                       "tags": ["security", "privacy"]},
    }


def _result(finding: Finding, file: FileResult, artifact_index: int, rule_index: int) -> dict[str, Any]:
    text = finding.message
    if finding.evidence:
        text += " Evidence: " + "; ".join(f"{k}={v}" for k, v in finding.evidence.items())
    return {
        "ruleId": finding.rule_id,
        "ruleIndex": rule_index,
        "level": LEVELS[finding.severity],
        "message": {"text": text},
        "locations": [{"physicalLocation": {
            "artifactLocation": {"uri": path_to_uri(file.path), "index": artifact_index},
            "region": {"startLine": 1},
        }}],
        "partialFingerprints": {FINGERPRINT_KEY: _fingerprint(finding, file.path)},
        "properties": {"severity": finding.severity.label},
    }


def _fingerprint(finding: Finding, path: str) -> str:
    """A hash of rule id, path and evidence keys: stable across runs, blind to evidence values."""
    parts = [finding.rule_id, path.replace("\\", "/"), *sorted(finding.evidence)]
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def _artifact(file: FileResult) -> dict[str, Any]:
    artifact: dict[str, Any] = {"location": {"uri": path_to_uri(file.path)},
                                "roles": ["analysisTarget"]}
    if file.size_bytes is not None:
        artifact["length"] = file.size_bytes
    return artifact


def _invocation(result: ScanResult) -> dict[str, Any]:
    notifications = [{
        "level": "error",
        "message": {"text": f"could not scan {file.path}: {file.error}"},
        "locations": [{"physicalLocation": {"artifactLocation": {"uri": path_to_uri(file.path)}}}],
    } for file in result.files if file.error is not None]
    invocation: dict[str, Any] = {"executionSuccessful": result.exit_code in (0, 1),
                                  "exitCode": result.exit_code}
    if notifications:
        invocation["toolExecutionNotifications"] = notifications
    return invocation
