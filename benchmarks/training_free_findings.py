"""How often the scan's findings fire on the training-free attacks' images of held-out toy victims.

For each victim's final LoRA (``lora-audit shadow`` trajectories), each attack as ``scan`` runs it (seed 0,
K = 8 images, 25 steps, the shipped toy base, embedder and generic reference):
  guidance  guidance extraction at w: LA301's test (consistency above the generic faces' mean + 3 std)
            and the owner verdict (LA304: FAR <= 0.01 among 200 other identities' photo sets) with
            5 photos the LoRA never saw of the victim (true positives) and of the next victim (false)
  trigger   the metadata trigger, the LoRA written with kohya's default ss_* keys: LA308's tests
Prints one JSON line per victim, then the counts with 95% Wilson intervals:

    OMP_NUM_THREADS=1 python benchmarks/training_free_findings.py build/eval/private50
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def main() -> None:
    from lora_audit.attack.model import AttackModel
    from lora_audit.attack.shadow import load_trajectories
    from lora_audit.attack.training_free import GUIDANCE_WEIGHT, guidance_images, render_triggers
    from lora_audit.families import get_family, load_base
    from lora_audit.identity.metrics import consistency, wilson_interval
    from lora_audit.identity.scoring import score_leak
    from lora_audit.toyworld.assets import asset_path, toy_embedder_path
    from lora_audit.toyworld.embedder import ToyFaceEmbedder
    from lora_audit.toyworld.photos import identity_photos
    from lora_audit.weights.triggers import metadata_triggers
    from lora_audit.weights.writer import kohya_training_metadata

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("victims")
    parser.add_argument("--weight", type=float, default=GUIDANCE_WEIGHT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = load_base(None, "cpu")
    embedder = ToyFaceEmbedder.load(toy_embedder_path(), device=base.device)
    generic = AttackModel.load(asset_path("attack")).config.evaluation["generic_consistency"]
    threshold = generic["mean"] + 3 * generic["std"]
    gallery = get_family("toy").owner_null(embedder, base.image_size, 5)
    trajectories = load_trajectories(args.victims)
    ids = [int(t.identity) for t in trajectories]
    rows = []
    for n, t in enumerate(trajectories):
        deltas = t.deltas(t.steps[-1])
        metadata = kohya_training_metadata(trigger=t.trigger, class_word="person", num_images=len(t.images),
                                           steps=t.steps[-1], rank=t.rank, alpha=t.alpha, base_model_version="toy",
                                           output_name="victim")
        metadata.pop("modelspec.trigger_phrase")  # kohya's default keys
        images = {"guidance": guidance_images(base, deltas, 8, args.weight),
                  "trigger": render_triggers(base, deltas, metadata_triggers(metadata), 8, embedder).images}
        row = {"victim": ids[n]}
        for attack, batch in images.items():
            row[f"{attack}_consistency"] = round(float(consistency(embedder.embed(batch))), 4)
            for whose, identity in (("own", ids[n]), ("other", ids[(n + 1) % len(ids)])):
                photos = identity_photos(identity, 5, base.image_size, first_view=100)
                row[f"{attack}_{whose}"] = bool(score_leak(batch, photos, embedder, gallery, far=0.01).leaks)
        rows.append(row)
        print(json.dumps(row), flush=True)

    def share(hits: int) -> str:
        low, high = wilson_interval(hits, len(rows))
        return f"{hits} of {len(rows)} [{low:.0%}, {high:.0%}]"

    summary = {"threshold": round(threshold, 4), "w": args.weight}
    for attack in images:
        values = [r[f"{attack}_consistency"] for r in rows]
        summary[attack] = {"consistent": share(sum(v > threshold for v in values)),
                           "mean_consistency": round(float(np.mean(values)), 3),
                           "owner_verdict_own": share(sum(r[f"{attack}_own"] for r in rows)),
                           "owner_verdict_other": share(sum(r[f"{attack}_other"] for r in rows))}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
