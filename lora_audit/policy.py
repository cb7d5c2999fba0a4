"""Policy files: project defaults, disabled rules and severity overrides.

Read from ``lora-audit.toml`` (top-level keys) or the ``[tool.lora-audit]`` table of
``pyproject.toml`` in the current directory, or from an explicit ``--policy`` path::

    fail_on = "medium"
    disable = ["LA104", "trigger-phrase"]
    owner_far = 0.01      # LA304 when at most this share of other people's photo sets score as high
    crowd_far = 0.05      # LA301 when at most this share of LoRAs of no one person are as consistent
    redact = true
    [severity]
    LA103 = "low"
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field

from lora_audit.errors import PolicyError
from lora_audit.results import Finding, Severity
from lora_audit.rules import RULE_NAMES, RULES

_KEYS = {"fail_on", "disable", "severity", "redact", "jobs", "owner_far", "crowd_far"}


@dataclass
class Policy:
    fail_on: Severity | None = None
    disabled: set[str] = field(default_factory=set)  # rule ids
    severities: dict[str, Severity] = field(default_factory=dict)  # rule id -> severity
    redact: bool | None = None
    jobs: int | None = None
    owner_far: float | None = None  # the owner verdict's target FAR (LA304 at or below it)
    crowd_far: float | None = None  # LA301's target FAR against LoRAs of no one person (at or below it)
    source: str | None = None  # the file it came from

    def apply(self, findings: list[Finding]) -> list[Finding]:
        """Drop disabled rules' findings and apply severity overrides."""
        kept = []
        for f in findings:
            if f.rule_id in self.disabled:
                continue
            if f.rule_id in self.severities:
                f.severity = self.severities[f.rule_id]
            kept.append(f)
        return kept


def load_policy(path: str | None = None, directory: str = ".") -> Policy:
    """The policy at ``path``, else lora-audit.toml or pyproject.toml's [tool.lora-audit] in ``directory``."""
    if path is not None:
        if not os.path.isfile(path):
            raise PolicyError(f"policy file {path} does not exist")
        if os.path.basename(path) == "pyproject.toml":
            return _parse(_tool_table(path) or {}, path)
        return _parse(_read_toml(path), path)
    own = os.path.join(directory, "lora-audit.toml")
    if os.path.isfile(own):
        return _parse(_read_toml(own), own)
    pyproject = os.path.join(directory, "pyproject.toml")
    if os.path.isfile(pyproject):
        table = _tool_table(pyproject)
        if table is not None:
            return _parse(table, f"{pyproject} [tool.lora-audit]")
    return Policy()


def _read_toml(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"policy file {path} is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"policy file {path} is not valid TOML: not UTF-8 text") from None
    except OSError as e:
        raise PolicyError(f"policy file {path} cannot be read: {e.strerror}") from None


def _tool_table(pyproject: str) -> dict | None:
    """The [tool.lora-audit] table of ``pyproject``, None when it has none."""
    tool = _read_toml(pyproject).get("tool", {})
    if not isinstance(tool, dict):
        raise PolicyError(f"{pyproject}: 'tool' must be a table")
    table = tool.get("lora-audit")
    if table is not None and not isinstance(table, dict):
        raise PolicyError(f"{pyproject}: [tool.lora-audit] must be a table")
    return table


def _parse(table: dict, source: str) -> Policy:
    unknown = set(table) - _KEYS
    if unknown:
        raise PolicyError(f"{source}: unknown key(s) {', '.join(map(repr, sorted(unknown)))}; "
                          f"expected {', '.join(sorted(_KEYS))}")
    policy = Policy(source=source)
    if "fail_on" in table:
        policy.fail_on = _severity(table["fail_on"], source)
    if not isinstance(table.get("disable", []), list):
        raise PolicyError(f"{source}: 'disable' must be a list of rule ids or names")
    policy.disabled = {rule_id(r, source) for r in table.get("disable", [])}
    severity = table.get("severity", {})
    if not isinstance(severity, dict):
        raise PolicyError(f"{source}: [severity] must be a table of rule = \"level\"")
    policy.severities = {rule_id(r, source): _severity(v, source) for r, v in severity.items()}
    if "redact" in table:
        if not isinstance(table["redact"], bool):
            raise PolicyError(f"{source}: 'redact' must be true or false")
        policy.redact = table["redact"]
    if "jobs" in table:
        if not isinstance(table["jobs"], int) or table["jobs"] < 1:
            raise PolicyError(f"{source}: 'jobs' must be a positive integer")
        policy.jobs = table["jobs"]
    for key in ("owner_far", "crowd_far"):
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise PolicyError(f"{source}: '{key}' must be a number in (0, 1], e.g. 0.01")
            setattr(policy, key, float(value))
    return policy


def rule_id(name_or_id: object, source: str) -> str:
    """A rule id from an id ("LA104") or a name ("free-text")."""
    text = str(name_or_id)
    if text.upper() in RULES:
        return text.upper()
    if text in RULE_NAMES:
        return RULE_NAMES[text]
    raise PolicyError(f"{source}: unknown rule {text!r} (see `lora-audit rules`)")


def _severity(value: object, source: str) -> Severity:
    try:
        return Severity[str(value).upper()]
    except KeyError:
        raise PolicyError(f"{source}: unknown severity {value!r}; expected info, low, medium, high or critical") from None
