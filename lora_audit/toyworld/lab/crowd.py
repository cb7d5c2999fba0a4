"""LoRAs that hold no one person, and the identity attacks' consistency on them: the crowd null of LA301.

LA301 claims that the weights reconstruct *one identity*. Generic faces of the base (the null of
LA302) are the wrong comparison for that claim: a LoRA fine-tuned on five different people, or on five
photos of an object, also renders a consistent face (measured in benchmarks/bench_false_alarms.py).
So the claim is tested against such LoRAs, fine-tuned with the victims' recipe on:

  crowd    5 photos of 5 different people (a style or concept LoRA: faces, but nobody in particular)
  objects  5 crops of one photo bundled with scikit-image (no face at all)

Their consistencies, per attack (the VAE with a given attack model, guidance extraction with the base
alone), are what ``scan`` compares a file's consistency with (``crowd_far`` of the policy).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lora_audit.toyworld.identities import PRIVATE

OBJECTS = ("coffee", "chelsea", "rocket", "colorwheel", "hubble_deep_field", "immunohistochemistry", "retina",
           "coins", "brick", "grass", "gravel", "moon", "clock", "horse", "cell")  # bundled with scikit-image
NULL_CROWD_START = PRIVATE.start + 8000  # the stored null's crowds: PRIVATE ids nothing else uses
NULL_OBJECT_SEED = 1000  # its object crops (the benchmark's are seeded from 0)
KINDS = ("crowd", "objects")
_SETTINGS = ("attack", "latents", "seeds", "images", "sampling_steps", "embedder", "guidance_weight", "prompt")


def crowd_photos(first: int, size: int) -> np.ndarray:
    """One photo each of identities ``first`` .. ``first + 4``: [5, size, size, 3] in [0, 1]."""
    from lora_audit.toyworld.photos import identity_photos

    return np.concatenate([identity_photos(first + j, 1, size) for j in range(5)])


def object_photos(index: int, size: int, seed: int = 0) -> np.ndarray:
    """5 square crops (random place and scale, from ``seed + index``) of the bundled photo
    ``OBJECTS[index % len(OBJECTS)]``: [5, size, size, 3] in [0, 1]."""
    import skimage.data
    from PIL import Image

    image = getattr(skimage.data, OBJECTS[index % len(OBJECTS)])()
    image = np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]  # [H, W, 3]
    rng, (h, w) = np.random.default_rng(seed + index), image.shape[:2]
    crops = []
    for _ in range(5):
        side = int(rng.uniform(0.5, 0.9) * min(h, w))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = Image.fromarray(np.ascontiguousarray(image[y : y + side, x : x + side]).astype(np.uint8))
        crops.append(np.asarray(crop.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255)
    return np.stack(crops)


def null_photos(kind: str, index: int, size: int) -> np.ndarray:
    """The photos of the stored null's ``index``-th LoRA of ``kind`` (crowd or objects)."""
    if kind == "crowd":
        return crowd_photos(NULL_CROWD_START + 5 * index, size)
    return object_photos(index, size, seed=NULL_OBJECT_SEED)


def finetune_null_loras(base, recipe, count: int, out: Path, photos=null_photos, progress=None) -> list[tuple[str, Path]]:
    """``count`` LoRAs of each kind fine-tuned with ``recipe`` (seed i for the i-th) into ``out``, as
    ``(kind, path)``; files already there are kept (an interrupted run resumes)."""
    from dataclasses import replace

    from lora_audit.diffusion.finetune import finetune_lora, generate_class_images
    from lora_audit.diffusion.lora_output import save_finetune
    from lora_audit.toyworld.family import TOY_METADATA

    out.mkdir(parents=True, exist_ok=True)
    class_images, files = None, []
    for kind in KINDS:
        for i in range(count):
            path = out / f"{kind}-{i:02d}.safetensors"
            if not path.exists():
                if class_images is None:
                    class_images = generate_class_images(base, recipe.class_prompt, recipe.num_class_images,
                                                         guidance_scale=recipe.class_guidance_scale,
                                                         steps=recipe.class_sampling_steps, seed=recipe.seed)
                images = photos(kind, i, base.image_size)
                result = finetune_lora(base, images, replace(recipe, seed=i), class_images)
                save_finetune(result, path, family=base.family, num_images=len(images), metadata=TOY_METADATA)
            files.append((kind, path))
            if progress:
                progress(len(files), 2 * count, {"lora": path.name})
    return files


class GuidanceOnly:
    """The attack sources of an IdentityCheck that runs guidance extraction on ``base``, whatever the
    family ships (the null of that attack is measured on families that have an attack model too)."""

    def __init__(self, base: str):
        self.base = base

    def plan(self, family: str):
        from lora_audit.attack.resolve import AttackPlan

        return AttackPlan(family, base=self.base)


def measure_null(check, files: list[tuple[str, Path]]) -> dict:
    """The identity check's consistency on every file, as a crowd reference: the attack and the settings it
    ran with (:data:`_SETTINGS`, what a scan matches it on), ``values``, the values per kind and their
    ``source``. ``check``: an IdentityCheck set to one attack."""
    from lora_audit.scan.check import Subject
    from lora_audit.weights import open_lora
    from lora_audit.weights.stats import weight_stats

    values, kinds, settings = [], {}, None
    for kind, path in files:
        with open_lora(str(path)) as lora:
            (finding, *_) = check.run(Subject(str(path), lora, weight_stats(lora)))
        if finding.rule_id not in ("LA301", "LA302", "LA310"):
            raise RuntimeError(f"{path.name}: the identity attack did not run ({finding.rule_id}: {finding.message})")
        evidence = finding.evidence
        value = float(evidence["identity_consistency"])
        values.append(value)
        kinds.setdefault(kind, []).append(value)
        settings = {key: evidence[key] for key in _SETTINGS if key in evidence}
    return {**settings, "values": values, "kinds": kinds,
            "source": f"{len(values)} toy LoRAs fine-tuned with the victims' recipe: "
                      + ", ".join(f"{len(v)} {k}" for k, v in kinds.items())}
