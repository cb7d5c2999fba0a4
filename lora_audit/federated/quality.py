"""How close reconstructions are to the private photos: PSNR, SSIM, optimal matching, identity.

Images are [N, H, W, 3] floats in [0, 1]; PSNR uses a data range of 1 (the GIDM code used 255 on
normalised tensors, which adds 48 dB), SSIM is scikit-image's ``structural_similarity`` over the
colour channels. A batch's reconstructions come back in no particular order: each is matched to a
private photo by the assignment of least total squared error (``scipy.optimize.linear_sum_assignment``).
"""

from __future__ import annotations

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images [H, W, 3] in [0, 1] (data range 1); inf when identical."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (scikit-image, data range 1, over the colour channels) of two images [H, W, 3] in [0, 1]."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                       channel_axis=-1, data_range=1.0))


def match(reconstructions: np.ndarray, photos: np.ndarray) -> np.ndarray:
    """For each reconstruction [B, ...] the index of its photo [N >= B, ...]: the assignment of least
    total squared error; [B] ints."""
    from scipy.optimize import linear_sum_assignment

    r = np.asarray(reconstructions, np.float64).reshape(len(reconstructions), -1)  # [B, P]
    p = np.asarray(photos, np.float64).reshape(len(photos), -1)  # [N, P]
    cost = ((r[:, None, :] - p[None, :, :]) ** 2).mean(-1)  # [B, N]
    rows, cols = linear_sum_assignment(cost)
    out = np.empty(len(r), dtype=int)
    out[rows] = cols
    return out


def image_scores(reconstructions: np.ndarray, photos: np.ndarray) -> list[dict]:
    """Per reconstruction: the matched photo's index, PSNR and SSIM."""
    order = match(reconstructions, photos)
    return [{"photo": int(j), "psnr": round(psnr(r, photos[j]), 3), "ssim": round(ssim(r, photos[j]), 4)}
            for r, j in zip(reconstructions, order)]


def identity_similarity(embedder, reconstructions: np.ndarray, references: np.ndarray) -> list[float]:
    """Cosine of each reconstruction's face embedding to the references' identity centre."""
    from lora_audit.identity.metrics import unit_rows

    centre = unit_rows(embedder.embed(references).mean(0, keepdims=True))[0]  # [D]
    return [round(float(x), 4) for x in unit_rows(embedder.embed(reconstructions)) @ centre]


def grid(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Rows of images (each [N, H, W, 3], equal N) tiled with white padding: [R*(H+pad), N*(W+pad), 3]."""
    n, h, w = rows[0].shape[:3]
    out = np.ones((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), dtype=np.float32)
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            out[y:y + h, x:x + w] = image
    return out


def save_png(image: np.ndarray, path, scale: int = 1) -> None:
    from PIL import Image

    img = Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)
