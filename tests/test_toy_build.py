"""The whole toy-world build at tiny sizes: every stage, resumability, installed layout, and a scan of its output."""

import dataclasses
import json

import numpy as np
import pytest

from lora_audit.cli import main
from lora_audit.errors import InputError
from lora_audit.toyworld.lab.build import STAGES, BuildConfig, build
from report_checks import consistency_rule, crowd_reference, generic_reference, measured_consistency


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


def _ranks_summary(summary: dict, rankings: list[dict]) -> None:
    """A reported summary is the one its per-case rankings give."""
    ranks = np.array([r["rank"] for r in rankings])
    assert summary["n"] == len(rankings) and summary["rank1"] == round(float(np.mean(ranks == 1)), 3)
    assert summary["mean_rank"] == round(float(ranks.mean()), 2)
    assert summary["mean_similarity"] == pytest.approx(np.mean([r["similarity"] for r in rankings]), abs=1e-4)


def test_every_stage_runs_and_reports(built):
    from lora_audit.identity.metrics import ranking_summary
    from lora_audit.toyworld.embedder import ToyFaceEmbedder
    from lora_audit.toyworld.identities import SHADOW
    from lora_audit.toyworld.lab.eval_embedder import evaluate_embedder
    from lora_audit.toyworld.lab.victims import identity_ranking
    from lora_audit.toyworld.renderer import render_batch

    config, metrics, seen = built
    assert list(metrics) == list(STAGES)
    # Each stage ran once, in order, reporting progress as it went, and left its marker with its metrics.
    assert list(dict.fromkeys(seen)) == ["embedder", "base", "victims", "shadows", "attack", "crowd"]
    for stage in STAGES:
        assert json.loads((config.out / stage / "metrics.json").read_text()) == metrics[stage], stage
        assert metrics[stage]["seconds"] >= 0
    # embedder: its figures are those of the embedder it wrote, on the held-out identities it names.
    embedder = ToyFaceEmbedder.load(config.out / "embedder")
    evaluation = metrics["embedder"]["evaluation"]
    assert evaluation["identities"] == config.embedder_eval_identities
    assert evaluation == json.loads(json.dumps(evaluate_embedder(
        embedder, range(SHADOW.start, SHADOW.start + config.embedder_eval_identities), config.embedder_eval_images,
        size=config.embedder.image_size)))
    assert metrics["embedder"]["training"]["steps"] == config.embedder.steps
    # base: judged on as many unseen identities as configured, chance level stated; real renders re-ranked here.
    ids = [SHADOW.start + i for i in range(config.base_judge_identities)]
    k, size = config.base_judge_samples, config.base.image_size
    real = [identity_ranking(embedder, render_batch([i] * k, list(range(k)), seed=0, size=size), i, ids, size)
            for i in ids]
    assert metrics["base"]["real_renders"] == ranking_summary(real)
    assert metrics["base"]["caption_samples"]["n"] == len(ids) and metrics["base"]["chance_rank1"] == 1 / len(ids)
    assert metrics["base"]["training"]["steps"] == config.base.steps
    # victims: every configured victim, and the summaries are those of their checks.
    victims = metrics["victims"]["victims"]
    assert list(victims) == [v.name for v in config.victims.victims]
    for spec in config.victims.victims:
        assert (victims[spec.name]["identity"], victims[spec.name]["layout"]) == (spec.identity_id, spec.layout)
        assert (config.out / "victims" / f"{spec.name}.safetensors").is_file()
    for name in ("lora_with_trigger", "base_class_prompt"):
        _ranks_summary(metrics["victims"][name], [v[name] for v in victims.values()])
    # shadows: every identity trained now, into shards that load.
    from lora_audit.attack.shadow import load_trajectories

    shadows = metrics["shadows"]
    assert shadows["identities"] == shadows["trained_now"] == config.shadows.identities
    assert len(load_trajectories(config.out / "shadows")) == config.shadows.identities
    # attack: trained as configured, evaluated on the held-out shadows and on every victim.
    training, evaluation = metrics["attack"]["training"], metrics["attack"]["evaluation"]
    assert training["final"]["step"] == config.attack.steps
    assert training["held_out_identities"] == config.attack.validation == len(evaluation["held_out_shadows"]["cases"])
    for group in ("held_out_shadows", "victims"):
        cases = evaluation[group]["cases"].values()
        _ranks_summary(evaluation[group]["attack"], [c["attack"] for c in cases])
    assert evaluation["victims"]["attack"]["n"] == len(config.victims.victims)
    generic = evaluation["generic_consistency"]
    assert generic["k"] == config.attack_latents * config.attack_seeds and len(generic["values"]) == 8
    assert generic["mean"] == pytest.approx(np.mean(generic["values"])) and generic["embedder"] == embedder.fingerprint()


def _no_stage_may_run(monkeypatch) -> None:
    import lora_audit.toyworld.lab.build as lab

    def refuse(config, progress):
        raise AssertionError("a finished stage ran again")

    for stage in STAGES:
        monkeypatch.setattr(lab, f"_{stage}", refuse)


def test_a_finished_build_is_not_redone(built, monkeypatch):
    config, metrics, _ = built
    markers = {stage: (config.out / stage / "metrics.json").stat().st_mtime_ns for stage in STAGES}
    with monkeypatch.context() as patch:
        _no_stage_may_run(patch)
        again = build(config)
    assert again == metrics
    assert markers == {stage: (config.out / stage / "metrics.json").stat().st_mtime_ns for stage in STAGES}
    marker = config.out / "victims" / "metrics.json"
    marker.unlink()  # a stage without its marker runs again
    assert set(build(config, stages=("victims",))["victims"]["victims"]) == set(metrics["victims"]["victims"])


def test_installed_artefacts_load_and_scan(built, capsys, monkeypatch):
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
    assert identity["rule_id"] == consistency_rule(identity["evidence"])
    assert identity["evidence"]["grid"].startswith(str(grids))
    # Every verdict on the same file: a generic-faces reference just below / just above its consistency,
    # and a crowd null below it / as high (LA301 is high, LA310 medium, LA302 info).
    value, _ = measured_consistency(identity["evidence"])
    args = ["scan", "-f", "json", "-q", clean["path"], "--attack-model", str(config.package_data / "attack"),
            "--base", str(config.package_data / "base"), "--reconstructions", str(grids), "--fail-on", "high"]
    for mean, crowd, rule, code in ((value - 0.01, [value - 0.1] * 20, "LA301", 1),
                                    (value - 0.01, [value + 0.1] * 20, "LA310", 0), (value + 0.01, None, "LA302", 0)):
        generic_reference(monkeypatch, mean)
        crowd_reference(monkeypatch, crowd)
        assert main(args) == code
        (forced,) = json.loads(capsys.readouterr().out)["files"][0]["findings"]
        assert forced["rule_id"] == rule and forced["evidence"]["identity_consistency"] == pytest.approx(value, abs=1e-3)


def test_the_installed_attack_holds_the_reference_a_default_scan_needs(built, monkeypatch, tmp_path):
    import lora_audit.scan.identity as identity
    from lora_audit.families import get_family, load_base
    from lora_audit.scan.check import Subject
    from lora_audit.toyworld.embedder import ToyFaceEmbedder
    from lora_audit.weights import open_lora
    from lora_audit.weights.stats import weight_stats

    config, metrics, _ = built
    saved = json.loads((config.package_data / "attack" / "attack.json").read_text())
    (reference,) = saved["evaluation"]["generic_references"]
    embedder = ToyFaceEmbedder.load(config.package_data / "embedder")
    steps = get_family("toy").sampling_steps
    assert (reference["k"], reference["sampling_steps"]) == (8, steps) != (8, 25)
    assert reference["embedder"] == embedder.fingerprint()
    base = load_base(str(config.package_data / "base"))
    again = identity.generic_consistency(base, embedder, saved["class_prompt"], 8, sampling_steps=steps)
    assert reference["mean"] == pytest.approx(again["mean"]) and metrics["references"]["generic_references"][0]["k"] == 8

    def measured(*args, **kwargs):
        raise AssertionError("a default scan measured a reference the attack model holds")

    monkeypatch.setattr(identity, "generic_consistency", measured)
    monkeypatch.setattr(get_family("toy"), "face_embedder", lambda device, weights=None: embedder)
    check = identity.IdentityCheck(identity.IdentityOptions(attack_model=str(config.package_data / "attack"),
                                                            base=str(config.package_data / "base"), out_dir=tmp_path))
    victim = config.samples_dir / f"{config.victims.victims[0].name}.safetensors"
    with open_lora(str(victim)) as lora:
        (weights, *_) = check.run(Subject(str(victim), lora, weight_stats(lora)))
    assert weights.evidence["sampling_steps"] == steps
    assert weights.evidence["generic_consistency_mean"] == pytest.approx(reference["mean"], abs=1e-4)


def test_the_crowd_stage_stores_the_null_a_default_scan_judges_la301_by(built, tmp_path):
    """Both attacks' consistency on the stage's LoRAs of no one person, stored with the installed attack
    model and base, is what a scan of those files measures, and what a default scan then compares with."""
    from lora_audit.scan.check import Subject
    from lora_audit.attack.model import AttackModel
    from lora_audit.scan.identity import CROWD_FILE, IdentityCheck, IdentityOptions, crowd_null
    from lora_audit.toyworld.lab.crowd import GuidanceOnly
    from lora_audit.weights import open_lora
    from lora_audit.weights.stats import weight_stats

    config, metrics, _ = built
    data = config.package_data
    (vae,) = json.loads((data / "attack" / "attack.json").read_text())["evaluation"]["crowd_references"]
    (guided,) = json.loads((data / "base" / CROWD_FILE).read_text())["crowd_references"]
    files = sorted((config.out / "crowd").glob("*.safetensors"))
    assert [f.name for f in files] == ["crowd-00.safetensors", "objects-00.safetensors"]  # crowd_loras = 1 per kind
    assert (vae["attack"], guided["attack"]) == ("vae", "guidance_extraction")
    assert (vae["latents"], vae["seeds"], guided["images"]) == (4, 2, 8)  # a default scan's K = 8
    assert metrics["crowd"]["vae"]["loras"] == metrics["crowd"]["guidance_extraction"]["loras"] == 2
    options = IdentityOptions(attack_model=str(data / "attack"), base=str(data / "base"), out_dir=tmp_path,
                              face_weights=str(data / "embedder"))
    for null, sources in ((vae, None), (guided, GuidanceOnly(str(data / "base")))):
        assert set(null["kinds"]) == {"crowd", "objects"} and null["values"] == null["kinds"]["crowd"] + null["kinds"]["objects"]
        check = IdentityCheck(options)
        if sources is not None:
            check.sources = sources
        for path, stored in zip(files, null["values"]):
            with open_lora(str(path)) as lora:
                (finding, *_) = check.run(Subject(str(path), lora, weight_stats(lora)))
            assert finding.evidence["attack"] == null["attack"]
            assert finding.evidence["identity_consistency"] == pytest.approx(stored, abs=1e-4)
            assert finding.rule_id == consistency_rule(finding.evidence)
            if finding.rule_id != "LA302":  # above the generic faces: judged against the stored null
                assert finding.evidence["crowd_loras"] == 2 and finding.evidence["crowd_null"] == null["source"]
        assert check._loaded["toy"].crowd == null  # what every file of the scan is judged against
    # A null measured under other settings is not one: each setting of the attack must match.
    attack = AttackModel.load(data / "attack")
    for stored, model in ((vae, attack), (guided, None)):
        wanted = {key: stored[key] for key in ("attack", "latents", "seeds", "images", "guidance_weight", "prompt",
                                               "sampling_steps", "embedder") if key in stored}
        assert crowd_null(model, str(data / "base"), wanted) == stored
        for key in wanted:
            assert crowd_null(model, str(data / "base"), {**wanted, key: "other"}) is None, key
    assert crowd_null(None, str(tmp_path), wanted) is None  # a base folder without the file
    (tmp_path / CROWD_FILE).write_text("{not json")
    with pytest.raises(InputError, match="unreadable crowd_references.json"):
        crowd_null(None, str(tmp_path), wanted)
    for values in ([], [float("nan")], ["0.3"], [True], "0.3"):  # not a list of finite numbers: refused, not used
        (tmp_path / CROWD_FILE).write_text(json.dumps({"crowd_references": [{**guided, "values": values}]}))
        with pytest.raises(InputError, match="not lists of finite consistency values"):
            crowd_null(None, str(tmp_path), wanted)


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

    assert main(["finetune", photos, "-o", str(out), "--base", base, "--steps", "1"]) == 4  # exists: kept
    assert "pass --force to replace" in capsys.readouterr().err
    empty, fresh = tmp_path / "empty", str(tmp_path / "fresh.safetensors")
    empty.mkdir()
    assert main(["finetune", str(empty), "-o", fresh, "--base", base]) == 4
    assert main(["finetune", str(tmp_path / "missing"), "-o", fresh, "--base", base]) == 4
    assert main(["finetune", photos, "-o", fresh, "--base", str(tmp_path)]) == 4  # not a pipeline
    assert main(["finetune", photos, "-o", fresh, "--base", base, "--layout", "ckpt"]) == 4
    (empty / "broken.png").write_bytes(b"not a png")
    assert main(["finetune", str(empty), "-o", fresh, "--base", base]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "broken.png" in err


def test_install_into_a_source_checkout(built, tmp_path, monkeypatch):
    """Run last: it re-targets the fixture's install stage."""
    config, metrics, _ = built
    (tmp_path / "lora_audit" / "toyworld").mkdir(parents=True)
    into = dataclasses.replace(config, install_root=tmp_path)
    assert (into.package_data, into.samples_dir, into.docs_dir) == (
        tmp_path / "lora_audit" / "toyworld" / "data", tmp_path / "weights_samples", tmp_path / "docs")
    again = build(into, stages=("install", "figures"))  # installed elsewhere before: not finished for this target
    assert again["install"]["installed_into"] == again["figures"]["installed_into"] == str(tmp_path.resolve())
    assert {p.name for p in (into.package_data / "attack").iterdir()} == {"attack.json", "attack.safetensors"}
    assert (into.package_data / "base" / "toy_pipeline.json").is_file()
    assert "lora-audit toy build --jobs 2 --install ." in (into.samples_dir / "README.md").read_text()
    assert (into.docs_dir / "img" / "attack_reconstructions.png").is_file()
    assert again["figures"]["drawn"] == ["img/toy_base_samples.png", "img/contact_sheet.png", "img/attack_reconstructions.png"]
    _no_stage_may_run(monkeypatch)  # installed into this target already: not done again
    assert build(into, stages=("install", "figures")) == again
