"""The benchmarks run: bench_gpu.py on models of the real sizes, with nothing but the package; the batched
decoding and false-alarm benchmarks at tiny settings."""

import os
import subprocess
import sys

import pytest
import torch

from lora_audit.testing.pipelines import _real_unet, _real_vae

BENCH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "bench_gpu.py")


def test_the_real_sized_models_have_the_published_parameter_counts():
    with torch.device("meta"):  # shapes only: no memory, no time
        counts = {family: sum(p.numel() for p in _real_unet(family).parameters()) for family in ("sd1", "sd2", "sdxl")}
        vae = sum(p.numel() for p in _real_vae(512).parameters())
    assert counts == {"sd1": 859_520_964, "sd2": 865_910_724, "sdxl": 2_567_463_684}  # SD 1.5, SD 2.1, SDXL base
    assert vae == 83_653_863  # the SD VAE


def test_the_benchmark_runs_every_phase(tmp_path):
    proc = subprocess.run([sys.executable, BENCH, "--tiny", "--families", "sd1,sdxl", "--images", "2", "--steps", "2",
                           "--loras", "2", "--device", "cpu", "--rank", "4"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    for family in ("sd1", "sdxl"):
        assert any(line.startswith(f"{family}: UNet ") for line in lines)
    for phase in ("static", "deltas", "guidance", "trigger", "embed", "whole"):
        assert sum(line.strip().startswith(phase) for line in lines) == 2, phase
    assert "targets (GPU)" in proc.stdout and list(tmp_path.iterdir()) == []  # nothing left behind


def test_the_batched_decoding_benchmark_gives_the_images_of_one_lora_at_a_time():
    bench = os.path.join(os.path.dirname(BENCH), "bench_attack_batch.py")
    proc = subprocess.run([sys.executable, bench, "--loras", "3", "--batches", "1,3", "--latents", "1", "--seeds", "2",
                           "--steps", "2", "--device", "cpu"], capture_output=True, text=True, timeout=600,
                          cwd=os.path.join(os.path.dirname(BENCH), ".."))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip().startswith("batch")]
    assert [row[1].rstrip(":") for row in rows] == ["1", "3"]
    assert float(rows[1][-1]) < 1e-4  # batch 3's images are batch 1's


@pytest.mark.slow  # about 50 s: two fine-tunes and both attacks on three files
def test_the_false_alarm_benchmark_judges_every_kind_against_the_crowd_null(tmp_path):
    """Two fine-tuning steps per LoRA: the plumbing (both attacks, every kind, the summary), not the figures."""
    import json

    bench = os.path.join(os.path.dirname(BENCH), "bench_false_alarms.py")
    proc = subprocess.run([sys.executable, bench, "--count", "1", "--persons", "1", "--steps", "2", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=600,
                          cwd=os.path.join(os.path.dirname(BENCH), ".."), env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary) == {f"{kind}/{attack}" for kind in ("crowd", "objects", "person") for attack in ("vae", "guidance")}
    for row in summary.values():
        assert row["n"] == 1 and 0 <= row["la301"] <= row["above_generic"] <= 1
    assert sorted(p.name for p in (tmp_path / "out").glob("*.safetensors")) == [
        "crowd-00.safetensors", "objects-00.safetensors", "person-00.safetensors"]
