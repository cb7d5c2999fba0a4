"""Figures of the toy attack on held-out identities: is the reconstructed face the right person?

Each held-out LoRA (shadow identities kept out of training, and the sample victims) is attacked
from its file alone; its K reconstructions are ranked by the toy face embedder against the true
identity and 19 distractor identities nobody trained on (chance rank-1: 5%). The base model's
generic faces (class prompt, same K) ranked the same way are the chance level.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lora_audit.attack.audit import consistency
from lora_audit.attack.model import AttackModel
from lora_audit.attack.reconstruct import reconstruct
from lora_audit.faces.embedder import FaceEmbedder
from lora_audit.pipelines import DiffusionBase
from lora_audit.toyworld.identities import PRIVATE
from lora_audit.toyworld.victims import identity_ranking
from lora_audit.weights import open_lora

DISTRACTORS = [PRIVATE.start + 100 + i for i in range(19)]  # identities no LoRA in the toy world uses


def evaluate_attack(attack: AttackModel, base: DiffusionBase, embedder: FaceEmbedder,
                    cases: list[tuple[int, Path]], *, latents: int = 4, seeds: int = 2, sampling_steps: int = 25,
                    image_size: int = 32, distractors: list[int] = DISTRACTORS) -> dict:
    """Rank-1, mean similarity and consistency of the reconstructions of each (identity id, LoRA file)."""
    k = latents * seeds
    generic_embeds = base.encode_prompt([attack.config.class_prompt]).detach().expand(k, -1, -1)
    rows = {}
    for identity_id, path in cases:
        candidates = [identity_id, *distractors]
        with open_lora(str(path)) as lora_file:
            result = reconstruct(attack, base, lora_file, latents=latents, seeds=seeds, sampling_steps=sampling_steps)
        generic = base.generate(generic_embeds, seed=identity_id, steps=sampling_steps)
        rows[path.stem] = {
            "identity": identity_id, "step": round(result.step), "step_source": result.step_source,
            "attack": identity_ranking(embedder, result.images, identity_id, candidates, image_size),
            "base_generic": identity_ranking(embedder, generic, identity_id, candidates, image_size),
            "consistency": consistency(embedder.embed(result.images))}
    return {"cases": rows, "candidates": 1 + len(distractors), "k": k,
            "attack": _summary([r["attack"] for r in rows.values()]),
            "base_generic": _summary([r["base_generic"] for r in rows.values()])}


def _summary(rankings: list[dict]) -> dict:
    return {"mean_similarity": round(float(np.mean([r["similarity"] for r in rankings])), 4),
            "rank1": round(float(np.mean([r["rank"] == 1 for r in rankings])), 3),
            "mean_rank": round(float(np.mean([r["rank"] for r in rankings])), 2), "n": len(rankings)}
