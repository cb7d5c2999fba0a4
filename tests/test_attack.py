"""The weight-to-image attack end to end on a tiny toy base: shadows -> train -> reconstruct -> scan."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from lora_audit.identity.metrics import consistency
from lora_audit.scan.check import Subject
from lora_audit.scan.identity import IdentityCheck, IdentityOptions
from lora_audit.attack.decoder import per_sample_deltas
from lora_audit.attack.model import AttackModel
from lora_audit.attack.reconstruct import reconstruct, save_reconstruction, step_from_metadata
from lora_audit.attack.shadow import ShadowConfig, build_shadows, load_trajectories
from lora_audit.attack.train import train_attack
from lora_audit.attack.train_config import TrainConfig
from lora_audit.cli import main
from lora_audit.errors import InvalidFileError, UsageError
from lora_audit.diffusion.finetune import FinetuneConfig
from lora_audit import families
from lora_audit.families import get_family, load_base
from lora_audit.toyworld.pipeline import ToyBaseConfig, make_toy_pipeline
from lora_audit.toyworld.family import TOY_METADATA, ToyFamily
from lora_audit.weights import open_lora
from lora_audit.weights.writer import save_lora
from report_checks import (consistency_rule, crowd_reference, generic_reference, measured_consistency, parse_json_report,
                           verdict_rule)

RECIPE = FinetuneConfig(rank=2, steps=3, num_class_images=2, class_sampling_steps=2)
SHADOWS = ShadowConfig(identities=3, photos=2, image_size=16, snapshot_steps=(2, 3), finetune=RECIPE)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny base on disk, three shadow trajectories, an attack trained on two of them."""
    root = tmp_path_factory.mktemp("attack")
    pipe = make_toy_pipeline(ToyBaseConfig.tiny())
    pipe.save_pretrained(root / "base")
    build_shadows(SHADOWS, root / "shadows", str(root / "base"))
    base = load_base(str(root / "base"), device="cpu")
    trajectories = load_trajectories(root / "shadows")
    model = train_attack(base, trajectories, TrainConfig.tiny(), root / "attack")
    held_out = trajectories[-1]
    lora = root / "held_out.safetensors"
    save_lora(str(lora), held_out.states[3], layout="kohya", rank=2, alpha=2, metadata=TOY_METADATA)
    return {"root": root, "base": base, "trajectories": trajectories, "model": model, "lora": lora}


def test_shadow_shards_hold_trajectories(world):
    trajectories = world["trajectories"]
    assert [t.identity for t in trajectories] == ["201000", "201001", "201002"]
    for t in trajectories:
        assert t.images.shape == (2, 16, 16, 3) and t.images.dtype == np.uint8
        assert t.steps == [2, 3] and t.rank == 2
        assert any(not np.allclose(t.deltas(2)[n], t.deltas(3)[n]) for n in t.deltas(3))  # the LoRA moved
    assert len({t.trigger for t in trajectories}) == 3


def test_shadows_resume_and_refuse_another_recipe(world, tmp_path):
    out = tmp_path / "shadows"
    shutil.copytree(world["root"] / "shadows", out)
    (out / "shadow-00001.safetensors").unlink()
    before = (out / "shadow-00000.safetensors").read_bytes()
    summary = build_shadows(SHADOWS, out, str(world["root"] / "base"))
    assert summary["trained_now"] == 1 and (out / "shadow-00001.safetensors").is_file()
    assert (out / "shadow-00000.safetensors").read_bytes() == before
    more = ShadowConfig(**{**SHADOWS.__dict__, "identities": 4})  # adding identities is the same recipe
    assert build_shadows(more, out, str(world["root"] / "base"))["trained_now"] == 1
    other = ShadowConfig(**{**SHADOWS.__dict__, "photos": 3})
    with pytest.raises(UsageError, match="another recipe"):
        build_shadows(other, out, str(world["root"] / "base"))


def test_trajectory_features_equal_the_saved_files_in_every_layout(world, tmp_path):
    model, t = world["model"], world["trajectories"][0]
    from_factors, _ = model.module_inputs({n: model.sketcher.sketch_factors(u, d, s) for n, u, d, s in t.factors(3)})
    for layout in ("peft", "kohya"):
        path = tmp_path / f"{layout}.safetensors"
        save_lora(str(path), t.states[3], layout=layout, rank=t.rank, alpha=t.alpha, metadata=TOY_METADATA)
        with open_lora(str(path)) as f:
            raw, padding = model.file_inputs(f)
        assert not padding.any()
        torch.testing.assert_close(raw, from_factors)


def test_a_higher_rank_refactorisation_gives_the_same_inputs(world, tmp_path):
    model, t = world["model"], world["trajectories"][0]
    state = {}
    for key, value in t.states[3].items():  # rank 2 -> rank 4 with a random invertible mix: same dW
        if key.endswith("lora_A.weight"):
            up = t.states[3][key.replace("lora_A", "lora_B")]
            g = np.random.default_rng(0).normal(size=(4, 2))
            state[key] = (g @ value).astype(np.float32)  # [4, in]
            state[key.replace("lora_A", "lora_B")] = (up @ np.linalg.pinv(g)).astype(np.float32)  # [out, 4]
    paths = []
    for name, s, rank in (("r2", t.states[3], 2), ("r4", state, 4)):
        paths.append(tmp_path / f"{name}.safetensors")
        save_lora(str(paths[-1]), s, rank=rank, alpha=rank, metadata=TOY_METADATA)  # scale 1 for both
    with open_lora(str(paths[0])) as a, open_lora(str(paths[1])) as b:
        assert {m.rank for m in b.modules} == {4}
        torch.testing.assert_close(model.file_inputs(a)[0], model.file_inputs(b)[0], rtol=1e-4, atol=1e-7)


def test_per_sample_deltas_equal_patching_each_model(world):
    base, (a, b, _) = world["base"], world["trajectories"]
    da, db = ({k: torch.as_tensor(v) for k, v in t.deltas(3).items()} for t in (a, b))
    torch.manual_seed(0)  # two LoRAs x two images each, in one call
    x, t, z = torch.randn(4, 3, 16, 16), torch.tensor([10, 500, 900, 300]), torch.randn(4, 32, 16)
    with torch.no_grad():
        with base.patched(da):
            first = base.unet(x[:2], t[:2], encoder_hidden_states=z[:2]).sample
        with base.patched(db):
            second = base.unet(x[2:], t[2:], encoder_hidden_states=z[2:]).sample
        with per_sample_deltas(base, {k: torch.stack([da[k], db[k]]) for k in da}):
            both = base.unet(x, t, encoder_hidden_states=z).sample
        plain = base.unet(x, t, encoder_hidden_states=z).sample
    torch.testing.assert_close(both, torch.cat([first, second]), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(plain, both)


def test_training_writes_the_model_and_curves_and_resumes_exactly(world, tmp_path):
    out = world["root"] / "attack"
    assert {"attack.json", "attack.safetensors", "curves.json", "curves.png", "checkpoint.pt"} <= {p.name for p in out.iterdir()}
    curves = json.loads((out / "curves.json").read_text())
    assert [c["step"] for c in curves] == [2, 4, 6] and all(np.isfinite(c["mse"]) for c in curves)
    training = world["model"].config.training
    assert training["held_out"] == ["201002"] and training["training_pairs"] == 4  # 2 shadows x 2 snapshots
    # An interrupted run (checkpoint at step 3 of 6) resumes to the same weights as the run that never stopped.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(out / "checkpoint.pt", resumed / "checkpoint.pt")
    again = train_attack(world["base"], world["trajectories"], TrainConfig.tiny(), resumed)
    for key, value in world["model"].state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    with pytest.raises(UsageError, match="another training configuration"):
        train_attack(world["base"], world["trajectories"], TrainConfig(**{**TrainConfig.tiny().__dict__, "lr": 1e-2}), resumed)
    # A checkpoint from before a TrainConfig field existed resumes when that field keeps its default
    # (``seed`` stands in for a field added later: tiny() leaves it at the default).
    older = tmp_path / "older"
    older.mkdir()
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    del state["identity"]["config"]["seed"]
    torch.save(state, older / "checkpoint.pt")
    again = train_attack(world["base"], world["trajectories"], TrainConfig.tiny(), older)
    assert torch.equal(again.encoder.mu_head.weight, world["model"].encoder.mu_head.weight)


def test_module_dropout_hides_random_modules_in_training_only(world, tmp_path, monkeypatch):
    seen = []
    posterior = AttackModel.posterior

    def spy(self, raw, padding, step):
        seen.append((self.training, padding.clone()))
        return posterior(self, raw, padding, step)

    monkeypatch.setattr(AttackModel, "posterior", spy)
    config = TrainConfig(**{**TrainConfig.tiny().__dict__, "steps": 4, "module_dropout": 0.9})
    train_attack(world["base"], world["trajectories"], config, tmp_path / "attack")
    training = torch.cat([padding for is_training, padding in seen if is_training])  # [S * steps, M]
    validation = torch.cat([padding for is_training, padding in seen if not is_training])
    assert training.float().mean() > 0.5 and not training.all(dim=1).any()  # most hidden, never all
    assert not validation.any()  # held-out evaluation sees every module


def test_save_load_round_trip_reconstructs_bit_identical_images(world, tmp_path):
    loaded = AttackModel.load(world["root"] / "attack")
    with open_lora(str(world["lora"])) as f:
        first = reconstruct(world["model"], world["base"], f, latents=2, seeds=2, sampling_steps=2, seed=3)
        second = reconstruct(loaded, world["base"], f, latents=2, seeds=2, sampling_steps=2, seed=3)
        other_seed = reconstruct(loaded, world["base"], f, latents=2, seeds=2, sampling_steps=2, seed=4)
    assert first.images.shape == (4, 16, 16, 3) and np.isfinite(first.images).all()
    assert np.array_equal(first.images, second.images)
    assert not np.array_equal(first.images, other_seed.images)
    assert first.step_source == "estimate" and 1 <= first.step <= loaded.config.encoder.max_step
    paths = save_reconstruction(first, tmp_path, "victim")
    assert [p.name for p in paths] == ["victim_z0_seed0.png", "victim_z0_seed1.png", "victim_z1_seed0.png",
                                       "victim_z1_seed1.png", "victim_grid.png"]
    from PIL import Image

    assert Image.open(paths[-1]).size == (2 * 16 * 4, 2 * 16 * 4)


def test_attack_model_load_errors(world, tmp_path):
    with pytest.raises(UsageError, match="not an attack model"):
        AttackModel.load(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(world["root"] / "attack", broken)
    (broken / "attack.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(InvalidFileError, match="attack.safetensors: does not hold this attack model's weights"):
        AttackModel.load(broken)
    config = json.loads((broken / "attack.json").read_text())
    config["encoder"]["width"] = 8  # weights of another shape
    shutil.copy(world["root"] / "attack" / "attack.safetensors", broken / "attack.safetensors")
    (broken / "attack.json").write_text(json.dumps(config))
    with pytest.raises(InvalidFileError, match="does not hold"):
        AttackModel.load(broken)


def test_step_comes_from_kohya_metadata_first():
    assert step_from_metadata({"ss_max_train_steps": "500", "ss_steps": "480"}) == (500, "ss_max_train_steps")
    assert step_from_metadata({"ss_steps": "480"}) == (480, "ss_steps")
    assert step_from_metadata({"ss_max_train_steps": "None"}) is None
    assert step_from_metadata({}) is None


def test_step_estimator_recovers_a_log_linear_law(world):
    model = AttackModel(world["model"].config)
    m, kk = model.feature_mean.shape
    steps = torch.tensor([50.0, 100, 200, 400, 800] * 4)
    raw = torch.randn(len(steps), m, kk)
    raw = raw / raw.norm(dim=-1, keepdim=True) * steps.sqrt()[:, None, None]  # |sketch| grows as sqrt(r)
    model.fit_statistics(raw, torch.zeros(len(steps), m, dtype=torch.bool), steps, ridge=1e-8)
    torch.testing.assert_close(model.estimate_step(raw, torch.zeros(len(steps), m, dtype=torch.bool)), steps, rtol=1e-3, atol=0.0)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    mu, logvar = torch.zeros(2, 4), torch.zeros(2, 4)
    assert AttackModel.kl(mu, logvar).item() == 0
    assert AttackModel.kl(mu + 0.1, logvar).item() > 0 and AttackModel.kl(mu, logvar - 1).item() > 0


def test_latent_subspace_spans_prompt_embeddings(world):
    from lora_audit.attack.latent import prompt_subspace
    from lora_audit.families import get_family

    base, model = world["base"], world["model"]
    prompts = get_family("toy").face_prompts(16)
    offset, basis, explained = prompt_subspace(base, prompts, 4)
    assert torch.equal(offset, model.latent_offset) and torch.equal(basis, model.latent_basis)
    assert 0 < explained <= 1 and basis.shape == (4, offset.numel())
    embeds = base.encode_prompt(prompts).detach()  # [16, L, D]
    coefficients = model.from_latent(embeds)  # [16, 4]
    # Whitened: the very prompts the subspace was fitted on have coefficients c = U sqrt(N - 1) (X - mean = U S V^T),
    # so their mean is 0 and their covariance c^T c / (N - 1) = U^T U is exactly the identity.
    assert coefficients.shape == (16, 4)
    torch.testing.assert_close(coefficients.mean(0), torch.zeros(4), rtol=0, atol=1e-4)
    torch.testing.assert_close(coefficients.var(0), torch.ones(4), rtol=0, atol=1e-4)
    torch.testing.assert_close(coefficients.T @ coefficients / 15, torch.eye(4), rtol=0, atol=1e-4)
    assert torch.allclose(model.to_latent(torch.zeros(1, 4))[0], offset)
    c = torch.randn(3, 4)
    assert torch.allclose(model.from_latent(model.to_latent(c)), c, atol=1e-4)  # a z in the span projects back
    residual = embeds - model.to_latent(coefficients)  # the projection's error is orthogonal to the span
    assert torch.allclose(residual.flatten(1) @ basis.T, torch.zeros(16, 4), atol=1e-3)
    sd1 = get_family("sd1").face_prompts
    assert len(sd1(50)) == 50 and all("photo" in p for p in sd1(5))




def test_consistency_of_embeddings():
    same = np.tile(np.array([[0.6, 0.8]]), (4, 1))
    assert consistency(same) == pytest.approx(1.0)
    opposite = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert consistency(opposite) == pytest.approx(-1.0)


def identity_findings(check: IdentityCheck, path, family: str | None = None) -> list:
    """The identity check's findings for the LoRA at ``path`` (its detected family, or ``family``)."""
    from dataclasses import replace

    from lora_audit.weights.stats import weight_stats

    with open_lora(str(path)) as lora:
        stats = weight_stats(lora)
        return check.run(Subject(str(path), lora, replace(stats, base_model=family or stats.base_model)))


def _toy_embedder(monkeypatch):
    """A random tiny toy embedder as the toy family's face embedder."""
    from lora_audit.toyworld.embedder import ToyFaceEmbedder, ToyFaceNet, ToyNetConfig

    torch.manual_seed(0)
    embedder = ToyFaceEmbedder(ToyFaceNet(ToyNetConfig(image_size=16)), device="cpu")
    monkeypatch.setattr(get_family("toy"), "face_embedder", lambda device, face_weights=None: embedder)
    return embedder


def test_a_crowd_lora_exactly_as_consistent_counts_against_la301(tmp_path):
    from lora_audit.scan.identity import _consistency

    generic, about = {"mean": 0.1, "std": 0.0, "embedder": "e"}, {"attack": "vae", "latents": 4, "seeds": 2}
    one, two = (_consistency(0.5, generic, about, tmp_path / "g.png", {"values": [0.5] * n + [0.2] * (20 - n)})
                for n in (1, 2))
    assert (one.rule_id, one.evidence["crowd_at_least"], one.evidence["crowd_far"]) == ("LA301", 1, 0.05)
    assert (two.rule_id, two.evidence["crowd_at_least"], two.evidence["crowd_far"]) == ("LA310", 2, 0.1)
    assert two.evidence["crowd_null"] == "not recorded"  # a null without its source says so


def test_identity_check_findings(world, monkeypatch):
    _toy_embedder(monkeypatch)
    options = IdentityOptions(attack_model=str(world["root"] / "attack"), base=str(world["root"] / "base"),
                              out_dir=world["root"] / "grids", latents=2, seeds=1, sampling_steps=2)
    (finding,) = identity_findings(IdentityCheck(options), world["lora"])
    assert finding.rule_id == consistency_rule(finding.evidence)
    assert (world["root"] / "grids").is_dir() and finding.evidence["grid"].endswith("_grid.png")
    value, _ = measured_consistency(finding.evidence)
    # Every verdict on the same reconstructions: a generic reference just below / just above them, and
    # above it a crowd null (LoRAs of no one person) of none, of values below them, of values as high.
    cases = [(value - 0.01, None, "LA310", "medium"), (value - 0.01, [value - 0.2] * 19 + [value + 0.1], "LA301", "high"),
             (value - 0.01, [value - 0.2] * 18 + [value + 0.1] * 2, "LA310", "medium"),
             (value + 0.01, [value - 0.2] * 20, "LA302", "info")]
    for mean, crowd, rule, severity in cases:
        generic_reference(monkeypatch, mean)
        crowd_reference(monkeypatch, crowd)
        (forced,) = identity_findings(IdentityCheck(options), world["lora"])
        assert forced.rule_id == rule == consistency_rule(forced.evidence), (mean, crowd)
        assert forced.evidence["identity_consistency"] == pytest.approx(value, abs=1e-3)
        assert forced.evidence["generic_consistency_mean"] == pytest.approx(mean, rel=1e-3)
        assert forced.evidence["generic_consistency_std"] == 0.0
        assert forced.evidence["threshold"] == pytest.approx(mean, rel=1e-3)
        assert forced.severity.label == severity
        if rule != "LA302" and crowd is not None:  # 1 of 20 (within 0.05) and 2 of 20 (above it)
            assert forced.evidence["crowd_far"] == (0.05 if rule == "LA301" else 0.1)
            assert forced.evidence["crowd_loras"] == 20 and forced.evidence["crowd_far_target"] == 0.05
            assert "of 20 LoRAs of several people or of objects are as consistent" in forced.message
        elif rule == "LA310":
            assert forced.evidence["crowd_null"] == "not measured" and "not measured" in forced.message
    # The policy's crowd_far moves LA301's line: 2 of 20 is within 0.1.
    crowd_reference(monkeypatch, [value - 0.2] * 18 + [value + 0.1] * 2)
    generic_reference(monkeypatch, value - 0.01)
    (loose,) = identity_findings(IdentityCheck(dataclasses.replace(options, crowd_far=0.1)), world["lora"])
    assert loose.rule_id == "LA301" and loose.evidence["crowd_far_target"] == 0.1
    # A null too small for the target cannot show it: 19 LoRAs all below, but 1/19 > 0.05.
    crowd_reference(monkeypatch, [value - 0.2] * 19)
    (small,) = identity_findings(IdentityCheck(options), world["lora"])
    assert small.rule_id == "LA310" == consistency_rule(small.evidence) and small.evidence["crowd_at_least"] == 0
    assert "a null of 19 LoRAs cannot show a FAR of 0.05" in small.message
    (missing,) = identity_findings(IdentityCheck(IdentityOptions()), world["lora"], "sd1")
    assert missing.rule_id == "LA303" and missing.evidence["missing"] == ["--base"]  # the base alone runs guidance
    assert missing.message == ("no identity attack for a sd1 LoRA without --base (a local diffusers pipeline "
                               "directory for sd1): guidance extraction needs only the base, the weight-to-image "
                               "VAE also --attack-model")
    (flux,) = identity_findings(IdentityCheck(IdentityOptions()), world["lora"], "flux")
    assert flux.rule_id == "LA303" and "flux" in flux.message


def test_references_with_facenet_use_its_published_threshold_and_name_unused_photos(world, tmp_path, monkeypatch):
    from PIL import Image
    from skimage import data

    from lora_audit.identity.facenet import FaceNetEmbedder, InceptionResnetV1

    from lora_audit.families.stable_diffusion import StableDiffusion
    from lora_audit.toyworld.family import ToyFamily

    torch.manual_seed(0)
    embedder = FaceNetEmbedder(InceptionResnetV1(), device="cpu")

    class FaceNetToy(ToyFamily):  # the toy world scored as a real family is: FaceNet, detection, a published threshold
        detect_faces = True

        def face_embedder(self, device, face_weights=None):
            return embedder

        owner_null = StableDiffusion.owner_null

    families.registered()
    monkeypatch.setitem(families._REGISTRY, "toy", FaceNetToy())
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(data.astronaut()).save(photos / "astronaut.png")
    Image.new("RGB", (128, 128), (128, 128, 128)).save(photos / "grey.png")
    options = IdentityOptions(attack_model=str(world["root"] / "attack"), base=str(world["root"] / "base"),
                              references=str(photos), out_dir=tmp_path / "grids", latents=2, seeds=1, sampling_steps=2)
    check = IdentityCheck(options)
    findings = {f.rule_id: f for f in identity_findings(check, world["lora"])}
    (verdict,) = [findings[r] for r in ("LA304", "LA305") if r in findings]
    assert verdict.evidence["threshold"] == pytest.approx(0.459, abs=5e-4)
    assert verdict.evidence["threshold_source"].startswith("deepface's published Facenet512 threshold")
    similarity = verdict.evidence["owner_similarity"]
    assert verdict.rule_id == ("LA304" if similarity >= 0.459 else "LA305")  # the operating point decides
    assert verdict.evidence["impostor_far"] is None
    assert verdict.evidence["impostor_far_note"].startswith("not measured (no gallery")
    assert 0 <= verdict.evidence["generic_null_reached"] <= verdict.evidence["generic_null_groups"] == 8
    assert verdict.evidence["reference_photos"] == 1
    assert findings["LA306"].message.startswith("1 of 2 reference photos not used: grey.png: ")
    assert set(findings["LA306"].evidence["photos"]) == {"grey.png"} and findings["LA306"].evidence["photo_count"] == 1
    # Both verdicts on the same reconstructions: an operating point just below / just above their similarity.
    for threshold, rule in ((similarity - 0.01, "LA304"), (similarity + 0.01, "LA305")):
        embedder.verification_threshold = lambda t=threshold: (t, "a forced operating point")
        check._owners.clear()  # the owner's null is read again; the generic faces stay cached (seconds of FaceNet)
        forced = {f.rule_id: f for f in identity_findings(check, world["lora"])}
        assert rule in forced and ({"LA304", "LA305"} - {rule}).isdisjoint(forced)
        assert forced[rule].evidence["threshold"] == pytest.approx(threshold, rel=1e-3)
        assert forced[rule].evidence["threshold_source"] == "a forced operating point"
        assert forced[rule].evidence["owner_similarity"] == verdict.evidence["owner_similarity"]


def test_a_crashing_attack_is_an_error_not_a_skip(world, tmp_path, monkeypatch):
    import lora_audit.attack.reconstruct

    def crash(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(lora_audit.attack.reconstruct, "reconstruct", crash)
    report = tmp_path / "r.json"
    code = main(["scan", str(world["lora"]), "-f", "json", "-o", str(report), "--attack-model",
                 str(world["root"] / "attack"), "--base", str(world["root"] / "base"), "--fail-on", "critical"])
    (file,) = json.loads(report.read_text())["files"]
    assert code == 2 and file["error"] == "the weight-to-image attack failed: RuntimeError: out of memory"
    assert [f["rule_id"] for f in file["findings"]] == ["LA307"] and file["findings"][0]["severity"] == "high"


def test_a_missing_face_embedder_is_la303_and_a_bad_input_stops_the_scan(world, tmp_path, monkeypatch, capsys):
    from lora_audit.errors import MissingInputError
    from lora_audit.toyworld.family import ToyFamily

    class NoWeights(ToyFamily):
        def face_embedder(self, device, face_weights=None):
            raise MissingInputError("face_weights", None, "no FaceNet weights (not in the cache)")

    families.registered()
    monkeypatch.setitem(families._REGISTRY, "toy", NoWeights())
    options = IdentityOptions(attack_model=str(world["root"] / "attack"), base=str(world["root"] / "base"),
                              out_dir=tmp_path, latents=2, seeds=1, sampling_steps=2)
    (finding,) = identity_findings(IdentityCheck(options), world["lora"])
    assert finding.rule_id == "LA303" and finding.evidence == {"missing": ["face_weights"], "missing_count": 1}
    broken = tmp_path / "broken"
    shutil.copytree(world["root"] / "attack", broken)
    (broken / "attack.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    assert main(["scan", str(world["lora"]), "--attack-model", str(broken), "--base", str(world["root"] / "base")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lora-audit: error: {broken / 'attack.safetensors'}: does not hold") and err.count("\n") == 1


def test_unusable_references_keep_the_weights_finding(world, tmp_path, monkeypatch):
    from lora_audit.toyworld.family import ToyFamily

    _toy_embedder(monkeypatch)
    (tmp_path / "photos").mkdir()
    Image = pytest.importorskip("PIL.Image")
    Image.new("RGB", (128, 128), (128, 128, 128)).save(tmp_path / "photos" / "grey.png")  # readable, no face
    args = ["scan", str(world["lora"]), "-f", "json", "-o", str(tmp_path / "r.json"), "--attack-model",
            str(world["root"] / "attack"), "--base", str(world["root"] / "base"), "--fail-on", "critical"]
    assert main(args + ["--references", str(tmp_path / "empty")]) == 4  # not a folder: a usage error
    (tmp_path / "empty").mkdir()
    assert main(args + ["--references", str(tmp_path / "empty")]) == 4  # no photo at all
    detecting = ToyFamily()
    detecting.detect_faces = True  # a family whose photos are searched for faces finds none in grey.png
    detecting.face_embedder = get_family("toy").face_embedder
    monkeypatch.setitem(families._REGISTRY, "toy", detecting)
    assert main(args + ["--references", str(tmp_path / "photos")]) == 0
    findings = parse_json_report((tmp_path / "r.json").read_text())["files"][0]["findings"]
    rules = [f["rule_id"] for f in findings]
    assert rules[0] == consistency_rule(findings[0]["evidence"]) and rules[1:] == ["LA307"]  # the weights-only finding survives


def test_cached_generic_faces_serve_only_the_embedder_that_measured_them(world, tmp_path, monkeypatch):
    import lora_audit.scan.identity as identity

    calls = []
    real = identity.generic_consistency
    monkeypatch.setattr(identity, "generic_consistency", lambda *a, **k: calls.append(1) or real(*a, **k))
    embedder = _toy_embedder(monkeypatch)
    attack = tmp_path / "attack"
    shutil.copytree(world["root"] / "attack", attack)
    config = json.loads((attack / "attack.json").read_text())
    cached = {"mean": 0.5, "std": 0.01, "values": [0.5], "k": 2, "prompt": "p", "sampling_steps": 2}
    for fingerprint, expected_calls in (("another:embedder", 1), (embedder.fingerprint(), 0)):
        config["evaluation"]["generic_consistency"] = {**cached, "embedder": fingerprint}
        (attack / "attack.json").write_text(json.dumps(config))
        calls.clear()
        options = IdentityOptions(attack_model=str(attack), base=str(world["root"] / "base"), out_dir=tmp_path,
                                  latents=2, seeds=1, sampling_steps=2)
        (finding,) = identity_findings(IdentityCheck(options), world["lora"])
        assert len(calls) == expected_calls
        generic = (finding.evidence["generic_consistency_mean"], finding.evidence["generic_consistency_std"])
        assert (generic == (0.5, 0.01)) == (expected_calls == 0)


def test_cli_train_and_reconstruct(world, tmp_path, capsys):
    root = world["root"]
    assert main(["train-attack", str(root / "shadows"), "-o", str(tmp_path / "a"), "--base", str(root / "base"),
                 "--steps", "2", "--shadows-per-step", "1", "--validation", "1"]) == 0
    assert (tmp_path / "a" / "attack.safetensors").is_file()
    assert main(["train-attack", str(root / "shadows"), "-o", str(tmp_path / "nv"), "--base", str(root / "base"),
                 "--steps", "2", "--shadows-per-step", "1", "--validation", "0"]) == 0  # no held-out curve
    assert json.loads((tmp_path / "nv" / "curves.json").read_text())[-1]["val_mse"] is None
    assert main(["reconstruct", str(world["lora"]), "-o", str(tmp_path / "rec"), "--attack-model", str(tmp_path / "a"),
                 "--base", str(root / "base"), "--latents", "2", "--seeds", "1", "--sampling-steps", "2"]) == 0
    assert len(list((tmp_path / "rec").glob("*.png"))) == 3
    assert "step r =" in capsys.readouterr().out
    assert main(["reconstruct", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "x")]) == 2
    assert main(["reconstruct", str(world["lora"]), "-o", str(tmp_path / "x"), "--attack-model", str(tmp_path)]) == 4
    assert main(["train-attack", str(tmp_path), "-o", str(tmp_path / "b")]) == 4
    err = capsys.readouterr().err
    assert "not an attack model" in err and "no shadow shards" in err
    config = json.loads((tmp_path / "a" / "attack.json").read_text())
    (tmp_path / "a" / "attack.json").write_text(json.dumps({**config, "family": "sd1"}))
    assert main(["reconstruct", str(world["lora"]), "-o", str(tmp_path / "x"), "--attack-model", str(tmp_path / "a")]) == 4
    assert "attacks sd1 LoRAs, not toy ones" in capsys.readouterr().err


def test_scan_adds_the_identity_finding_and_names_missing_inputs(world, tmp_path, monkeypatch):
    from lora_audit.testing import synthetic as S

    _toy_embedder(monkeypatch)
    root = world["root"]
    sd1 = S.save_synthetic(tmp_path / "sd1.safetensors", S.as_kohya(S.make_lora("sd15", rank=2, max_modules=2)))
    report = tmp_path / "report.json"
    args = ["scan", str(world["lora"]), str(sd1), "-f", "json", "-o", str(report), "--attack-model", str(root / "attack"),
            "--base", str(root / "base"), "--fail-on", "info"]
    assert main(args) == 1
    files = {f["path"]: f for f in parse_json_report(report.read_text())["files"]}
    (toy,) = [f for f in files[str(world["lora"])]["findings"] if f["rule_id"].startswith("LA3")]
    assert toy["rule_id"] == consistency_rule(toy["evidence"])
    grid = toy["evidence"]["grid"]
    assert grid.startswith(str(tmp_path / "report_reconstructions")) and grid.endswith("_grid.png")
    assert (tmp_path / "report_reconstructions").is_dir()
    photos = tmp_path / "owner"
    photos.mkdir()
    from PIL import Image

    for k, image in enumerate(world["trajectories"][-1].images):
        Image.fromarray(image).save(photos / f"me_{k}.png")
    assert main(args + ["--references", str(photos)]) == 1
    verdicts = [f for f in parse_json_report(report.read_text())["files"][0]["findings"]
                if f["rule_id"] in ("LA304", "LA305")]
    assert len(verdicts) == 1 and verdicts[0]["rule_id"] == verdict_rule(verdicts[0]["evidence"])
    assert "toy world: 200 identities x 2 photos" in verdicts[0]["evidence"]["threshold_source"]
    assert (verdicts[0]["evidence"]["photo_sets"], verdicts[0]["evidence"]["impostors"]) == (201, 200)
    assert main(args + ["--references", str(tmp_path / "nowhere")]) == 4
    (other,) = [f for f in files[str(sd1)]["findings"] if f["rule_id"].startswith("LA3")]
    assert other["rule_id"] == "LA303"  # the given attack model is for the toy family, not sd1
    assert main(["scan", str(world["lora"]), "--no-attack", "-f", "json", "-o", str(tmp_path / "plain.json")]) == 0
    plain = json.loads((tmp_path / "plain.json").read_text())["files"][0]["findings"]
    assert not [f for f in plain if f["rule_id"].startswith("LA3")]
    assert main(["scan", str(sd1), "--attack-model", str(tmp_path)]) == 4


def test_the_owner_far_comes_from_the_policy(world, tmp_path, monkeypatch):
    from PIL import Image

    _toy_embedder(monkeypatch)
    photos = tmp_path / "owner"
    photos.mkdir()
    for k, image in enumerate(world["trajectories"][-1].images):
        Image.fromarray(image).save(photos / f"me_{k}.png")
    args = ["scan", str(world["lora"]), "-f", "json", "-o", str(tmp_path / "r.json"), "--attack-model",
            str(world["root"] / "attack"), "--base", str(world["root"] / "base"), "--references", str(photos),
            "--fail-on", "critical"]
    for far, rule in (("1.0", "LA304"), ("1e-9", "LA305")):  # every FAR is <= 1; none is <= 1e-9 but 0
        (tmp_path / "policy.toml").write_text(f"owner_far = {far}\n")
        assert main(args + ["--policy", str(tmp_path / "policy.toml")]) == 0
        (verdict,) = [f for f in json.loads((tmp_path / "r.json").read_text())["files"][0]["findings"]
                      if f["rule_id"] in ("LA304", "LA305")]
        assert verdict["rule_id"] == rule and verdict["evidence"]["target_far"] == float(far)
        assert verdict_rule(verdict["evidence"], float(far)) == rule  # the evidence states why
    for bad in ("0", "1.5", "true", '"0.01"'):
        (tmp_path / "policy.toml").write_text(f"owner_far = {bad}\n")
        assert main(args + ["--policy", str(tmp_path / "policy.toml")]) == 4, bad


def test_the_crowd_far_comes_from_the_policy(world, tmp_path, monkeypatch):
    _toy_embedder(monkeypatch)
    args = ["scan", str(world["lora"]), "-f", "json", "-o", str(tmp_path / "r.json"), "--attack-model",
            str(world["root"] / "attack"), "--base", str(world["root"] / "base"), "--fail-on", "critical"]
    generic_reference(monkeypatch, -1.0)  # every consistency is above the generic faces
    crowd_reference(monkeypatch, [1.0] * 3 + [-1.0] * 7)  # 3 of 10 LoRAs of no one person are as consistent
    for far, rule in (("0.3", "LA301"), ("0.29", "LA310")):
        (tmp_path / "policy.toml").write_text(f"crowd_far = {far}\n")
        assert main(args + ["--policy", str(tmp_path / "policy.toml")]) == 0
        (weights,) = [f for f in json.loads((tmp_path / "r.json").read_text())["files"][0]["findings"]
                      if f["rule_id"] in ("LA301", "LA310")]
        assert weights["rule_id"] == rule == consistency_rule(weights["evidence"])
        assert weights["evidence"]["crowd_far"] == 0.3 and weights["evidence"]["crowd_far_target"] == float(far)
    for bad in ("0", "1.5", "true", '"0.05"'):
        (tmp_path / "policy.toml").write_text(f"crowd_far = {bad}\n")
        assert main(args + ["--policy", str(tmp_path / "policy.toml")]) == 4, bad


def test_sd1_scan_stays_static_and_says_what_is_missing(tmp_path, capsys):
    from lora_audit.testing import synthetic as S

    sd1 = S.save_synthetic(tmp_path / "sd1.safetensors", S.as_kohya(S.make_lora("sd15", rank=2, max_modules=2)))
    assert main(["scan", str(sd1), "-f", "json", "--fail-on", "high"]) == 0
    (finding,) = json.loads(capsys.readouterr().out)["files"][0]["findings"]
    assert finding["rule_id"] == "LA303" and finding["severity"] == "info"
    assert "--base" in finding["message"] and "--attack-model" in finding["message"]


def test_attack_modes_say_whether_an_unaudited_lora_passes(tmp_path, capsys):
    from lora_audit.testing import synthetic as S

    sd1 = str(S.save_synthetic(tmp_path / "sd1.safetensors", S.as_kohya(S.make_lora("sd15", rank=2, max_modules=2))))
    assert main(["scan", sd1, "-f", "json", "--attack", "require"]) == 2  # no attack can run: the audit is incomplete
    (file,) = json.loads(capsys.readouterr().out)["files"]
    assert [f["rule_id"] for f in file["findings"]] == ["LA307"] and file["error"].startswith("no identity audit (")
    assert "--base" in file["error"]
    for off in (["--attack", "off"], ["--no-attack"]):
        assert main(["scan", sd1, "-f", "json", *off]) == 0
        assert json.loads(capsys.readouterr().out)["files"][0]["findings"] == []
    assert main(["scan", sd1, "--no-attack", "--attack", "require"]) == 4
    assert main(["scan", sd1, "--attack", "sometimes"]) == 4
    assert main(["scan", sd1, "--no-attack", "--sampling-steps", "5"]) == 4
    assert main(["scan", sd1, "--sampling-steps", "0"]) == 4


def test_scan_samples_the_attack_with_the_steps_asked_for(world, tmp_path, capsys):
    args = ["scan", str(world["lora"]), "-f", "json", "--attack-model", str(world["root"] / "attack"), "--base",
            str(world["root"] / "base"), "--fail-on", "critical", "--reconstructions", str(tmp_path / "rec")]
    for extra, steps in (([], ToyFamily.sampling_steps), (["--sampling-steps", "3"], 3)):  # the family's, the flag's
        assert main(args + extra) == 0
        (weights,) = [f for f in json.loads(capsys.readouterr().out)["files"][0]["findings"]
                      if f["rule_id"] in ("LA301", "LA302", "LA310")]
        assert weights["evidence"]["sampling_steps"] == steps


def test_cli_shadow_writes_resumable_shards(world, tmp_path, capsys):
    base = str(world["root"] / "base")
    args = ["shadow", "-o", str(tmp_path / "s"), "--base", base, "-n", "1", "--first-identity", "300005",
            "--steps", "2", "--snapshot-steps", "1,2"]
    assert main(args) == 0
    (trajectory,) = load_trajectories(tmp_path / "s")
    assert trajectory.identity == "300005" and trajectory.steps == [1, 2] and trajectory.images.shape[1] == 16
    assert "1 fine-tuned now" in capsys.readouterr().out
    assert main(args) == 0 and "0 fine-tuned now" in capsys.readouterr().out
    assert main([*args[:-1], "1,3"]) == 4  # a snapshot past the last step


def test_evaluation_summary_on_constructed_scores():
    from lora_audit.toyworld.lab.evaluate import _summary

    perfect = np.eye(4) + 0.1  # each victim's own identity scores highest
    s = _summary(perfect, far=0.0)
    assert s["rank1"] == 1.0 and s["tar"] == 1.0 and s["mean_similarity"] == pytest.approx(1.1)
    confused = np.full((4, 4), 0.5)
    confused[np.arange(4), (np.arange(4) + 1) % 4] = 0.9  # another identity always scores higher
    s = _summary(confused, far=0.0)
    assert s["rank1"] == 0.0 and s["tar"] == 0.0 and s["mean_rank"] == 2.0


def test_cli_evaluate_writes_results(world, tmp_path, capsys):
    root = world["root"]
    assert main(["evaluate", str(root / "shadows"), "--attack-model", str(root / "attack"), "--ablation-model",
                 str(root / "attack"), "--base", str(root / "base"), "-o", str(tmp_path / "work"),
                 "--docs", str(tmp_path / "docs"), "--latents", "1", "--seeds", "1", "--sampling-steps", "2",
                 "--far", "0", "--guidance-weights", "2,5"]) == 0
    assert "VAE rank-1" in capsys.readouterr().out
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    assert set(results["summary"]) == {"oracle", "latent_ceiling", "lora_class", "base", "vae_final_only", "vae",
                                       "guidance_w2", "guidance_w5", "metadata_trigger"}  # and the training-free rows
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "lora-audit evaluate" in text and "| VAE attack (weights only) |" in text
    for method, summary in results["summary"].items():  # every figure is the one its score matrix gives
        scores = np.asarray(results["scores"][method], dtype=np.float64)  # [victims, candidates]
        assert scores.shape == (3, 3) and np.isfinite(scores).all(), method
        own = np.diag(scores)
        ranks = 1 + (scores > own[:, None]).sum(axis=1)  # candidates scoring above the victim's own identity
        assert summary["n"] == 3 and 0 <= summary["rank1"] <= 1
        assert summary["rank1"] == round(float(np.mean(ranks == 1)), 3), method
        assert summary["mean_rank"] == round(float(ranks.mean()), 2), method
        assert summary["mean_similarity"] == pytest.approx(own.mean(), abs=1e-4), method
        impostors = scores[~np.eye(3, dtype=bool)]
        assert summary["tar"] == round(float(np.mean(own > impostors.max())), 3), method  # --far 0: above every impostor
        low, high = summary["rank1_ci"]
        assert low <= summary["rank1"] <= high
        assert f"| {summary['mean_similarity']:.3f}" in text and f"| {summary['rank1']:.0%}" in text
    assert (tmp_path / "docs" / "img" / "results_grid.png").is_file()
    assert (tmp_path / "docs" / "img" / "results_plot.png").is_file()
    assert len(list((tmp_path / "work" / "loras").glob("*.safetensors"))) == 6  # each LoRA, also as a leaky kohya file
    for bad in ("", "2,x", "-1", "inf"):
        assert main(["evaluate", str(root / "shadows"), "--guidance-weights", bad]) == 4, bad


def test_evaluate_reports_the_verdict_row_and_the_steps_curve(world, tmp_path, capsys):
    root = world["root"]
    assert main(["evaluate", str(root / "shadows"), "--attack-model", str(root / "attack"), "--base", str(root / "base"),
                 "-o", str(tmp_path / "work"), "--docs", str(tmp_path / "docs"), "--latents", "1", "--seeds", "1",
                 "--sampling-steps", "2", "--owner-far", "1.0", "--steps-curve"]) == 0
    assert "owner verdict TPR 100%, FPR 100%" in capsys.readouterr().out  # every FAR is <= 1: always "leaks"
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    verdict = results["verdict"]
    assert (verdict["n"], verdict["impostors"], verdict["owner_far"]) == (3, 200, 1.0)
    assert verdict["tpr"] == verdict["fpr"] == 1.0 and verdict["tpr_ci"][1] == 1.0 and verdict["tpr_ci"][0] < 1
    assert sorted(results["steps"]) == ["2", "3"] and all(s["n"] == 3 for s in results["steps"].values())
    vae = results["summary"]["vae"]
    ranks = [1 + sum(x > row[v] for x in row) for v, row in enumerate(results["scores"]["vae"])]
    assert vae["rank1"] == round(np.mean([r == 1 for r in ranks]), 3)
    assert vae["rank1_ci"][0] <= vae["rank1"] <= vae["rank1_ci"][1]
    assert vae["mean_similarity_ci"][0] <= vae["mean_similarity"] <= vae["mean_similarity_ci"][1]
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "true-positive rate 100% [" in text and "| step r | rank-1 | mean similarity |" in text
    assert "img/results_steps.png" in text and (tmp_path / "docs" / "img" / "results_steps.png").is_file()
    first = min(results["victims"])
    assert f"lora-audit shadow -o {root / 'shadows'} -n 3 --first-identity {first}" in text  # how the victims were made
    assert len(list((tmp_path / "work" / "loras").glob("*_step_*.safetensors"))) == 6
    assert main(["evaluate", str(root / "shadows"), "--owner-far", "2"]) == 4


def test_evaluate_resumes_from_each_victims_record_and_redoes_those_of_other_settings(world, tmp_path):
    root = world["root"]
    argv = ["evaluate", str(root / "shadows"), "--attack-model", str(root / "attack"), "--base", str(root / "base"),
            "-o", str(tmp_path / "work"), "--docs", str(tmp_path / "docs"), "--latents", "1", "--seeds", "1",
            "--sampling-steps", "2"]
    assert main(argv) == 0
    victims = tmp_path / "work" / "victims"  # <id>.json and <id>.npz; the training-free rows' <id>.<method>.*
    records = sorted(p for p in victims.glob("*.json") if len(p.suffixes) == 1)
    assert len(records) == 3 and len([p for p in victims.glob("*.npz") if len(p.suffixes) == 1]) == 3
    first = json.loads(records[0].read_text())
    first["scores"]["vae"] = [9.0, 0.0, 0.0]  # a record the next run must read, not remake
    records[0].write_text(json.dumps(first))
    assert main(argv) == 0
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    assert results["scores"]["vae"][0] == [9.0, 0.0, 0.0]
    assert main([*argv, "--sampling-steps", "3"]) == 0  # other settings: every record is made again
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    assert results["scores"]["vae"][0] != [9.0, 0.0, 0.0]
    assert json.loads(records[0].read_text())["key"]["config"]["sampling_steps"] == 3


def test_patching_a_weight_named_twice_restores_the_base(world):
    """A file may name one text-encoder module with and without ``text_model.``: both deltas apply, and
    afterwards the base is as it was (it was left with the first delta: every later file of the scan was
    decoded by a corrupted base)."""
    base = world["base"]
    q = "text_encoder.encoder.layers.0.self_attn.q_proj"
    weight = base.weight_of(q)
    before = weight.detach().clone()
    with base.patched({q: np.ones((16, 16), np.float32), "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": np.ones((16, 16), np.float32)}):
        torch.testing.assert_close(weight.detach(), before + 2)
    assert torch.equal(weight.detach(), before)


def test_per_sample_deltas_take_a_guided_batch_twice_over(world):
    """Classifier-free guidance runs [unconditional; conditional] of S LoRAs x P images in one call."""
    base, (a, b, _) = world["base"], world["trajectories"]
    da, db = ({k: torch.as_tensor(v) for k, v in t.deltas(3).items()} for t in (a, b))
    torch.manual_seed(0)
    x, t, z = torch.randn(4, 3, 16, 16), torch.tensor([10, 500, 900, 300]), torch.randn(4, 32, 16)
    with torch.no_grad():
        with base.patched(da):
            first = base.unet(torch.cat([x[:2], x[:2]]), t[:2].repeat(2), encoder_hidden_states=torch.cat([z[:2], z[:2]])).sample
        with base.patched(db):
            second = base.unet(torch.cat([x[2:], x[2:]]), t[2:].repeat(2), encoder_hidden_states=torch.cat([z[2:], z[2:]])).sample
        with per_sample_deltas(base, {k: torch.stack([da[k], db[k]]) for k in da}, per_group=2):
            both = base.unet(torch.cat([x, x]), t.repeat(2), encoder_hidden_states=torch.cat([z, z])).sample
    expected = torch.cat([first[:2], second[:2], first[2:], second[2:]])  # [uncond a, b; cond a, b]
    torch.testing.assert_close(both, expected, rtol=1e-5, atol=1e-6)


def test_factored_per_sample_deltas_equal_dense_ones(world):
    """Deltas given as factors of different ranks (padded to the largest) add what their dense products add."""
    from lora_audit.attack.decoder import _stacked

    base = world["base"]
    names = ["unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q", "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k"]
    rng = np.random.default_rng(0)
    loras = []
    for rank in (2, 3):
        lora = {}
        for name in names:
            out, width = base.weight_of(name).shape
            lora[name] = (rng.normal(size=(out, rank)).astype(np.float32), rng.normal(size=(rank, width)).astype(np.float32))
        loras.append(lora)
    loras[1].pop(names[1])  # a LoRA without the module: zeros
    factored = _stacked(loras, base)
    dense = _stacked([{n: f[0] @ f[1] for n, f in lora.items()} for lora in loras], base)
    assert isinstance(factored[names[0]], tuple) and factored[names[0]][0].shape[-1] == 3
    torch.manual_seed(0)
    x, t, z = torch.randn(4, 3, 16, 16), torch.tensor([10, 500, 900, 300]), torch.randn(4, 32, 16)
    with torch.no_grad():
        with per_sample_deltas(base, factored, per_group=2):
            a = base.unet(x, t, encoder_hidden_states=z).sample
        with per_sample_deltas(base, dense, per_group=2):
            b = base.unet(x, t, encoder_hidden_states=z).sample
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _batch_files(world, tmp_path) -> list:
    """Four LoRA files: two layouts, one with a text-encoder delta too, one with a convolution (not batchable)."""
    from lora_audit.attack.decoder import batchable

    t0, t1, t2 = world["trajectories"]
    fc1 = "text_encoder.text_model.encoder.layers.0.mlp.fc1"
    text = {**t1.states[3], f"{fc1}.lora_A.weight": np.full((2, 16), 0.3, np.float32),
            f"{fc1}.lora_B.weight": np.full((64, 2), 0.3, np.float32)}
    conv_in = world["base"].unet.conv_in  # Conv2d 3 -> C, 3x3
    conv = {**t2.states[3], "unet.conv_in.lora_A.weight": np.full((2, 3, 3, 3), 0.05, np.float32),
            "unet.conv_in.lora_B.weight": np.full((conv_in.out_channels, 2, 1, 1), 0.05, np.float32)}
    paths = []
    for name, state, layout in (("a", t0.states[3], "kohya"), ("b", text, "peft"), ("c", conv, "kohya"),
                                ("d", t0.states[2], "peft")):
        paths.append(tmp_path / f"{name}.safetensors")
        save_lora(str(paths[-1]), state, layout=layout, rank=2, alpha=2, metadata=TOY_METADATA)
    files = [open_lora(str(p)) for p in paths]
    assert [batchable(world["base"], f.deltas()) for f in files] == [True, True, False, True]
    return files


def test_files_a_batch_cannot_take_are_decoded_alone(world, monkeypatch):
    from diffusers import EulerAncestralDiscreteScheduler

    from lora_audit.attack.decoder import batchable

    base = world["base"]
    linear = "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q"
    assert batchable(base, [linear, "text_encoder.encoder.layers.0.self_attn.q_proj"])
    assert not batchable(base, [linear, "unet.conv_in"])  # a convolution
    assert not batchable(base, [linear, "unet.no_such_block.to_q"])  # a module the base lacks
    monkeypatch.setattr(base.pipe, "scheduler", EulerAncestralDiscreteScheduler.from_config(base.pipe.scheduler.config))
    assert not batchable(base, [linear])  # fresh noise at every step: a batch would change the images


def test_reconstruct_many_equals_one_file_at_a_time(world, tmp_path):
    from lora_audit.attack.reconstruct import reconstruct_many

    model, base = world["model"], world["base"]
    files = _batch_files(world, tmp_path)
    many = reconstruct_many(model, base, files, latents=2, seeds=2, sampling_steps=3)
    alone = [reconstruct(model, base, f, latents=2, seeds=2, sampling_steps=3) for f in files]
    for m, a in zip(many, alone):
        assert m.images.shape == a.images.shape == (4, 16, 16, 3)
        np.testing.assert_allclose(m.images, a.images, atol=1e-5)
        assert (m.step, m.step_source) == (a.step, a.step_source)
    assert not np.allclose(alone[0].images, alone[3].images, atol=1e-3)  # the LoRAs differ, and so do their images
    assert not np.allclose(alone[0].images, alone[1].images, atol=1e-3)


def test_scan_with_an_attack_batch_reports_what_one_file_at_a_time_does(world, tmp_path, capsys):
    paths = [f.path for f in _batch_files(world, tmp_path)]
    args = ["scan", *paths, "-f", "json", "--attack-model", str(world["root"] / "attack"), "--base",
            str(world["root"] / "base"), "--fail-on", "critical", "--sampling-steps", "3"]
    reports = []
    for batch in ("1", "3"):
        assert main(args + ["--attack-batch", batch, "--reconstructions", str(tmp_path / f"rec{batch}")]) == 0
        reports.append({f["path"]: [x for x in f["findings"] if x["rule_id"] in ("LA301", "LA302", "LA310")]
                        for f in json.loads(capsys.readouterr().out)["files"]})
    for path in paths:
        (one,), (batched,) = reports[0][path], reports[1][path]
        assert one["rule_id"] == batched["rule_id"]
        assert measured_consistency(one["evidence"]) == pytest.approx(measured_consistency(batched["evidence"]), abs=2e-3)
        assert one["evidence"]["step"] == batched["evidence"]["step"]
    assert main(args + ["--attack-batch", "0"]) == 4
    assert main(["scan", *paths, "--no-attack", "--attack-batch", "2"]) == 4  # the attack's flag, without the attack


def test_evaluate_compares_the_step_embedding_with_final_only_over_training_seeds(world, tmp_path, capsys):
    from dataclasses import replace

    root, base = world["root"], world["base"]
    models = {}
    for name, seed, final_only in (("final0", 0, True), ("step1", 1, False), ("final1", 1, True)):
        train_attack(base, world["trajectories"], replace(TrainConfig.tiny(), seed=seed, final_only=final_only),
                     tmp_path / name)
        models[name] = str(tmp_path / name)
    argv = ["evaluate", str(root / "shadows"), "--attack-model", str(root / "attack"), "--base", str(root / "base"),
            "-o", str(tmp_path / "work"), "--docs", str(tmp_path / "docs"), "--latents", "1", "--seeds", "1",
            "--sampling-steps", "2", "--guidance-weights", "none"]
    assert main([*argv, "--ablation-model", models["final0"], "--training-seeds",
                 f"{models['step1']}:{models['final1']}"]) == 0
    assert "over 2 training seeds" in capsys.readouterr().out
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    seeds = results["seeds"]
    assert seeds["pairs"] == [[str(root / "attack"), models["final0"]], [models["step1"], models["final1"]]]
    for method in ("vae", "vae_final_only"):
        for stat in ("rank1", "mean_similarity"):
            spread = seeds[method][stat]
            assert len(spread["values"]) == 2 and spread["values"][0] == pytest.approx(results["summary"][method][stat], abs=1e-4)
            assert spread["mean"] == pytest.approx(np.mean(spread["values"]), abs=1e-4)
            assert spread["min"] <= spread["mean"] <= spread["max"]
            assert spread["sd"] == pytest.approx(np.std(spread["values"], ddof=1), abs=1e-4)
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "each trained at 2 seeds" in text and "| attack | rank-1 | mean similarity |" in text
    assert main([*argv, "--training-seeds", f"{models['step1']}:{models['final1']}"]) == 4  # no --ablation-model
    assert main([*argv, "--ablation-model", models["final0"], "--training-seeds", models["step1"]]) == 4  # not a pair
    assert main([*argv, "--ablation-model", models["final0"], "--training-seeds", f"{models['step1']}:{tmp_path}"]) == 4
