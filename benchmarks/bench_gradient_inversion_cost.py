"""Cost of one gradient-matching iteration (double backprop) on the toy base, by batch and by the
parameters matched: the whole UNet, the decoder's last block (what the evaluation matches), the
encoder's first block. One torch thread; the median of ``--repeats`` iterations after one warm-up.

    python benchmarks/bench_gradient_inversion_cost.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lora_audit.families import load_base
from lora_audit.federated.objective import PROMPT, Schedule, diffusion_loss, gradient_distance, prepare_unet

SUBSETS = {"all": (), "late (up_blocks.2, conv_norm_out, conv_out)": ("up_blocks.2", "conv_norm_out", "conv_out"),
           "early (conv_in, down_blocks.0)": ("conv_in", "down_blocks.0")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = load_base(None, "cpu")
    prepare_unet(base.unet)
    schedule = Schedule.of(base.train_scheduler())
    cond = base.encode_prompt([PROMPT]).detach()
    for batch in args.batches:
        for name, prefixes in SUBSETS.items():
            params = [p for n, p in base.unet.named_parameters() if not prefixes or n.startswith(prefixes)]
            x, eps = torch.rand(batch, 3, 32, 32) * 2 - 1, torch.randn(batch, 3, 32, 32)
            t = torch.randint(0, schedule.steps, (batch,))
            target = [g.detach() for g in torch.autograd.grad(diffusion_loss(base.unet, cond, schedule, x, eps, t), params)]
            guess = torch.zeros_like(x, requires_grad=True)
            times = []
            for _ in range(args.repeats + 1):
                start = time.perf_counter()
                grads = torch.autograd.grad(diffusion_loss(base.unet, cond, schedule, guess, eps, t), params, create_graph=True)
                gradient_distance(list(grads), target).backward()
                times.append(time.perf_counter() - start)
            print(f"batch {batch}  {name:45s} {sum(p.numel() for p in params):>9,} params  "
                  f"{statistics.median(times[1:]):.3f} s / iteration")


if __name__ == "__main__":
    main()
