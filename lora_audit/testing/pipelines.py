"""Tiny Stable Diffusion pipelines with random weights, in the real diffusers formats (test fixtures).

Each is a genuine ``StableDiffusionPipeline`` (SD 1.x, SD 2.x) or ``StableDiffusionXLPipeline``
(SDXL) written with ``save_pretrained``, so :func:`lora_audit.families.load_base` loads it as it
would a downloaded checkpoint and :func:`lora_audit.families.family_of_base` recognises its family.
What is real: every component class, the cross-attention widths the families are told apart by
(768 for SD1, 1024 for SD2, 2048 = 768 + 1280 for SDXL's two text encoders), SDXL's pooled
embedding (1280) and ``text_time`` added conditioning, 77-token prompts, a 4-level VAE (8x
downsampling, 4 latent channels) and the schedulers. What is tiny: channels, layers, heads and the
resolution (an 8x8 latent, 64x64 pixels). Nothing is downloaded: the tokenizer is a real
``CLIPTokenizer`` loaded from a ``vocab.json`` and ``merges.txt`` written here (CLIP's byte-level
BPE formats, as :mod:`lora_audit.toyworld.tokenizer` does for the toy world, which this layer may
not import): every printable ASCII character, alone and word-final, so any prompt tokenises, and
merges that make the words of face descriptions single tokens.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

FAMILIES = ("sd1", "sd2", "sdxl")
SAMPLE_SIZE = 8  # latent side; x 8 (the VAE) = 64 pixels
MAX_LENGTH = 77  # tokens per prompt, as CLIP's
POOLED_DIM = 1280  # SDXL's text_encoder_2 projection
TIME_EMBED_DIM = 8  # SDXL's addition_time_embed_dim (real: 256)
_TEXT_WIDTHS = {"sd1": (768,), "sd2": (1024,), "sdxl": (768, 1280)}


_BOS, _EOS, _END = "<|startoftext|>", "<|endoftext|>", "</w>"
_CHARS = string.ascii_lowercase + string.digits + string.punctuation
_WORDS = ("a", "face", "of", "person", "photo", "young", "middle", "aged", "old", "man", "woman", "with", "hair",
          "blond", "brown", "black", "red", "grey", "white", "curly", "straight", "short", "long", "bald",
          "glasses", "beard", "moustache", "smiling", "freckles", "blue", "green", "eyes", "pale", "dark",
          "olive", "skin")


def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Characters (alone and word-final), then a left-to-right chain of merges per word of ``_WORDS``."""
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        symbol = word[0] if len(word) > 1 else word + _END
        for i, char in enumerate(word[1:], start=1):
            pair = (symbol, char + _END if i == len(word) - 1 else char)
            if pair not in merges:
                merges.append(pair)
            symbol = pair[0] + pair[1]
    tokens = list(_CHARS) + [c + _END for c in _CHARS]
    tokens += [a + b for a, b in merges if a + b not in tokens] + [_BOS, _EOS]
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}, merges


def build_tokenizer(model_max_length: int = 77):
    """A real ``transformers.CLIPTokenizer`` from freshly written vocabulary files (nothing downloaded)."""
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_and_merges()
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "vocab.json").write_text(json.dumps(vocab))
        Path(tmp, "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=model_max_length, bos_token=_BOS,
                                             eos_token=_EOS, pad_token=_EOS, unk_token=_EOS)


def image_size() -> int:
    """The pixel resolution of every tiny pipeline (latent side x the VAE's factor 8)."""
    return SAMPLE_SIZE * 8


def _text_config(tokenizer, width: int, projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    heads = 2
    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=heads, max_position_embeddings=MAX_LENGTH,
                          projection_dim=projection_dim or width, hidden_act="quick_gelu",
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)


def _real_unet(family: str):
    """The UNet of SD 1.5 / SD 2.x (64x64 latents) or SDXL (128x128) at its real layer sizes, random weights:
    the compute of the real model (``benchmarks/bench_gpu.py``)."""
    from diffusers import UNet2DConditionModel

    if family == "sdxl":
        return UNet2DConditionModel(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20), use_linear_projection=True, cross_attention_dim=2048,
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
    cross = dict(sd1=dict(attention_head_dim=8), sd2=dict(attention_head_dim=(5, 10, 20, 20), use_linear_projection=True))
    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=sum(_TEXT_WIDTHS[family]),
        **cross[family])


def _real_vae(sample_size: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         layers_per_block=2, norm_num_groups=32, sample_size=sample_size)


def _unet(family: str):
    from diffusers import UNet2DConditionModel

    common = dict(sample_size=SAMPLE_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
                  block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=sum(_TEXT_WIDTHS[family]))
    if family == "sd1":
        return UNet2DConditionModel(**common, attention_head_dim=2)  # legacy naming: 2 heads
    if family == "sd2":
        return UNet2DConditionModel(**common, attention_head_dim=(1, 2), use_linear_projection=True)
    return UNet2DConditionModel(**common, attention_head_dim=(1, 2), use_linear_projection=True,
                                addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED_DIM,
                                projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + POOLED_DIM)


def _vae():
    from diffusers import AutoencoderKL

    blocks = 4  # 3 downsamplings: the real 8x factor
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 32, 32),
                         down_block_types=("DownEncoderBlock2D",) * blocks,
                         up_block_types=("UpDecoderBlock2D",) * blocks, layers_per_block=1, norm_num_groups=16,
                         sample_size=image_size())


def _scheduler(family: str):
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    schedule = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    steps_offset=1)
    if family == "sd2":  # SD 2.x 768-v: v-prediction
        return DDPMScheduler(**schedule, prediction_type="v_prediction", clip_sample=False)
    return DPMSolverMultistepScheduler(**schedule, prediction_type="epsilon")


def build_pipeline(family: str, seed: int = 0, real_unet: bool = False):
    """A tiny random-weight diffusers pipeline of ``family`` (sd1 | sd2 | sdxl), in memory; ``real_unet``: its
    UNet and VAE at the real model's layer sizes and resolution (the text encoders stay tiny, at the real widths)."""
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(MAX_LENGTH)
    unet, vae, scheduler = _unet(family), _vae(), _scheduler(family)
    if real_unet:
        unet = _real_unet(family)
        vae = _real_vae(unet.config.sample_size * 8)
    text_encoder = CLIPTextModel(_text_config(tokenizer, _TEXT_WIDTHS[family][0])).eval()
    if family != "sdxl":
        return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer, _TEXT_WIDTHS[family][1], POOLED_DIM)).eval()
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=build_tokenizer(MAX_LENGTH), unet=unet,
                                     scheduler=scheduler, add_watermarker=False)


def write_pipeline(family: str, directory: str | Path, seed: int = 0) -> Path:
    """Build the tiny ``family`` pipeline and ``save_pretrained`` it to ``directory``; return the directory."""
    directory = Path(directory)
    build_pipeline(family, seed).save_pretrained(str(directory), safe_serialization=True)
    return directory
