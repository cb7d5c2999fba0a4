"""Photos of toy identities: training photos (views 0, 1, ...) and reference views no LoRA trains on.

Toy renders are face crops already (the renderer draws one centred face per image), so no face
detection is run on them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lora_audit.errors import InputError

from lora_audit.toyworld.renderer import render_batch

REFERENCE_INDICES = range(100, 110)  # views of an identity never used as training photos


def identity_photos(identity_id: int, count: int, size: int, seed: int = 0, first_view: int = 0) -> np.ndarray:
    """Views ``first_view`` .. ``first_view + count - 1`` of one identity: [count, size, size, 3] in [0, 1]."""
    return render_batch([identity_id] * count, list(range(first_view, first_view + count)), seed=seed, size=size)


def reference_views(identity_ids: list[int], size: int, seed: int = 0) -> np.ndarray:
    """Every identity's reference views, identity by identity: [C * V, size, size, 3] in [0, 1]."""
    views = list(REFERENCE_INDICES)
    return render_batch([i for i in identity_ids for _ in views], views * len(identity_ids), seed=seed, size=size)


def save_identity_photos(identity_id: int, count: int, out: Path, *, first_view: int = 0, seed: int = 0,
                         size: int = 32, overwrite: bool = False) -> list[Path]:
    """Write views ``first_view`` .. of one identity as ``out/photo_<view>.png``; returns the paths.

    Refuses to replace an existing photo unless ``overwrite``.
    """
    from PIL import Image

    if identity_id < 0:
        raise InputError("identity", identity_id, "is not an identity id (a non-negative integer)")
    paths = [out / f"photo_{first_view + k}.png" for k in range(count)]
    existing = [p.name for p in paths if p.exists()]
    if existing and not overwrite:
        raise InputError("out", out, f"already holds {', '.join(existing[:3])}"
                         + (f" and {len(existing) - 3} more" if len(existing) > 3 else ""), fix=("force", "to replace them"))
    out.mkdir(parents=True, exist_ok=True)
    photos = identity_photos(identity_id, count, size, seed, first_view)  # [count, size, size, 3]
    for path, photo in zip(paths, photos):
        Image.fromarray((photo * 255 + 0.5).astype(np.uint8)).save(path)
    return paths
