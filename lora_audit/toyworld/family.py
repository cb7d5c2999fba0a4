"""The toy world as a base family: its shipped base, embedder and attack, its captions and identities."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lora_audit.families import Family, register
from lora_audit.toyworld.assets import asset_path, toy_base_path, toy_embedder_path
from lora_audit.toyworld.identities import IMPOSTORS, PUBLIC, SHADOW_START
from lora_audit.toyworld.photos import identity_photos

TOY_METADATA = {"lora_audit.base_model": "toy", "modelspec.architecture": "lora-audit-toy/lora"}
PIPELINE_CLASS = "ToyFacePipeline"


class ToyFamily(Family):
    """The embedded toy face world: everything ships, identities are unlimited."""

    name = "toy"
    pipeline_classes = (PIPELINE_CLASS,)
    detect_faces = False  # toy renders are face crops by construction (one centred face per image)
    sampling_steps = 6  # the rank-1 and the verdict of 25 steps at 0.24 of the cost (docs/scale.md)

    def default_base(self) -> str:
        return toy_base_path()

    def shipped_attack_model(self) -> Path:
        return asset_path("attack")

    def load_pipeline(self, path: str):
        from lora_audit.toyworld.pipeline import ToyFacePipeline

        return ToyFacePipeline.from_pretrained(path)

    def face_embedder(self, device, face_weights: str | None = None):
        """The shipped toy embedder, or ``face_weights`` when it is a folder (a toy embedder, as
        ``toy build`` writes one); a checkpoint file is for the real families' FaceNet, not this one."""
        from lora_audit.toyworld.embedder import ToyFaceEmbedder

        from lora_audit.errors import InputError

        if face_weights is None or not Path(face_weights).is_dir():
            return ToyFaceEmbedder.load(toy_embedder_path(), device=device)
        try:
            return ToyFaceEmbedder.load(face_weights, device=device)
        except (OSError, ValueError, KeyError) as e:
            raise InputError("face_weights", face_weights, f"is not a toy embedder folder ({type(e).__name__}: {e})") from None

    def owner_null(self, embedder, image_size: int, photos: int):
        """The photo sets of 200 identities nobody trains on, ``photos`` views each (views 0, 1, ...,
        as a victim's own photos are)."""
        from lora_audit.identity.scoring import ImpostorGallery

        sets = np.stack([identity_photos(i, photos, image_size) for i in IMPOSTORS])  # [M, N, S, S, 3]
        return ImpostorGallery.from_photos(embedder, sets, f"toy world: {len(IMPOSTORS)} identities x {photos} "
                                           f"photos (ids {IMPOSTORS.start}-{IMPOSTORS.stop - 1})")

    def face_prompts(self, count: int, seed: int = 0) -> list[str]:
        """Captions of PUBLIC identities in the toy caption language."""
        from lora_audit.toyworld.renderer import caption, identity

        return [caption(identity(PUBLIC.start + i)) for i in range(count)]

    def lora_metadata(self) -> dict[str, str]:
        return dict(TOY_METADATA)

    def shadow_start(self) -> int:
        return SHADOW_START

    def identity_photos(self, identity: int, count: int, size: int) -> np.ndarray:
        return identity_photos(identity, count, size)


register(ToyFamily())
