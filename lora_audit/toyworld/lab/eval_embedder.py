"""How well a face embedder tells toy identities apart, on clean renders and on diffusion-like ones.

Held-out identities come from the SHADOW range by default (:data:`DEFAULT_EVAL_IDS`): the embedder
trains only on EMBEDDER ids, and its recipe is chosen on these, so the PRIVATE targets stay unseen by
every choice. Verification pairs every two images (genuine: same identity, impostor: different);
identification splits the identities into groups of 100, takes image 0 of each as the gallery and
every other image as a probe.

This module renders and degrades; the metrics themselves are :mod:`lora_audit.identity.metrics`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lora_audit.identity.embedder import FaceEmbedder
from lora_audit.identity.metrics import pair_scores, rank1, roc_auc, tar_at_far
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


def embedding_metrics(embeddings: np.ndarray, labels: np.ndarray, image_index: np.ndarray) -> dict:
    """Verification ROC AUC, TAR at FAR=1e-3, rank-1 identification, mean genuine/impostor cosine."""
    genuine, impostor = pair_scores(embeddings, labels)  # [G], [P]
    return {"auc": roc_auc(genuine, impostor), "tar_at_far_1e-3": tar_at_far(genuine, impostor, 1e-3),
            "rank1": rank1(embeddings, labels, image_index, GALLERY_SIZE),
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
