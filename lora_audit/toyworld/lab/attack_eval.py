"""Figures of the toy attack on held-out identities: is the reconstructed face the right person?

Each held-out LoRA (shadow identities kept out of training, and the sample victims) is attacked
from its file alone; its K reconstructions are ranked by the toy face embedder against the true
identity and 19 distractor identities nobody trained on (chance rank-1: 5%). The base model's
generic faces (class prompt, same K) ranked the same way are the chance level.

The floor the VAE has to beat is a linear probe: ridge regression (in kernel form) from a LoRA's
flattened dW to the identity's attribute vector, fitted on the same training shadows, identifying
the identity whose attributes are closest (cosine of standardised attribute vectors).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lora_audit.identity.metrics import consistency
from lora_audit.attack.model import AttackModel
from lora_audit.attack.shadow import Trajectory
from lora_audit.attack.reconstruct import reconstruct
from lora_audit.identity.embedder import FaceEmbedder
from lora_audit.identity.metrics import ranking, ranking_summary
from lora_audit.diffusion.base import DiffusionBase
from lora_audit.toyworld.identities import DISTRACTORS
from lora_audit.toyworld.renderer import attributes, identity
from lora_audit.toyworld.lab.victims import identity_ranking
from lora_audit.weights import open_lora



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
            "attack": ranking_summary([r["attack"] for r in rows.values()]),
            "base_generic": ranking_summary([r["base_generic"] for r in rows.values()])}


def ridge_probe(train: list[Trajectory], cases: list[tuple[int, Path]], distractors: list[int] = DISTRACTORS,
                ridges: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)) -> dict:
    """Rank-1 of the linear probe on ``cases``; the ridge is chosen by leave-one-out error on ``train``."""
    names = sorted(train[0].deltas(train[0].steps[-1]))
    x = np.stack([_flat(t.deltas(t.steps[-1]), names) for t in train])  # [N, F]
    y = np.stack([attributes(identity(int(t.identity))) for t in train])  # [N, A]
    x_mean, y_mean, y_std = x.mean(0), y.mean(0), y.std(0) + 1e-6
    xc, yc = x - x_mean, (y - y_mean) / y_std
    gram = xc @ xc.T  # [N, N]: kernel ridge in dual form, F is large
    scale = np.trace(gram) / len(gram)
    best = min(ridges, key=lambda r: _loo_error(gram, yc, r * scale))
    dual = np.linalg.solve(gram + best * scale * np.eye(len(gram)), yc)  # [N, A]
    rankings = []
    for identity_id, path in cases:
        with open_lora(str(path)) as lora_file:
            deltas = lora_file.deltas()
        predicted = ((_flat(deltas, names) - x_mean) @ xc.T) @ dual  # [A], standardised
        candidates = [identity_id, *distractors]
        truth = (np.stack([attributes(identity(c)) for c in candidates]) - y_mean) / y_std  # [C, A]
        scores = truth @ predicted / (np.linalg.norm(truth, axis=1) * np.linalg.norm(predicted) + 1e-12)
        rankings.append(ranking(scores, 0))
    return {"ridge": best, **ranking_summary(rankings)}


def _flat(deltas: dict, names: list[str]) -> np.ndarray:
    return np.concatenate([np.asarray(deltas[n], dtype=np.float64).ravel() for n in names])


def _loo_error(gram: np.ndarray, y: np.ndarray, ridge: float) -> float:
    """Leave-one-out squared error of kernel ridge, in closed form."""
    hat = gram @ np.linalg.inv(gram + ridge * np.eye(len(gram)))  # [N, N]
    residual = (y - hat @ y) / (1 - np.diag(hat))[:, None]
    return float((residual ** 2).mean())
