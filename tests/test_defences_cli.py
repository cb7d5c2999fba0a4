"""The defences from the command line: finetune --dp / --adapter loda, and evaluate-defences' flags."""

import pytest

from lora_audit.cli import main
from lora_audit.toyworld.photos import save_identity_photos
from lora_audit.toyworld.pipeline import ToyBaseConfig, make_toy_pipeline
from lora_audit.weights import open_lora
from lora_audit.weights.dp_metadata import read_dp_guarantee


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("defences_cli")
    make_toy_pipeline(ToyBaseConfig.tiny()).save_pretrained(root / "base")
    save_identity_photos(302050, 2, root / "photos", size=16)
    return {"base": str(root / "base"), "photos": str(root / "photos")}


def _finetune(tiny, out, *flags):
    return main(["finetune", tiny["photos"], "-o", str(out), "--base", tiny["base"], "--steps", "2", "--rank", "2",
                 *flags])


@pytest.mark.slow
def test_finetune_dp_loda_states_its_guarantee(tiny, tmp_path, capsys):
    out = tmp_path / "dp.safetensors"
    assert _finetune(tiny, out, "--adapter", "loda", "--dp", "--epsilon", "8", "--delta", "1e-6", "--max-grad-norm",
                     "0.05", "--sample-rate", "0.5", "--accountant", "rdp") == 0
    said = capsys.readouterr().out
    assert "privacy spent: epsilon" in said and "per training image" in said and "group privacy" in said
    with open_lora(str(out)) as lora:
        guarantee = read_dp_guarantee(lora.metadata)
        assert lora.layout == "loda" and {m.kind for m in lora.modules} == {"loda"}
    assert (guarantee.delta, guarantee.max_grad_norm, guarantee.sample_rate, guarantee.accountant) == (1e-6, 0.05, 0.5, "rdp")
    assert 7.0 < guarantee.epsilon <= 8.0 and guarantee.instance_images == 2
    given = tmp_path / "sigma.safetensors"
    assert _finetune(tiny, given, "--dp", "--noise-multiplier", "1.5") == 0
    with open_lora(str(given)) as lora:
        assert read_dp_guarantee(lora.metadata).noise_multiplier == 1.5
    assert main(["scan", str(out), str(given), "--no-attack", "-f", "json", "-o", str(tmp_path / "r.json")]) == 0
    report = (tmp_path / "r.json").read_text()
    assert report.count('"LA108"') >= 2 and '"LA204"' in report and '"LA003"' not in report


@pytest.mark.parametrize("flags, words", [
    (["--dp"], "exactly one of --epsilon and --noise-multiplier"),
    (["--dp", "--epsilon", "1", "--noise-multiplier", "1"], "exactly one"),
    (["--epsilon", "1"], "need --dp"),
    (["--noise-multiplier", "2"], "need --dp"),
    (["--dp", "--epsilon", "-1"], "out of range"),
    (["--dp", "--epsilon", "1", "--sample-rate", "1.5"], "out of range"),
    (["--dp", "--epsilon", "1", "--delta", "0"], "out of range"),
    (["--dp", "--epsilon", "1", "--max-grad-norm", "0"], "out of range"),
    (["--dp", "--epsilon", "1", "--accountant", "gdp"], "unknown accountant"),
    (["--dp", "--epsilon", "1e-9"], "no noise multiplier reaches"),
    (["--dp", "--noise-multiplier", "1e-6", "--sample-rate", "1"], "cannot bound"),
    (["--dp", "--epsilon", "8", "--kohya-metadata"], "outside any DP guarantee"),
    (["--adapter", "dora"], "unknown adapter"),
    (["--adapter", "loda", "--layout", "kohya"], "LoRA layout"),
    (["--adapter", "loda", "--kohya-metadata"], "kohya"),
])
def test_finetune_refuses_defence_flags_that_make_no_sense_before_training(tiny, tmp_path, capsys, flags, words):
    out = tmp_path / "bad.safetensors"
    assert _finetune(tiny, out, *flags) == 4
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("flags, words", [
    (["--epsilons", "8,x"], "neither a number nor none"),
    (["--epsilons", "0"], "> 0"),
    (["--epsilons", ","], "empty"),
    (["--adapters", "lora,dora"], "--adapters"),
    (["--identities", "1"], "--identities"),
    (["--identities", "500"], "--identities"),
    (["--steps", "0"], "--steps"),
    (["--sample-rate", "0"], "out of range"),
    (["--max-grad-norm", "-1"], "out of range"),
    (["--attack-model", "/nonexistent"], "attack model"),
])
def test_evaluate_defences_refuses_bad_flags(tmp_path, capsys, flags, words):
    (tmp_path / "docs").mkdir()
    assert main(["evaluate-defences", "-o", str(tmp_path / "out"), "--docs", str(tmp_path / "docs"), *flags]) == 4
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not any((tmp_path / "docs").iterdir())  # nothing written


def test_evaluate_defences_needs_an_existing_docs_folder(tmp_path, capsys):
    assert main(["evaluate-defences", "-o", str(tmp_path / "out"), "--docs", str(tmp_path / "nope")]) == 4
    assert "no such folder" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_evaluate_defences_summary_only_runs_nothing(tmp_path, capsys):
    assert main(["evaluate-defences", "-o", str(tmp_path), "--summary-only", "--epsilons", "none"]) == 4
    assert "no setting has finished runs" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing was fine-tuned or written


def test_the_defence_identities_are_held_out_from_every_other_party():
    from lora_audit.toyworld.identities import DISTRACTORS, IMPOSTORS, PRIVATE
    from lora_audit.toyworld.lab.defences import DEFENCE_IDENTITIES

    assert set(DEFENCE_IDENTITIES) <= set(PRIVATE)  # never a shadow, base or embedder identity
    assert not set(DEFENCE_IDENTITIES) & (set(IMPOSTORS) | set(DISTRACTORS))


@pytest.mark.slow
def test_shadow_dp_epsilon_builds_an_adaptive_attackers_shadows(tiny, tmp_path):
    import json

    from lora_audit.attack.shadow import load_trajectories

    out = tmp_path / "shadows"
    assert main(["shadow", "-o", str(out), "-n", "1", "--base", tiny["base"], "--steps", "2", "--snapshot-steps", "1,2",
                 "--dp-epsilon", "8"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["finetune"]["dp"]["epsilon"] == 8.0
    (trajectory,) = load_trajectories(out)
    assert trajectory.steps == [1, 2] and trajectory.deltas(2)
    # the same directory refuses another recipe (no DP), and a bad epsilon is a usage error
    assert main(["shadow", "-o", str(out), "-n", "1", "--base", tiny["base"], "--steps", "2", "--snapshot-steps", "1,2"]) == 4
    assert main(["shadow", "-o", str(tmp_path / "x"), "-n", "1", "--base", tiny["base"], "--dp-epsilon", "-1"]) == 4
