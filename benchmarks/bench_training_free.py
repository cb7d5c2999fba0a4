"""Seconds per LoRA of the identity attacks, side by side in one process, on the shipped toy base and attack.

For the final LoRA of each of the first N victims of a victims directory (``lora-audit shadow``), K
images at the scan's settings (4 latents x 2 seeds = 8, 25 sampling steps), best of ``--repeats``:
  lora       the LoRA-patched base sampled once (prompted with the class prompt): the floor
  vae        the weight-to-image VAE (``reconstruct``: encoder, then the LoRA-patched base)
  guidance   guidance extraction at w (two UNet calls per step: the base's and the LoRA's)
  trigger    the metadata trigger (the LoRA prompted with one trigger read from kohya metadata)
and the UNet calls each makes.

    OMP_NUM_THREADS=1 python benchmarks/bench_training_free.py build/eval/private50 --victims 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from lora_audit.attack.model import AttackModel
    from lora_audit.attack.reconstruct import reconstruct
    from lora_audit.attack.shadow import load_trajectories
    from lora_audit.attack.training_free import (CLASS_PROMPT, GUIDANCE_WEIGHT, guidance_images, prompted_images,
                                                 trigger_prompt)
    from lora_audit.families import load_base
    from lora_audit.toyworld.assets import asset_path
    from lora_audit.toyworld.family import TOY_METADATA
    from lora_audit.weights import open_lora
    from lora_audit.weights.triggers import metadata_triggers
    from lora_audit.weights.writer import kohya_training_metadata, save_lora

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("victims")
    parser.add_argument("--victims", dest="count", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--weight", type=float, default=GUIDANCE_WEIGHT)
    parser.add_argument("--out", help="Where the benchmark's LoRA file goes [default: a temporary folder].")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory()
    args.out = args.out or str(Path(scratch.name) / "bench_training_free.safetensors")
    torch.set_num_threads(1)
    base = load_base(None, "cpu")
    attack = AttackModel.load(asset_path("attack")).to(base.device)
    calls = []
    base.unet.register_forward_pre_hook(lambda module, inputs: calls.append(1))
    timings: dict[str, list[float]] = {}
    unet_calls: dict[str, int] = {}
    for t in load_trajectories(args.victims)[:args.count]:
        final = t.steps[-1]
        metadata = kohya_training_metadata(trigger=t.trigger, class_word="person", num_images=len(t.images),
                                           steps=final, rank=t.rank, alpha=t.alpha, base_model_version="toy",
                                           output_name="bench")
        save_lora(args.out, t.states[final], rank=t.rank, alpha=t.alpha, metadata={**TOY_METADATA, **metadata})
        with open_lora(args.out) as lora_file:
            prompt = trigger_prompt(metadata_triggers(lora_file.metadata)[0].phrase)
            runs = {"lora": lambda: prompted_images(base, lora_file.deltas(), CLASS_PROMPT, 8),
                    "vae": lambda: reconstruct(attack, base, lora_file),
                    "guidance": lambda: guidance_images(base, lora_file.deltas(), 8, args.weight),
                    "trigger": lambda: prompted_images(base, lora_file.deltas(), prompt, 8)}
            for name, run in runs.items():
                best = float("inf")
                for _ in range(args.repeats):
                    calls.clear()
                    start = time.perf_counter()
                    run()
                    best = min(best, time.perf_counter() - start)
                timings.setdefault(name, []).append(best)
                unet_calls[name] = len(calls)
    floor = np.mean(timings["lora"])
    print(f"{args.count} victims, K = 8 images, 25 steps, best of {args.repeats}, 1 thread; w = {args.weight:g}")
    for name, seconds in timings.items():
        print(f"{name:9s} {np.mean(seconds):6.2f} s per LoRA  {np.mean(seconds) / floor:4.2f} x the floor  "
              f"{unet_calls[name]} UNet calls")


if __name__ == "__main__":
    main()
