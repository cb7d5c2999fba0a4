"""Photos of toy identities: training photos (views 0, 1, ...) and reference views no LoRA trains on.

Toy renders are face crops already (the renderer draws one centred face per image), so no face
detection is run on them.
"""

from __future__ import annotations

import numpy as np

from lora_audit.toyworld.renderer import render_batch

REFERENCE_INDICES = range(100, 110)  # views of an identity never used as training photos


def identity_photos(identity_id: int, count: int, size: int, seed: int = 0, first_view: int = 0) -> np.ndarray:
    """Views ``first_view`` .. ``first_view + count - 1`` of one identity: [count, size, size, 3] in [0, 1]."""
    return render_batch([identity_id] * count, list(range(first_view, first_view + count)), seed=seed, size=size)


def reference_views(identity_ids: list[int], size: int, seed: int = 0) -> np.ndarray:
    """Every identity's reference views, identity by identity: [C * V, size, size, 3] in [0, 1]."""
    views = list(REFERENCE_INDICES)
    return render_batch([i for i in identity_ids for _ in views], views * len(identity_ids), seed=seed, size=size)
