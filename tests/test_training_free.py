"""The training-free attacks (the metadata trigger, model-guidance extraction): the sampler, the trigger
candidates, the scan's findings on every family with only --base, and their rows in ``evaluate``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lora_audit import families
from lora_audit.attack.training_free import (CLASS_PROMPT, guidance_images, prompted_images, render_triggers,
                                             trigger_prompt)
from lora_audit.scan.identity import IdentityCheck, IdentityOptions
from lora_audit.testing.synthetic import leaky_kohya_metadata
from lora_audit.weights.triggers import MAX_TRIGGERS, Trigger, metadata_triggers
from lora_audit.weights.writer import kohya_training_metadata, save_lora
from report_checks import consistency_rule, parse_json_report, verdict_rule

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


def _random_lora(base, rank: int = 2, scale: float = 0.3, seed: int = 0) -> dict[str, torch.Tensor]:
    """A PEFT-layout state dict (``<component>.<module>.lora_A/B.weight``) on every UNet attention
    projection and each text encoder's q_proj/v_proj of ``base``, big enough to change its images."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for component, model in base.components().items():
        for path, module in model.named_modules():
            wanted = ATTENTION if component == "unet" else ("q_proj", "v_proj")
            if isinstance(module, torch.nn.Linear) and path.endswith(wanted):
                out, inp = module.weight.shape
                state[f"{component}.{path}.lora_A.weight"] = torch.randn(rank, inp, generator=generator) / inp ** 0.5
                state[f"{component}.{path}.lora_B.weight"] = torch.randn(out, rank, generator=generator) * scale
    return state


def _deltas(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """dW = B @ A (alpha = rank: scale 1) per module of a PEFT state dict."""
    return {key.removesuffix(".lora_A.weight"): state[key.replace("lora_A", "lora_B")] @ value
            for key, value in state.items() if key.endswith(".lora_A.weight")}


# --- the guidance sampler ----------------------------------------------------------------------


def test_guidance_at_w0_is_the_base_and_at_w1_the_lora_exactly(tiny_toy_base):
    base, deltas = tiny_toy_base, _deltas(_random_lora(tiny_toy_base))
    before = {name: base.weight_of(name).detach().clone() for name in deltas}
    embeds = base.encode_prompt([CLASS_PROMPT]).detach().expand(3, -1, -1)
    plain = base.generate(embeds, seed=5, steps=3)
    tuned = prompted_images(base, deltas, CLASS_PROMPT, 3, seed=5, steps=3)
    assert not np.array_equal(plain, tuned)  # the LoRA changes the images
    assert np.array_equal(guidance_images(base, deltas, 3, 0.0, seed=5, steps=3), plain)
    assert np.array_equal(guidance_images(base, deltas, 3, 1.0, seed=5, steps=3), tuned)
    amplified = guidance_images(base, deltas, 3, 3.0, seed=5, steps=3)
    assert amplified.shape == plain.shape and np.isfinite(amplified).all()
    assert not np.array_equal(amplified, tuned)
    for name, weight in before.items():  # the base is left as it was, and no hook stays on it
        assert torch.equal(base.weight_of(name), weight), name
    assert not base.unet._forward_hooks
    assert np.array_equal(base.generate(embeds, seed=5, steps=3), plain)


def test_each_step_calls_the_unet_with_the_base_then_the_lora(tiny_toy_base):
    base, state = tiny_toy_base, _random_lora(tiny_toy_base)
    deltas = _deltas(state)
    name = next(n for n in deltas if n.startswith("unet."))
    module = base.unet.get_submodule(name.removeprefix("unet."))
    original = module.weight.detach().clone()
    seen = []  # per call of the adapted module: whether it held its LoRA weight
    probe = module.register_forward_pre_hook(lambda m, args: seen.append(not torch.equal(m.weight, original)))
    calls = []  # per UNet call: its batch
    counter = base.unet.register_forward_pre_hook(lambda m, args, kwargs: calls.append(len(args[0])), with_kwargs=True)
    try:
        guidance_images(base, deltas, 2, 3.0, seed=0, steps=4)
    finally:
        probe.remove()
        counter.remove()
    assert calls == [4] * 8  # 4 steps x (the base's call, the LoRA's), each both halves of CFG: 2 x 2 images
    assert seen == [False, True] * 4
    assert torch.equal(module.weight, original)


# --- the trigger candidates --------------------------------------------------------------------


def test_metadata_triggers_of_a_leaky_kohya_file():
    assert metadata_triggers(leaky_kohya_metadata()) == [Trigger("sks woman", "modelspec.trigger_phrase")]
    kohya = kohya_training_metadata(trigger="zwxq", class_word="person", num_images=5, steps=500, rank=8, alpha=8,
                                    base_model_version="toy", output_name="me")
    assert metadata_triggers(kohya) == [Trigger("a face of zwxq", "modelspec.trigger_phrase"),
                                        Trigger("zwxq person", "ss_tag_frequency")]
    del kohya["modelspec.trigger_phrase"]  # kohya's default keys: the trigger is in the caption tags
    assert metadata_triggers(kohya) == [Trigger("zwxq person", "ss_tag_frequency")]


def test_metadata_triggers_read_kohya_datasets_rare_tokens_and_stay_bounded():
    datasets = [{"tag_frequency": {"5_x": {"ohwx": 9, "man": 9, "smiling": 2}},
                 "subsets": [{"class_tokens": "ohwx man", "is_reg": False}, {"class_tokens": "man", "is_reg": True}]}]
    found = metadata_triggers({"ss_datasets": json.dumps(datasets), "ss_training_comment": "trained on 10_sks photos",
                               "ssmd_cover_images": json.dumps(["aGk/sks/"])})
    assert found == [Trigger("ohwx man", "ss_datasets class_tokens"), Trigger("ohwx, man", "ss_datasets tag_frequency"),
                     Trigger("sks", "ss_training_comment")]  # tied top tags in caption order; base64 is not text
    assert metadata_triggers({"ssmd_keywords": json.dumps(["Sks Woman", "sks woman", "  "])}) == [
        Trigger("Sks Woman", "ssmd_keywords")]  # each phrase once, whatever its case
    many = {"ss_tag_frequency": json.dumps({f"{i}_dir": {f"tag{i}": 3} for i in range(20)})}
    assert [t.phrase for t in metadata_triggers(many)] == [f"tag{i}" for i in range(MAX_TRIGGERS)]
    hostile = {"ss_tag_frequency": "[1, 2]", "ss_datasets": '{"subsets": 3}', "trigger_word": "x" * 1000,
               "instance_prompt": "None"}
    assert metadata_triggers(hostile) == [Trigger("x" * 120, "trigger_word")]
    assert metadata_triggers({}) == [] and metadata_triggers({"modelspec.title": "sksy"}) == []


def test_trigger_prompts_use_the_instance_template():
    assert trigger_prompt("sks woman") == "a face of sks woman"
    assert trigger_prompt("A face of zwxq") == "A face of zwxq"


def test_render_triggers_keeps_the_most_consistent_prompt(tiny_toy_base, monkeypatch):
    import lora_audit.attack.training_free as training_free

    class Embedder:  # the second prompt's images agree best
        def embed(self, images):
            return images.reshape(len(images), -1)

    values = iter([0.1, 0.9])
    monkeypatch.setattr(training_free, "consistency", lambda embeddings: next(values))
    triggers = [Trigger("a face of zwxq", "modelspec.trigger_phrase"), Trigger("zwxq", "ss_tag_frequency"),
                Trigger("zwxq person", "ss_tag_frequency")]  # the first two are one prompt: tried once
    deltas = _deltas(_random_lora(tiny_toy_base))
    found = render_triggers(tiny_toy_base, deltas, triggers, 2, Embedder(), seed=1, steps=2)
    assert found.trigger == triggers[2] and found.consistency == 0.9 and found.tried == [triggers[0], triggers[2]]
    assert np.array_equal(found.images, prompted_images(tiny_toy_base, deltas, "a face of zwxq person", 2, seed=1,
                                                        steps=2))


# --- the scan: the toy world without its attack model ------------------------------------------


@pytest.fixture(scope="module")
def toy_world(tmp_path_factory):
    """A tiny toy base on disk and a LoRA of it with kohya's leaky metadata (its trigger in ss_tag_frequency)."""
    from lora_audit.families import load_base
    from lora_audit.toyworld.family import TOY_METADATA
    from lora_audit.toyworld.pipeline import ToyBaseConfig, make_toy_pipeline

    root = tmp_path_factory.mktemp("training_free")
    make_toy_pipeline(ToyBaseConfig.tiny()).save_pretrained(root / "base")
    base = load_base(str(root / "base"), "cpu")
    state = _random_lora(base)
    kohya = kohya_training_metadata(trigger="zwxq", class_word="person", num_images=2, steps=3, rank=2, alpha=2,
                                    base_model_version="toy", output_name="me")
    save_lora(str(root / "leaky.safetensors"), state, rank=2, alpha=2, metadata={**TOY_METADATA, **kohya})
    save_lora(str(root / "clean.safetensors"), state, rank=2, alpha=2, metadata=TOY_METADATA)
    return {"root": root, "base": str(root / "base")}


@pytest.fixture
def without_toy_attack(toy_world, monkeypatch):
    """The toy family as a real one is: no shipped attack model, its base given; a tiny random embedder."""
    from lora_audit.toyworld.embedder import ToyFaceEmbedder, ToyFaceNet, ToyNetConfig
    from lora_audit.toyworld.family import ToyFamily

    torch.manual_seed(0)
    embedder = ToyFaceEmbedder(ToyFaceNet(ToyNetConfig(image_size=16)), device="cpu")

    class NoAttack(ToyFamily):
        def shipped_attack_model(self):
            return None

        def face_embedder(self, device, face_weights=None):
            return embedder

    families.registered()
    monkeypatch.setitem(families._REGISTRY, "toy", NoAttack())
    return embedder


def _findings(check: IdentityCheck, path) -> dict:
    from lora_audit.scan.check import Subject
    from lora_audit.weights import open_lora
    from lora_audit.weights.stats import weight_stats

    with open_lora(str(path)) as lora:
        return {f.rule_id: f for f in check.run(Subject(str(path), lora, weight_stats(lora)))}


def test_without_an_attack_model_the_base_alone_runs_guidance_and_the_trigger(toy_world, without_toy_attack, tmp_path):
    from lora_audit.attack.training_free import GUIDANCE_WEIGHT
    from lora_audit.toyworld.renderer import render_batch
    from PIL import Image

    photos = tmp_path / "me"
    photos.mkdir()
    for i, photo in enumerate(render_batch([300_000] * 2, [100, 101], size=16)):
        Image.fromarray((photo * 255 + 0.5).astype(np.uint8)).save(photos / f"{i}.png")
    options = IdentityOptions(base=toy_world["base"], references=str(photos), out_dir=tmp_path / "grids",
                              latents=1, seeds=2, sampling_steps=2)
    check = IdentityCheck(options)
    leaky = _findings(check, toy_world["root"] / "leaky.safetensors")
    assert "LA303" not in leaky
    (weights,) = [leaky[r] for r in ("LA301", "LA302", "LA310") if r in leaky]
    assert weights.rule_id == consistency_rule(weights.evidence)
    assert weights.evidence["attack"] == "guidance_extraction" and weights.evidence["guidance_weight"] == GUIDANCE_WEIGHT
    assert weights.evidence["prompt"] == CLASS_PROMPT and weights.evidence["images"] == 2
    assert "step" not in weights.evidence and weights.evidence["grid"].endswith("_guided_grid.png")
    (verdict,) = [leaky[r] for r in ("LA304", "LA305") if r in leaky]
    assert verdict.rule_id == verdict_rule(verdict.evidence) and verdict.evidence["impostors"] == 200
    (trigger,) = [leaky[r] for r in ("LA308", "LA309") if r in leaky]
    evidence = trigger.evidence
    assert evidence["attack"] == "metadata_trigger" and evidence["trigger_source_count"] == 2
    assert evidence["trigger_sources"] == ["modelspec.trigger_phrase", "ss_tag_frequency"]
    assert "zwxq" not in trigger.message + json.dumps(evidence)  # where the trigger is, not what it says
    consistent = evidence["identity_consistency"] > evidence["threshold"]
    assert trigger.rule_id == ("LA308" if consistent or evidence["owner_match"] else "LA309")
    assert evidence["owner_similarity"] is not None and "owner_threshold" in evidence
    assert (tmp_path / "grids").is_dir() and evidence["grid"].endswith("_trigger_grid.png")
    clean = _findings(check, toy_world["root"] / "clean.safetensors")  # no trigger in its metadata: no LA308/LA309
    assert {"LA308", "LA309"}.isdisjoint(clean) and clean.keys() & {"LA301", "LA302", "LA310"}
    # The generic faces the verdict's measured null and the consistency reference use are the class prompt's.
    assert check._loaded["toy"].class_prompt == CLASS_PROMPT and check._loaded["toy"].attack is None


def test_la303_names_the_base_alone_and_a_base_of_another_family(toy_world, without_toy_attack):
    check = IdentityCheck(IdentityOptions())
    (missing,) = _findings(check, toy_world["root"] / "clean.safetensors").values()
    assert missing.rule_id == "LA303" and missing.evidence["missing"] == ["--base"]
    assert "guidance extraction needs only the base" in missing.message
    plan = IdentityCheck(IdentityOptions(base=toy_world["base"])).sources.plan("sd1")
    assert plan.base is None and plan.missing[0].input == "base" and "is a toy pipeline" in plan.missing[0].what


def test_the_trigger_finding_without_references_and_a_clean_trigger(toy_world, without_toy_attack, tmp_path,
                                                                    monkeypatch):
    import lora_audit.scan.identity as identity

    options = IdentityOptions(base=toy_world["base"], out_dir=tmp_path, latents=1, seeds=2, sampling_steps=2)
    for mean, rule in ((-2.0, "LA308"), (2.0, "LA309")):  # a generic reference below / above every consistency
        monkeypatch.setattr(identity, "generic_consistency", lambda base, embedder, prompt, k, mean=mean, **kw: {
            "mean": mean, "std": 0.0, "values": [mean], "k": k, "prompt": prompt,
            "sampling_steps": kw.get("sampling_steps"), "embedder": embedder.fingerprint()})
        found = _findings(IdentityCheck(options), toy_world["root"] / "leaky.safetensors")
        assert rule in found and "owner_similarity" not in found[rule].evidence
        assert found[rule].severity.label == ("high" if rule == "LA308" else "info")
        assert found[rule].message.startswith("prompted with the trigger in ")


# --- the scan: tiny SD pipelines, --base and no attack model ----------------------------------


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """family -> (its tiny pipeline's directory, a LoRA file of it with kohya's leaky metadata); a random FaceNet."""
    from lora_audit.families import load_base
    from lora_audit.identity.facenet import InceptionResnetV1
    from lora_audit.testing.pipelines import write_pipeline

    root = tmp_path_factory.mktemp("sd")
    made = {}
    for family in ("sd1", "sdxl"):
        pipeline = str(write_pipeline(family, root / family))
        lora = root / f"{family}.safetensors"
        save_lora(str(lora), _random_lora(load_base(pipeline, "cpu"), scale=0.05), rank=2, alpha=2,
                  metadata=leaky_kohya_metadata(family="sdxl" if family == "sdxl" else "sd15"))
        made[family] = (pipeline, lora)
    torch.manual_seed(0)
    torch.save(InceptionResnetV1().state_dict(), root / "facenet.pt")  # random weights: plumbing only
    return {"loras": made, "face_weights": str(root / "facenet.pt")}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_sd_with_only_the_base_gets_an_identity_finding_instead_of_la303(sd, family, tmp_path):
    pipeline, lora = sd["loras"][family]
    options = IdentityOptions(base=pipeline, face_weights=sd["face_weights"], out_dir=tmp_path, latents=1, seeds=2,
                              sampling_steps=2)
    findings = _findings(IdentityCheck(options), lora)
    assert "LA303" not in findings
    (weights,) = [findings[r] for r in ("LA301", "LA302", "LA310") if r in findings]
    assert weights.rule_id == consistency_rule(weights.evidence)
    assert weights.evidence["attack"] == "guidance_extraction" and weights.evidence["embedder"].startswith("FaceNet")
    (trigger,) = [findings[r] for r in ("LA308", "LA309") if r in findings]  # "sks woman", modelspec.trigger_phrase
    assert trigger.evidence["trigger_source"] == "modelspec.trigger_phrase"
    without = _findings(IdentityCheck(IdentityOptions(face_weights=sd["face_weights"])), lora)
    assert list(without) == ["LA303"] and without["LA303"].evidence["missing"] == ["--base"]


@pytest.mark.slow  # the scan's defaults (K = 8, 25 steps) and FaceNet on 72 generic faces: ~30 s loaded
def test_sd_scan_command_with_only_the_base(sd, tmp_path):
    from lora_audit.cli import main

    pipeline, lora = sd["loras"]["sd1"]
    report = tmp_path / "report.json"
    main(["scan", str(lora), "--base", pipeline, "--face-weights", sd["face_weights"], "-q", "-f", "json",
          "-o", str(report)])
    (result,) = parse_json_report(report.read_text())["files"]
    assert result["error"] is None and result["stats"]["base_model"] == "sd1"
    findings = {f["rule_id"]: f for f in result["findings"]}
    assert "LA303" not in findings and findings.keys() & {"LA308", "LA309"}
    (identity,) = [findings[r] for r in ("LA301", "LA302", "LA310") if r in findings]
    assert identity["evidence"]["attack"] == "guidance_extraction" and identity["evidence"]["images"] == 8


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_guidance_is_exact_at_w0_and_w1_on_sd_pipelines(sd, family):
    from lora_audit.families import load_base
    from lora_audit.weights import open_lora

    pipeline, lora = sd["loras"][family]
    base = load_base(pipeline, "cpu")
    with open_lora(str(lora)) as lora_file:
        deltas = lora_file.deltas()
    embeds = base.encode_prompt([CLASS_PROMPT]).detach().expand(2, -1, -1)
    plain = base.generate(embeds, seed=2, steps=2)
    tuned = prompted_images(base, deltas, CLASS_PROMPT, 2, seed=2, steps=2)
    assert not np.array_equal(plain, tuned)
    assert np.array_equal(guidance_images(base, deltas, 2, 0.0, seed=2, steps=2), plain)
    assert np.array_equal(guidance_images(base, deltas, 2, 1.0, seed=2, steps=2), tuned)


# --- the evaluate rows ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """As tests/test_attack.py's: a tiny base on disk, three shadow trajectories (the victims here), an attack."""
    from lora_audit.attack.shadow import ShadowConfig, build_shadows, load_trajectories
    from lora_audit.attack.train import train_attack
    from lora_audit.attack.train_config import TrainConfig
    from lora_audit.diffusion.finetune import FinetuneConfig
    from lora_audit.families import load_base
    from lora_audit.toyworld.pipeline import ToyBaseConfig, make_toy_pipeline

    root = tmp_path_factory.mktemp("evaluate")
    make_toy_pipeline(ToyBaseConfig.tiny()).save_pretrained(root / "base")
    recipe = FinetuneConfig(rank=2, steps=3, num_class_images=2, class_sampling_steps=2)
    build_shadows(ShadowConfig(identities=3, photos=2, image_size=16, snapshot_steps=(2, 3), finetune=recipe),
                  root / "shadows", str(root / "base"))
    base = load_base(str(root / "base"), device="cpu")
    train_attack(base, load_trajectories(root / "shadows"), TrainConfig.tiny(), root / "attack")
    return root


def test_evaluate_adds_the_training_free_rows_in_records_of_their_own(world, tmp_path):
    from lora_audit.toyworld.lab.evaluate import EvaluationConfig, evaluate, results_markdown
    from lora_audit.weights import open_lora

    out = tmp_path / "out"
    config = EvaluationConfig(latents=1, seeds=2, sampling_steps=2, guidance_weights=(0.0, 1.0))
    args = (world / "shadows", world / "attack", None, str(world / "base"), out)
    result = evaluate(*args, config)
    summary = result["summary"]
    assert list(summary)[-3:] == ["guidance_w0", "guidance_w1", "metadata_trigger"]
    assert result["scores"]["guidance_w0"] == result["scores"]["base"]  # w = 0: the base's images exactly
    assert result["scores"]["guidance_w1"] == result["scores"]["lora_class"]  # w = 1: the LoRA's
    assert all(summary[m]["seconds_per_lora"] > 0 for m in ("guidance_w0", "metadata_trigger"))
    victims = out / "victims"
    main_records = {p.name: p.read_bytes() for p in victims.glob("*") if p.name.count(".") == 1}
    assert len(main_records) == 6  # <id>.json and <id>.npz per victim, as before
    record = json.loads((victims / "201000.metadata_trigger.json").read_text())
    assert record["key"]["method"] == "metadata_trigger" and len(record["scores"]) == 3
    kohya = out / "loras" / "victim_201000_kohya.safetensors"
    with open_lora(str(kohya)) as lora_file:  # kohya's default keys: the trigger only in the caption tags
        assert [t.source for t in metadata_triggers(lora_file.metadata)] == ["ss_tag_frequency"]
    kept_w0 = (victims / "201000.guidance_w0.json").read_bytes()
    again = evaluate(*args, EvaluationConfig(latents=1, seeds=2, sampling_steps=2, guidance_weights=(0.0, 2.0)))
    assert {p.name: p.read_bytes() for p in victims.glob("*") if p.name.count(".") == 1} == main_records
    assert (victims / "201000.guidance_w0.json").read_bytes() == kept_w0  # another w adds a record, keeps this one
    assert "guidance_w2" in again["summary"] and "guidance_w1" not in again["summary"]
    assert set(result["samples"]["201000"]) >= {"guidance_w0", "metadata_trigger"}
    text = results_markdown(again, "lora-audit evaluate v")
    assert "| guidance extraction (w=2): eps_base + w(eps_lora - eps_base) under the class prompt" in text
    assert "| metadata trigger: LoRA + the trigger in kohya's default metadata (ss_tag_frequency" in text
