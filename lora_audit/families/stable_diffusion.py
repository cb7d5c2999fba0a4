"""The Stable Diffusion families: SD 1.x (CLIP ViT-L, cross-attention 768), SD 2.x (OpenCLIP ViT-H,
1024) and SDXL (two text encoders). Their bases are local diffusers pipeline directories; faces are
scored with dlib's face recognition (installed with ``lora-privacy-audit[faces]``), or with FaceNet when
``--face-weights`` names a checkpoint, each against its published operating point; no attack model ships.
"""

from __future__ import annotations

import itertools

import numpy as np

from lora_audit.families import Family, register

_AGES = ("young", "middle-aged", "old")
_PEOPLE = ("man", "woman", "person")
_HAIR = ("blond", "brown", "black", "red", "grey", "white", "curly", "straight", "short", "long", "bald")
_EXTRAS = ("with glasses", "with a beard", "with a moustache", "smiling", "with freckles", "with blue eyes",
           "with brown eyes", "with green eyes", "with pale skin", "with dark skin", "with olive skin", "")


class StableDiffusion(Family):
    """One SD family, told apart by its UNet's cross-attention width and a second text encoder."""

    def __init__(self, name: str, cross_attention_dim: int | None, two_text_encoders: bool = False):
        self.name = name
        self.cross_attention_dim = cross_attention_dim
        self.two_text_encoders = two_text_encoders

    def claims_pipeline(self, index: dict, components: dict[str, dict]) -> bool:
        if "unet" not in components:
            return False
        cross = components["unet"].get("cross_attention_dim")
        if self.two_text_encoders:  # SDXL base: both encoders, 768 + 1280 wide (the refiner has only the second)
            return "text_encoder" in components and "text_encoder_2" in components and cross in (None, 2048)
        return "text_encoder_2" not in index and cross == self.cross_attention_dim

    def load_pipeline(self, path: str):
        """The pipeline at ``path`` from local files only (SD 1.x/2.x without their safety checker)."""
        from diffusers import DiffusionPipeline

        extra = {} if self.two_text_encoders else {"safety_checker": None}
        return DiffusionPipeline.from_pretrained(path, local_files_only=True, **extra)

    def face_embedder(self, device, face_weights: str | None = None):
        """FaceNet with the checkpoint ``face_weights``; without one, dlib's (a MissingInputError, so LA303,
        when ``lora-privacy-audit[faces]`` is not installed)."""
        if face_weights is not None:
            from lora_audit.identity.facenet import FaceNetEmbedder

            return FaceNetEmbedder.load(face_weights, device=device)
        from lora_audit.identity.dlib_embedder import DlibFaceEmbedder

        return DlibFaceEmbedder(device)

    def owner_null(self, embedder, image_size: int, photos: int):
        """The embedder's published operating point (no gallery of people ships for real faces)."""
        from lora_audit.identity.scoring import OperatingPoint

        threshold, source = embedder.verification_threshold()
        return OperatingPoint(threshold, source, "one pair of photos (face verification)")

    def face_prompts(self, count: int, seed: int = 0) -> list[str]:
        combos = [f"a photo of a {age} {who} with {hair} hair {extra}".strip()
                  for age, who, hair, extra in itertools.product(_AGES, _PEOPLE, _HAIR, _EXTRAS)]
        rng = np.random.default_rng(seed)
        return [combos[i] for i in rng.permutation(len(combos))[:count]]


register(StableDiffusion("sd1", 768))
register(StableDiffusion("sd2", 1024))
register(StableDiffusion("sdxl", None, two_text_encoders=True))
