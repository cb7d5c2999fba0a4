"""The CLI end to end: exit codes, --fail-on, formats, -o, policy files, strip, and no torch on static paths."""

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy

from lora_audit.cli import main
from lora_audit.errors import PolicyError
from lora_audit.policy import load_policy
from lora_audit.scan.strip import strip_metadata
from lora_audit.weights import open_lora

LEAKY = {
    "ss_tag_frequency": json.dumps({"10_jane doe woman": {"sks woman": 20, "smiling": 4}}),
    "ss_sd_model_name": "/home/jane/models/v1-5-pruned.safetensors",
    "ss_training_comment": "photos of my sister jane",
    "ss_network_dim": "4",
}


def write_lora(path, metadata=None, nan=False):
    rng = np.random.default_rng(0)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    down = rng.normal(size=(4, 768)).astype(np.float32)
    if nan:
        down[0, 0] = np.nan
    tensors = {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": rng.normal(size=(320, 4)).astype(np.float32),
               f"{name}.alpha": np.array(4.0, np.float32)}
    safetensors.numpy.save_file(tensors, str(path), metadata=metadata)
    return str(path)


@pytest.fixture
def leaky(tmp_path):
    return write_lora(tmp_path / "leaky.safetensors", LEAKY)


@pytest.fixture
def clean(tmp_path):
    return write_lora(tmp_path / "clean.safetensors", {"ss_network_dim": "4"})


def test_exit_codes_follow_fail_on(leaky, clean, capsys):
    assert main(["scan", "-q", clean]) == 0
    assert main(["scan", "-q", leaky]) == 1  # LA101 is high, the default threshold
    assert main(["scan", "-q", "--fail-on", "critical", leaky]) == 0
    assert main(["scan", "-q", "--fail-on", "low", clean]) == 0
    assert main(["scan", "-q", "--fail-on", "bogus", leaky]) == 4
    assert "unknown severity" in capsys.readouterr().err


def test_usage_errors_exit_4(capsys):
    assert main([]) == 4
    assert main(["scan"]) == 4
    assert main(["scan", "--format", "xml", "x"]) == 4
    assert main(["frobnicate"]) == 4


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Exit codes" in out and "scan" in out and "strip" in out
    assert main(["scan", "--help"]) == 0
    assert "--fail-on" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert "lora-audit" in capsys.readouterr().out


def test_json_report_to_file_keeps_paths_as_given(leaky, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["scan", "-f", "json", "-o", "out.json", "leaky.safetensors"]) == 1
    assert capsys.readouterr().out == ""
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["schema_version"] and report["files"][0]["path"] == "leaky.safetensors"
    rules = {f["rule_id"] for f in report["files"][0]["findings"]}
    assert {"LA101", "LA103", "LA104"} <= rules
    assert report["summary"]["exit_code"] == 1


def test_report_never_overwrites_a_scanned_file(leaky, tmp_path, capsys):
    before = open(leaky, "rb").read()
    odd = tmp_path / "model.dat"
    odd.write_bytes(before)
    assert main(["scan", "-q", "-f", "json", "-o", leaky, leaky]) == 4  # the input itself
    assert main(["scan", "-q", "-o", str(tmp_path / "r.ckpt"), leaky]) == 4  # a scanned suffix
    assert main(["scan", "-q", "-o", str(odd), str(odd)]) == 4  # given directly, any suffix
    assert main(["scan", "-q", "-o", str(tmp_path), leaky]) == 4  # a folder
    assert open(leaky, "rb").read() == before and odd.read_bytes() == before
    assert capsys.readouterr().err.count("lora-audit: error:") == 4


def test_failed_scan_leaves_no_half_report(leaky, tmp_path, monkeypatch, capsys):
    import lora_audit.reports

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(lora_audit.reports, "write_report", explode)
    report = tmp_path / "report.json"
    assert main(["scan", "-q", "-f", "json", "-o", str(report), leaky]) == 2
    assert not report.exists() and [p.name for p in tmp_path.iterdir()] == ["leaky.safetensors"]
    err = capsys.readouterr().err
    assert err.startswith("lora-audit: internal error: RuntimeError('boom')") and err.count("\n") == 1
    monkeypatch.undo()
    assert main(["scan", "-q", "-f", "json", "-o", str(report), leaky]) == 1 and report.exists()


def test_report_to_a_device_is_written_directly(leaky, tmp_path):
    before = os.stat(os.devnull)
    assert main(["scan", "-q", "-f", "json", "-o", os.devnull, leaky]) == 1
    after = os.stat(os.devnull)  # still the same character device, not a file put in its place
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)
    # A FIFO gets the whole report through itself (no temporary file renamed over it) and stays a FIFO.
    import threading

    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    assert main(["scan", "-q", "-f", "json", "-o", str(fifo), leaky]) == 1
    reader.join(timeout=30)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and sorted(p.name for p in tmp_path.iterdir()) == [
        "leaky.safetensors", "report.fifo"]
    report = json.loads(received[0])
    assert report["summary"]["exit_code"] == 1 and report["files"][0]["path"] == leaky


def test_redact_hides_values(leaky, capsys):
    main(["scan", "-f", "json", "--redact", leaky])
    out = capsys.readouterr().out
    assert "jane" not in out and "ss_sd_model_name" in out


def test_policy_file_disables_rules_and_changes_severity(leaky, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lora-audit.toml").write_text('disable = ["caption-tags"]\n[severity]\nLA103 = "critical"\n')
    assert main(["scan", "-f", "json", "leaky.safetensors"]) == 1
    findings = json.loads(capsys.readouterr().out)["files"][0]["findings"]
    assert "LA101" not in {f["rule_id"] for f in findings}
    assert {f["rule_id"]: f["severity"] for f in findings}["LA103"] == "critical"
    (tmp_path / "lora-audit.toml").unlink()
    (tmp_path / "pyproject.toml").write_text('[tool.lora-audit]\nfail_on = "critical"\n')
    assert main(["scan", "-q", "leaky.safetensors"]) == 0


def test_bad_policy_files_are_usage_errors(tmp_path):
    bad = tmp_path / "p.toml"
    for text, message in [("fail_on = 'huge'", "unknown severity"), ("colour = 1", "unknown key"),
                          ("disable = ['LA999']", "unknown rule"), ("fail_on = ", "not valid TOML")]:
        bad.write_text(text)
        with pytest.raises(PolicyError, match=message):
            load_policy(str(bad))
    assert main(["scan", "--policy", str(bad), str(bad)]) == 4


def test_nan_weights_fail_the_gate(tmp_path):
    path = write_lora(tmp_path / "nan.safetensors", nan=True)
    assert main(["scan", "-q", path]) == 1


def test_strip_removes_leaky_metadata_and_keeps_tensor_bytes(leaky, tmp_path, capsys):
    out = tmp_path / "clean_copy.safetensors"
    assert main(["strip", leaky, "-o", str(out)]) == 0
    assert "removed" in capsys.readouterr().out
    with open_lora(str(out)) as stripped, open_lora(leaky) as original:
        assert set(stripped.metadata) == {"ss_network_dim"}
        assert stripped.tensors.keys() == original.tensors.keys()
        a, b = open(leaky, "rb").read(), out.read_bytes()
        for name, info in original.tensors.items():
            assert a[info.start:info.end] == b[stripped.tensors[name].start:stripped.tensors[name].end]
    assert main(["scan", "-q", str(out)]) == 0


def test_strip_keeps_the_file_mode(leaky, tmp_path):
    os.chmod(leaky, 0o640)
    out = tmp_path / "copy.safetensors"
    assert main(["strip", leaky, "-o", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert main(["strip", leaky, "--in-place"]) == 0
    assert stat.S_IMODE(os.stat(leaky).st_mode) == 0o640


def test_strip_to_a_missing_folder_or_onto_a_folder_is_one_line(leaky, tmp_path, capsys):
    assert main(["strip", leaky, "-o", str(tmp_path / "missing" / "x.safetensors")]) == 4
    assert main(["strip", leaky, "--force", "-o", str(tmp_path)]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "No such file" in err and "is a directory" in err
    assert [p.name for p in tmp_path.iterdir()] == ["leaky.safetensors"]


def test_strip_never_overwrites_without_being_told(leaky, clean, tmp_path, capsys):
    before = open(leaky, "rb").read()
    assert main(["strip", leaky, "-o", clean]) == 4  # exists
    assert main(["strip", leaky, "-o", leaky]) == 4  # the input itself
    assert main(["strip", leaky]) == 4  # no destination
    assert open(leaky, "rb").read() == before
    assert main(["strip", leaky, "--in-place"]) == 0
    assert "ss_tag_frequency" not in open_lora(leaky).metadata
    assert main(["strip", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "o.safetensors")]) == 2


def test_strip_keep_and_remove(leaky, tmp_path):
    out = tmp_path / "o.safetensors"
    done = strip_metadata(leaky, str(out), keep_keys=("ss_training_comment",), extra_keys=("ss_network_dim",))
    assert done.kept == ["ss_training_comment"]
    assert done.removed == ["ss_network_dim", "ss_sd_model_name", "ss_tag_frequency"]
    with safetensors.safe_open(str(out), "np") as f:  # what the written file holds
        assert f.metadata() == {"ss_training_comment": LEAKY["ss_training_comment"]}
        assert sorted(f.keys()) == sorted(safetensors.numpy.load_file(leaky))


def test_static_paths_never_import_torch(leaky):
    code = ("import sys; from lora_audit.cli import main; "
            f"codes = [main(['--help']), main(['scan', '-q', '-f', 'sarif', '-o', {leaky + '.sarif'!r}, {leaky!r}]), "
            f"main(['scan', '-q', '--skip-weights', {leaky!r}]), main(['rules'])]; "
            "bad = [m for m in ('torch', 'diffusers', 'transformers', 'ray') if m in sys.modules]; "
            "print('IMPORTED', bad, 'CODES', codes)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "IMPORTED [] CODES [0, 1, 1, 0]" in out  # help, a leaky static scan (LA101 is high), rules
    run = json.loads(open(leaky + ".sarif").read())["runs"][0]
    assert "LA101" in {r["ruleId"] for r in run["results"]}


def test_every_rule_is_documented():
    from pathlib import Path

    from lora_audit.rules import RULES

    docs = (Path(__file__).parent.parent / "docs" / "rules.md").read_text()
    for rule in RULES.values():
        assert f'| <a id="{rule.id.lower()}"></a>{rule.id} | {rule.name} | {rule.severity.label} |' in docs  # SARIF helpUri anchors


def test_skip_weights_reads_headers_only(tmp_path, capsys):
    path = write_lora(tmp_path / "nan.safetensors", LEAKY, nan=True)
    assert main(["scan", "-f", "json", "--skip-weights", path]) == 1
    file = json.loads(capsys.readouterr().out)["files"][0]
    assert "LA201" not in {f["rule_id"] for f in file["findings"]}  # NaN needs the data
    assert file["stats"]["module_count"] == 1 and file["stats"]["modules"] == []
    assert file["stats"]["base_model"] == "sd1"


def test_save_finetune_writes_the_final_lora_and_named_snapshots(tmp_path):
    """The finetune command's files: the final LoRA at OUTPUT, earlier snapshots at <stem>_step_N<suffix>."""
    from lora_audit.diffusion.finetune import FinetuneConfig, FinetuneResult
    from lora_audit.diffusion.lora_output import save_finetune

    rng = np.random.default_rng(0)
    modules = ["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
               "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v",
               "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"]

    def state():
        return {f"{m}.{role}.weight": rng.normal(size=shape).astype(np.float32)
                for m in modules for role, shape in (("lora_A", (2, 8)), ("lora_B", (8, 2)))}

    config = FinetuneConfig(rank=2, alpha=1.0, steps=4, snapshot_steps=(2,))
    result = FinetuneResult("zorvik", "a face of zorvik", {4: state(), 2: state()}, [], 0.0, config)
    output = tmp_path / "subject.safetensors"
    paths = save_finetune(result, output, layout="kohya", metadata={"lora_audit.base_model": "toy"},
                          kohya_metadata=True, family="toy", num_images=5)
    assert paths == [tmp_path / "subject_step_2.safetensors", output]
    for path, step in zip(paths, (2, 4)):
        with open_lora(str(path)) as lora:
            assert len(lora.modules) == 3 and lora.layout == "kohya"
            assert lora.metadata["lora_audit.base_model"] == "toy"
            assert lora.metadata["ss_steps"] == str(step) and lora.metadata["ss_network_alpha"] == "1.0"
            assert lora.metadata["ss_output_name"] == "subject" and "zorvik" in lora.metadata["ss_tag_frequency"]
    save_finetune(result, output, family="toy", num_images=5)  # peft, no kohya keys
    with open_lora(str(output)) as lora:
        assert len(lora.modules) == 3 and not any(k.startswith("ss_") for k in lora.metadata)
