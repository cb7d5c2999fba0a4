"""Red-team regressions of the CLI: what strip may replace, exit codes on odd inputs and closed
pipes, and reports that hostile file names, metadata, policy keys or COLUMNS cannot break."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys

import numpy as np
import pytest
from report_checks import parse_json_report

import lora_audit.testing.synthetic as S
from lora_audit.cli import main
from lora_audit.evidence import MAX_ITEMS
from lora_audit.scan.metadata import check_metadata, sensitive_keys
from lora_audit.weights import open_lora

SCAN = ["scan", "-q", "--no-attack"]


def _leaky_file(path) -> str:
    S.save_synthetic(path, S.as_kohya(S.make_lora("sd15", rank=2, max_modules=2)),
                     S.leaky_kohya_metadata(rank=2))
    return str(path)


@pytest.fixture
def leaky(tmp_path):
    (tmp_path / "in").mkdir()
    return _leaky_file(tmp_path / "in" / "leaky.safetensors")


def _one_error_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("lora-audit: error: "), err
    assert "internal error" not in err
    return err


def _metadata(path) -> dict[str, str]:
    with open_lora(str(path)) as lora:
        return dict(lora.metadata)


# --- 1. strip replaces only regular files ---------------------------------------------------------


def test_strip_refuses_to_replace_a_fifo_even_with_force(leaky, tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert main(["strip", leaky, "-o", str(fifo), "--force"]) == 4
    assert "is not a regular file" in _one_error_line(capsys.readouterr().err)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert main(["strip", leaky, "-o", str(fifo)]) == 4  # and without --force: it exists
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["fifo", "in"]  # no temporary file left behind


# --- 2. strip writes through symbolic links (Hugging Face cache layout) ---------------------------


@pytest.fixture
def hf_cache(tmp_path):
    """``snapshots/rev/x.safetensors -> ../../blobs/<hash>``, the blob a leaky LoRA."""
    blob = tmp_path / "blobs" / "0123abcd"
    blob.parent.mkdir()
    _leaky_file(blob)
    link = tmp_path / "snapshots" / "rev" / "x.safetensors"
    link.parent.mkdir(parents=True)
    link.symlink_to(os.path.join("..", "..", "blobs", "0123abcd"))
    assert sensitive_keys(_metadata(blob))
    return link, blob


def _assert_link_kept_and_blob_clean(link, blob):
    assert link.is_symlink() and os.readlink(link) == os.path.join("..", "..", "blobs", "0123abcd")
    assert sensitive_keys(_metadata(blob)) == set()
    assert os.listdir(blob.parent) == [blob.name] and os.listdir(link.parent) == [link.name]


def test_strip_in_place_on_a_link_cleans_the_blob_and_keeps_the_link(hf_cache, capsys):
    link, blob = hf_cache
    assert main(["strip", "--in-place", str(link)]) == 0
    assert f"wrote {blob} (through the link {link})" in capsys.readouterr().out
    _assert_link_kept_and_blob_clean(link, blob)
    assert main([*SCAN, str(link)]) == 0


def test_strip_output_onto_a_link_needs_force_then_writes_the_target(hf_cache, leaky, capsys):
    link, blob = hf_cache
    before = blob.read_bytes()
    assert main(["strip", leaky, "-o", str(link)]) == 4  # exists
    assert "pass --force" in _one_error_line(capsys.readouterr().err)
    assert blob.read_bytes() == before
    assert main(["strip", leaky, "-o", str(link), "--force"]) == 0
    _assert_link_kept_and_blob_clean(link, blob)


def test_strip_output_that_links_to_the_input_is_the_input(hf_cache, capsys):
    link, blob = hf_cache
    assert main(["strip", str(blob), "-o", str(link), "--force"]) == 4
    assert "is the input file" in _one_error_line(capsys.readouterr().err)
    assert sensitive_keys(_metadata(blob))


def test_strip_help_says_links_are_written_through(capsys):
    assert main(["strip", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "written through" in out and "regular files" in out


# --- 3. exit codes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["console", "json", "jsonl"])
def test_a_closed_stdout_exits_141_quietly(leaky, fmt):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written (`| head -0`)
    try:
        done = subprocess.run([sys.executable, "-m", "lora_audit", *SCAN, "-f", fmt, leaky],
                              stdout=write_end, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, b"")


@pytest.mark.parametrize("name, text", [
    ("lora-audit.toml", b'fail_on = "\xff"\n'),
    ("pyproject.toml", b"[tool]\nlora-audit = 5\n"),
    ("pyproject.toml", b"tool = 5\n"),
])
def test_broken_discovered_policy_files_are_usage_errors(leaky, tmp_path, monkeypatch, capsys, name, text):
    (tmp_path / name).write_bytes(text)
    monkeypatch.chdir(tmp_path)
    assert main([*SCAN, leaky]) == 4
    assert name in _one_error_line(capsys.readouterr().err)


def test_a_policy_file_that_is_not_utf8_is_a_usage_error(leaky, tmp_path, capsys):
    policy = tmp_path / "policy.toml"
    policy.write_bytes(b"\xff\xfe = 1\n")
    assert main([*SCAN, "--policy", str(policy), leaky]) == 4
    assert "not UTF-8" in _one_error_line(capsys.readouterr().err)


def test_empty_output_paths_are_usage_errors(leaky, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*SCAN, "-o", "", leaky]) == 4
    assert "--output" in _one_error_line(capsys.readouterr().err)
    assert main(["strip", leaky, "-o", ""]) == 4
    assert "--output" in _one_error_line(capsys.readouterr().err)
    assert sorted(os.listdir(tmp_path)) == ["in"]


def test_an_empty_fail_on_is_a_usage_error(leaky, capsys):
    assert main([*SCAN, "--fail-on", "", leaky]) == 4
    assert "unknown severity" in _one_error_line(capsys.readouterr().err)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
@pytest.mark.parametrize("fmt", ["console", "jsonl"])
def test_a_full_device_is_one_line_naming_it(leaky, capsys, fmt):
    assert main([*SCAN, "-f", fmt, "-o", "/dev/full", leaky]) == 2
    assert _one_error_line(capsys.readouterr().err) == \
        "lora-audit: error: cannot write report to /dev/full: No space left on device\n"


# --- 4. reports ------------------------------------------------------------------------------------


def test_escape_bytes_in_a_policy_key_are_escaped(leaky, tmp_path, monkeypatch, capsys):
    (tmp_path / "lora-audit.toml").write_text('"\\u001b]0;pwned\\u0007\\u001b[31m" = 1\n')
    monkeypatch.chdir(tmp_path)
    assert main([*SCAN, leaky]) == 4
    err = _one_error_line(capsys.readouterr().err)
    assert "\x1b" not in err and "\x07" not in err
    assert "\\x1b]0;pwned\\x07" in err


def test_the_console_report_keeps_every_finding_whatever_columns(leaky, monkeypatch, capsys):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main([*SCAN, leaky]) == 1
    wide = capsys.readouterr().out
    rules = set(re.findall(r"\bLA\d{3}\b", wide))
    assert len(rules) >= 5
    for columns in ("0", "1", "5"):
        monkeypatch.setenv("COLUMNS", columns)
        assert main([*SCAN, leaky]) == 1
        out = capsys.readouterr().out
        assert set(re.findall(r"\bLA\d{3}\b", out)) == rules, columns
        assert "Scanned 1 of 1 files" in " ".join(out.split())


@pytest.mark.parametrize("fmt", ["json", "jsonl", "sarif"])
def test_an_undecodable_file_name_gives_valid_utf8_json(leaky, tmp_path, capsys, fmt):
    folder = tmp_path / "odd"
    folder.mkdir()
    try:
        odd = os.path.join(os.fsencode(folder), b"a\xff.safetensors")
        with open(leaky, "rb") as src, open(odd, "wb") as dst:
            dst.write(src.read())
    except OSError:
        pytest.skip("this file system refuses non-UTF-8 file names")
    report = tmp_path / f"report.{fmt}"
    assert main([*SCAN, "-f", fmt, "-o", str(report), str(folder)]) == 1
    raw = report.read_bytes()
    docs = [json.loads(line) for line in raw.decode("utf-8").splitlines()] if fmt == "jsonl" \
        else [json.loads(raw.decode("utf-8"))]
    for doc in docs:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")  # no lone surrogates anywhere
    if fmt == "sarif":
        assert "a%FF.safetensors" in raw.decode()
    else:
        assert docs[0]["files"][0]["path"].endswith("a\\xff.safetensors") if fmt == "json" \
            else docs[0]["path"].endswith("a\\xff.safetensors")


def test_png_text_chunks_of_a_cover_image_are_capped():
    png = S.png_with_text({f"k{i}": "v" for i in range(10_000)}, width=2, height=2)
    metadata = {"ssmd_cover_images": json.dumps([base64.b64encode(png).decode("ascii")])}
    (finding,) = [f for f in check_metadata(metadata) if f.rule_id == "LA106"]
    assert "10000 PNG text chunk(s)" in finding.message
    shown = finding.evidence["metadata"]
    assert len(shown) == MAX_ITEMS and finding.evidence["metadata_count"] == 1 + 10_000  # the image, then its chunks
    assert list(shown)[:2] == ["ssmd_cover_images", "ssmd_cover_images[0] k0"]
    assert f"ssmd_cover_images[0] k{MAX_ITEMS - 2}" in shown and f"ssmd_cover_images[0] k{MAX_ITEMS - 1}" not in shown


def test_a_file_of_more_tensors_than_evidence_lists_hold_gives_a_capped_list_and_the_total(tmp_path, capsys):
    total = MAX_ITEMS + 150
    path = tmp_path / "many.safetensors"
    S.save_synthetic(path, {f"not_a_lora.t{i:04d}": np.zeros(1, np.float32) for i in range(total)}, {})
    assert main([*SCAN, str(path), "-f", "json"]) == 0  # LA003 is low
    (finding,) = parse_json_report(capsys.readouterr().out)["files"][0]["findings"]
    assert finding["rule_id"] == "LA003" and finding["evidence"]["tensor_count"] == total
    assert finding["evidence"]["tensors"] == [f"not_a_lora.t{i:04d}" for i in range(MAX_ITEMS)]
