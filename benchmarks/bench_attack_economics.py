"""The toy attack's cost per LoRA against its rank-1, by sampler steps, and a whole batch scan.

For each number of sampler steps S: every victim's final LoRA (``lora-audit shadow --first-identity
301000`` trajectories, as ``evaluate`` makes them) reconstructed by the shipped toy attack (K = latents x
seeds images, the models loaded once), scored by the toy face embedder against all the victims'
identities: rank-1 with its 95% Wilson interval, mean similarity, seconds per LoRA (reconstruction,
then embedding), and the owner's verdict of ``scan --references`` (LA304 at FAR 0.01 against 200 other
identities' photo sets) with 5 photos the LoRA never saw of the victim (true positives) and of
another victim (false positives). Then the whole ``lora-audit scan DIR -j J --sampling-steps S`` of those LoRA files as
one command (start-up, model loading and the reference faces included), its seconds per LoRA
amortised over the batch, and its LA301 count.

    python benchmarks/bench_attack_economics.py ../lora-audit-data/private50 --steps 25,15,10,6,4,3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("victims", type=Path, help="victim trajectories (lora-audit shadow --first-identity 301000)")
    parser.add_argument("--steps", default="25,15,10", help="sampler steps to compare (comma-separated; none: skip)")
    parser.add_argument("--scan", default="default",
                        help="the whole-scan run: default (the family's sampler steps), N (--sampling-steps N) or none")
    parser.add_argument("--latents", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the in-process runs)")
    parser.add_argument("--jobs", type=int, default=2, help="--jobs of the whole-scan run")
    args = parser.parse_args()

    from lora_audit.attack.model import AttackModel
    from lora_audit.attack.reconstruct import reconstruct
    from lora_audit.attack.shadow import load_trajectories
    from lora_audit.families import get_family, load_base
    from lora_audit.identity.scoring import score_leak
    from lora_audit.toyworld.photos import identity_photos
    from lora_audit.identity.metrics import rank_of, set_scores, wilson_interval
    from lora_audit.toyworld.assets import asset_path, toy_embedder_path
    from lora_audit.toyworld.embedder import ToyFaceEmbedder
    from lora_audit.toyworld.family import TOY_METADATA
    from lora_audit.toyworld.lab.victims import identity_centres
    from lora_audit.weights import open_lora
    from lora_audit.weights.writer import save_lora

    torch.set_num_threads(args.threads)
    trajectories = load_trajectories(args.victims)
    base = load_base(None)
    embedder = ToyFaceEmbedder.load(toy_embedder_path(), device=base.device)
    attack = AttackModel.load(asset_path("attack")).to(base.device)
    ids = [int(t.identity) for t in trajectories]
    centres = identity_centres(embedder, ids, base.image_size)  # [n, D]
    n = len(ids)
    gallery = get_family("toy").owner_null(embedder, base.image_size, 5)
    photos = [identity_photos(identity, 5, base.image_size, first_view=100) for identity in ids]
    print(f"{n} victims, K = {args.latents} x {args.seeds} images, {args.threads} torch thread(s); chance rank-1 {1 / n:.0%}")
    with tempfile.TemporaryDirectory() as folder:
        files = []
        for t in trajectories:
            files.append(os.path.join(folder, f"victim_{t.identity}.safetensors"))
            final = t.steps[-1]
            save_lora(files[-1], t.states[final], rank=t.rank, alpha=t.alpha, metadata=TOY_METADATA)
        for steps in [int(s) for s in args.steps.split(",") if s != "none"]:
            ranks, similarity, decode_s, embed_s, verdicts = [], [], 0.0, 0.0, {"own": 0, "other": 0}
            for i, path in enumerate(files):
                start = time.perf_counter()
                with open_lora(path) as lora_file:
                    images = reconstruct(attack, base, lora_file, latents=args.latents, seeds=args.seeds,
                                         sampling_steps=steps).images
                middle = time.perf_counter()
                scores = set_scores(embedder.embed(images), centres)  # [n]
                embed_s += time.perf_counter() - middle
                decode_s += middle - start
                ranks.append(rank_of(scores, i))
                similarity.append(float(scores[i]))
                for whose, j in (("own", i), ("other", (i + 1) % n)):
                    verdicts[whose] += bool(score_leak(images, photos[j], embedder, gallery, far=0.01).leaks)
            hits = sum(r == 1 for r in ranks)
            low, high = wilson_interval(hits, n)
            print(f"  {steps:3d} steps: rank-1 {hits / n:4.0%} [{low:.0%}, {high:.0%}]  mean similarity "
                  f"{np.mean(similarity):.3f}  mean rank {np.mean(ranks):5.2f}  "
                  f"{decode_s / n:5.2f} s/LoRA reconstruct + {embed_s / n:5.3f} s embed; verdict TPR "
                  f"{verdicts['own'] / n:.0%} FPR {verdicts['other'] / n:.0%}")
        if args.scan != "none":
            report = os.path.join(folder, "scan.jsonl")
            steps = [] if args.scan == "default" else ["--sampling-steps", args.scan]
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "lora_audit", "scan", folder, "-q", "-f", "jsonl", "-o", report,
                                   "-j", str(args.jobs), *steps], capture_output=True, text=True)
            wall = time.perf_counter() - start
            if proc.returncode not in (0, 1):
                raise SystemExit(f"scan failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
            lines = [json.loads(line) for line in open(report)]
            rules = [f["rule_id"] for line in lines if line["type"] == "file" for f in line["findings"]]
            used = {f["evidence"]["sampling_steps"] for line in lines if line["type"] == "file" for f in line["findings"]
                    if f["rule_id"] in ("LA301", "LA302", "LA310")}
            print(f"  lora-audit scan -j {args.jobs} {' '.join(steps)} of the {n} files (sampler steps {sorted(used)}): {wall:.1f} s, "
                  f"{wall / n:.2f} s per LoRA amortised (start-up and model loading included); "
                  f"LA301 on {rules.count('LA301')}, LA310 on {rules.count('LA310')}, LA302 on {rules.count('LA302')}")


if __name__ == "__main__":
    main()
