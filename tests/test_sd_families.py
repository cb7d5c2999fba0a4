"""The real base families end to end (SD 1.x, SD 2.x, SDXL) on tiny random-weight pipelines.

Each pipeline is a genuine diffusers StableDiffusionPipeline / StableDiffusionXLPipeline written with
save_pretrained (lora_audit.testing.pipelines): real component classes and cross-attention widths,
tiny channels and a 64 px resolution. Random weights mean nothing here is about quality: these tests
run every code path of the product on each family's formats (VAE latents, SDXL's pooled embedding and
time ids, the v-prediction of SD2), from fine-tuning to the scan's identity finding.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lora_audit.cli import main
from lora_audit.diffusion.base import Conditioning
from lora_audit.testing.pipelines import FAMILIES, image_size, write_pipeline

SIZE = image_size()


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """family -> the directory of its tiny pipeline, written once per module."""
    root = tmp_path_factory.mktemp("pipelines")
    return {family: str(write_pipeline(family, root / family)) for family in FAMILIES}


@pytest.fixture(scope="module")
def bases(pipelines):
    from lora_audit.families import load_base

    return {family: load_base(path, "cpu") for family, path in pipelines.items()}


def _save_photos(folder, identity: int, count: int = 2) -> None:
    from PIL import Image

    from lora_audit.toyworld.renderer import render_batch

    folder.mkdir(parents=True, exist_ok=True)
    photos = render_batch([identity] * count, list(range(count)), size=SIZE)  # [N, S, S, 3] in [0, 1]
    for i, photo in enumerate(photos):
        Image.fromarray((np.clip(photo, 0, 1) * 255 + 0.5).astype(np.uint8)).save(folder / f"{i}.png")


@pytest.mark.parametrize("family", FAMILIES)
def test_family_of_base_recognises_each_pipeline(pipelines, family):
    from lora_audit.families import family_of_base

    assert family_of_base(pipelines[family]).name == family


@pytest.mark.parametrize("family", FAMILIES)
def test_conditioning_is_what_the_unet_reads(bases, family):
    base = bases[family]
    cond = base.encode(["a face of a person", "a photo of a woman"])
    width = {"sd1": 768, "sd2": 1024, "sdxl": 2048}[family]
    assert cond.prompt_embeds.shape == (2, 77, width)
    assert base.unet.config.cross_attention_dim == width
    if family == "sdxl":
        assert cond.pooled.shape == (2, 1280) and base.pooled_dim == 1280
        kwargs = base.unet_kwargs(cond)
        assert kwargs["added_cond_kwargs"]["time_ids"].shape == (2, 6)
        # the pipeline's own encode_prompt gives the same embeddings (no guidance, no clip skip)
        embeds, _, pooled, _ = base.pipe.encode_prompt(["a face of a person", "a photo of a woman"],
                                                       device="cpu", do_classifier_free_guidance=False)
        assert torch.allclose(embeds, cond.prompt_embeds) and torch.allclose(pooled, cond.pooled)
        with pytest.raises(Exception, match="pooled"):  # a bare tensor is not enough for SDXL's UNet
            base.unet_kwargs(cond.prompt_embeds)
    else:
        assert cond.pooled is None and base.pooled_dim == 0
        assert torch.equal(base.encode_prompt(["a face of a person", "a photo of a woman"]), cond.prompt_embeds)
    x = torch.zeros(2, 4, 8, 8)
    out = base.unet(x, torch.tensor([10, 10]), **base.unet_kwargs(cond)).sample
    assert out.shape == x.shape


@pytest.mark.parametrize("family", FAMILIES)
def test_vae_branch_maps_images_to_latents_and_samples_images(bases, family):
    base = bases[family]
    assert base.image_size == SIZE
    photos = torch.rand(2, SIZE, SIZE, 3)
    latents = base.to_model_input(photos)
    assert latents.shape == (2, 4, SIZE // 8, SIZE // 8) and torch.isfinite(latents).all()
    images = base.generate(base.encode_prompt(["a face of a person"]).expand(2, -1, -1), steps=2, seed=3)
    assert images.shape == (2, SIZE, SIZE, 3) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1
    np.testing.assert_array_equal(images, base.generate(base.encode_prompt(["a face of a person"]).expand(2, -1, -1),
                                                        steps=2, seed=3))  # reproducible from the seed


def test_sdxl_latent_covers_the_pooled_embedding(bases, tmp_path):
    """prompt_subspace spans embeddings and pooled vector together; to_latent splits them back."""
    from lora_audit.attack.encoder import EncoderConfig
    from lora_audit.attack.latent import prompt_subspace
    from lora_audit.attack.model import AttackConfig, AttackModel
    from lora_audit.diffusion.base import Conditioning
    from lora_audit.families import get_family

    base = bases["sdxl"]
    prompts = get_family("sdxl").face_prompts(12)
    offset, basis, explained = prompt_subspace(base, prompts, 4)
    assert offset.prompt_embeds.shape == (77, 2048) and offset.pooled.shape == (1280,)
    assert basis.shape == (4, 77 * 2048 + 1280) and 0 < explained <= 1
    model = AttackModel(AttackConfig("sdxl", EncoderConfig(["unet.x"], sketch_k=2, width=8, heads=1, layers=1,
                                                          latent_len=77, latent_dim=2048, latent_rank=4),
                                     pooled_dim=1280))
    model.set_subspace(offset, basis)
    z = model.to_latent(torch.zeros(1, 4))
    assert isinstance(z, Conditioning) and torch.allclose(z.prompt_embeds[0], offset.prompt_embeds)
    assert torch.allclose(z.pooled[0], offset.pooled)
    c = torch.randn(3, 4)
    assert torch.allclose(model.from_latent(model.to_latent(c)), c, atol=1e-3)
    assert model.to_latent(c).repeat_interleave(2).prompt_embeds.shape == (6, 77, 2048)
    model.save(tmp_path)  # the pooled offset and the wider basis round-trip through attack.safetensors
    loaded = AttackModel.load(tmp_path)
    assert loaded.config.pooled_dim == 1280
    assert torch.equal(loaded.to_latent(c).pooled, model.to_latent(c).pooled)


def test_weight_of_resolves_every_text_encoder(bases):
    base = bases["sdxl"]
    name = "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj"
    assert base.weight_of(name) is base.text_encoder_2.get_submodule(name.partition(".")[2]).weight
    dw = {name: torch.ones(1280, 1280)}
    before = base.encode(["a face"]).pooled
    with base.patched(dw):
        assert not torch.allclose(base.encode(["a face"]).pooled, before)
    assert torch.equal(base.encode(["a face"]).pooled, before)
    with pytest.raises(Exception, match="does not have"):
        bases["sd1"].weight_of(name)
    with pytest.raises(Exception, match="does not have"):
        bases["sd1"].weight_of("unet.no.such.module")


@pytest.mark.parametrize("family", FAMILIES)
def test_text_encoder_names_resolve_with_or_without_text_model(bases, family):
    """kohya names the text_model level (lora_te_text_model_...); transformers' CLIPTextModel may lack it."""
    base = bases[family]
    encoders = ["text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    for component in encoders:
        with_level = base.weight_of(f"{component}.text_model.encoder.layers.0.self_attn.q_proj")
        without = base.weight_of(f"{component}.encoder.layers.0.self_attn.q_proj")
        assert with_level is without


def test_sdxl_samples_with_the_pooled_embedding_and_zeros_for_the_empty_prompt(bases):
    base = bases["sdxl"]
    uncond = base.unconditional(2)
    assert len(uncond) == 2 and not uncond.prompt_embeds.any() and not uncond.pooled.any()  # force_zeros_for_empty_prompt
    assert bases["sd1"].unconditional(1).prompt_embeds.any()  # SD1: the encoded empty prompt
    cond = base.encode(["a face of a person"])
    images = base.generate(cond, steps=2, seed=0)
    other = base.generate(Conditioning(cond.prompt_embeds, -cond.pooled), steps=2, seed=0)
    assert np.abs(images - other).max() > 0  # the pooled embedding reaches the UNet


@pytest.mark.parametrize("family", FAMILIES)
def test_finetune_adapts_every_text_encoder_and_leaves_the_base_unchanged(bases, family):
    from lora_audit.diffusion.finetune import FinetuneConfig, finetune_lora

    base = bases[family]
    cond = base.encode(["a face of a person"])
    photos = np.random.default_rng(0).random((2, SIZE, SIZE, 3), dtype=np.float32)
    result = finetune_lora(base, photos, FinetuneConfig(steps=1, num_class_images=1, class_sampling_steps=1))
    components = {key.split(".", 1)[0] for key in result.final}
    assert components == ({"unet", "text_encoder", "text_encoder_2"} if family == "sdxl" else {"unet", "text_encoder"})
    after = base.encode(["a face of a person"])
    assert torch.equal(after.prompt_embeds, cond.prompt_embeds)
    with base.patched(result.deltas()):  # every module the LoRA names resolves on the base
        pass


def test_device_flag_is_checked(pipelines, tmp_path):
    _save_photos(tmp_path / "me", 201_000)
    assert main(["finetune", str(tmp_path / "me"), "--base", pipelines["sd1"], "-o", str(tmp_path / "l.safetensors"),
                 "--steps", "1", "--device", "no-such-device"]) == 4


def _report(path):
    data = json.loads(path.read_text())
    files = data["files"] if "files" in data else data["results"]
    return files[0]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_end_to_end(pipelines, family, tmp_path, monkeypatch):
    """finetune -> shadow -> train-attack -> reconstruct -> scan on a tiny pipeline of each family."""
    import lora_audit.scan.identity as identity
    from lora_audit.identity.facenet import InceptionResnetV1

    base = pipelines[family]
    _save_photos(tmp_path / "me", 201_000)
    for i in range(2):
        _save_photos(tmp_path / "shadow_photos" / f"id{i}", 201_001 + i)
    lora = tmp_path / "lora.safetensors"
    assert main(["finetune", str(tmp_path / "me"), "--base", base, "-o", str(lora), "--steps", "2"]) == 0
    from lora_audit.weights import open_lora

    with open_lora(str(lora)) as lora_file:
        assert lora_file.base_model == family
        encoders = {m.name.split(".", 1)[0] for m in lora_file.modules} - {"unet"}
        assert encoders == ({"text_encoder", "text_encoder_2"} if family == "sdxl" else {"text_encoder"})
    assert main(["shadow", "--images", str(tmp_path / "shadow_photos"), "--base", base, "-o", str(tmp_path / "shadows"),
                 "-n", "2", "--steps", "2", "--snapshot-steps", "1,2"]) == 0
    attack = tmp_path / "attack"
    assert main(["train-attack", str(tmp_path / "shadows"), "--base", base, "-o", str(attack), "--steps", "2",
                 "--validation", "0", "--shadows-per-step", "2", "--prompts", "16", "--latent-rank", "4"]) == 0
    config = json.loads((attack / "attack.json").read_text())
    assert config["family"] == family and config["pooled_dim"] == (1280 if family == "sdxl" else 0)
    assert main(["reconstruct", str(lora), "--base", base, "--attack-model", str(attack), "-o", str(tmp_path / "rec"),
                 "--latents", "1", "--seeds", "1", "--sampling-steps", "2"]) == 0
    pngs = sorted((tmp_path / "rec").glob("*_z0_seed0.png"))
    assert len(pngs) == 1
    from PIL import Image

    assert Image.open(pngs[0]).size == (SIZE, SIZE)

    weights = tmp_path / "facenet.pt"
    torch.save(InceptionResnetV1().state_dict(), weights)  # random weights: plumbing only
    for forced, (mean, rule) in {"leak": (-2.0, "LA310"), "no leak": (2.0, "LA302")}.items():
        def fake_reference(base, embedder, prompt, k, groups=8, sampling_steps=25, mean=mean):
            return {"mean": mean, "std": 0.0, "values": [mean], "k": k, "prompt": prompt,
                    "sampling_steps": sampling_steps, "embedder": embedder.fingerprint()}

        monkeypatch.setattr(identity, "generic_consistency", fake_reference)
        report = tmp_path / f"{rule}.json"
        main(["scan", str(lora), "--base", base, "--attack-model", str(attack), "--face-weights", str(weights),
              "-f", "json", "-o", str(report)])
        result = _report(report)
        assert result["stats"]["base_model"] == family
        rules = [f["rule_id"] for f in result["findings"]]
        assert rule in rules and "LA303" not in rules, (forced, rules)
        if rule == "LA310":  # no crowd null ships for a real family: the real lookup finds none
            (unspecific,) = [f for f in result["findings"] if f["rule_id"] == "LA310"]
            assert unspecific["evidence"]["crowd_null"] == "not measured" and "crowd_far" not in unspecific["evidence"]
