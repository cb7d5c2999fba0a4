"""The interface every face embedder implements: images in, L2-normalised identity vectors out."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.nn.functional as F


class FaceEmbedder(ABC):
    """Maps face images to unit vectors whose cosine similarity says "same person".

    Subclasses implement :meth:`_embed_batch` on a prepared batch; :meth:`embed` does the rest
    (conversion, resizing to :attr:`image_size`, batching, the device, normalisation).
    """

    batch_size = 256

    def __init__(self, device: str | torch.device | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    @property
    @abstractmethod
    def image_size(self) -> int:
        """Side in pixels of the square images the network sees; other sizes are resized to it."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Length of an embedding."""

    @abstractmethod
    def _embed_batch(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, image_size, image_size] floats in [0, 1] on :attr:`device` -> [B, dim] (any norm)."""

    def fingerprint(self) -> str:
        """Which network this is: its class and a hash of its weights (``self.model``'s state dict), so that
        figures cached with one embedder are never reused with another."""
        import hashlib

        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return f"{type(self).__name__}:{digest.hexdigest()[:16]}"

    def embed(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, H, W, 3) float images in [0, 1] (numpy or torch) -> (N, dim) float32, each row of norm 1."""
        images = torch.as_tensor(images, dtype=torch.float32)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images of shape (N, H, W, 3), got {tuple(images.shape)}")
        out = np.empty((len(images), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                x = images[start:start + self.batch_size].to(self.device).permute(0, 3, 1, 2)  # [B, 3, H, W]
                if x.shape[-2:] != (self.image_size, self.image_size):
                    x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                      antialias=True, align_corners=False)
                e = F.normalize(self._embed_batch(x).float(), dim=1)  # [B, dim]
                out[start:start + len(e)] = e.cpu().numpy()
        return out
