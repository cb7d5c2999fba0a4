"""How well a face embedder tells toy identities apart, on clean renders and on diffusion-like ones.

Held-out identities come from the SHADOW range by default (:data:`DEFAULT_EVAL_IDS`): the embedder
trains only on EMBEDDER ids, and its recipe is chosen on these, so the PRIVATE targets stay unseen by
every choice. Verification pairs every two images (genuine: same identity, impostor: different);
identification splits the identities into groups of 100, takes image 0 of each as the gallery and
every other image as a probe.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lora_audit.identity.embedder import FaceEmbedder
from lora_audit.toyworld import identities
from lora_audit.toyworld.renderer import render_batch

DEFAULT_EVAL_IDS = range(identities.SHADOW.start, identities.SHADOW.start + 200)
GALLERY_SIZE = 100
BLUR_SIGMA = 0.8  # diffusion-like degradation used by evaluate_embedder: gaussian blur (pixels) ...
NOISE_STD = 0.04  # ... then gaussian pixel noise


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of [B, C, H, W] ``x`` with its own ``sigma`` ([B], pixels; 0 leaves it unchanged)."""
    b, c, h, w = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)  # [K]
    kernel = torch.exp(-0.5 * (taps / sigma.clamp_min(1e-3)[:, None]) ** 2)  # [B, K]
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [B*C, K], one per channel
    y = F.pad(x.reshape(1, b * c, h, w), (radius,) * 4, mode="replicate")  # [1, B*C, H+2r, W+2r]
    y = F.conv2d(y, kernel[:, None, :, None], groups=b * c)  # vertical pass -> [1, B*C, H, W+2r]
    y = F.conv2d(y, kernel[:, None, None, :], groups=b * c)  # horizontal pass -> [1, B*C, H, W]
    return y.reshape(b, c, h, w)


def degrade(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, H, W, 3) images in [0, 1] with the blur and noise typical of small diffusion models' samples."""
    x = torch.as_tensor(images, dtype=torch.float32).permute(0, 3, 1, 2)  # [N, 3, H, W]
    x = gaussian_blur(x, torch.full((len(x),), BLUR_SIGMA))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return (x + NOISE_STD * noise).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def roc_auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Probability that a genuine score beats an impostor one (ties count half): the ROC AUC."""
    scores = np.concatenate([genuine, impostor])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mid_ranks = np.cumsum(counts) - (counts - 1) / 2  # 1-based rank of each distinct score, ties averaged
    rank_sum = mid_ranks[inverse[:len(genuine)]].sum()
    n_g, n_i = len(genuine), len(impostor)
    return float((rank_sum - n_g * (n_g + 1) / 2) / (n_g * n_i))


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float = 1e-3) -> float:
    """Share of genuine pairs accepted at the threshold that accepts at most ``far`` of impostor pairs."""
    threshold = np.sort(impostor)[::-1][int(far * len(impostor))]
    return float(np.mean(genuine > threshold))


def verification_scores(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of all genuine pairs and all impostor pairs (each unordered pair once)."""
    sims = embeddings @ embeddings.T  # [N, N]
    i, j = np.triu_indices(len(labels), k=1)
    same = labels[i] == labels[j]
    return sims[i[same], j[same]], sims[i[~same], j[~same]]


def rank1(embeddings: np.ndarray, labels: np.ndarray, image_index: np.ndarray,
          gallery_size: int = GALLERY_SIZE) -> float:
    """Rank-1 identification rate, in groups of ``gallery_size`` identities (gallery: image 0 of each)."""
    ids = np.unique(labels)
    hits = total = 0
    for start in range(0, len(ids), gallery_size):
        group = np.isin(labels, ids[start:start + gallery_size])
        gallery, probes = group & (image_index == 0), group & (image_index != 0)
        nearest = np.argmax(embeddings[probes] @ embeddings[gallery].T, axis=1)  # [P]
        hits += int(np.sum(labels[gallery][nearest] == labels[probes]))
        total += int(probes.sum())
    return hits / total


def embedding_metrics(embeddings: np.ndarray, labels: np.ndarray, image_index: np.ndarray) -> dict:
    """Verification ROC AUC, TAR at FAR=1e-3, rank-1 identification, mean genuine/impostor cosine."""
    genuine, impostor = verification_scores(embeddings, labels)
    return {"auc": roc_auc(genuine, impostor), "tar_at_far_1e-3": tar_at_far(genuine, impostor, 1e-3),
            "rank1": rank1(embeddings, labels, image_index),
            "genuine_cos": float(genuine.mean()), "impostor_cos": float(impostor.mean())}


def evaluate_embedder(embedder: FaceEmbedder, identity_ids: Sequence[int] = DEFAULT_EVAL_IDS,
                      images_per_identity: int = 10, seed: int = 1, size: int = 32) -> dict:
    """Metrics of ``embedder`` on renders of ``identity_ids``: ``{"clean": {...}, "degraded": {...}, ...}``.

    Each of "clean" and "degraded" (see :func:`degrade`) holds the keys of :func:`embedding_metrics`;
    rank-1 is among ``min(100, len(identity_ids))`` identities.
    """
    labels = np.repeat(np.asarray(identity_ids), images_per_identity)  # [N]
    image_index = np.tile(np.arange(images_per_identity), len(identity_ids))  # [N]
    images = render_batch(labels, image_index, seed, size)  # [N, size, size, 3]
    result = {"identities": len(identity_ids), "images_per_identity": images_per_identity, "seed": seed,
              "gallery_size": min(GALLERY_SIZE, len(identity_ids))}
    for name, batch in (("clean", images), ("degraded", degrade(images, seed))):
        result[name] = embedding_metrics(embedder.embed(batch), labels, image_index)
    return result
