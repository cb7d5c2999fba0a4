"""The toy victims' utility check: the trigger is read through the LoRA-patched text encoder."""

import torch

from lora_audit.diffusion.base import DiffusionBase
from lora_audit.diffusion.finetune import FinetuneConfig, finetune_lora
from lora_audit.identity.embedder import FaceEmbedder
from lora_audit.toyworld.lab.victims import VictimConfig, VictimSpec, utility_check
from lora_audit.toyworld.pipeline import ToyBaseConfig, make_toy_pipeline
from lora_audit.toyworld.renderer import render_batch


class MeanColour(FaceEmbedder):
    image_size, dim = 4, 3

    def __init__(self):
        super().__init__("cpu")

    def _embed_batch(self, images):
        return images.mean(dim=(2, 3)) + 1e-3


def test_the_trigger_prompt_is_encoded_with_the_text_encoder_lora(monkeypatch):
    torch.manual_seed(0)
    pipe = make_toy_pipeline(ToyBaseConfig.tiny())
    pipe.set_progress_bar_config(disable=True)
    base = DiffusionBase(pipe, "toy")
    photos = render_batch([300_000] * 2, [0, 1], seed=0, size=16)
    result = finetune_lora(base, photos, FinetuneConfig(rank=2, steps=3, lr=0.05, num_class_images=1,
                                                        class_sampling_steps=1, text_encoder_lora=True))
    plain = base.encode_prompt([result.instance_prompt]).detach()
    with base.patched(result.deltas()):
        patched = base.encode_prompt([result.instance_prompt]).detach()
    assert not torch.allclose(plain, patched)  # the text-encoder LoRA changes the trigger's embedding
    seen = []
    generate = base.generate
    monkeypatch.setattr(base, "generate", lambda embeds, **kw: seen.append(embeds.clone()) or generate(embeds, **kw))
    config = VictimConfig(photos=2, image_size=16, samples_per_check=2, candidates=3, sampling_steps=2)
    check = utility_check(base, result, VictimSpec("v", 300_000), MeanColour(), config)
    assert torch.allclose(seen[0][0], patched[0]) and not torch.allclose(seen[0][0], plain[0])
    assert check["candidates"] == 3 and 1 <= check["lora_with_trigger"]["rank"] <= 3
