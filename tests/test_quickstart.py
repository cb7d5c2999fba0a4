"""The README's quickstart, end to end: `lora-audit scan weights_samples/` on the shipped files with the
shipped toy models (attack, base, embedder), and the findings a user sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_audit.cli import main
from report_checks import consistency_rule, parse_json_report

ROOT = Path(__file__).parent.parent
QUICKSTART = ".venv/bin/lora-audit scan weights_samples/"

# What the shipped files give today (rebuilt by `lora-audit toy build --jobs 2 --install .`): if a rebuild
# changes a verdict, this table is the place to say so.
EXPECTED = {
    "sd15_kohya_leaky.safetensors": {"LA101", "LA102", "LA103", "LA104", "LA105", "LA106", "LA303"},
    "sd15_peft_clean.safetensors": {"LA303"},  # no metadata leak; no sd1 attack model ships
    "sdxl_kohya.safetensors": {"LA103", "LA104", "LA303"},
    # The toy victims decode to faces as consistent as LoRAs of no one person do (the crowd null): LA310.
    "toy_kohya.safetensors": {"LA310"},
    "toy_kohya_leaky.safetensors": {"LA101", "LA102", "LA104", "LA105", "LA308", "LA310"},  # LA308: its trigger
    "toy_peft.safetensors": {"LA310"},
    "toy_peft_b.safetensors": {"LA310"},
}


def test_the_readme_runs_this_command():
    assert QUICKSTART in (ROOT / "README.md").read_text()


@pytest.mark.slow  # four toy-world attacks at the shipped sizes (~20 s on a 2-core machine, more when it is loaded)
def test_quickstart_scan_of_the_shipped_samples(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # as the README runs it, from the checkout
    before = _listing(ROOT / "lora-audit-reconstructions")
    report_path = tmp_path / "report.json"
    assert main(["scan", "weights_samples/", "-q", "-f", "json", "-o", str(report_path)]) == 1
    report = parse_json_report(report_path.read_text())
    files = {Path(f["path"]).name: f for f in report["files"]}
    assert all(f["path"].startswith("weights_samples/") for f in report["files"])  # paths as given
    assert {name: {x["rule_id"] for x in f["findings"]} for name, f in files.items()} == EXPECTED
    assert all(f["error"] is None for f in files.values())
    assert report["summary"]["exit_code"] == 1 and report["summary"]["fail_on"] == "high"

    leaky = {x["rule_id"]: x for x in files["sd15_kohya_leaky.safetensors"]["findings"]}
    assert "sks woman" in leaky["LA101"]["evidence"]["metadata"]["ss_tag_frequency"]  # the captions a user would see
    assert leaky["LA106"]["severity"] == "high" and leaky["LA303"]["severity"] == "info"
    for name in ("toy_kohya", "toy_kohya_leaky", "toy_peft", "toy_peft_b"):
        (identity,) = [x for x in files[f"{name}.safetensors"]["findings"] if x["rule_id"] in ("LA301", "LA302", "LA310")]
        assert identity["rule_id"] == consistency_rule(identity["evidence"]) == "LA310", name
        assert identity["severity"] == "medium" and identity["evidence"]["crowd_loras"] == 40  # the shipped null
        assert (identity["evidence"]["latents"], identity["evidence"]["seeds"]) == (4, 2)  # the scan's defaults
        grid = Path(identity["evidence"]["grid"])
        assert grid.is_file() and grid.parent == tmp_path / "report_reconstructions"  # next to -o
    assert _listing(ROOT / "lora-audit-reconstructions") == before  # nothing written into the checkout


def _listing(folder: Path) -> list | None:
    return sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) if folder.is_dir() else None
