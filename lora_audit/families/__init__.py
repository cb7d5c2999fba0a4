"""Base-model families as plugins: what the product needs of each base (toy, sd1, sd2, sdxl).

A :class:`Family` says how to load its base pipeline, which face embedder scores its faces and
what the owner's verdict is compared with (``owner_null``), the face descriptions that span the attack's
latent, the attack model that ships for it, the metadata its fine-tunes carry, and whether it
has built-in identities to fine-tune shadows on. Adding a family is adding one module that
calls :func:`register`; the built-in ones are imported on first use (``_BUILTIN``), third-party
ones through the ``lora_audit.families`` entry-point group.

Family names are the base-model names the weights reader detects from a LoRA file
(:mod:`lora_audit.weights.base_model`): a LoRA of a registered family can be attacked.
"""

from __future__ import annotations

import importlib
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

from lora_audit.errors import InputError, MissingInputError

if TYPE_CHECKING:
    import numpy as np

    from lora_audit.diffusion.base import DiffusionBase
    from lora_audit.identity.embedder import FaceEmbedder
    from lora_audit.identity.scoring import ImpostorGallery, OperatingPoint

DEFAULT_FAMILY = "toy"  # the base used when no --base is given: the toy world ships one
_BUILTIN = ("lora_audit.toyworld.family", "lora_audit.families.stable_diffusion")
_REGISTRY: dict[str, "Family"] = {}
_loaded = False


class Family(ABC):
    """One base-model family: everything the attack and the identity verdict need of it."""

    name: str  # as the weights reader names the base ("toy", "sd1", ...)
    pipeline_classes: tuple[str, ...] = ()  # model_index.json ``_class_name``s this family loads itself
    detect_faces: bool = True  # the owner's photos are searched for a face (False: they are face crops already)
    sampling_steps: int = 25  # sampler steps of the scan's attack images (``scan --sampling-steps`` overrides)

    def default_base(self) -> str | None:
        """The base pipeline directory used when none is given (None: one must be given)."""
        return None

    def shipped_attack_model(self) -> Path | None:
        """The attack model directory that ships with lora-audit for this family, if any."""
        return None

    def claims_pipeline(self, index: dict, components: dict[str, dict]) -> bool:
        """Whether a diffusers pipeline directory is of this family, from its model_index.json and
        its components' config.json files (read as JSON, nothing loaded)."""
        return index.get("_class_name") in self.pipeline_classes

    def load_pipeline(self, path: str):
        """The diffusers pipeline at ``path``, loaded from local files only."""
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.from_pretrained(path, local_files_only=True, safety_checker=None)

    @abstractmethod
    def face_embedder(self, device, face_weights: str | None = None) -> "FaceEmbedder":
        """The face embedder that scores this family's faces (``face_weights``: a user-given checkpoint)."""

    @abstractmethod
    def owner_null(self, embedder: "FaceEmbedder", image_size: int, photos: int
                   ) -> "ImpostorGallery | OperatingPoint":
        """What the owner's verdict compares with, for ``embedder``: other people's photo sets of
        ``photos`` photos each (a gallery), or a published operating point."""

    @abstractmethod
    def face_prompts(self, count: int, seed: int = 0) -> list[str]:
        """``count`` face descriptions in this base's prompt language (they span the attack's latent)."""

    def lora_metadata(self) -> dict[str, str]:
        """Metadata written into LoRAs fine-tuned on this base (so the reader detects the family)."""
        return {}

    def shadow_start(self) -> int | None:
        """The first built-in identity for shadow fine-tuning; None: the family has none (give photos)."""
        return None

    def identity_photos(self, identity: int, count: int, size: int) -> "np.ndarray":
        """``count`` photos [N, size, size, 3] in [0, 1] of built-in identity ``identity``."""
        raise MissingInputError("images", None, f"needed: the {self.name} base has no built-in identities "
                         "(give one sub-folder of photos per shadow identity)")


def register(family: Family) -> Family:
    """Add ``family`` to the registry (a later registration of the same name replaces it)."""
    _REGISTRY[family.name] = family
    return family


def _load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN:
        importlib.import_module(module)
    from importlib.metadata import entry_points  # ~10 ms: only when a family is first looked up

    for entry in entry_points(group="lora_audit.families"):
        entry.load()


def registered() -> dict[str, Family]:
    """Every registered family by name."""
    _load_plugins()
    return dict(_REGISTRY)


def get_family(name: str) -> Family | None:
    """The registered family ``name``; None for bases the product only scans statically (flux, unknown)."""
    return registered().get(name)


def family_of_base(path: str) -> Family:
    """The family of the diffusers pipeline directory ``path``, from its JSON configs alone."""
    index_path = os.path.join(path, "model_index.json")
    if not os.path.isdir(path):
        raise InputError("base", path, "is not a directory holding a diffusers pipeline (model_index.json)")
    if not os.path.isfile(index_path):
        raise InputError("base", path, "has no model_index.json: not a diffusers pipeline directory")
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        components = {}
        for name in index:
            config = os.path.join(path, name, "config.json")
            if not name.startswith("_") and os.path.isfile(config):
                with open(config, encoding="utf-8") as f:
                    components[name] = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError("base", path, f"has an unreadable pipeline config ({e})") from None
    for family in registered().values():
        if family.claims_pipeline(index, components):
            return family
    raise InputError("base", path, f"is a {index.get('_class_name', 'pipeline')} of no family lora-audit "
                     f"knows ({', '.join(registered())})")


def load_base(path: str | None = None, device: str | None = None, precision: str | None = None) -> "DiffusionBase":
    """The base pipeline at ``path`` (default: the default family's shipped base), on ``device``, its
    forward passes in ``precision`` (default: ``$LORA_AUDIT_PRECISION``, else mixed precision on a GPU:
    :mod:`lora_audit.diffusion.precision`).

    Nothing is downloaded: the pipeline must already be on disk.
    """
    import diffusers.utils.logging
    import torch
    import transformers.utils.logging

    from lora_audit.diffusion.base import DiffusionBase
    from lora_audit.diffusion.precision import chosen_precision

    precision = chosen_precision(precision)  # a bad value is refused before anything loads
    diffusers.utils.logging.disable_progress_bar()  # the library never prints: no loading bars
    transformers.utils.logging.disable_progress_bar()
    if path is None:
        path = get_family(DEFAULT_FAMILY).default_base()
    family = family_of_base(path)
    pipe = family.load_pipeline(path)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return DiffusionBase(pipe, family.name, precision)
