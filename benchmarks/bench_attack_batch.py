"""Cross-LoRA batched decoding: seconds per LoRA of the toy attack's reconstructions, decoded one LoRA at a
time and B LoRAs per batch (``scan --attack-batch B``), in one run, with the largest pixel difference
from one-at-a-time decoding (the batch must not change the images).

The LoRAs are the shipped toy samples (``weights_samples/toy_*.safetensors``), taken in turn until there
are ``--loras`` of them (or the files given); the shipped toy attack model, K = latents x seeds images each,
the toy family's sampler steps. On CUDA when there is one (``--device``).

    python benchmarks/bench_attack_batch.py --batches 1,2,4,8 --loras 16
"""

from __future__ import annotations

import argparse
import glob
import itertools
import time

import numpy as np
import torch

from lora_audit.attack.reconstruct import load_attack, reconstruct_many
from lora_audit.attack.resolve import AttackSources
from lora_audit.toyworld.family import ToyFamily
from lora_audit.weights import open_lora


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="toy LoRA files [default: weights_samples/toy_*.safetensors]")
    parser.add_argument("--loras", type=int, default=16, help="LoRAs decoded per setting")
    parser.add_argument("--batches", default="1,2,4,8", help="LoRAs per batch to compare (comma-separated)")
    parser.add_argument("--latents", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=ToyFamily.sampling_steps, help="sampler steps")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on the CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = args.files or sorted(glob.glob("weights_samples/toy_*.safetensors"))
    files = [open_lora(p) for p in itertools.islice(itertools.cycle(paths), args.loras)]
    attack, base = load_attack(AttackSources(None, None).plan("toy").require(), args.device)
    kw = dict(latents=args.latents, seeds=args.seeds, sampling_steps=args.steps)
    reconstruct_many(attack, base, files[:2], **kw)  # warm-up
    print(f"{len(files)} toy LoRAs ({len(paths)} distinct), K = {args.latents * args.seeds} images, "
          f"{args.steps} sampler steps, {args.device}" + (f", {args.threads} threads" if args.device == "cpu" else ""))
    reference, first = None, None
    for batch in [int(b) for b in args.batches.split(",")]:
        start = time.perf_counter()
        images = [r.images for i in range(0, len(files), batch)
                  for r in reconstruct_many(attack, base, files[i : i + batch], **kw)]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        per_lora = (time.perf_counter() - start) / len(files)
        reference = reference if reference is not None else images
        first = first or per_lora
        difference = max(float(np.abs(a - b).max()) for a, b in zip(images, reference))
        print(f"  batch {batch:3d}: {per_lora:6.3f} s per LoRA  {1 / per_lora:6.2f} LoRAs/s  "
              f"{first / per_lora:5.2f}x batch {args.batches.split(',')[0]}  largest pixel difference {difference:.1e}")


if __name__ == "__main__":
    main()
