"""Disjoint identity-id ranges of the toy face world.

Any non-negative integer is an identity (see :mod:`lora_audit.toyworld.renderer`); these ranges keep
the parties of the audit apart, so no model is ever trained on a face it is later tested on:

============  ===================  =========================================================
split         ids                  used for
============  ===================  =========================================================
embedder      0 - 99,999           training the toy face embedder (the world's FaceNet)
public        100,000 - 199,999    training the toy text-conditional base model
shadow        200,000 - 299,999    the attacker's shadow LoRAs (training the weight-to-image VAE)
private       300,000 - 309,999    private targets: victim LoRAs that the audit scores
============  ===================  =========================================================
"""

from __future__ import annotations

EMBEDDER = range(0, 100_000)
PUBLIC = range(100_000, 200_000)
SHADOW = range(200_000, 300_000)
PRIVATE = range(300_000, 310_000)

SPLITS: dict[str, range] = {"embedder": EMBEDDER, "public": PUBLIC, "shadow": SHADOW, "private": PRIVATE}


def split_of(identity_id: int) -> str:
    """Name of the split ("embedder", "public", "shadow" or "private") that holds ``identity_id``."""
    for name, ids in SPLITS.items():
        if identity_id in ids:
            return name
    raise ValueError(f"identity id {identity_id} is in no split (splits cover 0 - {PRIVATE.stop - 1})")


DISTRACTORS = [PRIVATE.start + 100 + i for i in range(19)]  # identities no LoRA in the toy world uses
IMPOSTORS = range(PRIVATE.start + 5000, PRIVATE.start + 5200)  # the owner verdict's gallery: 200 other people
SHADOW_START = SHADOW.start + 1000  # shadow fine-tunes start here, clear of the SHADOW ids the build judges models on
