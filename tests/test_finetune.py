"""DreamBooth-LoRA fine-tuning on the tiny toy base: snapshots, layouts, and the base left untouched."""

import numpy as np
import pytest
import torch

from lora_audit.diffusion.finetune import FinetuneConfig, finetune_lora, random_trigger
from lora_audit.weights import open_lora
from lora_audit.weights.writer import kohya_training_metadata, save_lora


@pytest.fixture(scope="module")
def base(tiny_toy_base):
    return tiny_toy_base


@pytest.fixture(scope="module")
def images(toy_images):
    return toy_images


def test_random_trigger_is_a_rare_word():
    words = {random_trigger(seed) for seed in range(50)}
    assert len(words) == 50 and all(4 <= len(w) <= 11 and w.isalpha() and w.islower() for w in words)
    assert random_trigger(7) == random_trigger(7)


def test_finetune_snapshots_and_leaves_base_unchanged(base, images):
    embeds = base.encode_prompt(["a face of a person"]).detach()
    before = base.generate(embeds, steps=3, seed=1)
    config = FinetuneConfig(rank=2, steps=6, snapshot_steps=(2, 4), num_class_images=2, class_sampling_steps=2, seed=3,
                            lr=1e-2, text_encoder_lora=False)
    seen = []
    result = finetune_lora(base, images, config, progress=lambda step, total, m: seen.append(step))
    assert sorted(result.snapshots) == [2, 4, 6] and seen == list(range(1, 7))
    assert all(np.isfinite(result.losses))
    keys = set(result.final)
    assert keys and all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in keys} >= {"to_q", "to_k", "to_v"}
    # snapshots are copies that moved between steps
    first = result.snapshots[2]
    assert any(not torch.equal(first[k], result.final[k]) for k in keys)
    # the base model is unchanged: no adapter left, identical samples
    assert not any("lora" in name for name, _ in base.unet.named_modules())
    assert not any("lora" in name for name, _ in base.text_encoder.named_modules())
    np.testing.assert_array_equal(base.generate(embeds, steps=3, seed=1), before)


def test_same_seed_same_lora(base, images):
    config = FinetuneConfig(rank=2, steps=3, num_class_images=2, class_sampling_steps=2, seed=5)
    a = finetune_lora(base, images, config).final
    b = finetune_lora(base, images, config).final
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_peft_and_kohya_outputs_read_back_to_the_same_dw(base, images, tmp_path):
    config = FinetuneConfig(rank=2, alpha=4, steps=3, num_class_images=2, class_sampling_steps=2, seed=6, text_encoder_lora=True)
    result = finetune_lora(base, images, config)
    assert any(k.startswith("text_encoder.") for k in result.final)
    peft, kohya = str(tmp_path / "p.safetensors"), str(tmp_path / "k.safetensors")
    save_lora(peft, result.final, layout="peft", rank=2, alpha=4, metadata={"lora_audit.base_model": "toy"})
    meta = kohya_training_metadata(trigger=result.trigger, class_word="person", num_images=3, steps=3, rank=2,
                                   alpha=4, base_model_version="lora-audit-toy", output_name="victim")
    save_lora(kohya, result.final, layout="kohya", rank=2, alpha=4,
              metadata={**meta, "modelspec.architecture": "lora-audit-toy/lora"})
    with open_lora(peft) as p, open_lora(kohya) as k:
        assert p.layout == "peft" and k.layout == "kohya"
        assert p.base_model == k.base_model == "toy"
        dp, dk = p.deltas(), k.deltas()
        assert dp.keys() == dk.keys() and len(dp) == len(result.final) // 2
        for name in dp:
            np.testing.assert_allclose(dp[name], dk[name], rtol=1e-6, atol=1e-9)
        assert all(m.scale == 2.0 for m in p.modules)


def test_patching_the_base_with_file_deltas_matches_in_memory_deltas(base, images, tmp_path):
    config = FinetuneConfig(rank=2, alpha=2, steps=3, num_class_images=2, class_sampling_steps=2, seed=8, lr=5e-2)
    result = finetune_lora(base, images, config)
    path = str(tmp_path / "k.safetensors")
    save_lora(path, result.final, layout="kohya", rank=2, alpha=2)
    embeds = base.encode_prompt([result.instance_prompt]).detach()
    plain = base.generate(embeds, steps=3, seed=2)
    with base.patched(result.deltas()):
        in_memory = base.generate(embeds, steps=3, seed=2)
    with open_lora(path) as lora, base.patched(lora.deltas()):
        from_file = base.generate(embeds, steps=3, seed=2)
    np.testing.assert_allclose(from_file, in_memory, atol=1e-5)
    assert np.abs(in_memory - plain).max() > 1e-4  # the LoRA changes the output
    np.testing.assert_array_equal(base.generate(embeds, steps=3, seed=2), plain)  # and is removed again
