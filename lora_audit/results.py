"""What a scan returns: findings, per-file results and the whole scan, as plain dataclasses.

Reports (console, JSON, SARIF) are views of these objects; ``to_dict`` gives the JSON schema
whose version is :data:`SCHEMA_VERSION`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from lora_audit.evidence import Evidence

# 1.1: sha256, autov2, mtime, same_as and hub per file.
# 2.0: evidence keys are snake_case and values are JSON values (numbers, lists and objects with a count), not text.
SCHEMA_VERSION = "2.0"


class Severity(enum.IntEnum):
    """Ordered severities; ``Severity.parse("high") >= Severity.MEDIUM``."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @classmethod
    def parse(cls, text: str) -> "Severity":
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(s.label for s in cls)
            from lora_audit.errors import UsageError

            raise UsageError(f"unknown severity {text!r}: expected one of {names}") from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass
class Finding:
    """One problem found in one file, under a stable rule id (e.g. ``LA101``)."""

    rule_id: str
    severity: Severity
    title: str
    message: str
    evidence: Evidence = field(default_factory=dict)  # snake_case key -> JSON value (lora_audit.evidence)
    remediation: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Like ``dataclasses.asdict``, the evidence's lists and objects copied, without its recursive deep
        copy (most of the cost of a JSON Lines line in a large batch)."""
        return {"rule_id": self.rule_id, "severity": self.severity.label, "title": self.title,
                "message": self.message, "evidence": _evidence(self.evidence), "remediation": self.remediation}


@dataclass
class ModuleStats:
    """Statistics of one adapted module's weight delta dW = scale * B @ A."""

    name: str
    kind: str  # lora | locon | dora | loha | lokr
    rank: int
    alpha: float
    scale: float
    shape: list[int]  # shape of dW (out, in[, kh, kw])
    dw_norm: float  # Frobenius norm of dW
    effective_rank: float  # exp(entropy of normalised singular values), Roy & Vetterli 2007


@dataclass
class WeightStats:
    """Summary of all tensors and adapted modules of one file."""

    layout: str  # kohya | peft | diffusers-old | lycoris | unknown
    base_model: str  # sd1 | sd2 | sdxl | flux | toy | unknown
    base_model_evidence: str
    module_count: int
    tensor_count: int
    parameter_count: int
    dtypes: dict[str, int]  # dtype -> number of tensors
    ranks: dict[str, int]  # rank -> number of modules (str keys for JSON)
    alphas: dict[str, int]
    kinds: dict[str, int]
    modules: list[ModuleStats] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Like ``dataclasses.asdict`` but without its deep copies (thousands of modules per batch)."""
        d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(self).items() if k != "modules"}
        d["modules"] = [{**vars(m), "shape": list(m.shape)} for m in self.modules]
        return d


@dataclass
class FileResult:
    """The scan of one file: its findings, weight statistics, or the error that stopped it."""

    path: str  # as given on the command line, never made absolute
    findings: list[Finding] = field(default_factory=list)
    stats: WeightStats | None = None
    error: str | None = None  # set when the file could not be scanned
    size_bytes: int | None = None
    seconds: float = 0.0
    sha256: str | None = None  # of the file's bytes; None when it could not be read
    mtime: float | None = None  # modification time (seconds since the epoch), for --resume
    same_as: str | None = None  # the path whose scan this one reuses (identical content)
    hub: dict[str, Any] | None = None  # Hugging Face cache: repo_id, revision, refs, blob

    @property
    def max_severity(self) -> Severity | None:
        return max((f.severity for f in self.findings), default=None)

    @property
    def autov2(self) -> str | None:
        """The AutoV2 hash model sites and the Stable Diffusion web UI show: the first ten hex digits of
        the SHA-256, upper case."""
        return self.sha256[:10].upper() if self.sha256 else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FileResult":
        """A result read back from a report (``--resume``): findings and identity, not the statistics."""
        findings = [Finding(rule_id=f["rule_id"], severity=Severity.parse(f["severity"]), title=f["title"],
                            message=f["message"], evidence=_evidence(f.get("evidence") or {}),
                            remediation=f.get("remediation", "")) for f in data.get("findings", [])]
        return cls(path=data["path"], findings=findings, error=data.get("error"), size_bytes=data.get("size_bytes"),
                   seconds=data.get("seconds") or 0.0, sha256=data.get("sha256"), mtime=data.get("mtime"),
                   same_as=data.get("same_as"), hub=data.get("hub"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "error": self.error,
            "size_bytes": self.size_bytes,
            "seconds": round(self.seconds, 4),
            "sha256": self.sha256,
            "autov2": self.autov2,
            "mtime": self.mtime,
            "same_as": self.same_as,
            "hub": self.hub,
            "max_severity": self.max_severity.label if self.max_severity is not None else None,
            "findings": [f.to_dict() for f in self.findings],
            "stats": self.stats.to_dict() if self.stats is not None else None,
        }


def _evidence(data: dict[str, Any]) -> Evidence:
    """Evidence read back from a report, its lists and objects copied."""
    return {k: list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v for k, v in data.items()}


@dataclass
class ScanResult:
    """All files of one ``scan`` call, in input order."""

    files: list[FileResult]
    fail_on: Severity = Severity.HIGH

    def summary(self) -> dict[str, Any]:
        counts = {s.label: 0 for s in Severity}
        for f in self.files:
            for finding in f.findings:
                counts[finding.severity.label] += 1
        return {
            "files": len(self.files),
            "scanned": sum(1 for f in self.files if f.error is None),
            "errors": sum(1 for f in self.files if f.error is not None),
            "findings": counts,
            "fail_on": self.fail_on.label,
            "exit_code": self.exit_code,
        }

    @property
    def exit_code(self) -> int:
        """0 clean, 1 findings at or above ``fail_on``, 2 a file could not be scanned, 3 nothing scanned."""
        if not self.files:
            return 3
        if any(f.error is not None for f in self.files):
            return 2
        if any(f.max_severity is not None and f.max_severity >= self.fail_on for f in self.files):
            return 1
        return 0

    def header(self) -> dict[str, Any]:
        """The report's fields other than its files: schema version, tool and summary."""
        from lora_audit import __version__

        return {"schema_version": SCHEMA_VERSION, "tool": {"name": "lora-audit", "version": __version__},
                "summary": self.summary()}

    def to_dict(self) -> dict[str, Any]:
        return {**self.header(), "files": [f.to_dict() for f in self.files]}
