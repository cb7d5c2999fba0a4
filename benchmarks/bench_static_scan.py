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
import shutil
import subprocess
import sys
import tempfile
import time

from lora_audit.testing import synthetic


REALISTIC_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")


def _session(i: int) -> dict[str, str]:
    """What kohya writes differently into every run's file: each file's bytes are its own (no dedup)."""
    return {"ss_session_id": str(1_000_003 * i % 4_294_967_291), "ss_training_started_at": str(1.7e9 + 3_600 * i)}


def make_triage_corpus(folder: str, count: int) -> int:
    """``count`` small kohya SD1.5 files (F16, rank 8, 64 attention modules), every tenth with leaky
    metadata; one set of tensors, distinct bytes (each file's own session id)."""
    tensors = synthetic.as_kohya(synthetic.make_lora("sd15", rank=8, max_modules=64, seed=0, dtype="F16"))
    leaky, clean = synthetic.leaky_kohya_metadata(), synthetic.clean_metadata("sd15", rank=8)
    size = 0
    for i in range(count):
        blob = synthetic.encode_safetensors(tensors, {**(leaky if i % 10 == 0 else clean), **_session(i)})
        with open(os.path.join(folder, f"lora_{i:05d}.safetensors"), "wb") as f:
            f.write(blob)
        size = len(blob)
    return size


def make_realistic_corpus(folder: str, count: int) -> int:
    """``count`` realistic kohya SD1.5 LoRAs: rank 32, F16, every UNet transformer projection and the
    text encoder's attention and MLP (792 tensors, 37 MB), each from its own seed."""
    size = 0
    for i in range(count):
        lora = synthetic.make_lora("sd15", rank=32, text_encoder=True, targets=REALISTIC_TARGETS, seed=i, dtype="F16")
        meta = {**(synthetic.leaky_kohya_metadata(rank=32) if i % 10 == 0 else synthetic.clean_metadata("sd15", rank=32)),
                **_session(i)}
        blob = synthetic.encode_safetensors(synthetic.as_kohya(lora), meta)
        with open(os.path.join(folder, f"lora_{i:03d}.safetensors"), "wb") as f:
            f.write(blob)
        size = len(blob)
    return size


HEADER_FLOOR = """
import os, sys
from safetensors import safe_open
for name in sorted(os.listdir(sys.argv[1])):
    with safe_open(os.path.join(sys.argv[1], name), framework="numpy") as f:
        f.metadata(), list(f.keys())
"""
TENSOR_FLOOR = """
import os, sys
from safetensors.numpy import load_file
for name in sorted(os.listdir(sys.argv[1])):
    load_file(os.path.join(sys.argv[1], name))
"""


def timed(argv: list[str], ok: tuple[int, ...] = (0,)) -> float:
    """Wall time of one whole process (interpreter start-up included)."""
    start = time.perf_counter()
    env = {**os.environ, "NO_COLOR": "1", "PROMPTFOO_DISABLE_TELEMETRY": "1"}  # modelaudit: no telemetry
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed tool starts from its compiled modules
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode not in ok:
        raise SystemExit(f"{argv[:3]} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return elapsed


def lora_audit(folder: str, jobs: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lora_audit", "scan", folder, "-f", "jsonl", "-q", "--no-attack",
            "--jobs", str(jobs), *extra]


def interleaved(runs: dict[str, list[str]], rounds: int, ok: dict[str, tuple[int, ...]]) -> dict[str, float]:
    """The best of ``rounds`` wall times of each command, the commands taking turns in every round
    (a slow moment of the machine hits all of them alike)."""
    best = {label: float("inf") for label in runs}
    for _ in range(rounds):
        for label, argv in runs.items():
            best[label] = min(best[label], timed(argv, ok.get(label, (0,))))
    return best


def report(title: str, times: dict[str, float], count: int, floor: str, targets: dict[str, float]) -> None:
    print(title)
    for label, t in times.items():
        ratio = t / times[floor]
        goal = f"   target <= {targets[label]:.1f}x: {'met' if ratio <= targets[label] else 'NOT met'}" \
            if label in targets else ""
        print(f"  {label:<46} {t:7.2f} s  {count / t:7.1f} files/s  {ratio:5.2f}x the floor{goal}")


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
    parser.add_argument("--files", type=int, default=1000, help="small files in the triage corpus")
    parser.add_argument("--realistic", type=int, default=40, help="37 MB files in the full-scan corpus")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best time of each counts")
    parser.add_argument("--modelaudit", default=shutil.which("modelaudit"),
                        help="the modelaudit executable (default: on PATH; skipped when absent)")
    args = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory() as triage, tempfile.TemporaryDirectory() as full, \
            tempfile.TemporaryDirectory() as reports:
        small = make_triage_corpus(triage, args.files)
        large = make_realistic_corpus(full, args.realistic)
        timed([python, "-c", TENSOR_FLOOR, full])  # warm the page cache
        timed(lora_audit(triage, 1, "--skip-weights"), ok=(0, 1))  # and compile lora-audit's modules once
        print(f"triage corpus: {args.files} files of {small / 1024:.0f} KiB (kohya SD1.5, F16, rank 8, 64 modules)")
        times = interleaved({
            "header floor (safe_open, metadata, keys)": [python, "-c", HEADER_FLOOR, triage],
            "lora-audit --skip-weights -j 1": lora_audit(triage, 1, "--skip-weights"),
            "lora-audit --skip-weights -j 2": lora_audit(triage, 2, "--skip-weights"),
        }, args.rounds, ok={k: (0, 1) for k in ("lora-audit --skip-weights -j 1", "lora-audit --skip-weights -j 2")})
        report("", times, args.files, "header floor (safe_open, metadata, keys)",
               {"lora-audit --skip-weights -j 2": 2.5})
        print(f"\nfull-scan corpus: {args.realistic} files of {large / 1e6:.1f} MB "
              "(kohya SD1.5, F16, rank 32, UNet and text encoder, 792 tensors)")
        runs = {
            "tensor floor (load_file, every tensor)": [python, "-c", TENSOR_FLOOR, full],
            "lora-audit -j 1": lora_audit(full, 1),
            "lora-audit -j 2": lora_audit(full, 2),
        }
        if args.modelaudit:
            runs["modelaudit scan"] = [args.modelaudit, "scan", full, "--format", "json", "--no-cache", "-q",
                                       "--output", os.path.join(reports, "modelaudit.json")]
        times = interleaved(runs, args.rounds, ok={k: (0, 1) for k in runs})
        report("", times, args.realistic, "tensor floor (load_file, every tensor)", {"lora-audit -j 2": 1.5})
        if args.modelaudit:
            print(f"  modelaudit / lora-audit -j 2: {times['modelaudit scan'] / times['lora-audit -j 2']:.1f}x")
        else:
            print("  modelaudit: not installed (pip install modelaudit, or pass --modelaudit PATH)")
        print(f"\nstart-up (lora-audit --version): {timed([python, '-m', 'lora_audit', '--version']):.2f} s")
        print("loading every tensor as float32:", tensor_loading(os.path.join(full, "lora_001.safetensors")))
        print(f"modules imported by a static scan: {imports_of_static_scan(triage) or 'no torch, no diffusers'}")


if __name__ == "__main__":
    main()
