"""Which attack serves which family (attack/resolve.py), on constructed directories: no model is loaded."""

import json

import pytest

from lora_audit.attack.resolve import AttackSources
from lora_audit.errors import InputError, InvalidFileError
from lora_audit.families import get_family


@pytest.fixture
def sd1_inputs(tmp_path):
    attack, base = tmp_path / "attack", tmp_path / "base"
    attack.mkdir()
    base.mkdir()
    (attack / "attack.json").write_text(json.dumps({"format_version": 1, "family": "sd1"}))
    (base / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["", ""]}))
    (base / "unet").mkdir()
    (base / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": 768}))  # an sd1 UNet
    return str(attack), str(base)


def test_toy_loras_need_nothing_given():
    plan = AttackSources().plan("toy")
    toy = get_family("toy")
    assert not plan.missing and plan.attack_dir == toy.shipped_attack_model() and plan.base == toy.default_base()
    assert plan.require() is plan


def test_other_families_name_what_is_missing():
    plan = AttackSources().plan("sd1")
    assert [m.flag for m in plan.missing] == ["--base", "--attack-model"] and plan.attack_dir is None
    with pytest.raises(InputError) as error:
        plan.require()
    assert error.value.input == "base" and error.value.fix[0] == "attack_model"
    assert [m.input for m in AttackSources().plan("flux").missing] == ["base", "attack_model"]  # static only


def test_a_given_attack_model_serves_only_its_family(sd1_inputs):
    attack, base = sd1_inputs
    sources = AttackSources(attack, base)
    plan = sources.plan("sd1")
    assert not plan.missing and str(plan.attack_dir) == attack and plan.base == base
    toy = sources.plan("toy")  # scan falls back to the shipped toy attack ...
    assert toy.attack_dir == get_family("toy").shipped_attack_model() and toy.given_attack_family == "sd1"
    with pytest.raises(InputError, match="attacks sd1 LoRAs, not toy ones"):  # ... reconstruct refuses
        toy.require()
    sdxl = sources.plan("sdxl")
    assert [m.input for m in sdxl.missing] == ["base", "attack_model"] and sdxl.base is None
    assert f"(--base {base} is a sd1 pipeline)" in sdxl.missing[0].what and not sdxl.training_free
    assert f"(--attack-model {attack} is for sd1)" in sdxl.missing[1].what
    no_base = AttackSources(attack).plan("sd1")
    assert [m.input for m in no_base.missing] == ["base"]  # sd1 has no default base
    only_base = AttackSources(base=base).plan("sd1")  # the training-free attacks: the base, no attack model
    assert only_base.training_free and only_base.base == base and [m.input for m in only_base.missing] == ["attack_model"]
    assert not plan.training_free and not AttackSources().plan("toy").training_free


def test_bad_inputs_fail_at_once_naming_the_input_or_file(tmp_path, sd1_inputs):
    with pytest.raises(InputError) as error:
        AttackSources(attack_model=str(tmp_path))
    assert error.value.input == "attack_model" and "no attack.json" in error.value.problem
    with pytest.raises(InputError) as error:
        AttackSources(base=str(tmp_path))
    assert error.value.input == "base"
    attack, _ = sd1_inputs
    (tmp_path / "attack" / "attack.json").write_text("{not json")
    with pytest.raises(InvalidFileError) as error:
        AttackSources(attack)
    assert error.value.path.endswith("attack.json") and error.value.exit_code == 2


def test_an_attack_model_and_a_base_of_different_families_are_refused_at_load(tmp_path):
    from lora_audit.attack.reconstruct import load_attack
    from lora_audit.attack.resolve import AttackPlan
    from lora_audit.testing.pipelines import write_pipeline

    base = write_pipeline("sd1", tmp_path / "sd1")
    plan = AttackPlan("sd1", get_family("toy").shipped_attack_model(), str(base))
    with pytest.raises(InputError, match="attacks toy LoRAs, but the base .* is a sd1 pipeline") as error:
        load_attack(plan, "cpu")
    assert error.value.input == "attack_model"
