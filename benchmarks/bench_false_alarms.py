"""How often the identity attacks say "one consistent identity" (LA301) for LoRAs that hold no one person.

Three kinds of toy LoRA, fine-tuned with the victims' recipe (``finetune``'s defaults) on 5 images each:
  crowd    5 photos of 5 different people (a style or concept LoRA: faces, but nobody in particular)
  objects  5 crops of one scikit-image photo (coffee, a cat, a rocket, textures...: no face at all)
  person   5 photos of one person (the control: the leak the attacks exist to find)
Each LoRA file is scanned by the identity check twice: with the shipped toy attack model (the VAE's
reconstructions) and with guidance extraction (the training-free attack a family without an attack
model gets). The table is the share of LA301 per kind and attack with its 95% Wilson interval: for
crowd and objects, a false alarm rate; for person, the detection rate.

LoRA files are kept under ``--out`` and reused: an interrupted run resumes.

    OMP_NUM_THREADS=1 python benchmarks/bench_false_alarms.py --count 10 --persons 4 --out build/false_alarms
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

OBJECTS = ("coffee", "chelsea", "rocket", "colorwheel", "hubble_deep_field", "immunohistochemistry", "retina",
           "coins", "brick", "grass", "gravel", "moon", "clock", "horse", "cell")  # bundled with scikit-image
FIRST = 307_000  # PRIVATE identities no other part of the toy world uses


def crowd_photos(i: int, size: int) -> np.ndarray:
    from lora_audit.toyworld.photos import identity_photos

    return np.concatenate([identity_photos(FIRST + 10 * i + j, 1, size) for j in range(5)])  # [5, H, W, 3]


def person_photos(i: int, size: int) -> np.ndarray:
    from lora_audit.toyworld.photos import identity_photos

    return identity_photos(FIRST + 5000 + i, 5, size)


def object_photos(i: int, size: int) -> np.ndarray:
    """5 square crops (random place and scale) of one bundled photo, [5, size, size, 3] in [0, 1]."""
    import skimage.data
    from PIL import Image

    image = getattr(skimage.data, OBJECTS[i % len(OBJECTS)])()
    image = np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3]  # [H, W, 3]
    rng, (h, w) = np.random.default_rng(i), image.shape[:2]
    crops = []
    for _ in range(5):
        side = int(rng.uniform(0.5, 0.9) * min(h, w))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = Image.fromarray(np.ascontiguousarray(image[y : y + side, x : x + side]).astype(np.uint8))
        crops.append(np.asarray(crop.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255)
    return np.stack(crops)


KINDS = {"crowd": crowd_photos, "objects": object_photos, "person": person_photos}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p, d = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def main() -> None:
    from lora_audit.attack.resolve import AttackPlan
    from lora_audit.diffusion.finetune import FinetuneConfig, finetune_lora, generate_class_images
    from lora_audit.diffusion.lora_output import save_finetune
    from lora_audit.families import get_family, load_base
    from lora_audit.scan.check import Subject
    from lora_audit.scan.identity import IdentityCheck, IdentityOptions
    from lora_audit.toyworld.family import TOY_METADATA
    from lora_audit.weights import open_lora
    from lora_audit.weights.stats import weight_stats

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10, help="crowd and objects LoRAs each")
    parser.add_argument("--persons", type=int, default=4, help="person LoRAs (the control)")
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps [default: the victims' recipe]")
    parser.add_argument("--out", type=Path, default=Path("build/false_alarms"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base = load_base(None, "cpu")
    recipe = FinetuneConfig() if args.steps is None else FinetuneConfig(steps=args.steps)
    class_images = None
    files = []
    for kind, count in (("crowd", args.count), ("objects", args.count), ("person", args.persons)):
        for i in range(count):
            path = args.out / f"{kind}-{i:02d}.safetensors"
            if not path.exists():
                if class_images is None:
                    class_images = generate_class_images(base, recipe.class_prompt, recipe.num_class_images,
                                                         guidance_scale=recipe.class_guidance_scale,
                                                         steps=recipe.class_sampling_steps, seed=recipe.seed)
                photos = KINDS[kind](i, base.image_size)
                result = finetune_lora(base, photos, FinetuneConfig(**{**recipe.__dict__, "seed": i}), class_images)
                save_finetune(result, path, family="toy", num_images=len(photos), metadata=TOY_METADATA)
                print(f"fine-tuned {path.name} (final loss {result.losses[-1]:.4f})", flush=True)
            files.append((kind, path))
    vae = IdentityCheck(IdentityOptions(out_dir=args.out / "images"))
    guided = IdentityCheck(IdentityOptions(out_dir=args.out / "images"))
    default_base = get_family("toy").default_base()
    guided.sources.plan = lambda family: AttackPlan(family, base=default_base)  # no attack model: guidance extraction
    rows = {}
    for kind, path in files:
        with open_lora(str(path)) as lora:
            subject = Subject(str(path), lora, weight_stats(lora))
            for attack, check in (("vae", vae), ("guidance", guided)):
                (finding, *_) = check.run(subject)
                if finding.rule_id not in ("LA301", "LA302"):
                    raise SystemExit(f"{path.name} {attack}: {finding.rule_id} {finding.message}")
                rows.setdefault((kind, attack), []).append(finding.rule_id == "LA301")
                print(f"{path.name} {attack}: {finding.rule_id} consistency "
                      f"{finding.evidence['identity_consistency']:.3f} (threshold {finding.evidence['threshold']:.3f})",
                      flush=True)
    print("\nkind     attack     LA301 share [95% Wilson]")
    summary = {}
    for (kind, attack), hits in rows.items():
        low, high = wilson(sum(hits), len(hits))
        summary[f"{kind}/{attack}"] = {"la301": sum(hits), "n": len(hits), "interval": [low, high]}
        print(f"{kind:8s} {attack:9s} {sum(hits):2d}/{len(hits):<2d} = {sum(hits) / len(hits):4.0%}  [{low:.0%}, {high:.0%}]")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
