"""The scan's phases on SD1.5- and SDXL-sized models with random weights: seconds per LoRA, LoRAs per second.

For each family, a pipeline whose UNet and VAE have the real model's layer sizes and resolution
(``lora_audit.testing.pipelines.build_pipeline(real_unet=True)``: 859.5M + 83.7M parameters for
SD1.5, SD1.5's; the text encoders are small, at the real widths), on CUDA when there is one, else the
CPU, as a scan runs them: float32 weights, the forward passes in the product's precision (bf16 autocast
on a GPU, float32 on the CPU; ``--precision`` or ``LORA_AUDIT_PRECISION`` to change it). A batch of ``--loras`` kohya LoRAs of that UNet (rank ``--rank``, every
attention projection; each its own seed) is then scanned phase by phase, as ``scan --base`` does
without an attack model:

  static     ``scan_file`` with no identity check: header, metadata rules, NaN check, dW statistics
  deltas     the file opened and every module's dW formed (what patches the base)
  guidance   guidance extraction: K images with eps_base + w (eps_lora - eps_base), S sampler steps
  trigger    the LoRA prompted with a trigger: K images, S steps (a file whose metadata names one)
  embed      the family's face embedder (dlib's) on the 2K images, when it is installed

and prints each phase's median seconds per LoRA over the LoRAs after the first (the first pays
CUDA's warm-up), the whole scan's seconds per LoRA and LoRAs per second, and the targets of a GPU
run (issue 13): an SD1.5-sized scan <= 3 s per LoRA and >= 1 LoRA/s. Needs nothing but the
package (torch, diffusers); nothing is downloaded. A CPU run is minutes per LoRA at the real sizes:
``--images 1 --steps 1`` checks that it works.

    python benchmarks/bench_gpu.py                                 # on a GPU machine: both families
    python benchmarks/bench_gpu.py --families sd1 --images 1 --steps 1 --loras 2   # a CPU check of the real sizes
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

PHASES = ("static", "deltas", "guidance", "trigger", "embed")


def make_loras(base, count: int, rank: int, folder: Path) -> list[Path]:
    """``count`` kohya LoRAs of every attention projection of ``base``'s UNet (to_q, to_k, to_v, to_out.0),
    each from its own seed: the shapes of a real LoRA of the family."""
    import numpy as np
    import torch

    from lora_audit.weights.writer import save_lora

    targets = [(name, module) for name, module in base.unet.named_modules()
               if isinstance(module, torch.nn.Linear) and name.endswith(("to_q", "to_k", "to_v", "to_out.0"))]
    paths = []
    for i in range(count):
        rng = np.random.default_rng(i)
        state = {}
        for name, module in targets:
            state[f"unet.{name}.lora_A.weight"] = rng.normal(0, 1 / np.sqrt(module.in_features), (rank, module.in_features))
            state[f"unet.{name}.lora_B.weight"] = rng.normal(0, 1e-2, (module.out_features, rank))
        paths.append(folder / f"{base.family}_{i}.safetensors")
        save_lora(str(paths[-1]), state, layout="kohya", rank=rank, alpha=rank, dtype="float16")
    return paths


def face_embedder(family: str, device):
    """The family's default face embedder, or None when it is not installed (the embed phase is skipped)."""
    from lora_audit.errors import LoraAuditError
    from lora_audit.families import get_family

    try:
        return get_family(family).face_embedder(device)
    except (LoraAuditError, ImportError):
        return None


def run_family(family: str, args, device, precision: str) -> dict[str, list[float]]:
    import torch

    from lora_audit.attack.training_free import guidance_images
    from lora_audit.diffusion.base import DiffusionBase
    from lora_audit.diffusion.precision import autocast_dtype
    from lora_audit.scan.engine import scan_file
    from lora_audit.testing.pipelines import build_pipeline
    from lora_audit.weights import open_lora

    start = time.perf_counter()
    pipe = build_pipeline(family, real_unet=not args.tiny).to(device)
    pipe.set_progress_bar_config(disable=True)
    base = DiffusionBase(pipe, family, precision)
    params = sum(p.numel() for p in base.unet.parameters()) / 1e6
    print(f"{family}: UNet {params:.1f}M parameters, {base.image_size} px, built and moved in "
          f"{time.perf_counter() - start:.1f} s ({device}, float32 weights, precision {precision}: "
          f"{autocast_dtype(device.type, precision) or 'float32'})")
    embedder = face_embedder(family, device)
    times: dict[str, list[float]] = {phase: [] for phase in PHASES}
    with tempfile.TemporaryDirectory() as folder:
        for path in make_loras(base, args.loras, args.rank, Path(folder)):
            laps = {}

            def lap(phase: str, begun: float) -> None:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                laps[phase] = time.perf_counter() - begun

            begun = time.perf_counter()
            scan_file(str(path))
            lap("static", begun)
            begun = time.perf_counter()
            with open_lora(str(path)) as lora:
                deltas = {name: torch.as_tensor(dw) for name, dw in lora.deltas().items()}
            lap("deltas", begun)
            with torch.no_grad():
                begun = time.perf_counter()
                guided = guidance_images(base, deltas, args.images, steps=args.steps)
                lap("guidance", begun)
                begun = time.perf_counter()
                prompted = _prompted(base, deltas, args)
                lap("trigger", begun)
            if embedder is not None:
                begun = time.perf_counter()
                embedder.embed(guided), embedder.embed(prompted)
                lap("embed", begun)
            for phase, seconds in laps.items():
                times[phase].append(seconds)
    return times


def _prompted(base, deltas, args):
    """The trigger phase: the LoRA prompted with one trigger (``render_triggers`` with a single trigger)."""
    from lora_audit.attack.training_free import trigger_prompt

    embeds = base.encode_prompt([trigger_prompt("sks")]).detach().expand(args.images, -1, -1)
    with base.patched(deltas):
        return base.generate(embeds, steps=args.steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="sd1,sdxl", help="comma-separated: sd1, sd2, sdxl")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu [default: cuda when available]")
    parser.add_argument("--loras", type=int, default=5, help="LoRAs per family (the first is a warm-up)")
    parser.add_argument("--images", type=int, default=8, help="K: images per attack (the scan's default is 8)")
    parser.add_argument("--steps", type=int, default=25, help="sampler steps (the real families' scan default)")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--precision", default=None, help="auto, fp32, fp16, bf16 [default: LORA_AUDIT_PRECISION, else auto]")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny pipelines instead (checks the script runs)")
    args = parser.parse_args()

    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    from lora_audit.diffusion.precision import chosen_precision

    precision = chosen_precision(args.precision)
    print(f"K = {args.images} images, {args.steps} sampler steps, {args.loras} rank-{args.rank} LoRAs per family; "
          + (torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"))
    for family in args.families.split(","):
        times = run_family(family, args, device, precision)
        counted = {phase: values[1:] or values for phase, values in times.items() if values}  # after the warm-up
        per_lora = {phase: statistics.median(values) for phase, values in counted.items()}
        for phase in PHASES:
            if phase in per_lora:
                print(f"  {phase:<9} {per_lora[phase]:8.2f} s per LoRA")
            else:
                print(f"  {phase:<9} skipped (no face embedder installed: pip install 'lora-privacy-audit[faces]')")
        total = sum(per_lora.values())
        goal = "" if family != "sd1" else (f"   targets (GPU): <= 3 s per LoRA {'met' if total <= 3 else 'NOT met'}, "
                                           f">= 1 LoRA/s {'met' if 1 / total >= 1 else 'NOT met'}")
        print(f"  whole     {total:8.2f} s per LoRA, {1 / total:.3f} LoRAs/s{goal}")


if __name__ == "__main__":
    main()
