"""Every command and every flag of the CLI, each with its bad-input exit code, on a tiny toy world built
once through ``lora-audit toy build --tiny`` (tiny sizes: the whole module takes seconds per command)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.numpy
import typer

from lora_audit.cli import app, main
from lora_audit.rules import RULES
from lora_audit.weights import open_lora
from lora_audit.reports import FORMATS
from report_checks import (comparable, parse_html_report, parse_json_report, parse_jsonl_report,
                           parse_sarif_report)

COMMANDS = ["scan", "strip", "rules", "finetune", "shadow", "train-attack", "reconstruct", "evaluate", "toy build",
            "toy photos", "fl-client", "invert-gradients", "evaluate-gradients", "evaluate-defences"]
TESTS = Path(__file__).parent


def _commands() -> dict[str, object]:
    """Every leaf command of the app by its name ("toy build"), as click objects."""
    group = typer.main.get_command(app)
    leaves = {}
    for name, command in group.commands.items():
        for sub, leaf in getattr(command, "commands", {None: command}).items():
            leaves[name if sub is None else f"{name} {sub}"] = leaf
    return leaves


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """`toy build --tiny --out build` through the CLI: a tiny base, embedder, victims, shadows and attack."""
    root = tmp_path_factory.mktemp("cli_flags")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # nothing may land in the current directory but --out
        assert main(["toy", "build", "--tiny", "--out", "build"]) == 0
    assert [p.name for p in root.iterdir()] == ["build"]
    out = root / "build"
    data, samples = out / "installed" / "data", out / "installed" / "weights_samples"
    return {"root": root, "out": out, "base": str(data / "base"), "attack": str(data / "attack"),
            "samples": samples, "shadows": out / "shadows", "photos": samples / "tiny_peft_photos",
            "leaky": str(samples / "sd15_kohya_leaky.safetensors"), "victim": str(samples / "tiny_peft.safetensors")}


# --- the catalogue of commands and flags -------------------------------------------------------


def test_the_commands_are_the_documented_ones():
    assert sorted(_commands()) == sorted(COMMANDS)


def test_every_command_has_help_naming_each_of_its_flags(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # no flag cut short by the table's width
    for name, command in _commands().items():
        assert main([*name.split(), "--help"]) == 0, name
        out = capsys.readouterr().out
        for param in command.params:
            for flag in param.opts + param.secondary_opts:
                if flag.startswith("--"):
                    assert flag in out, (name, flag)


def test_every_flag_is_exercised_by_some_test():
    """A flag no test passes is a flag nobody would notice breaking: each must appear in a test's argv."""
    sources = "\n".join(p.read_text() for p in TESTS.glob("test_*.py"))
    missing = [f"{name} {flag}" for name, command in _commands().items() for param in command.params
               for flag in param.opts + param.secondary_opts
               if flag.startswith("--") and flag != "--help" and f'"{flag}"' not in sources]
    assert missing == []


def test_an_unknown_flag_of_any_command_is_a_usage_error(capsys):
    for name in COMMANDS:
        assert main([*name.split(), "--no-such-flag"]) == 4, name
    assert capsys.readouterr().out == ""


# --- rules -------------------------------------------------------------------------------------


def test_rules_lists_every_rule_once(capsys):
    assert main(["rules"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(RULES)
    for line, rule in zip(lines, RULES.values()):
        assert line.split()[:3] == [rule.id, rule.name, rule.severity.label] and line.endswith(rule.title)
    assert main(["rules", "LA101"]) == 4  # takes no argument


# --- scan --------------------------------------------------------------------------------------


def test_scan_jobs_2_gives_the_jobs_1_results(toy, capsys):
    reports = {}
    for jobs in ("1", "2"):
        assert main(["scan", str(toy["samples"]), "-j", jobs, "-f", "json", "--no-attack"]) == 1
        reports[jobs] = comparable(parse_json_report(capsys.readouterr().out))
    assert reports["1"] == reports["2"] and len(reports["1"]["files"]) == 5
    for jobs in ("1", "2"):  # JSON Lines: completion order with two workers, the same records
        assert main(["scan", str(toy["samples"]), "--jobs", jobs, "-f", "jsonl", "--no-attack"]) == 1
        files, summary = parse_jsonl_report(capsys.readouterr().out)
        by_path = lambda records: sorted(records, key=lambda f: f["path"])  # noqa: E731
        assert by_path(comparable({"files": files})["files"]) == by_path(
            {"type": "file", "schema_version": reports["1"]["schema_version"], **f} for f in reports["1"]["files"])
        assert {k: summary[k] for k in reports["1"]["summary"]} == reports["1"]["summary"]
    assert main(["scan", str(toy["samples"]), "-j", "0"]) == 4
    assert main(["scan", str(toy["samples"]), "--jobs", "two"]) == 4


def test_scan_every_format_from_the_cli_parses_back(toy, tmp_path, capsys):
    leaky = toy["leaky"]
    assert main(["scan", leaky, "-f", "sarif", "-o", str(tmp_path / "r.sarif")]) == 1
    log = parse_sarif_report((tmp_path / "r.sarif").read_text())
    run = log["runs"][0]
    alerts = {r["ruleId"] for r in run["results"]}
    assert {"LA101", "LA102", "LA103", "LA104", "LA105", "LA106"} <= alerts
    assert run["artifacts"][0]["location"]["uri"].endswith("sd15_kohya_leaky.safetensors")
    notes = {n["associatedRule"]["id"] for i in run["invocations"] for n in i.get("toolExecutionNotifications", [])
             if "associatedRule" in n}  # findings on the audit itself (LA303: the attack did not run)
    assert main(["scan", leaky, "--format", "json", "--output", str(tmp_path / "r.json")]) == 1
    report = parse_json_report((tmp_path / "r.json").read_text())
    rules = {f["rule_id"] for f in report["files"][0]["findings"]}
    assert rules == alerts | notes and "LA303" in rules  # each finding is in the SARIF log, once
    assert main(["scan", leaky, "-f", "jsonl"]) == 1
    files, summary = parse_jsonl_report(capsys.readouterr().out)
    assert {f["rule_id"] for f in files[0]["findings"]} == rules and summary["exit_code"] == 1
    for verbose in ("-v", "--verbose"):
        assert main(["scan", leaky, "-f", "console", "-q", verbose]) == 1
        console = capsys.readouterr().out
        assert all(rule in console for rule in rules)
        assert "20 of 48 modules, largest dW norm first" in console  # the per-module statistics
    assert main(["scan", leaky, "-f", "console", "--quiet", "--attack", "auto"]) == 1  # sd1: no attack model, LA303
    console = capsys.readouterr().out
    assert "modules, largest dW norm first" not in console and "LA303" in console
    if "html" in FORMATS:
        assert main(["scan", leaky, "-f", "html", "-o", str(tmp_path / "r.html")]) == 1
        page = parse_html_report((tmp_path / "r.html").read_text())
        assert all(rule in page for rule in rules) and "sd15_kohya_leaky.safetensors" in page
    assert main(["scan", leaky, "-f", "yaml"]) == 4


def test_scan_redact_masks_values_and_keeps_the_exit_code(toy, capsys):
    assert main(["scan", toy["leaky"], "-f", "json", "--redact"]) == 1
    report = parse_json_report(capsys.readouterr().out)
    shown = {k: v for f in report["files"][0]["findings"] for k, v in f["evidence"].get("metadata", {}).items()}
    assert "ss_tag_frequency" in shown and "jane" not in json.dumps(report).lower()
    assert all(v.startswith("<redacted ") for v in shown.values())
    assert main(["scan", toy["leaky"], "-f", "json"]) == 1
    assert "jane" in capsys.readouterr().out.lower()  # without --redact the values show
    assert main(["scan", toy["leaky"], "--redact=maybe"]) == 4


def test_a_valid_policy_file_sets_every_key(toy, tmp_path, monkeypatch, capsys):
    import lora_audit.scan.engine as engine

    jobs = []
    real = engine.scan_batch
    monkeypatch.setattr(engine, "scan_batch", lambda *a, **k: jobs.append(k["jobs"]) or real(*a, **k))
    policy = tmp_path / "policy.toml"
    policy.write_text('fail_on = "critical"\ndisable = ["LA104", "dataset-folders"]\nredact = true\njobs = 2\n'
                      '[severity]\nLA105 = "critical"\n')
    args = ["scan", toy["leaky"], "-f", "json", "--no-attack", "--policy", str(policy)]
    assert main(args) == 1  # LA105 raised to critical meets fail_on = critical
    report = parse_json_report(capsys.readouterr().out)
    severities = {f["rule_id"]: f["severity"] for f in report["files"][0]["findings"]}
    assert "LA104" not in severities and "LA102" not in severities and severities["LA105"] == "critical"
    assert report["summary"]["fail_on"] == "critical" and "jane" not in json.dumps(report).lower()  # redact = true
    assert jobs == [2]
    assert main(args + ["-j", "1", "--fail-on", "high"]) == 1 and jobs == [2, 1]  # flags win over the policy
    capsys.readouterr()
    policy.write_text('fail_on = "critical"\n')
    assert main(["scan", toy["leaky"], "-q", "--no-attack", "--policy", str(policy)]) == 0  # nothing critical
    assert main(["scan", toy["leaky"], "--policy", str(tmp_path / "missing.toml")]) == 4
    policy.write_text("jobs = 0\n")
    assert main(["scan", toy["leaky"], "--policy", str(policy)]) == 4


def test_scan_face_weights_reach_the_familys_face_embedder(toy, tmp_path, monkeypatch, capsys):
    from lora_audit.toyworld.family import ToyFamily

    seen = []
    real = ToyFamily.face_embedder

    def spy(self, device, face_weights=None):
        seen.append(face_weights)
        return real(self, device, face_weights)

    monkeypatch.setattr(ToyFamily, "face_embedder", spy)
    args = ["scan", toy["victim"], "-q", "-f", "json", "--attack-model", toy["attack"], "--base", toy["base"],
            "--reconstructions", str(tmp_path / "rec"), "--fail-on", "critical"]
    assert main(args + ["--face-weights", str(tmp_path / "weights.pt")]) == 0
    assert seen == [str(tmp_path / "weights.pt")]
    capsys.readouterr()

    def facenet(self, device, face_weights=None):  # a family that reads the checkpoint, as sd1/sd2/sdxl do
        from lora_audit.identity.facenet import FaceNetEmbedder

        return FaceNetEmbedder.load(face_weights, device=device)

    monkeypatch.setattr(ToyFamily, "face_embedder", facenet)
    assert main(args + ["--face-weights", str(tmp_path / "missing.pt")]) == 4
    err = capsys.readouterr().err
    assert err.startswith("lora-audit: error: --face-weights") and str(tmp_path / "missing.pt") in err
    assert err.count("\n") == 1


# --- strip -------------------------------------------------------------------------------------


def test_strip_keep_and_remove_through_the_cli(toy, tmp_path, capsys):
    leaky = toy["leaky"]
    with safetensors.safe_open(leaky, "np") as f:
        original = f.metadata()
    out = tmp_path / "clean.safetensors"
    assert main(["strip", leaky, "-o", str(out), "--keep", "ss_output_name", "--keep", "ss_training_comment",
                 "--remove", "ss_network_dim", "--remove", "ss_seed"]) == 0
    with safetensors.safe_open(str(out), "np") as f:
        metadata = f.metadata()
    assert metadata["ss_output_name"] == original["ss_output_name"]
    assert metadata["ss_training_comment"] == original["ss_training_comment"]
    assert "ss_network_dim" not in metadata and "ss_seed" not in metadata and "ss_tag_frequency" not in metadata
    assert set(metadata) < set(original)
    assert "ss_network_dim" in capsys.readouterr().out  # named among the removed keys
    assert main(["strip", leaky, "-o", str(out), "--force", "--remove", "ss_network_dim"]) == 0
    with safetensors.safe_open(str(out), "np") as f:
        assert "ss_output_name" not in f.metadata() and "ss_network_dim" not in f.metadata()
    assert main(["strip", leaky, "-o", str(out), "--keep"]) == 4  # --keep needs a key


# --- toy build and toy photos ------------------------------------------------------------------


def test_toy_build_through_the_cli_installs_under_out(toy):
    installed = toy["out"] / "installed"
    assert sorted(p.name for p in installed.iterdir()) == ["data", "docs", "weights_samples"]
    assert {p.name for p in Path(toy["attack"]).iterdir()} == {"attack.json", "attack.safetensors"}
    for stage in ("embedder", "base", "victims", "shadows", "attack", "install", "references", "figures"):
        assert (toy["out"] / stage / "metrics.json").is_file(), stage
    assert {p.name for p in (installed / "docs" / "img").iterdir()} >= {
        "toy_base_samples.png", "contact_sheet.png", "attack_reconstructions.png", "attack_curves.png"}


def test_toy_build_stages_that_measure_an_install_need_one(tmp_path, capsys):
    for stage in ("references", "crowd"):
        assert main(["toy", "build", "--out", str(tmp_path / "empty"), "--stage", stage]) == 4
        err = capsys.readouterr().err
        assert f"the {stage} stage measures an installed toy world" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "empty").exists() or not any((tmp_path / "empty").rglob("*.json"))


def test_toy_build_stage_reruns_only_that_stage(toy, tmp_path, capsys):
    out = tmp_path / "build"
    shutil.copytree(toy["out"], out)
    (out / "victims" / "metrics.json").unlink()
    others = {s: (out / s / "metrics.json").stat().st_mtime_ns for s in ("embedder", "base", "shadows", "attack")}
    assert main(["toy", "build", "--tiny", "--out", str(out), "--stage", "victims", "--stage", "embedder"]) == 0
    assert (out / "victims" / "metrics.json").is_file()
    assert others == {s: (out / s / "metrics.json").stat().st_mtime_ns for s in others}
    assert "stages embedder, base, victims, shadows, attack, install, references, crowd, figures" in capsys.readouterr().out
    assert main(["toy", "build", "--tiny", "--out", str(out), "--stage", "everything"]) == 4


def test_toy_build_jobs_reach_the_shadows_stage_with_the_same_result(toy, tmp_path, monkeypatch):
    """--jobs goes to the shadows stage (that N processes give one process's trajectories is
    test_shadow_images_and_jobs's: each worker costs seconds of imports)."""
    import lora_audit.attack.shadow as shadow
    from lora_audit.attack.shadow import load_trajectories

    jobs = []
    real = shadow.build_shadows
    monkeypatch.setattr(shadow, "build_shadows", lambda config, out, base, n=1, progress=None:
                        jobs.append(n) or real(config, out, base, 1, progress))
    out = tmp_path / "build"
    shutil.copytree(toy["out"], out)
    shutil.rmtree(out / "shadows")
    (out / "attack" / "metrics.json").unlink()
    assert main(["toy", "build", "--tiny", "--out", str(out), "--stage", "shadows", "--jobs", "2"]) == 0
    assert jobs == [2] and not (out / "attack" / "metrics.json").exists()  # only the stage asked for
    serial, parallel = load_trajectories(toy["shadows"]), load_trajectories(out / "shadows")
    assert [t.identity for t in parallel] == [t.identity for t in serial]
    for a, b in zip(serial, parallel):
        assert a.steps == b.steps and np.array_equal(a.images, b.images)
        for step in a.steps:
            assert a.states[step].keys() == b.states[step].keys()
            assert all(np.array_equal(a.states[step][k], b.states[step][k]) for k in a.states[step]), step
    assert main(["toy", "build", "--tiny", "--out", str(out), "-j", "0"]) == 4


def test_toy_build_install_into_a_checkout_and_refusal_of_anything_else(toy, tmp_path, capsys):
    out = tmp_path / "build"
    shutil.copytree(toy["out"], out)
    assert main(["toy", "build", "--tiny", "--out", str(out), "--install", str(tmp_path)]) == 4
    assert "is not a lora-audit source checkout" in capsys.readouterr().err
    checkout = tmp_path / "checkout"
    (checkout / "lora_audit" / "toyworld").mkdir(parents=True)
    assert main(["toy", "build", "--tiny", "--out", str(out), "--install", str(checkout)]) == 0
    assert {p.name for p in (checkout / "lora_audit" / "toyworld" / "data" / "attack").iterdir()} == {
        "attack.json", "attack.safetensors"}
    assert (checkout / "weights_samples" / "tiny_peft.safetensors").read_bytes() == Path(toy["victim"]).read_bytes()
    assert json.loads((out / "install" / "metrics.json").read_text())["installed_into"] == str(checkout.resolve())
    figures = checkout / "docs" / "img"
    for png in figures.glob("*.png"):
        png.unlink()
    fresh = tmp_path / "fresh"  # no build at all: the figures are drawn from what the checkout holds
    assert main(["toy", "build", "--tiny", "--out", str(fresh), "--stage", "figures", "--install", str(checkout)]) == 0
    assert sorted(p.name for p in figures.iterdir()) == ["attack_reconstructions.png", "contact_sheet.png",
                                                         "toy_base_samples.png"]
    assert sorted(p.name for p in fresh.iterdir()) == ["figures"]


def test_toy_photos_every_flag_and_refusal_without_force(tmp_path, capsys):
    from PIL import Image

    from lora_audit.toyworld.photos import identity_photos

    out = tmp_path / "photos"
    args = ["toy", "photos", "300123", "-o", str(out), "--count", "3", "--first-view", "2", "--seed", "1",
            "--size", "16"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["photo_2.png", "photo_3.png", "photo_4.png"]
    expected = (identity_photos(300123, 3, 16, 1, 2) * 255 + 0.5).astype(np.uint8)
    for k, view in enumerate((2, 3, 4)):
        assert np.array_equal(np.asarray(Image.open(out / f"photo_{view}.png")), expected[k])
    before = (out / "photo_2.png").read_bytes()
    capsys.readouterr()
    assert main(["toy", "photos", "300124", "-o", str(out), "-n", "1", "--first-view", "2"]) == 4  # exists
    err = capsys.readouterr().err
    assert "already holds photo_2.png" in err and "--force" in err and err.count("\n") == 1
    assert (out / "photo_2.png").read_bytes() == before
    assert main(["toy", "photos", "300124", "-o", str(out), "-n", "1", "--first-view", "2", "--size", "16",
                 "--force"]) == 0
    assert (out / "photo_2.png").read_bytes() != before and (out / "photo_3.png").is_file()
    assert main(["toy", "photos", "300124", "-o", str(tmp_path / "d"), "-n", "1"]) == 0
    assert Image.open(tmp_path / "d" / "photo_0.png").size == (32, 32)  # the default size
    for bad in (["--size", "4"], ["--count", "0"], ["--first-view", "-1"]):
        assert main(["toy", "photos", "1", "-o", str(tmp_path / "x"), *bad]) == 4, bad
    assert main(["toy", "photos", "-5", "-o", str(tmp_path / "x")]) == 4
    assert main(["toy", "photos", "1"]) == 4  # -o is required
    assert not (tmp_path / "x").exists()


# --- finetune ----------------------------------------------------------------------------------


def test_finetune_alpha_lr_seed_and_no_text_encoder(toy, tmp_path, capsys):
    def tune(name, *flags):
        path = tmp_path / f"{name}.safetensors"
        assert main(["finetune", str(toy["photos"]), "-o", str(path), "--base", toy["base"], "--steps", "2",
                     "--rank", "2", *flags]) == 0
        return path

    plain = tune("plain", "--alpha", "1", "--lr", "0.01", "--seed", "3", "--no-text-encoder", "--device", "cpu")
    with open_lora(str(plain)) as lora:
        assert lora.modules and all(m.name.startswith("unet.") for m in lora.modules)  # no text-encoder LoRA
        assert {(m.rank, m.alpha, m.scale) for m in lora.modules} == {(2, 1.0, 0.5)}  # --alpha 1 at rank 2
    again = tune("again", "--alpha", "1", "--lr", "0.01", "--seed", "3", "--no-text-encoder")
    tensors = safetensors.numpy.load_file(str(plain))
    assert tensors.keys() == safetensors.numpy.load_file(str(again)).keys()
    assert all(np.array_equal(v, safetensors.numpy.load_file(str(again))[k]) for k, v in tensors.items())  # --seed
    for name, flags in (("seed", ["--seed", "4"]), ("lr", ["--seed", "3", "--lr", "0.02"])):
        other = safetensors.numpy.load_file(str(tune(name, "--alpha", "1", "--lr", "0.01", *flags,
                                                     "--no-text-encoder")))
        assert any(not np.array_equal(v, other[k]) for k, v in tensors.items()), name
    both = tune("both", "--text-encoder")
    with open_lora(str(both)) as lora:
        assert any(m.name.startswith("text_encoder.") for m in lora.modules)
        assert {m.scale for m in lora.modules} == {1.0}  # --alpha defaults to the rank
    capsys.readouterr()
    for bad in (["--rank", "0"], ["--steps", "0"], ["--lr", "fast"], ["--alpha", "x"], ["--seed", "1.5"],
                ["--snapshot-steps", "1,x"], ["--device", "abacus"], ["--device", "cuda:99"]):
        assert main(["finetune", str(toy["photos"]), "-o", str(tmp_path / "bad.safetensors"), "--base", toy["base"],
                     "--steps", "2", *bad]) == 4, bad
    assert not (tmp_path / "bad.safetensors").exists()


# --- shadow, train-attack, reconstruct, evaluate -----------------------------------------------


@pytest.mark.slow  # two worker processes, each importing torch and diffusers
def test_shadow_images_and_jobs(toy, tmp_path, capsys):
    from lora_audit.attack.shadow import load_trajectories

    images = tmp_path / "people"
    for person, folder in (("alice", "tiny_peft_photos"), ("bob", "tiny_kohya_leaky_photos")):
        shutil.copytree(toy["samples"] / folder, images / person)
    runs = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"shadows_{jobs}"
        assert main(["shadow", "-o", str(out), "--images", str(images), "-n", "2", "--base", toy["base"],
                     "--steps", "2", "--snapshot-steps", "1,2", "--jobs", jobs]) == 0
        runs[jobs] = load_trajectories(out)
    assert [t.identity for t in runs["1"]] == ["alice", "bob"]
    for a, b in zip(runs["1"], runs["2"]):  # two processes: the same trajectories
        assert a.identity == b.identity and a.steps == b.steps == [1, 2] and np.array_equal(a.images, b.images)
        assert all(np.array_equal(a.states[2][k], b.states[2][k]) for k in a.states[2])
    alice = np.asarray(runs["1"][0].images)
    assert alice.shape[1:] == (16, 16, 3)  # the photos, at the base's resolution
    capsys.readouterr()
    assert main(["shadow", "-o", str(tmp_path / "x"), "--images", str(tmp_path / "nobody"), "--base", toy["base"],
                 "-n", "1", "--steps", "2", "--snapshot-steps", "2"]) == 4
    assert "--images" in capsys.readouterr().err
    assert main(["shadow", "-o", str(tmp_path / "x"), "--base", toy["base"], "-n", "1", "-j", "0"]) == 4
    assert main(["shadow", "-o", str(tmp_path / "x"), "--base", toy["base"], "--identities", "0"]) == 4


def test_train_attack_final_only_lr_beta_module_dropout(toy, tmp_path, capsys):
    out = tmp_path / "attack"
    assert main(["train-attack", str(toy["shadows"]), "-o", str(out), "--base", toy["base"], "--steps", "2",
                 "--shadows-per-step", "1", "--validation", "1", "--final-only", "--lr", "0.002", "--beta", "0.01",
                 "--module-dropout", "0.25", "--latent-rank", "3", "--prompts", "8", "--seed", "7", "--device", "cpu"]) == 0
    training = json.loads((out / "attack.json").read_text())["training"]
    config = training["config"]
    assert (config["final_only"], config["lr"], config["beta"], config["module_dropout"]) == (True, 0.002, 0.01, 0.25)
    assert (config["latent_rank"], config["prompts"], config["steps"], config["seed"]) == (3, 8, 2, 7)
    assert training["training_pairs"] == 2  # --final-only: one pair (the final weights) per training shadow
    capsys.readouterr()
    for bad in (["--module-dropout", "0.99"], ["--module-dropout", "-0.1"], ["--lr", "x"], ["--beta", "x"],
                ["--steps", "0"], ["--latent-rank", "0"], ["--prompts", "1"], ["--device", "abacus"], ["--seed", "-1"]):
        assert main(["train-attack", str(toy["shadows"]), "-o", str(tmp_path / "bad"), "--base", toy["base"],
                     *bad]) == 4, bad
    assert not (tmp_path / "bad").exists()


def test_reconstruct_step_and_seed(toy, tmp_path, capsys, monkeypatch):
    from PIL import Image

    def run(name, *flags):
        out = tmp_path / name
        assert main(["reconstruct", toy["victim"], "-o", str(out), "--attack-model", toy["attack"], "--base",
                     toy["base"], "--latents", "1", "--seeds", "2", "--sampling-steps", "2", *flags]) == 0
        return out, capsys.readouterr().out

    from lora_audit.attack.model import AttackModel

    steps = []
    posterior = AttackModel.posterior
    monkeypatch.setattr(AttackModel, "posterior", lambda self, raw, padding, step: steps.append(step.tolist())
                        or posterior(self, raw, padding, step))
    first, text = run("a", "--step", "7", "--seed", "5", "--device", "cpu")
    assert "(step r = 7, given)" in text and steps == [[7.0]]  # the encoder is told r = 7
    pngs = sorted(p.name for p in first.glob("*.png"))
    assert pngs == ["tiny_peft_grid.png", "tiny_peft_z0_seed0.png", "tiny_peft_z0_seed1.png"]
    same, _ = run("b", "--step", "7", "--seed", "5")
    other_seed, _ = run("c", "--step", "7", "--seed", "6")
    other_step, text = run("d", "--step", "300", "--seed", "5")
    assert "(step r = 300, given)" in text and steps[-1] == [300.0]
    image = lambda folder: np.asarray(Image.open(folder / "tiny_peft_z0_seed0.png"))  # noqa: E731
    assert np.array_equal(image(first), image(same))
    assert not np.array_equal(image(first), image(other_seed))
    _, text = run("e")
    assert text.rstrip().endswith(", estimate)")  # no --step, no kohya metadata: estimated from the weights
    for bad in (["--step", "0.5"], ["--seed", "x"], ["--latents", "0"], ["--seeds", "0"], ["--sampling-steps", "0"],
                ["--device", "abacus"], ["--device", "cuda:99"]):
        assert main(["reconstruct", toy["victim"], "-o", str(tmp_path / "bad"), "--attack-model", toy["attack"],
                     "--base", toy["base"], *bad]) == 4, bad
    assert not (tmp_path / "bad").exists()


def test_evaluate_far_and_its_bad_inputs(toy, tmp_path, capsys):
    args = ["evaluate", str(toy["shadows"]), "--attack-model", toy["attack"], "--base", toy["base"],
            "-o", str(tmp_path / "work"), "--docs", str(tmp_path / "docs"), "--latents", "1", "--seeds", "1",
            "--sampling-steps", "2"]
    assert main(args + ["--far", "1.0"]) == 0
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    for method, summary in results["summary"].items():  # FAR 1: every impostor may pass, so every victim does
        assert summary["tar"] == 1.0, method
    assert set(results["summary"]) == {"oracle", "latent_ceiling", "lora_class", "base", "vae",  # no --ablation-model
                                       "guidance_w3", "metadata_trigger"}  # the training-free rows, at the scan's w
    capsys.readouterr()
    for bad in (["--far", "1.5"], ["--far", "-0.1"], ["--owner-far", "2"], ["--latents", "0"]):
        assert main(args + bad) == 4, bad
    assert main(["evaluate", str(tmp_path / "missing"), "--attack-model", toy["attack"], "--base", toy["base"],
                 "-o", str(tmp_path / "w2"), "--docs", str(tmp_path / "d2")]) == 4
    assert main([*args[:3], str(tmp_path), *args[4:]]) == 4  # --attack-model that is not one
    err = capsys.readouterr().err
    assert "not an attack model" in err and "Traceback" not in err
