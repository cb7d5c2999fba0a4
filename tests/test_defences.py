"""The defences: DP-SGD (per-example gradients, clipping, noise, accountant) and LoDA adapters,
their files, and what the scan says about them."""

import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from lora_audit.diffusion import dp as dpsgd
from lora_audit.diffusion.base import Denoiser
from lora_audit.diffusion.dp import DPConfig
from lora_audit.diffusion.finetune import FinetuneConfig, finetune_lora
from lora_audit.diffusion.loda import LodaLinear, inject_loda, loda_applied, loda_state_dict, remove_loda
from lora_audit.diffusion.lora_output import check_layout, save_finetune
from lora_audit.errors import InputError, UsageError
from lora_audit.scan.engine import ScanOptions, scan_file
from lora_audit.toyworld.renderer import render_batch
from lora_audit.weights import open_lora
from lora_audit.weights.dp_metadata import DPGuarantee, read_dp_guarantee
from lora_audit.weights.loda import linear_scale, save_loda


@pytest.fixture(scope="module")
def base(tiny_toy_base):
    return tiny_toy_base


@pytest.fixture(scope="module")
def images(toy_images):
    return toy_images


@pytest.fixture(scope="module")
def class_images():
    return render_batch([300_500, 300_501], [0, 0], seed=0, size=16)


def _records(base, n=4, seed=0):
    """n training records as the DP loop builds them: noisy input, t, target, weight, token ids."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 16, 16, 3, generator=g)
    x0 = base.to_model_input(images)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    scheduler = base.train_scheduler()
    prompts = ["a face of zorbik"] * (n - 1) + ["a face of a person"]
    return (scheduler.add_noise(x0, noise, t), t, noise, torch.ones(n), *base.tokenize(prompts))


@pytest.mark.parametrize("adapter", ["lora", "loda"])
def test_per_example_gradients_equal_single_example_backward_passes(base, adapter):
    """vmap'd per-example gradients = one ordinary backward pass per example through the live modules
    (PEFT layers and all: the check Opacus issue #820 calls for)."""
    from diffusers.utils import recurse_remove_peft_layers
    from peft import LoraConfig, inject_adapter_in_model

    if adapter == "lora":
        for model, targets in ((base.unet, ["to_q", "to_v"]), (base.text_encoder, ["q_proj"])):
            inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=targets),
                                    model, adapter_name="t")
    else:
        inject_loda(base.unet, ("to_q", "to_v"), 2, 2.0)
        inject_loda(base.text_encoder, ("q_proj",), 2, 2.0)
    try:
        denoiser = Denoiser(base)
        params = {n: p for n, p in denoiser.named_parameters() if p.requires_grad}
        torch.manual_seed(0)
        for p in params.values():  # non-zero B / up factors: every parameter gets a gradient
            p.data.normal_(0, 0.1)
        assert any(n.startswith("text_encoders.") for n in params) and any(n.startswith("unet.") for n in params)
        records = _records(base)

        def loss(p, noisy, t, target, weight, ids):
            pred = functional_call(denoiser, p, (noisy[None], t[None], (ids[None],)), strict=False)
            return weight * torch.nn.functional.mse_loss(pred, target[None])

        vmapped, values = dpsgd.per_example_gradients(loss, params, records, chunk=3)
        looped, _ = dpsgd.per_example_gradients(loss, params, records, method="loop")
        for i in range(len(records[0])):
            denoiser.zero_grad()
            noisy, t, target, weight, ids = (r[i:i + 1] for r in records)
            value = weight[0] * torch.nn.functional.mse_loss(denoiser(noisy, t, (ids,)), target)
            value.backward()
            assert values[i].item() == pytest.approx(value.item(), rel=1e-5)
            for name, p in params.items():
                torch.testing.assert_close(vmapped[name][i], p.grad, rtol=1e-4, atol=1e-7)
                torch.testing.assert_close(looped[name][i], p.grad, rtol=1e-4, atol=1e-7)
            assert any(p.grad.abs().sum() > 0 for p in params.values())
    finally:
        for model in (base.unet, base.text_encoder):
            recurse_remove_peft_layers(model) if adapter == "lora" else remove_loda(model)
            model.__dict__.pop("peft_config", None)


def test_clipping_bounds_each_examples_contribution():
    g = torch.Generator().manual_seed(0)
    grads = {"a": torch.randn(6, 3, 4, generator=g) * torch.tensor([1e-3, 0.5, 2, 10, 0.01, 3]).view(6, 1, 1),
             "b": torch.randn(6, 5, generator=g)}
    C = 0.4
    total, norms = dpsgd.clipped_sum(grads, C)
    flat = torch.cat([grads["a"].reshape(6, -1), grads["b"]], dim=1)
    torch.testing.assert_close(norms, flat.norm(dim=1))
    for i in range(6):  # sensitivity: removing one example moves the sum by at most C
        rest, _ = dpsgd.clipped_sum({k: torch.cat([v[:i], v[i + 1:]]) for k, v in grads.items()}, C)
        moved = torch.cat([(total[k] - rest[k]).flatten() for k in grads]).norm()
        assert moved <= C * (1 + 1e-5)
        if norms[i] <= C:  # a small gradient passes unchanged
            assert moved == pytest.approx(norms[i].item(), rel=1e-5)
        else:
            assert moved == pytest.approx(C, rel=1e-5)


def test_privatised_gradient_adds_noise_of_std_sigma_c_over_expected_batch():
    summed = {"w": torch.zeros(200_000)}
    noisy = dpsgd.privatised_gradient(summed, noise_multiplier=2.0, max_norm=0.05, expected_batch=4.0,
                                      generator=torch.Generator().manual_seed(1))["w"]
    assert noisy.std().item() == pytest.approx(2.0 * 0.05 / 4.0, rel=0.01)
    assert abs(noisy.mean().item()) < 1e-4


def test_poisson_batches_draw_each_record_at_the_sample_rate():
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(20)
    sizes = []
    for _ in range(2000):
        batch = dpsgd.poisson_batch(20, 0.3, g)
        counts[batch] += 1
        sizes.append(len(batch))
    assert (counts / 2000 - 0.3).abs().max() < 0.05
    assert len(set(sizes)) > 5  # variable batch sizes, not a fixed-size draw


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_accountant_matches_opacus_and_the_derived_sigma_meets_the_target(accountant):
    from opacus.accountants import PRVAccountant, RDPAccountant

    ledger = (PRVAccountant if accountant == "prv" else RDPAccountant)()
    for _ in range(300):  # Opacus' own bookkeeping: one step() per optimiser step
        ledger.step(noise_multiplier=1.1, sample_rate=0.25)
    expected = ledger.get_epsilon(delta=1e-5)
    assert dpsgd.epsilon_spent(1.1, 0.25, 300, 1e-5, accountant) == pytest.approx(expected, rel=1e-6)
    sigma = dpsgd.noise_multiplier_for(4.0, 1e-5, 0.25, 300, accountant)
    spent = dpsgd.epsilon_spent(sigma, 0.25, 300, 1e-5, accountant)
    assert spent <= 4.0 and spent > 3.8  # the smallest sigma that meets the target (Opacus' tolerance 0.01)
    assert dpsgd.epsilon_spent(sigma * 2, 0.25, 300, 1e-5, accountant) < spent  # more noise, less epsilon


@pytest.mark.parametrize("kwargs", [{}, {"epsilon": 1.0, "noise_multiplier": 1.0}, {"epsilon": -1.0},
                                    {"epsilon": 1.0, "sample_rate": 1.5}, {"epsilon": 1.0, "delta": 1.0},
                                    {"noise_multiplier": 1.0, "accountant": "gdp"}, {"epsilon": 1.0, "max_grad_norm": 0}])
def test_dp_config_refuses_settings_without_a_guarantee(kwargs):
    with pytest.raises(UsageError):
        DPConfig(**kwargs)


def test_loda_first_order_dw_is_the_adapter_jacobian_at_zero():
    torch.manual_seed(0)
    layer = LodaLinear(torch.nn.Linear(6, 5), rank=3, alpha=6.0, activation="gelu").double()
    layer.loda_up.weight.data.normal_()
    x = torch.randn(6, dtype=torch.float64) * 1e-5
    adapter_out = layer(x) - layer.base(x)  # the adapter's part, for a tiny input
    dw = 0.5 * layer.scale * layer.loda_up.weight @ layer.loda_down.weight  # GELU'(0) = 0.5
    torch.testing.assert_close(adapter_out, dw @ x, rtol=1e-4, atol=1e-12)
    assert linear_scale({"lora_audit.loda.alpha": "6", "lora_audit.loda.activation": "gelu"}, 3)[1] == pytest.approx(1.0)
    assert linear_scale({"lora_audit.loda.activation": "tanh"}, 3)[1] == pytest.approx(1.0)
    alpha, scale, problem = linear_scale({"lora_audit.loda.alpha": "nan", "lora_audit.loda.activation": "swish9"}, 4)
    assert (alpha, scale) == (4.0, 1.0) and "alpha" in problem and "swish9" in problem


def test_loda_injection_starts_as_identity_and_is_removed_cleanly(base):
    embeds = base.encode_prompt(["a face of a person"]).detach()
    before = base.generate(embeds, steps=2, seed=1)
    names = inject_loda(base.unet, ("to_q", "to_k"), 2, 2.0)
    try:
        assert names and all(isinstance(base.unet.get_submodule(n), LodaLinear) for n in names)
        np.testing.assert_allclose(base.generate(embeds, steps=2, seed=1), before, atol=1e-6)  # up = 0
        state = loda_state_dict({"unet": base.unet})
        assert len(state) == 2 * len(names)
    finally:
        remove_loda(base.unet)
    assert not any(isinstance(m, LodaLinear) for m in base.unet.modules())
    # a trained state, loaded back non-linearly, changes the output; the model is restored after
    state = {k: torch.randn_like(v) * 0.3 for k, v in state.items()}
    with loda_applied({"unet": base.unet}, state, rank=2, alpha=2.0):
        after = base.generate(embeds, steps=2, seed=1)
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_array_equal(base.generate(embeds, steps=2, seed=1), before)


@pytest.mark.parametrize("adapter", ["lora", "loda"])
def test_dp_finetune_writes_its_guarantee_and_round_trips_through_the_reader(base, images, class_images, tmp_path, adapter):
    config = FinetuneConfig(rank=2, steps=4, seed=1, lr=1e-2, adapter=adapter, snapshot_steps=(2,),
                            dp=DPConfig(epsilon=8.0, sample_rate=0.5))
    result = finetune_lora(base, images, config, class_images=class_images)
    privacy = result.privacy
    assert privacy.epsilon <= 8.0 and privacy.epsilon > 7.5 and privacy.steps == 4
    assert (privacy.dataset_size, privacy.instance_images, privacy.sample_rate) == (5, 3, 0.5)
    assert privacy.noise_multiplier == pytest.approx(dpsgd.noise_multiplier_for(8.0, 1e-5, 0.5, 4), rel=1e-9)
    assert not any(isinstance(m, LodaLinear) or "lora" in n for n, m in base.unet.named_modules())
    out = tmp_path / f"{adapter}.safetensors"
    paths = save_finetune(result, out, metadata={"lora_audit.family": "toy"}, family="toy", num_images=3)
    with open_lora(str(out)) as lora:
        assert lora.layout == ("loda" if adapter == "loda" else "peft")
        assert {m.kind for m in lora.modules} == {adapter}
        assert read_dp_guarantee(lora.metadata) == privacy
        expected = result.deltas()
        assert set(lora.deltas()) == set(expected)
        for name, dw in lora.deltas().items():
            np.testing.assert_allclose(dw, expected[name].numpy(), rtol=1e-5, atol=1e-8)
    with open_lora(str(paths[0])) as snapshot:  # a snapshot's epsilon is not the final one: none is stated
        assert read_dp_guarantee(snapshot.metadata) is None
    findings = {f.rule_id: f for f in scan_file(str(out), ScanOptions()).findings}
    assert "LA108" in findings and "LA003" not in findings
    assert findings["LA108"].evidence["privacy_unit"].startswith("one training image")
    assert findings["LA108"].evidence["group_epsilon"] == pytest.approx(3 * privacy.epsilon, rel=1e-3)
    assert findings["LA108"].evidence["steps"] == privacy.steps
    assert findings["LA108"].evidence["epsilon"] == pytest.approx(privacy.epsilon, rel=1e-3)
    assert "cannot verify" in findings["LA108"].message
    assert ("LA204" in findings) == (adapter == "loda")


def test_dp_noise_changes_the_update(base, images, class_images):
    """The noise is really added: the same setting repeats exactly, a larger sigma leads elsewhere."""
    def run(sigma):
        config = FinetuneConfig(rank=2, steps=3, seed=2, lr=1e-2, dp=DPConfig(
            noise_multiplier=sigma, sample_rate=1.0, max_grad_norm=1.0, accountant="rdp", noise_seed=7))
        return finetune_lora(base, images, config, class_images=class_images).final

    quiet, again, loud = run(0.5), run(0.5), run(1e3)
    assert all(torch.equal(quiet[k], again[k]) for k in quiet)  # a fixed noise seed repeats
    assert any(not torch.allclose(quiet[k], loud[k], atol=1e-4) for k in quiet)


def test_a_noise_multiplier_the_accountant_cannot_bound_is_refused_before_training(base, images, class_images):
    config = FinetuneConfig(rank=2, steps=3, dp=DPConfig(noise_multiplier=1e-6, sample_rate=1.0))
    with pytest.raises(UsageError, match="cannot bound noise multiplier"):
        finetune_lora(base, images, config, class_images=class_images)
    assert not any(isinstance(m, LodaLinear) or "lora" in n for n, m in base.unet.named_modules())


def test_loda_layout_is_refused_for_lora_only_formats():
    with pytest.raises(InputError, match="LoRA layout"):
        check_layout("loda", "kohya")
    with pytest.raises(InputError, match="kohya"):
        check_layout("loda", "peft", kohya_metadata=True)
    with pytest.raises(InputError, match="outside any DP guarantee"):
        check_layout("lora", "kohya", kohya_metadata=True, dp=True)
    check_layout("lora", "kohya", kohya_metadata=True)


def test_a_dp_claim_that_cannot_be_read_is_reported_not_trusted(tmp_path):
    path = tmp_path / "claim.safetensors"
    state = {"unet.down_blocks.0.attn1.to_q.loda_down.weight": np.ones((2, 8), np.float32),
             "unet.down_blocks.0.attn1.to_q.loda_up.weight": np.ones((8, 2), np.float32)}
    save_loda(str(path), state, rank=2, alpha=2.0, metadata={"lora_audit.dp.epsilon": "0.1"})
    findings = {f.rule_id: f for f in scan_file(str(path), ScanOptions()).findings}
    assert "cannot be read" in findings["LA108"].message and "missing" in findings["LA108"].message
    assert "LA204" in findings
    good = DPGuarantee(2.0, 1e-5, 1.0, 0.01, 0.25, 10, "prv", dataset_size=21, instance_images=5)
    assert read_dp_guarantee(good.metadata()) == good
    assert "group privacy" in good.summary() and math.isclose(good.group_epsilon(), 10.0)
    assert math.isclose(good.group_delta(), 5 * math.exp(4 * 2.0) * 1e-5) and "no meaningful guarantee" in good.summary()
    for key, value in (("delta", "1.5"), ("sample_rate", "0"), ("steps", "-3"), ("epsilon", "-1")):
        assert "out of range" in read_dp_guarantee({**good.metadata(), f"lora_audit.dp.{key}": value}), key
    assert read_dp_guarantee({**good.metadata(), "lora_audit.dp.epsilon": "inf"}) == "lora_audit.dp.epsilon = 'inf' is not finite"


def test_the_dp_loop_clips_at_c_and_steps_with_the_noised_gradient(base, images, class_images, monkeypatch):
    """Wiring: the clipping gets the configured C, the noise gets sigma C and q N, and the optimiser
    steps with exactly the privatised gradient (a mutation of any of these fails here)."""
    calls, stepped = [], []
    real_clip, real_noise = dpsgd.clipped_sum, dpsgd.privatised_gradient

    def clip(grads, max_norm):
        calls.append(("clip", max_norm))
        return real_clip(grads, max_norm)

    def noise(summed, **kwargs):
        out = real_noise(summed, **kwargs)
        calls.append(("noise", kwargs["noise_multiplier"], kwargs["max_norm"], kwargs["expected_batch"]))
        stepped.append({k: v.clone() for k, v in out.items()})
        return out

    grads_seen = []
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        grads_seen.append([p.grad.clone() for group in self.param_groups for p in group["params"]])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(dpsgd, "clipped_sum", clip)
    monkeypatch.setattr(dpsgd, "privatised_gradient", noise)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    config = FinetuneConfig(rank=2, steps=3, seed=2, dp=DPConfig(noise_multiplier=2.0, sample_rate=1.0,
                                                                 max_grad_norm=0.07, accountant="rdp", noise_seed=1))
    finetune_lora(base, images, config, class_images=class_images)
    assert [c for c in calls if c[0] == "clip"] == [("clip", 0.07)] * 3  # q = 1: every step draws every record
    assert [c for c in calls if c[0] == "noise"] == [("noise", 2.0, 0.07, 5.0)] * 3  # q N = 1 * (3 + 2)
    assert len(grads_seen) == 3
    for seen, noised in zip(grads_seen, stepped):
        assert len(seen) == len(noised)
        for g, expected in zip(seen, noised.values()):
            assert torch.equal(g, expected)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd2", "sdxl"])  # v-prediction; two text encoders with the pooled embedding
def test_dp_sgd_and_loda_run_on_the_real_families(family, tmp_path):
    from lora_audit.families import load_base
    from lora_audit.testing.pipelines import write_pipeline

    sd = load_base(str(write_pipeline(family, tmp_path / family)), "cpu")
    photos = np.random.default_rng(0).random((2, sd.image_size, sd.image_size, 3)).astype(np.float32)
    expected = {"sd2": {"unet", "text_encoder"}, "sdxl": {"unet", "text_encoder", "text_encoder_2"}}[family]
    for adapter in ("lora", "loda"):
        config = FinetuneConfig(rank=2, steps=2, adapter=adapter, dp=DPConfig(epsilon=8.0, sample_rate=1.0, noise_seed=0))
        result = finetune_lora(sd, photos, config, class_images=photos)
        assert {k.split(".")[0] for k in result.final} == expected
        assert all(torch.isfinite(v).all() for v in result.final.values()) and result.privacy.epsilon <= 8.0
