"""How often the identity attacks say "one consistent identity" (LA301) for LoRAs that hold no one person.

Three kinds of toy LoRA, fine-tuned with the victims' recipe (``finetune``'s defaults) on 5 images each:
  crowd    5 photos of 5 different people (a style or concept LoRA: faces, but nobody in particular)
  objects  5 crops of one scikit-image photo (coffee, a cat, a rocket, textures...: no face at all)
  person   5 photos of one person (the control: the leak the attacks exist to find)
  victims  with --victims: the final LoRAs of held-out victims' shadow trajectories (evaluate's), persons too
Each LoRA file is scanned by the identity check twice: with the shipped toy attack model (the VAE's
reconstructions) and with guidance extraction (the training-free attack a family without an attack
model gets). The table is the share of LA301 per kind and attack with its 95% Wilson interval: for
crowd and objects, a false alarm rate; for person, the detection rate. LA301 is judged against the
crowd null the toy build stores (``toy build --stage crowd``: other crowds, other crops); these
LoRAs are held out from it. Also shown: the share above the generic faces (LA301 or LA310), the
rule before the crowd null existed.

LoRA files are kept under ``--out`` and reused: an interrupted run resumes.

    OMP_NUM_THREADS=1 python benchmarks/bench_false_alarms.py --count 20 --persons 12 \
        --victims ../lora-audit-data/private50 --out build/false_alarms
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from lora_audit.toyworld.lab import crowd

FIRST = 307_000  # crowds: PRIVATE identities no other part uses (the stored null's are 308,000 on); persons 312,000 on


def crowd_photos(i: int, size: int) -> np.ndarray:
    return crowd.crowd_photos(FIRST + 10 * i, size)  # [5, H, W, 3]: five people


def person_photos(i: int, size: int) -> np.ndarray:
    from lora_audit.toyworld.photos import identity_photos

    return identity_photos(FIRST + 5000 + i, 5, size)


def object_photos(i: int, size: int) -> np.ndarray:
    return crowd.object_photos(i, size, seed=0)  # other crops than the stored null's (seeded from 1000)


KINDS = {"crowd": crowd_photos, "objects": object_photos, "person": person_photos}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p, d = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def victim_files(shadows: Path, out: Path) -> list[tuple[str, Path]]:
    """The final LoRA of every trajectory in ``shadows``, written once into ``out``, as person files."""
    from lora_audit.attack.shadow import load_trajectories
    from lora_audit.toyworld.family import TOY_METADATA
    from lora_audit.weights.writer import save_lora

    out.mkdir(parents=True, exist_ok=True)
    files = []
    for t in load_trajectories(shadows):
        path = out / f"victim-{int(t.identity)}.safetensors"
        if not path.exists():
            save_lora(str(path), t.states[t.steps[-1]], layout="peft", rank=t.rank, alpha=t.alpha, metadata=TOY_METADATA)
        files.append(("victims", path))
    return files


def main() -> None:
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
    parser.add_argument("--victims", type=Path, default=None,
                        help="also person LoRAs from the final states of these shadow trajectories (evaluate's victims)")
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
    if args.victims is not None:
        files += victim_files(args.victims, args.out / "victims")
    vae = IdentityCheck(IdentityOptions(out_dir=args.out / "images"))
    guided = IdentityCheck(IdentityOptions(out_dir=args.out / "images"))
    guided.sources = crowd.GuidanceOnly(get_family("toy").default_base())  # no attack model: guidance extraction
    rows = {}
    for kind, path in files:
        with open_lora(str(path)) as lora:
            subject = Subject(str(path), lora, weight_stats(lora))
            for attack, check in (("vae", vae), ("guidance", guided)):
                (finding, *_) = check.run(subject)
                if finding.rule_id not in ("LA301", "LA302", "LA310"):
                    raise SystemExit(f"{path.name} {attack}: {finding.rule_id} {finding.message}")
                rows.setdefault((kind, attack), []).append(finding.rule_id)
                e = finding.evidence
                print(f"{path.name} {attack}: {finding.rule_id} consistency {e['identity_consistency']:.3f} "
                      f"(generic threshold {e['threshold']:.3f}, crowd FAR {e.get('crowd_far', 'none')})", flush=True)
    print("\nkind     attack     LA301 share [95% Wilson]    above generic faces (LA301 or LA310)")
    summary = {}
    for (kind, attack), rules in rows.items():
        hits, above = rules.count("LA301"), len(rules) - rules.count("LA302")
        low, high = wilson(hits, len(rules))
        summary[f"{kind}/{attack}"] = {"la301": hits, "above_generic": above, "n": len(rules), "interval": [low, high],
                                       "above_generic_interval": list(wilson(above, len(rules)))}
        print(f"{kind:8s} {attack:9s} {hits:2d}/{len(rules):<2d} = {hits / len(rules):4.0%}  [{low:.0%}, {high:.0%}]"
              f"       {above:2d}/{len(rules):<2d}", flush=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
