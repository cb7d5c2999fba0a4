"""The Ray engine against the local one, in one run on this machine: static files/s and attack s/LoRA.

Static: N kohya SD1.5 LoRA files (bench_static_scan's: F16, rank 8, 64 modules, 1.6 MB each, but
each with its own bytes, so none is deduplicated) scanned with ``--no-attack``'s work (hashes, then
the static checks) through ``scan_batch`` in this process: the local engine with ``jobs`` 1 and 2,
and the Ray engine on a local Ray of every CPU (started once before, its start-up timed apart; its
workers warmed up). Attack: M toy LoRAs (the shipped ``toy_peft``, each copy with its own metadata
value) with the shipped toy attack: the local engine (one torch thread) against Ray's default pool
(one actor of one CPU on a 2-CPU Ray) and one actor per CPU; the whole batch (the models load once
per process or actor) and the time per LoRA after the first. Ratios are to the local engine.

    OMP_NUM_THREADS=1 python benchmarks/bench_ray_engine.py --files 400 --loras 6
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from lora_audit.results import Severity
from lora_audit.scan.engine import LocalEngine, ScanOptions, scan_batch
from lora_audit.scan.ray_engine import STATIC_CHUNK, RayEngine, _attackers, _chunks, ray_engine
from lora_audit.testing import synthetic

TOY_LORA = os.path.join(os.path.dirname(__file__), "..", "weights_samples", "toy_peft.safetensors")


def make_corpus(folder: str, count: int) -> int:
    """bench_static_scan's files, but each with its own bytes (a metadata value): none is deduplicated."""
    tensors = synthetic.as_kohya(synthetic.make_lora("sd15", rank=8, max_modules=64, seed=0, dtype="F16"))
    leaky, clean = synthetic.leaky_kohya_metadata(), synthetic.clean_metadata("sd15", rank=8)
    for i in range(count):
        blob = synthetic.encode_safetensors(tensors, {**(leaky if i % 10 == 0 else clean), "ss_seed": str(i)})
        with open(os.path.join(folder, f"lora_{i:05d}.safetensors"), "wb") as f:
            f.write(blob)
    return len(blob)


def toy_variants(folder: str, count: int) -> list[str]:
    """``count`` copies of the shipped toy LoRA, each with its own metadata value (its own SHA-256)."""
    tensors = load_file(TOY_LORA)
    with safe_open(TOY_LORA, framework="numpy") as f:
        metadata = f.metadata() or {}
    paths = []
    for i in range(count):
        paths.append(os.path.join(folder, f"toy_{i:03d}.safetensors"))
        save_file(tensors, paths[-1], metadata={**metadata, "bench_variant": str(i)})
    return paths


def timed(files: list[str], engine, identity=None) -> tuple[float, float]:
    """Seconds for the whole batch, and per file after the first (models already loaded)."""
    start, done = time.perf_counter(), []
    result = scan_batch(files, ScanOptions(), fail_on=Severity.HIGH, engine=engine, identity=identity,
                        on_result=lambda _: done.append(time.perf_counter()))
    elapsed = time.perf_counter() - start
    if len(result.files) != len(files) or any(f.error or f.same_as for f in result.files):
        raise SystemExit(f"the scan failed: {[f.error for f in result.files if f.error][:3]}")
    return elapsed, (done[-1] - done[0]) / max(1, len(done) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=400, help="LoRA files of the static scan")
    parser.add_argument("--loras", type=int, default=6, help="toy LoRAs attacked")
    args = parser.parse_args()
    import torch

    from lora_audit.scan.identity import IdentityCheck, IdentityOptions

    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)  # the local attack on as many threads as one actor's CPU
    cpus = os.cpu_count()
    with tempfile.TemporaryDirectory() as folder:
        static_dir, toy_dir = os.path.join(folder, "static"), os.path.join(folder, "toy")
        os.makedirs(static_dir)
        os.makedirs(toy_dir)
        size = make_corpus(static_dir, args.files)
        static = sorted(os.path.join(static_dir, name) for name in os.listdir(static_dir))
        toys = toy_variants(toy_dir, args.loras)
        start = time.perf_counter()
        with ray_engine(num_cpus=cpus, object_store_memory=256 * 1024 * 1024):
            started = time.perf_counter() - start
            for engine in (LocalEngine(1), RayEngine()):  # warm the page cache, the imports, Ray's workers
                timed(static[:40], engine)
            rows = [(f"local --jobs {jobs}", timed(static, LocalEngine(jobs))[0]) for jobs in (1, 2)]
            chunk = len(_chunks(static, cpus, STATIC_CHUNK)[0])
            rows.append((f"ray ({cpus} CPUs, tasks of {chunk} files)", timed(static, RayEngine())[0]))
            print(f"static scan of {args.files} files of {size / 1024:.0f} KiB (kohya SD1.5, F16, rank 8, 64 modules, "
                  f"each its own bytes), {cpus} CPUs, load average {os.getloadavg()[0]:.1f}; a local Ray started in "
                  f"{started:.1f} s (not counted below)")
            base = rows[0][1]
            for label, seconds in rows:
                print(f"  {label:<44} {seconds:7.2f} s {args.files / seconds:7.0f} files/s  {base / seconds:5.2f}x local -j 1")

            def identity() -> IdentityCheck:
                return IdentityCheck(IdentityOptions(out_dir=Path(folder) / "rec"))

            actors, asks = _attackers({"CPU": cpus}, None)
            rows = [("local (this process)", timed(toys, LocalEngine(1), identity())),
                    (f"ray, default pool ({actors} actor(s), {asks['num_cpus']} CPU each)",
                     timed(toys, RayEngine(), identity())),
                    (f"ray, {cpus} actors sharing the CPUs", timed(toys, RayEngine(actors=cpus), identity()))]
            print(f"attack of {args.loras} toy LoRAs (shipped toy attack, K = 8, {threads} torch thread(s) per process); "
                  "whole batch (models loaded once per process or actor) and per LoRA after the first")
            base, steady = rows[0][1]
            for label, (seconds, each) in rows:
                print(f"  {label:<44} {seconds:7.2f} s {base / seconds:5.2f}x local | {each:6.2f} s/LoRA "
                      f"{steady / each:5.2f}x local")
            print(f"load average {os.getloadavg()[0]:.1f} at the end ({cpus} CPUs; the benchmark itself counts for up to {cpus})")


if __name__ == "__main__":
    main()
