"""Mixed precision: bf16/fp16 autocast on a GPU by default, float32 elsewhere, one override for every command.
The GPU path is the CPU's autocast with another device type: these tests run it on the CPU in bfloat16."""

import numpy as np
import pytest
import torch

from lora_audit.cli import main
from lora_audit.diffusion.base import DiffusionBase
from lora_audit.diffusion.finetune import FinetuneConfig, finetune_lora
from lora_audit.diffusion.precision import autocast_dtype, chosen_precision
from lora_audit.errors import UsageError


def test_auto_is_mixed_precision_on_a_gpu_and_float32_elsewhere(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype("cuda", "auto") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100
    assert autocast_dtype("cuda", "auto") is torch.float16
    assert autocast_dtype("cpu", "auto") is None and autocast_dtype("mps", "auto") is None
    assert autocast_dtype("cuda", "fp32") is None
    assert autocast_dtype("cpu", "bf16") is torch.bfloat16 and autocast_dtype("cuda", "fp16") is torch.float16


def test_the_environment_chooses_the_precision_and_a_bad_one_is_refused(monkeypatch):
    assert chosen_precision() == "auto"
    monkeypatch.setenv("LORA_AUDIT_PRECISION", "BF16")
    assert chosen_precision() == "bf16" and chosen_precision("fp32") == "fp32"
    monkeypatch.setenv("LORA_AUDIT_PRECISION", "fp8")
    with pytest.raises(UsageError, match="LORA_AUDIT_PRECISION='fp8'"):
        chosen_precision()


def test_bf16_sampling_and_fine_tuning_run_narrower_and_stay_close(tiny_toy_base, toy_images):
    z = tiny_toy_base.encode_prompt(["a face"]).expand(2, -1, -1)
    full = tiny_toy_base.generate(z, steps=3)
    narrow_base = DiffusionBase(tiny_toy_base.pipe, "toy", precision="bf16")
    seen = []
    handle = narrow_base.unet.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        narrow = narrow_base.generate(z, steps=3)
    finally:
        handle.remove()
    assert set(seen) == {torch.bfloat16}  # the convolutions ran in bfloat16
    assert narrow.dtype == np.float32 and np.isfinite(narrow).all()
    assert 0 < np.abs(narrow - full).mean() < 0.05  # rounding, not another image
    config = FinetuneConfig(rank=2, steps=3, num_class_images=2, class_sampling_steps=2, prior_loss_weight=0.0)
    result = finetune_lora(narrow_base, toy_images, config)
    assert np.isfinite(result.losses).all()
    assert all(t.dtype == torch.float32 for t in result.snapshots[3].values())  # the adapter keeps float32 weights


def test_a_bad_precision_stops_a_command_with_one_line(monkeypatch, capsys):
    monkeypatch.setenv("LORA_AUDIT_PRECISION", "half")
    assert main(["reconstruct", "weights_samples/toy_kohya.safetensors", "-o", "/nonexistent-out"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "LORA_AUDIT_PRECISION='half'" in err[0]
