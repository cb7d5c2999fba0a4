"""Hub-scale batches: content identity (SHA-256, AutoV2), duplicates scanned once, shards, resume,
and Hugging Face hub caches read with huggingface_hub's own cache scan."""

import hashlib
import json
import os
import shutil

import pytest

import lora_audit.scan.engine as engine
from lora_audit.cli import main
from lora_audit.scan.collect import collect_files
from lora_audit.testing import synthetic as S
from lora_audit.weights.safetensors_file import SafetensorsFile


def _lora(path, seed=0):
    return S.save_synthetic(path, S.as_kohya(S.make_lora("sd15", rank=2, max_modules=2, seed=seed)))


def _scan(args, tmp_path, name="r.json"):
    report = tmp_path / name
    code = main(["scan", *map(str, args), "--no-attack", "-f", "json", "-o", str(report)])
    return code, {f["path"]: f for f in json.loads(report.read_text())["files"]}


def test_identical_content_is_scanned_once_and_reported_for_every_path(tmp_path, monkeypatch):
    one = _lora(tmp_path / "a.safetensors")
    shutil.copy(one, tmp_path / "b.safetensors")
    _lora(tmp_path / "c.safetensors", seed=1)
    scanned = []
    real = engine.scan_file
    monkeypatch.setattr(engine, "scan_file", lambda path, *a, **k: scanned.append(path) or real(path, *a, **k))
    code, files = _scan([tmp_path], tmp_path)
    assert code == 0 and sorted(os.path.basename(p) for p in scanned) == ["a.safetensors", "c.safetensors"]
    a, b, c = (files[str(tmp_path / n)] for n in ("a.safetensors", "b.safetensors", "c.safetensors"))
    sha = hashlib.sha256((tmp_path / "a.safetensors").read_bytes()).hexdigest()
    assert a["sha256"] == b["sha256"] == sha != c["sha256"] and a["autov2"] == sha[:10].upper()
    assert b["same_as"] == str(tmp_path / "a.safetensors") and a["same_as"] is None
    assert b["findings"] == a["findings"] and b["stats"] == a["stats"]
    assert a["mtime"] == os.stat(tmp_path / "a.safetensors").st_mtime


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_every_file_is_hashed_once_and_only_possible_copies_before_the_scan(tmp_path, monkeypatch, jobs):
    tensors = S.as_kohya(S.make_lora("sd15", rank=8, max_modules=32))  # ~1.5 MB
    middle = sorted(tensors)[len(tensors) // 2]
    changed = {**tensors, middle: tensors[middle] * 2}
    small = _lora(tmp_path / "small.safetensors")
    twins = [S.save_synthetic(tmp_path / f"twin{i}.safetensors", t, {"ss_session_id": "1"})
             for i, t in enumerate((tensors, changed))]  # the same size, ends and header; other bytes between
    other = S.save_synthetic(tmp_path / "other.safetensors", tensors, {"ss_session_id": "2"})  # another header
    assert len({os.path.getsize(p) for p in (*twins, other)}) == 1 != os.path.getsize(small)
    hashed, real, from_scan = [], engine.file_sha256, SafetensorsFile.sha256
    monkeypatch.setattr(engine, "file_sha256", lambda path: hashed.append(os.path.basename(path)) or real(path))
    monkeypatch.setattr(SafetensorsFile, "sha256", lambda f: hashed.append(os.path.basename(f.path)) or from_scan(f))
    first = []
    monkeypatch.setattr(engine.LocalEngine, "digests", lambda self, files: first.extend(files) or
                        [real(f) for f in files])
    code, files = _scan([tmp_path, "--jobs", jobs], tmp_path)
    assert code == 0 and sorted(map(os.path.basename, first)) == ["twin0.safetensors", "twin1.safetensors"]
    for path in (small, *twins, other):
        assert files[str(path)]["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
        assert files[str(path)]["same_as"] is None
    if jobs == "1":  # in this process: the others by their scan (from the bytes it read), the twins only before it
        assert sorted(hashed) == ["other.safetensors", "small.safetensors"]


def test_shards_split_the_batch_exactly_once(tmp_path):
    for i in range(48):  # by a hash of each path: with 12, one shard of 3 was empty in 2% of temporary folders
        _lora(tmp_path / f"f{i:02}.safetensors", seed=i)
    everything = collect_files([str(tmp_path)])
    shards = [everything.shard(i, 3) for i in (1, 2, 3)]
    names = [p for s in shards for p in s.files]
    assert sorted(names) == sorted(everything.files) and len(names) == len(set(names))
    assert all(s.files for s in shards)  # 48 paths spread over 3 shards (an empty one: a chance of 1e-8)
    assert [s.files for s in shards] == [everything.shard(i, 3).files for i in (1, 2, 3)]  # deterministic
    code, files = _scan([tmp_path, "--shard", "2/3"], tmp_path)
    assert code == 0 and sorted(files) == sorted(shards[1].files)
    for bad in ("0/3", "4/3", "x", "1/0"):
        assert main(["scan", str(tmp_path), "--no-attack", "--shard", bad]) == 4


def test_resume_skips_what_the_report_records_and_appends_the_rest(tmp_path):
    batch = tmp_path / "batch"
    batch.mkdir()
    for i in range(3):
        _lora(batch / f"f{i}.safetensors", seed=i)
    report = tmp_path / "r.jsonl"
    args = ["scan", str(batch), "--no-attack", "-f", "jsonl", "-o", str(report)]
    assert main(args) == 0
    first = report.read_text().splitlines()
    for i in (3, 4):
        _lora(batch / f"f{i}.safetensors", seed=i)
    _lora(batch / "f0.safetensors", seed=9)  # changed since: scanned again
    os.utime(batch / "f0.safetensors", (1, 1))
    assert main(args + ["--resume"]) == 0
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert report.read_text().splitlines()[:len(first) - 1] == first[:-1]  # the file lines kept, the old summary gone
    assert [r["type"] for r in lines].count("summary") == 1
    again = [r["path"] for r in lines[len(first) - 1:] if r["type"] == "file"]
    assert sorted(os.path.basename(p) for p in again) == ["f0.safetensors", "f3.safetensors", "f4.safetensors"]
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["files"] == 5 and summary["scanned"] == 5
    assert main(args + ["--resume"]) == 0  # nothing left to do: the same file lines and a new summary
    assert [json.loads(x)["type"] for x in report.read_text().splitlines()] == [r["type"] for r in lines]
    assert main(["scan", str(batch), "--no-attack", "-f", "json", "-o", str(tmp_path / "x.json"), "--resume"]) == 4
    (tmp_path / "bad.jsonl").write_text("not json\n")
    assert main(["scan", str(batch), "--no-attack", "-f", "jsonl", "-o", str(tmp_path / "bad.jsonl"), "--resume"]) == 4


def test_resume_reads_evidence_back_and_refuses_a_report_of_another_schema(tmp_path, capsys):
    from lora_audit.results import SCHEMA_VERSION, FileResult
    from lora_audit.scan.resume import recorded

    batch = tmp_path / "batch"
    batch.mkdir()
    S.save_synthetic(batch / "leaky.safetensors", S.as_kohya(S.make_lora("sd15", rank=2, max_modules=2)),
                     S.leaky_kohya_metadata())
    report = tmp_path / "r.jsonl"
    args = ["scan", str(batch), "--no-attack", "-f", "jsonl", "-o", str(report), "--fail-on", "critical"]
    assert main(args) == 0
    (line,) = [json.loads(x) for x in report.read_text().splitlines() if '"type": "file"' in x]
    (earlier,) = recorded(str(report))
    written = {k: v for k, v in line.items() if k not in ("type", "schema_version")}
    assert earlier.findings and earlier.to_dict() == {**written, "stats": None}  # evidence as written; no statistics
    old = {**line, "schema_version": "1.1", "findings": [{**line["findings"][0], "evidence": {"ss tag frequency": "x"}}]}
    report.write_text(json.dumps(old) + "\n")
    capsys.readouterr()
    assert main(args + ["--resume"]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"report schema 1.1; this lora-audit writes {SCHEMA_VERSION}" in err
    assert isinstance(FileResult.from_dict(old), FileResult)  # an old record still loads (as text evidence)


@pytest.fixture
def hub_cache(tmp_path):
    """A hub cache with huggingface_hub's layout: 2 repos, 3 revisions, one blob in two snapshots."""
    cache = tmp_path / "hub"
    blobs = {}
    for repo, revisions in (("alice/face-lora", {"c0ffee1": ["main"], "d00d2": ["v1"]}), ("bob/style", {"e1e1e3": ["main"]})):
        root = cache / f"models--{repo.replace('/', '--')}"
        (root / "blobs").mkdir(parents=True)
        (root / "refs").mkdir()
        for n, (commit, refs) in enumerate(revisions.items()):
            snapshot = root / "snapshots" / commit
            snapshot.mkdir(parents=True)
            seed = 0 if repo.startswith("alice") else 5  # alice's two revisions hold the same bytes
            data = _lora(tmp_path / f"{repo.replace('/', '_')}{n}.safetensors", seed=seed)
            blob = hashlib.sha256(open(data, "rb").read()).hexdigest()
            shutil.copy(data, root / "blobs" / blob)
            os.symlink(f"../../blobs/{blob}", snapshot / "lora.safetensors")
            (snapshot / "README.md").write_text("x")
            for ref in refs:
                (root / "refs" / ref).write_text(commit)
            blobs[(repo, commit)] = str(root / "blobs" / blob)
    return cache, blobs


def test_a_hub_cache_names_repo_revision_refs_and_blob(hub_cache, tmp_path):
    cache, blobs = hub_cache
    code, files = _scan([cache], tmp_path)
    assert code == 0 and len(files) == 3  # README.md is not a LoRA
    hubs = {(f["hub"]["repo_id"], f["hub"]["revision"]): f for f in files.values()}
    assert set(hubs) == set(blobs)
    main_rev = hubs[("alice/face-lora", "c0ffee1")]
    assert main_rev["hub"]["refs"] == ["main"] and main_rev["hub"]["blob"] == blobs[("alice/face-lora", "c0ffee1")]
    v1 = hubs[("alice/face-lora", "d00d2")]
    assert v1["hub"]["refs"] == ["v1"] and v1["sha256"] == main_rev["sha256"]
    assert (main_rev["same_as"] is None) != (v1["same_as"] is None)  # the shared bytes were scanned once


def test_hf_references_resolve_from_the_local_cache_only(hub_cache, tmp_path, monkeypatch):
    cache, _ = hub_cache
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    for reference, revision in (("hf://alice/face-lora", "c0ffee1"), ("alice/face-lora@v1", "d00d2"),
                                ("hf://alice/face-lora@d00d", "d00d2"), ("bob/style", "e1e1e3")):
        code, files = _scan([reference], tmp_path)
        (only,) = files.values()
        assert code == 0 and only["hub"]["revision"] == revision, reference
    for missing in ("hf://carol/nothing", "hf://alice/face-lora@v9"):
        assert main(["scan", missing, "--no-attack"]) == 4
    assert main(["scan", str(tmp_path / "models" / "x.safetensors"), "--no-attack"]) == 2  # a missing file, not a repo


def test_a_cache_folder_keeps_its_other_loras_and_a_path_given_twice_is_one_file(hub_cache, tmp_path, monkeypatch):
    cache, _ = hub_cache
    mine = _lora(cache / "mine.safetensors", seed=7)  # a LoRA beside the cache's repos
    code, files = _scan([cache, mine], tmp_path)
    assert code == 0 and len(files) == 4 and files[str(mine)]["hub"] is None
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert main(["scan", "loras/mine", "--no-attack"]) == 2  # a mistyped local path is a missing file, not a repo
