"""The toy base model: tokenizer, pipeline interfaces, save/load, training and resuming (tiny preset)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("diffusers")

from lora_audit.toyworld import renderer  # noqa: E402
from lora_audit.toyworld.identities import PUBLIC  # noqa: E402
from lora_audit.toyworld.tokenizer import MODEL_MAX_LENGTH, build_tokenizer, caption_words  # noqa: E402

PROMPT = "a face of a person with a round face, dark skin, short red hair, blue eyes and round glasses"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def config():
    from lora_audit.toyworld.pipeline import ToyBaseConfig

    return ToyBaseConfig.tiny()


@pytest.fixture(scope="module")
def pipe(config):
    from lora_audit.toyworld.pipeline import make_toy_pipeline

    return make_toy_pipeline(config)


def test_caption_words_are_single_tokens(tokenizer):
    words = caption_words()
    assert {"face", "glasses", "sunglasses", "moustache", "green", "heart", "-", ","} <= set(words)
    for word in words:
        assert tokenizer.convert_ids_to_tokens(tokenizer(word, add_special_tokens=False).input_ids) == [word + "</w>"]


def test_unknown_words_become_character_tokens(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("a face of Zqvtek").input_ids)
    assert tokens == ["<|startoftext|>", "a</w>", "face</w>", "of</w>", "z", "q", "v", "t", "e", "k</w>",
                      "<|endoftext|>"]


def test_every_caption_fits_the_context(tokenizer):
    longest = dataclasses.replace(renderer.identity(PUBLIC.start), face_shape="heart", hair_style="fringe",
                                  facial_hair="moustache", glasses="square")
    assert len(tokenizer(renderer.caption(longest)).input_ids) <= MODEL_MAX_LENGTH
    for identity_id in range(PUBLIC.start, PUBLIC.start + 200):
        ids = tokenizer(renderer.caption(renderer.identity(identity_id))).input_ids
        assert len(ids) <= MODEL_MAX_LENGTH and tokenizer.unk_token_id not in ids[1:-1]


def test_samples_have_the_documented_shape_and_range(pipe, config):
    images = pipe([PROMPT, "a face of zqvtek"], num_inference_steps=3, num_images_per_prompt=2, seed=1)
    assert images.shape == (4, config.image_size, config.image_size, 3) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 1
    assert not np.array_equal(images[0], images[1])  # different noise per image


def test_prompt_embeds_replace_the_prompt_exactly(pipe, config):
    embeds = pipe.encode_prompt([PROMPT])
    assert tuple(embeds.shape) == (1, MODEL_MAX_LENGTH, config.text_hidden_size)
    assert tuple(embeds.shape[1:]) == (MODEL_MAX_LENGTH, pipe.unet.config.cross_attention_dim)
    from_prompt = pipe(PROMPT, num_inference_steps=3, seed=7)
    np.testing.assert_array_equal(from_prompt, pipe(prompt_embeds=embeds, num_inference_steps=3, seed=7))
    np.testing.assert_array_equal(from_prompt, pipe(PROMPT, num_inference_steps=3, seed=7))
    with pytest.raises(ValueError, match="exactly one"):
        pipe(PROMPT, prompt_embeds=embeds)


def test_training_noise_schedule_is_the_samplers(pipe):
    import torch

    ddpm = pipe.training_scheduler()
    assert type(ddpm).__name__ == "DDPMScheduler" and type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    torch.testing.assert_close(ddpm.alphas_cumprod, pipe.scheduler.alphas_cumprod, rtol=0, atol=0)


def test_training_target_follows_the_prediction_type(pipe, config):
    import torch

    from lora_audit.toyworld.pipeline import make_toy_pipeline

    x0, noise, t = torch.rand(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([10, 900])
    alpha_bar = pipe.scheduler.alphas_cumprod[t].view(2, 1, 1, 1)
    v = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
    torch.testing.assert_close(pipe.training_target(x0, noise, t), v)
    eps_pipe = make_toy_pipeline(dataclasses.replace(config, prediction_type="epsilon"))
    assert eps_pipe.training_target(x0, noise, t) is noise


def test_save_and_load_round_trip(pipe, tmp_path):
    from lora_audit.toyworld.pipeline import ToyFacePipeline

    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "model_index.json").exists()
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (tmp_path / "text_encoder" / "model.safetensors").exists()
    loaded = ToyFacePipeline.from_pretrained(tmp_path)
    np.testing.assert_array_equal(pipe(PROMPT, num_inference_steps=3, seed=3),
                                  loaded(PROMPT, num_inference_steps=3, seed=3))


class _Interrupted(Exception):
    pass


def test_training_resumes_where_it_stopped(config, tmp_path):
    import torch

    from lora_audit.toyworld.pipeline import ToyFacePipeline
    from lora_audit.toyworld.lab.train_base import CHECKPOINT, train_base_model

    seen = []

    def stop_at_step_3(step, total, metrics):
        seen.append((step, total, metrics["loss"]))
        if step == 3:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train_base_model(config, tmp_path / "resumed", stop_at_step_3)
    assert [s[:2] for s in seen] == [(1, 4), (2, 4), (3, 4)] and all(np.isfinite(s[2]) for s in seen)
    assert torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)["step"] == 2

    seen.clear()
    resumed = train_base_model(config, tmp_path / "resumed", lambda *args: seen.append(args[:2]))
    assert seen == [(3, 4), (4, 4)]  # from the step-2 checkpoint, not from scratch
    assert resumed["steps"] == 4 and np.isfinite(resumed["final_loss"])

    straight = train_base_model(config, tmp_path / "straight")
    assert resumed["final_loss"] == straight["final_loss"]  # the same batches, the same updates
    samples = [ToyFacePipeline.from_pretrained(tmp_path / run)(PROMPT, num_inference_steps=2)
               for run in ("resumed", "straight")]
    np.testing.assert_array_equal(*samples)


def test_resuming_with_another_config_is_refused(config, tmp_path):
    from lora_audit.toyworld.lab.train_base import train_base_model

    train_base_model(dataclasses.replace(config, steps=2), tmp_path)
    with pytest.raises(ValueError, match="another ToyBaseConfig"):
        train_base_model(config, tmp_path)
