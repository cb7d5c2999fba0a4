"""Static scan throughput: lora-audit against the floor of opening each file with safetensors.

Generates N realistic kohya SD1.5 LoRA files (F16, rank 8, 64 attention modules, leaky metadata on
every tenth), then times, in one run:
  floor      for each file: safetensors.safe_open(...) and .metadata()            (1 process)
  tensors    for each file: safetensors.numpy.load_file(...), every tensor read   (1 process): the
             floor of any scan that computes weight statistics (a full scan reads every tensor)
  lora-audit `lora-audit scan DIR -f jsonl -q --jobs J [--skip-weights]` as a subprocess (J = 1, 2),
             i.e. including interpreter start-up and the process pool
and prints files/s and the ratio lora-audit time / floor time. Also times loading every tensor
as float32 with lora-audit's numpy reader against safetensors.torch (plus torch's import cost),
and checks that the scan imports neither torch nor diffusers.

    python benchmarks/bench_static_scan.py --files 1000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from safetensors import safe_open
from safetensors.numpy import load_file

from lora_audit.testing import synthetic


def make_corpus(folder: str, count: int) -> int:
    lora = synthetic.make_lora("sd15", rank=8, max_modules=64, seed=0, dtype="F16")
    tensors = synthetic.as_kohya(lora)
    leaky, clean = synthetic.leaky_kohya_metadata(), synthetic.clean_metadata("sd15", rank=8)
    blob_leaky = synthetic.encode_safetensors(tensors, leaky)
    blob_clean = synthetic.encode_safetensors(tensors, clean)
    for i in range(count):
        with open(os.path.join(folder, f"lora_{i:05d}.safetensors"), "wb") as f:
            f.write(blob_leaky if i % 10 == 0 else blob_clean)
    return len(blob_clean)


def floor(folder: str) -> float:
    start = time.perf_counter()
    for name in sorted(os.listdir(folder)):
        with safe_open(os.path.join(folder, name), framework="numpy") as f:
            f.metadata()
    return time.perf_counter() - start


def tensor_floor(folder: str) -> float:
    start = time.perf_counter()
    for name in sorted(os.listdir(folder)):
        load_file(os.path.join(folder, name))
    return time.perf_counter() - start


def lora_audit(folder: str, jobs: int, *extra: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lora_audit", "scan", folder, "-f", "jsonl", "-q", "--jobs", str(jobs),
                           *extra], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"scan failed ({proc.returncode}): {proc.stderr.strip()}")
    return elapsed


def tensor_loading(path: str, repeats: int = 20) -> str:
    """Per-file time to get every tensor as float32: lora-audit's numpy reader vs safetensors.torch."""
    code = f"""
import time
t0 = time.perf_counter()
import torch, safetensors.torch
t_import = time.perf_counter() - t0
from lora_audit.weights.safetensors_file import SafetensorsFile
def with_numpy():
    with SafetensorsFile({path!r}) as f:
        return [f.read(n) for n in f.tensors]
def with_torch():
    return [t.float() for t in safetensors.torch.load_file({path!r}).values()]
for fn in (with_numpy, with_torch):
    fn()
res = []
for fn in (with_numpy, with_torch):
    t = time.perf_counter()
    for _ in range({repeats}):
        fn()
    res.append((time.perf_counter() - t) / {repeats} * 1e3)
print(f"numpy {{res[0]:.2f}} ms/file, torch {{res[1]:.2f}} ms/file, import torch {{t_import:.2f}} s")
"""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()


def imports_of_static_scan(folder: str) -> list[str]:
    code = ("import sys; from lora_audit.cli import main; "
            f"main(['scan', '-q', '-f', 'json', '-o', '/dev/null', {folder!r}]); "
            "print([m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules])")
    return eval(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        size = make_corpus(folder, args.files)
        floor(folder)  # warm the page cache
        t_floor = min(floor(folder) for _ in range(3))
        print(f"{args.files} files of {size / 1024:.0f} KiB (kohya SD1.5, F16, rank 8, 64 modules)")
        t_tensors = min(tensor_floor(folder) for _ in range(3))
        print(f"{'floor (safe_open + metadata, in-process)':<44} {t_floor:6.2f} s  {args.files / t_floor:8.0f} files/s")
        print(f"{'tensors (load_file, in-process)':<44} {t_tensors:6.2f} s  {args.files / t_tensors:8.0f} files/s")
        for extra in ((), ("--skip-weights",)):
            for jobs in (1, 2):
                t = lora_audit(folder, jobs, *extra)
                label = f"lora-audit scan --jobs {jobs} {' '.join(extra)}"
                print(f"{label:<44} {t:6.2f} s  {args.files / t:8.0f} files/s  ratio to floor {t / t_floor:5.2f}x"
                      f"  to tensors {t / t_tensors:5.2f}x")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lora_audit", "--version"], capture_output=True)
        print(f"{'start-up (lora-audit --version)':<44} {time.perf_counter() - start:6.2f} s")
        print("loading every tensor as float32:", tensor_loading(os.path.join(folder, "lora_00001.safetensors")))
        print(f"modules imported by a static scan: {imports_of_static_scan(folder) or 'no torch, no diffusers'}")


if __name__ == "__main__":
    main()
