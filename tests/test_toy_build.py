"""The whole toy-world build at tiny sizes: every stage, resumability, installed layout, and a scan of its output."""

import json
import time

import pytest

from lora_audit.cli import main
from lora_audit.toyworld.build import STAGES, BuildConfig, build


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    config = BuildConfig.tiny(root / "build", root / "installed")
    seen = []
    metrics = build(config, progress=lambda stage, step, total, m: seen.append(stage))
    return config, metrics, seen


def test_every_stage_runs_and_reports(built):
    config, metrics, seen = built
    assert list(metrics) == list(STAGES) and set(seen) >= {"embedder", "base", "victims"}
    assert 0 <= metrics["embedder"]["evaluation"]["clean"]["auc"] <= 1
    assert set(metrics["victims"]["victims"]) == {v.name for v in config.victims.victims}
    for name in ("caption_samples", "real_renders"):
        assert 0 <= metrics["base"][name]["rank1"] <= 1


def test_a_finished_build_is_not_redone(built):
    config, metrics, _ = built
    start = time.perf_counter()
    again = build(config)
    assert again == metrics and time.perf_counter() - start < 5
    marker = config.out / "victims" / "metrics.json"
    marker.unlink()  # a stage without its marker runs again
    assert set(build(config, stages=("victims",))["victims"]["victims"]) == set(metrics["victims"]["victims"])


def test_installed_artefacts_load_and_scan(built, capsys):
    from lora_audit.faces.toy_embedder import ToyFaceEmbedder
    from lora_audit.pipelines import load_base

    config, _, _ = built
    base = load_base(str(config.package_data / "base"))
    assert base.family == "toy" and base.image_size == config.base.image_size
    assert ToyFaceEmbedder.load(config.package_data / "embedder").dim == config.embedder.dim
    assert not (config.package_data / "base" / "checkpoint.pt").exists()
    for spec in config.victims.victims:
        assert len(list((config.samples_dir / f"{spec.name}_photos").glob("*.png"))) == config.victims.photos
    assert main(["scan", "-f", "json", "-q", str(config.samples_dir)]) == 1
    report = json.loads(capsys.readouterr().out)
    files = {f["path"].rsplit("/", 1)[-1]: f for f in report["files"]}
    leaky = files["tiny_kohya_leaky.safetensors"]
    assert leaky["stats"]["base_model"] == "toy" and leaky["stats"]["layout"] == "kohya"
    assert {"LA101", "LA102", "LA105"} <= {f["rule_id"] for f in leaky["findings"]}
    clean = files["tiny_peft.safetensors"]
    assert clean["stats"]["layout"] == "peft" and clean["findings"] == []


def test_unknown_stage_is_a_usage_error(tmp_path):
    assert main(["toy", "build", "--tiny", "--out", str(tmp_path), "--stage", "bogus"]) == 4
