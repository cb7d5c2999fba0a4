"""A full toy scan, phase by phase: wall time and peak memory.

The phases of ``lora-audit scan`` on one toy-world LoRA with the shipped attack:
  static        read the file, metadata rules, NaN check, per-module dW statistics
  import torch  the first import of torch/diffusers (paid once per process)
  load models   attack model, toy base pipeline, toy face embedder
  sketch+encode dW sketches of every module and the encoder's q(c | dW, r)
  decode        K = latents x seeds images from the LoRA-patched base (DPM-Solver, 25 steps)
  embed+score   face embeddings of the K images and their consistency
and, for comparison, the whole ``lora-audit scan FILE`` command as a subprocess, alone and with the
owner's check (``--references``: the owner's photos scored against 200 other identities' photo sets,
made once per run), interleaved ``--whole`` times each, with the ratio of their medians. Peak memory
is the process's peak resident set size after each phase (it only grows); on a GPU, torch's peak
allocation.

    python benchmarks/bench_scan.py --repeats 3 --whole 3
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

DEFAULT_LORA = os.path.join(os.path.dirname(__file__), "..", "weights_samples", "toy_peft.safetensors")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora", default=DEFAULT_LORA)
    parser.add_argument("--repeats", type=int, default=3, help="warm repeats of the attack phases")
    parser.add_argument("--latents", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--references", default=None,
                        help="the owner's photos [default: the sample's <name>_photos folder next to it]")
    parser.add_argument("--whole", type=int, default=3, help="runs of each whole command, interleaved")
    args = parser.parse_args()
    references = args.references or os.path.splitext(args.lora)[0] + "_photos"
    rows = []

    def phase(name: str, fn):
        start = time.perf_counter()
        value = fn()
        rows.append((name, time.perf_counter() - start, peak_rss_mib()))
        return value

    from lora_audit.scan.engine import scan_file

    phase("static", lambda: scan_file(args.lora))
    phase("import torch", lambda: __import__("lora_audit.attack.reconstruct"))
    import torch

    from lora_audit.attack.decoder import decode
    from lora_audit.attack.model import AttackModel
    from lora_audit.families import get_family, load_base
    from lora_audit.identity.metrics import consistency
    from lora_audit.weights import open_lora

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    toy = get_family("toy")
    attack, base, embedder = phase("load models", lambda: (AttackModel.load(toy.shipped_attack_model()), load_base(),
                                                           toy.face_embedder("cpu")))
    attack = attack.to(base.device)
    timings: dict[str, list[float]] = {"sketch+encode": [], "decode": [], "embed+score": []}
    for repeat in range(1 + args.repeats):
        with open_lora(args.lora) as lora_file, torch.no_grad():
            start = time.perf_counter()
            raw, padding = attack.file_inputs(lora_file)
            mu, logvar = attack.posterior(raw[None], padding[None], torch.tensor([500.0]))
            c = attack.sample(mu.expand(args.latents, -1), logvar.expand(args.latents, -1), torch.Generator().manual_seed(0))
            z = attack.to_latent(c).repeat_interleave(args.seeds, dim=0)
            encoded = time.perf_counter()
            images = decode(base, lora_file.deltas(), z, seed=0)
            decoded = time.perf_counter()
            consistency(embedder.embed(images))
            done = time.perf_counter()
        if repeat == 0:
            rows.append(("attack (first call)", done - start, peak_rss_mib()))
        else:
            for name, seconds in (("sketch+encode", encoded - start), ("decode", decoded - encoded),
                                  ("embed+score", done - decoded)):
                timings[name].append(seconds)
    for name, values in timings.items():
        rows.append((f"{name} (median of {len(values)})", statistics.median(values), peak_rss_mib()))

    whole = {"scan FILE": [], "scan FILE --references": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.whole):
            for name, extra in (("scan FILE", []), ("scan FILE --references", ["--references", references])):
                start = time.perf_counter()
                proc = subprocess.run([sys.executable, "-m", "lora_audit", "scan", args.lora, "-q", "-f", "json",
                                       "-o", os.path.join(tmp, "r.json"), *extra], capture_output=True, text=True)
                whole[name].append(time.perf_counter() - start)
                if proc.returncode not in (0, 1):
                    raise SystemExit(f"{name} failed ({proc.returncode}): {proc.stderr.strip()}")

    k = args.latents * args.seeds
    print(f"toy scan of {os.path.basename(args.lora)}, K = {k} reconstructions, device {base.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'phase':<30} {'seconds':>9} {'peak RSS MiB':>13}")
    for name, seconds, rss in rows:
        print(f"{name:<30} {seconds:>9.3f} {rss:>13.0f}")
    if torch.cuda.is_available():
        print(f"GPU peak allocation: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    for name, values in whole.items():
        print(f"{'whole `' + name + '`':<30} {statistics.median(values):>9.3f}   "
              f"(median of {len(values)} subprocesses, cold start included)")
    ratio = statistics.median(whole["scan FILE --references"]) / statistics.median(whole["scan FILE"])
    print(f"owner's check / plain scan: {ratio:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
