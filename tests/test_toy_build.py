"""The whole toy-world build at tiny sizes: every stage, resumability, installed layout, and a scan of its output."""

import dataclasses
import json
import time

import pytest

from lora_audit.cli import main
from lora_audit.errors import InputError
from lora_audit.toyworld.lab.build import STAGES, BuildConfig, build


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    config = BuildConfig.tiny(root / "build")
    seen = []
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # nothing may land in the current directory
        metrics = build(config, progress=lambda stage, step, total, m: seen.append(stage))
    assert [p.name for p in root.iterdir()] == ["build"]
    return config, metrics, seen


def test_every_stage_runs_and_reports(built):
    config, metrics, seen = built
    assert list(metrics) == list(STAGES) and set(seen) >= {"embedder", "base", "victims", "shadows", "attack"}
    assert metrics["shadows"]["identities"] == config.shadows.identities
    assert metrics["attack"]["evaluation"]["victims"]["attack"]["n"] == len(config.victims.victims)
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
    from lora_audit.toyworld.embedder import ToyFaceEmbedder
    from lora_audit.families import load_base

    config, _, _ = built
    base = load_base(str(config.package_data / "base"))
    assert base.family == "toy" and base.image_size == config.base.image_size
    assert ToyFaceEmbedder.load(config.package_data / "embedder").dim == config.embedder.dim
    assert not (config.package_data / "base" / "checkpoint.pt").exists()
    for spec in config.victims.victims:
        assert len(list((config.samples_dir / f"{spec.name}_photos").glob("*.png"))) == config.victims.photos
    readme = (config.samples_dir / "README.md").read_text()
    assert "lora-audit toy build" in readme and "tiny_kohya_leaky.safetensors" in readme
    assert (config.samples_dir / "sdxl_kohya.safetensors").is_file()  # the synthetic layouts ship too
    assert (config.docs_dir / "img" / "toy_base_samples.png").is_file()
    assert {p.name for p in (config.package_data / "attack").iterdir()} == {"attack.json", "attack.safetensors"}
    assert (config.docs_dir / "img" / "attack_reconstructions.png").is_file()
    assert "What the attack recovers" in readme
    grids = config.out / "grids"
    assert main(["scan", "-f", "json", "-q", str(config.samples_dir), "--attack-model", str(config.package_data / "attack"),
                 "--base", str(config.package_data / "base"), "--reconstructions", str(grids)]) == 1
    report = json.loads(capsys.readouterr().out)
    files = {f["path"].rsplit("/", 1)[-1]: f for f in report["files"]}
    leaky = files["tiny_kohya_leaky.safetensors"]
    assert leaky["stats"]["base_model"] == "toy" and leaky["stats"]["layout"] == "kohya"
    assert {"LA101", "LA102", "LA105"} <= {f["rule_id"] for f in leaky["findings"]}
    clean = files["tiny_peft.safetensors"]
    assert clean["stats"]["layout"] == "peft"
    (identity,) = clean["findings"]  # no metadata finding; the attack's verdict on its weights
    assert identity["rule_id"] in ("LA301", "LA302") and identity["evidence"]["grid"].startswith(str(grids))


def test_without_an_install_root_everything_is_installed_under_out(built):
    config, metrics, _ = built
    installed = config.out / "installed"
    assert (config.package_data, config.samples_dir, config.docs_dir) == (
        installed / "data", installed / "weights_samples", installed / "docs")
    assert sorted(p.name for p in installed.iterdir()) == ["data", "docs", "weights_samples"]
    assert metrics["install"]["installed_into"] is None


def test_an_install_root_must_be_a_source_checkout(tmp_path):
    with pytest.raises(InputError, match="is not a lora-audit source checkout") as error:
        build(BuildConfig.tiny(tmp_path / "build", tmp_path))
    assert error.value.input == "install" and error.value.value == tmp_path
    assert not (tmp_path / "build").exists()  # refused before any stage ran


def test_unknown_stage_is_a_usage_error(tmp_path):
    assert main(["toy", "build", "--tiny", "--out", str(tmp_path), "--stage", "bogus"]) == 4


def test_finetune_command_on_the_tiny_base(built, tmp_path, capsys):
    from lora_audit.weights import open_lora

    config, _, _ = built
    base, photos = str(config.package_data / "base"), str(config.samples_dir / "tiny_peft_photos")
    out = tmp_path / "mine.safetensors"
    assert main(["finetune", photos, "-o", str(out), "--base", base, "--steps", "2", "--rank", "2",
                 "--snapshot-steps", "1", "--layout", "kohya", "--kohya-metadata", "--trigger", "zwxq"]) == 0
    assert "a face of zwxq" in capsys.readouterr().out
    with open_lora(str(out)) as lora:
        assert lora.layout == "kohya" and lora.base_model == "toy" and lora.metadata["ss_steps"] == "2"
    with open_lora(str(tmp_path / "mine_step_1.safetensors")) as lora:
        assert lora.metadata["ss_steps"] == "1"

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["finetune", str(empty), "-o", str(out), "--base", base]) == 4
    assert main(["finetune", str(tmp_path / "missing"), "-o", str(out), "--base", base]) == 4
    assert main(["finetune", photos, "-o", str(out), "--base", str(tmp_path)]) == 4  # not a pipeline
    assert main(["finetune", photos, "-o", str(out), "--base", base, "--layout", "ckpt"]) == 4
    (empty / "broken.png").write_bytes(b"not a png")
    assert main(["finetune", str(empty), "-o", str(out), "--base", base]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "broken.png" in err


def test_install_into_a_source_checkout(built, tmp_path):
    """Run last: it re-targets the fixture's install stage."""
    config, metrics, _ = built
    (tmp_path / "lora_audit" / "toyworld").mkdir(parents=True)
    into = dataclasses.replace(config, install_root=tmp_path)
    assert (into.package_data, into.samples_dir, into.docs_dir) == (
        tmp_path / "lora_audit" / "toyworld" / "data", tmp_path / "weights_samples", tmp_path / "docs")
    again = build(into, stages=("install",))  # installed elsewhere before: not finished for this target
    assert again["install"]["installed_into"] == str(tmp_path.resolve())
    assert {p.name for p in (into.package_data / "attack").iterdir()} == {"attack.json", "attack.safetensors"}
    assert (into.package_data / "base" / "toy_pipeline.json").is_file()
    assert "lora-audit toy build --jobs 2 --install ." in (into.samples_dir / "README.md").read_text()
    assert (into.docs_dir / "img" / "attack_reconstructions.png").is_file()
    start = time.perf_counter()
    assert build(into, stages=("install",)) == again and time.perf_counter() - start < 5
