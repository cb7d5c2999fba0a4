"""Victim LoRAs of the toy world: private identities fine-tuned with the DreamBooth-LoRA recipe.

Each victim has a few private photos (renders of one PRIVATE identity), a LoRA file in PEFT or
kohya layout (optionally with kohya's leaky ``ss_*`` metadata) and a utility figure: does the LoRA,
prompted with its trigger, reproduce the identity? (face-embedder similarity to that identity's
other photos, ranked against the other victims' identities).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lora_audit.identity import metrics
from lora_audit.identity.embedder import FaceEmbedder
from lora_audit.diffusion.finetune import FinetuneConfig, FinetuneResult, finetune_lora
from lora_audit.diffusion.base import DiffusionBase
from lora_audit.toyworld.family import TOY_METADATA
from lora_audit.toyworld.identities import PRIVATE
from lora_audit.toyworld.photos import REFERENCE_INDICES, identity_photos, reference_views
from lora_audit.weights.writer import kohya_training_metadata, save_lora


@dataclass(frozen=True)
class VictimSpec:
    name: str
    identity_id: int
    layout: str = "peft"  # peft | kohya
    leaky_metadata: bool = False  # kohya ss_* keys: captions, folder names, trigger, steps


@dataclass
class VictimConfig:
    victims: tuple[VictimSpec, ...] = (
        VictimSpec("toy_kohya_leaky", PRIVATE.start + 0, "kohya", True),
        VictimSpec("toy_peft", PRIVATE.start + 1, "peft"),
        VictimSpec("toy_kohya", PRIVATE.start + 2, "kohya"),
        VictimSpec("toy_peft_b", PRIVATE.start + 3, "peft"),
    )
    photos: int = 5  # private training photos per victim (image indices 0 .. photos-1)
    image_size: int = 32
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    samples_per_check: int = 8  # trigger-prompted images for the utility check
    sampling_steps: int = 25
    candidates: int = 20  # identities ranked in the utility check (the victim's among PRIVATE ids)
    seed: int = 0

    @classmethod
    def tiny(cls) -> "VictimConfig":
        return cls(victims=(VictimSpec("tiny_kohya_leaky", PRIVATE.start, "kohya", True),
                            VictimSpec("tiny_peft", PRIVATE.start + 1, "peft")),
                   photos=2, image_size=16, samples_per_check=2, candidates=4, sampling_steps=3,
                   finetune=FinetuneConfig(rank=2, steps=3, num_class_images=2, class_sampling_steps=2))


def make_victim(base: DiffusionBase, spec: VictimSpec, config: VictimConfig, out_dir: Path,
                class_images: np.ndarray | None = None) -> tuple[Path, FinetuneResult]:
    """Fine-tune one victim; write ``<name>.safetensors`` and ``<name>_photos/photo_K.png`` under ``out_dir``."""
    from PIL import Image

    photos = identity_photos(spec.identity_id, config.photos, config.image_size, config.seed)
    ft = config.finetune
    result = finetune_lora(base, photos, FinetuneConfig(**{**ft.__dict__, "seed": ft.seed + spec.identity_id}),
                           class_images=class_images)
    alpha = ft.alpha if ft.alpha is not None else ft.rank
    metadata = dict(TOY_METADATA)
    if spec.leaky_metadata:
        metadata.update(kohya_training_metadata(
            trigger=result.trigger, class_word="person", num_images=config.photos, steps=ft.steps, rank=ft.rank,
            alpha=alpha, base_model_version="lora-audit-toy", output_name=spec.name))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{spec.name}.safetensors"
    save_lora(str(path), result.final, layout=spec.layout, rank=ft.rank, alpha=alpha, metadata=metadata)
    photo_dir = out_dir / f"{spec.name}_photos"
    photo_dir.mkdir(exist_ok=True)
    for k, photo in enumerate(photos):
        Image.fromarray((photo * 255 + 0.5).astype(np.uint8)).save(photo_dir / f"photo_{k}.png")
    return path, result


def identity_centres(embedder: FaceEmbedder, identity_ids: list[int], size: int, seed: int = 0) -> np.ndarray:
    """Each identity's centre (:func:`metrics.centres` of its rendered reference views), [C, D]."""
    refs = embedder.embed(reference_views(identity_ids, size, seed))  # [C * V, D], identity by identity
    labels = np.repeat(np.arange(len(identity_ids)), len(REFERENCE_INDICES))  # [C * V]
    return metrics.centres(refs, labels)  # [C, D]


def identity_ranking(embedder: FaceEmbedder, images: np.ndarray, identity_id: int,
                     candidate_ids: list[int], size: int, seed: int = 0) -> dict:
    """Similarity of ``images`` to ``identity_id`` against ``candidate_ids`` (which include it).

    Each identity is represented by its :func:`identity_centres`; the score of an image set is its
    mean cosine similarity to that centre (:func:`metrics.set_scores`). Returns :func:`metrics.ranking`:
    the true identity's similarity, the best impostor's, and the true identity's rank (1 = identified).
    """
    scores = metrics.set_scores(embedder.embed(images), identity_centres(embedder, candidate_ids, size, seed))  # [C]
    return metrics.ranking(scores, candidate_ids.index(identity_id))


def utility_check(base: DiffusionBase, result: FinetuneResult, spec: VictimSpec, embedder: FaceEmbedder,
                  config: VictimConfig) -> dict:
    """Does the LoRA prompted with its trigger show its identity, and does the base model not?"""
    candidates = [PRIVATE.start + i for i in range(config.candidates)]
    if spec.identity_id not in candidates:
        candidates[-1] = spec.identity_id
    k = config.samples_per_check
    generic = base.encode_prompt([result.config.class_prompt]).detach().expand(k, -1, -1)
    with base.patched(result.deltas()):  # the trigger is encoded inside: the text-encoder LoRA applies to it
        trigger = base.encode_prompt([result.instance_prompt]).detach().expand(k, -1, -1)
        with_lora = base.generate(trigger, seed=config.seed, steps=config.sampling_steps)
    without = base.generate(generic, seed=config.seed, steps=config.sampling_steps)
    return {"lora_with_trigger": identity_ranking(embedder, with_lora, spec.identity_id, candidates, config.image_size),
            "base_class_prompt": identity_ranking(embedder, without, spec.identity_id, candidates, config.image_size),
            "candidates": len(candidates)}
