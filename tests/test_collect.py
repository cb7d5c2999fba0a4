"""Which files a scan collects: links under a scanned folder are read only when they stay inside it."""

import json
import os

from lora_audit.cli import main
from lora_audit.scan.collect import collect_files
from lora_audit.testing import synthetic as S


def _lora(path):
    return S.save_synthetic(path, S.as_kohya(S.make_lora("sd15", rank=2, max_modules=2)))


def test_links_out_of_the_tree_are_reported_not_read(tmp_path):
    outside, tree = tmp_path / "outside", tmp_path / "tree"
    outside.mkdir()
    (tree / "blobs").mkdir(parents=True)
    (tree / "snapshots").mkdir()
    _lora(outside / "secret.safetensors")
    _lora(tree / "blobs" / "abc.safetensors")
    os.symlink("../blobs/abc.safetensors", tree / "snapshots" / "inside.safetensors")  # the HF cache layout
    os.symlink(outside / "secret.safetensors", tree / "snapshots" / "out.safetensors")
    os.symlink(outside, tree / "linked_dir")  # directory links are never descended into
    found = collect_files([str(tree)])
    assert found.files == [str(tree / "blobs" / "abc.safetensors"), str(tree / "snapshots" / "inside.safetensors")]
    assert found.not_followed == [str(tree / "snapshots" / "out.safetensors")]
    followed = collect_files([str(tree)], follow_links=True)
    assert str(tree / "snapshots" / "out.safetensors") in followed.files and not followed.not_followed
    assert collect_files([str(tree / "snapshots" / "out.safetensors")]).files == [str(tree / "snapshots" / "out.safetensors")]

    report = tmp_path / "r.json"
    assert main(["scan", str(tree), "--no-attack", "-f", "json", "-o", str(report), "--fail-on", "info"]) == 1
    files = {f["path"]: f for f in json.loads(report.read_text())["files"]}
    out = files[str(tree / "snapshots" / "out.safetensors")]
    assert [f["rule_id"] for f in out["findings"]] == ["LA004"] and out["stats"] is None and out["error"] is None
    assert out["findings"][0]["evidence"]["target"] == os.path.realpath(outside / "secret.safetensors")
    assert main(["scan", str(tree), "--no-attack", "-f", "json", "-o", str(report), "--follow-links"]) == 0
    followed = json.loads(report.read_text())["files"]
    assert len(followed) == 3 and all(f["stats"] is not None for f in followed)
