"""SARIF for GitHub code scanning: real CLI output against the official 2.1.0 schema, %SRCROOT%-relative
locations, fingerprints that do not depend on how a path is spelled, status rules as notifications
(not alerts), help per rule, and the split into several runs."""

from __future__ import annotations

import json
import os

import jsonschema
import pytest
from report_checks import sarif_schema, strict_loads

import lora_audit.reports.sarif as sarif
import lora_audit.testing.synthetic as S
from lora_audit.cli import main
from lora_audit.evidence import per_item
from lora_audit.results import FileResult, ScanResult, Severity
from lora_audit.rules import RULES, make_finding


def _valid(log: dict) -> dict:
    errors = [f"{list(e.absolute_path)}: {e.message}"
              for e in jsonschema.Draft4Validator(sarif_schema()).iter_errors(log)]
    assert errors == [], errors
    return log


def _leaky(path) -> str:
    S.save_synthetic(path, S.as_kohya(S.make_lora("sd15", rank=2, max_modules=2)), S.leaky_kohya_metadata())
    return str(path)


def _scan(args: list[str], out) -> dict:
    assert main(["scan", "-q", *args, "-f", "sarif", "-o", str(out)]) == 1
    return _valid(strict_loads(out.read_text("utf-8")))


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder as the current directory (%SRCROOT%) with a leaky LoRA in models/."""
    root = tmp_path / "project"
    (root / "models").mkdir(parents=True)
    _leaky(root / "models" / "leaky.safetensors")
    monkeypatch.chdir(root)
    return root


def test_cli_sarif_is_valid_with_srcroot_relative_locations_and_rule_help(project, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    _leaky(outside)
    os.symlink(outside, project / "models" / "link.safetensors")  # out of the scanned folder: LA004
    log = _scan(["models"], tmp_path / "r.sarif")
    (run,) = log["runs"]
    assert run["originalUriBaseIds"] == {"SRCROOT": {"uri": project.as_uri() + "/"}}
    assert run["automationDetails"]["id"].startswith("lora-audit/scan/")
    assert [a["location"] for a in run["artifacts"]][0] == {"uri": "models/leaky.safetensors", "uriBaseId": "SRCROOT"}
    for result in run["results"]:
        location = result["locations"][0]["physicalLocation"]["artifactLocation"]
        assert location["uriBaseId"] == "SRCROOT" and not location["uri"].startswith(("/", "file:", "./"))
        assert run["artifacts"][location["index"]]["location"]["uri"] == location["uri"]
        assert result["level"] in ("error", "warning", "note")
    rules = run["tool"]["driver"]["rules"]
    assert {"LA101", "LA102", "LA103"} <= {r["id"] for r in rules}
    for rule in rules:
        known = RULES[rule["id"]]
        assert rule["helpUri"] == f"{sarif.RULES_DOC_URL}#{rule['id'].lower()}"
        assert rule["helpUri"].startswith("https://")
        assert known.title in rule["help"]["markdown"] and known.remediation in rule["help"]["markdown"]
    assert run["tool"]["driver"]["informationUri"] == sarif.PROJECT_URL
    assert "pypi.org/project/lora-audit" not in json.dumps(log)  # another project's page
    # Status outcomes (the attack not run on an sd1 LoRA without --base, the link) are notifications.
    assert not {"LA303", "LA004"} & {r["ruleId"] for r in run["results"]}
    notes = {n["associatedRule"]["id"]: n for n in run["invocations"][0]["toolExecutionNotifications"]}
    assert notes["LA303"]["properties"]["kind"] == "notApplicable" and notes["LA303"]["level"] == "note"
    assert notes["LA004"]["properties"]["kind"] == "notApplicable"
    assert rules[notes["LA303"]["associatedRule"]["index"]]["id"] == "LA303"
    assert next(r for r in rules if r["id"] == "LA303")["defaultConfiguration"]["level"] == "none"


def test_fingerprints_do_not_depend_on_how_the_path_is_spelled(project, tmp_path):
    logs = [_scan([spelling], tmp_path / f"r{i}.sarif")
            for i, spelling in enumerate(["models/leaky.safetensors", "./models/leaky.safetensors",
                                          "models/../models/./leaky.safetensors",
                                          str(project / "models" / "leaky.safetensors")])]
    prints = [[(r["ruleId"], r["partialFingerprints"]) for r in log["runs"][0]["results"]] for log in logs]
    assert len(prints[0]) >= 5 and all(p == prints[0] for p in prints)
    assert len({json.dumps(p) for _, p in prints[0]}) == len(prints[0])  # distinct findings, distinct prints
    uris = {log["runs"][0]["artifacts"][0]["location"]["uri"] for log in logs}
    assert uris == {"models/leaky.safetensors"}


def test_a_file_outside_the_current_directory_keeps_an_absolute_uri(project, tmp_path):
    outside = _leaky(tmp_path / "other dir.safetensors")
    run = _scan([outside], tmp_path / "r.sarif")["runs"][0]
    location = run["artifacts"][0]["location"]
    assert location == {"uri": (tmp_path / "other dir.safetensors").as_uri()} and "%20" in location["uri"]
    assert "uriBaseId" not in run["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]


def test_fingerprints_ignore_evidence_values_and_the_grid_path():
    def one(evidence, rule="LA301"):
        return sarif.fingerprint(make_finding(rule, "m", evidence), "a.safetensors")

    assert one({"identity_consistency": 0.91, "grid": "elsewhere/x/grid.png"}) == \
        one({"identity_consistency": 0.42, "grid": "out/grid.png"}) == one({"identity_consistency": 0.1})
    assert one({"identity_consistency": 0.9}) != one({"identity_consistency": 0.9}, "LA302")
    spellings = (("m", "v", os.path.abspath("a.safetensors")), ("other", "w", "./a.safetensors"))
    prints = {sarif.fingerprint(make_finding("LA101", message, per_item("metadata", {"k": value})), path)
              for message, value, path in spellings}
    assert len(prints) == 1


def test_fingerprints_tell_per_item_names_apart_but_not_their_values_or_counts():
    def leak(metadata, total=None):
        return sarif.fingerprint(make_finding("LA102", "m", per_item("metadata", metadata, total)), "a.safetensors")

    dirs = leak({"ss_dataset_dirs": "10_jane doe"})
    assert dirs == leak({"ss_dataset_dirs": "<redacted 11 chars>"}) == leak({"ss_dataset_dirs": "x"}, total=300)
    assert dirs != leak({"ss_reg_dataset_dirs": "10_jane doe"}) != leak({"ss_dataset_dirs": "x", "ss_datasets": "y"})
    orphans = [make_finding("LA202", "m", per_item("modules", {name: "has only lora_up"})) for name in ("a", "b")]
    assert len({sarif.fingerprint(f, "a.safetensors") for f in orphans}) == 2


def test_status_rules_are_notifications_and_a_raised_one_is_an_alert():
    raised = make_finding("LA303", "attack not run")
    raised.severity = Severity.HIGH  # as a policy [severity] table does
    findings = [make_finding("LA302", "clean"), make_finding("LA305", "no match"),
                make_finding("LA306", "1 photo unused", per_item("photos", {"p.png": "no face"})),
                make_finding("LA004", "link"),
                make_finding("LA101", "captions", per_item("metadata", {"ss_tag_frequency": "{}"})), raised]
    run = _valid(sarif.to_sarif(ScanResult(files=[FileResult("a.safetensors", findings=findings)])))["runs"][0]
    assert [r["ruleId"] for r in run["results"]] == ["LA101", "LA303"]
    kinds = {n["associatedRule"]["id"]: n["properties"]["kind"]
             for n in run["invocations"][0]["toolExecutionNotifications"]}
    assert kinds == {"LA302": "pass", "LA305": "pass", "LA306": "informational", "LA004": "notApplicable"}
    assert set(sarif.STATUS_KINDS) <= set(RULES) and all(RULES[r].severity == Severity.INFO for r in sarif.STATUS_KINDS)


def test_more_results_than_a_run_holds_are_split_into_runs_of_their_own_category(monkeypatch):
    monkeypatch.setattr(sarif, "MAX_RESULTS_PER_RUN", 3)
    def leaky(n):
        return [make_finding("LA104", f"text {i}", per_item("metadata", {f"key{i}": "v"})) for i in range(n)]
    files = [FileResult("a.safetensors", findings=leaky(2)), FileResult("b.safetensors", findings=leaky(2)),
             FileResult("c.safetensors"), FileResult("d.safetensors", findings=leaky(7)),
             FileResult("e.safetensors", error="empty file", findings=[make_finding("LA001", "empty")])]
    log = _valid(sarif.to_sarif(ScanResult(files=files)))
    runs = log["runs"]
    assert [len(run["results"]) for run in runs] == [2, 2, 3, 3, 2]
    assert all(len(run["results"]) <= 3 for run in runs)
    ids = [run["automationDetails"]["id"] for run in runs]
    categories = [i.rsplit("/", 1)[0] for i in ids]
    assert categories == [f"lora-audit/scan/part-{n}" for n in range(1, 6)]
    uris = [[a["location"]["uri"] for a in run["artifacts"]] for run in runs]
    assert uris == [["a.safetensors"], ["b.safetensors", "c.safetensors"], ["d.safetensors"], ["d.safetensors"],
                    ["d.safetensors", "e.safetensors"]]
    for run in runs:  # each run is whole: its indices point into its own rules and artifacts
        for result in run["results"]:
            assert run["tool"]["driver"]["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
            location = result["locations"][0]["physicalLocation"]["artifactLocation"]
            assert run["artifacts"][location["index"]]["location"]["uri"] == location["uri"]
    prints = [p for run in runs for r in run["results"] for p in r["partialFingerprints"].values()]
    assert len(set(prints)) == len(prints) == 12
    assert "could not scan e.safetensors" in json.dumps(runs[-1]["invocations"])
    category = sarif.to_sarif(ScanResult(files=files[:1]), category="nightly")["runs"][0]["automationDetails"]
    assert category == {"id": "lora-audit/scan/nightly/"}


def test_rules_json_lists_the_catalogue_with_the_help_uris_sarif_uses(capsys):
    assert main(["rules", "--format", "json"]) == 0
    listed = strict_loads(capsys.readouterr().out)
    assert [r["id"] for r in listed] == list(RULES)
    for entry in listed:
        rule = RULES[entry["id"]]
        assert entry == {"id": rule.id, "name": rule.name, "severity": rule.severity.label, "title": rule.title,
                         "remediation": rule.remediation, "help_uri": sarif.rule_help_uri(rule.id)}
        assert entry["help_uri"].startswith("https://") and entry["remediation"]
    descriptor = sarif.to_sarif(ScanResult(files=[FileResult("a.safetensors", findings=[
        make_finding("LA101", "captions")])]))["runs"][0]["tool"]["driver"]["rules"][0]
    assert descriptor["helpUri"] == next(r["help_uri"] for r in listed if r["id"] == "LA101")
    assert main(["rules"]) == 0 and main(["rules", "-f", "text"]) == 0  # the one-line-per-rule table stays
    text = capsys.readouterr().out.splitlines()
    assert len(text) == 2 * len(RULES) and text[0].split()[:3] == ["LA001", "unreadable-file", "high"]
    assert main(["rules", "--format", "xml"]) == 4
