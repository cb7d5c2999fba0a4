"""Federated client updates and their inversion (issue 15), on a tiny toy base (16x16 pixels)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lora_audit.cli.app import main
from lora_audit.families import get_family, load_base
from lora_audit.federated.client import ClientConfig, client_update
from lora_audit.federated.defences import Defence, dp_epsilon, sparsify
from lora_audit.federated.invert import InversionConfig, match_distance, run_inversion, server_view
from lora_audit.federated.objective import Schedule
from lora_audit.federated.quality import image_scores, match, psnr, ssim
from lora_audit.scan.engine import scan_file
from lora_audit.toyworld.photos import identity_photos
from lora_audit.toyworld.pipeline import ToyBaseConfig, make_toy_pipeline
from lora_audit.rules import make_finding
from lora_audit.weights.update_file import KEYS, UpdateFacts, read_update, update_facts, write_update


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("federated")
    make_toy_pipeline(ToyBaseConfig.tiny()).save_pretrained(root / "base")
    base = load_base(str(root / "base"), device="cpu")
    photos = identity_photos(300_010, 4, 16)  # [4, 16, 16, 3]
    return {"root": root, "base": base, "photos": photos}


def _facts(update):
    return update_facts("client", update.metadata, {k: tuple(v.shape) for k, v in update.tensors.items()})


def _truth(world, update):
    index = update.secrets["index"].numpy()
    x0 = world["base"].to_model_input(torch.as_tensor(world["photos"][index]))  # [B, 3, 16, 16]
    return x0, update.secrets["eps"][0], update.secrets["t"][0]


def test_the_schedule_is_the_ddpm_schedulers_at_integer_timesteps(world):
    scheduler = world["base"].train_scheduler()
    schedule = Schedule.of(scheduler)
    x0, eps, t = torch.rand(3, 3, 8, 8) * 2 - 1, torch.randn(3, 3, 8, 8), torch.tensor([0, 417, 999])
    noisy, target = schedule.noised(x0, eps, t)
    assert torch.allclose(noisy, scheduler.add_noise(x0, eps, t), atol=1e-6)
    assert torch.allclose(target, scheduler.get_velocity(x0, eps, t), atol=1e-6)
    between = schedule.alpha_bar(torch.tensor([416.5]))  # continuous t: between its neighbours
    assert schedule.alpha_bar(torch.tensor([417.0])) < between < schedule.alpha_bar(torch.tensor([416.0]))


@pytest.mark.parametrize("what", ["gradient", "lora-update"])
def test_the_matching_loss_is_zero_at_the_true_input_and_not_elsewhere(world, what):
    update = client_update(world["base"], world["photos"], ClientConfig(what=what, batch_size=2, seed=3))
    x0, eps, t = _truth(world, update)
    with server_view(world["base"], update.tensors, update.metadata, _facts(update)) as view:
        scale = float(sum((g ** 2).sum() for g in view.target))
        assert scale > 0
        for kind in ("l2", "cosine"):
            at_truth = float(match_distance(view, x0, eps, t, kind, create_graph=False))
            off = float(match_distance(view, x0 + 0.1 * torch.randn_like(x0), eps, t, kind, create_graph=False))
            wrong_t = float(match_distance(view, x0, eps, (t + 150) % 1000, kind, create_graph=False))
            bound = 1e-9 * scale if kind == "l2" else 1e-5
            assert at_truth < bound and off > 100 * max(at_truth, bound) and wrong_t > 100 * max(at_truth, bound)


def _fit_noise_and_time(world, fit: str, t_offset: float, eps_noise: float, evaluations: int, seed: int = 5):
    """GIDM+'s unknowns on a tiny case, the image known: minimise the gradient distance over a continuous
    t (sigmoid-parametrised, as GIDM+ does) and/or a free epsilon from a wrong start. Returns (t error
    before, after, eps error before, after)."""
    update = client_update(world["base"], world["photos"], ClientConfig(batch_size=1, seed=seed))
    x0, eps_true, t_true = _truth(world, update)
    with server_view(world["base"], update.tensors, update.metadata, _facts(update)) as view:
        steps = view.schedule.steps
        t_start = (t_true.float() + t_offset).clamp(1, steps - 2)
        t_raw = torch.logit(t_start / (steps - 1)).clone().requires_grad_("t" in fit)
        generator = torch.Generator().manual_seed(0)
        eps = (eps_true + eps_noise * torch.randn(eps_true.shape, generator=generator)).requires_grad_("eps" in fit)
        variables = [v for v in (eps, t_raw) if v.requires_grad]
        optimizer = torch.optim.LBFGS(variables, lr=1, max_iter=evaluations, line_search_fn="strong_wolfe",
                                      tolerance_grad=1e-14, tolerance_change=1e-16)

        def closure():
            optimizer.zero_grad()
            d = match_distance(view, x0, eps, (steps - 1) * torch.sigmoid(t_raw), "l2")
            d.backward()
            return d

        eps_before = float((eps.detach() - eps_true).norm())
        optimizer.step(closure)
    t_found = float((steps - 1) * torch.sigmoid(t_raw.detach()))
    return (abs(float(t_start) - float(t_true)), abs(t_found - float(t_true)), eps_before,
            float((eps.detach() - eps_true).norm()))


def test_gidm_plus_recovers_a_known_timestep(world):
    t_before, t_after, _, _ = _fit_noise_and_time(world, "t", 120, 0.0, 25)
    assert t_before >= 100 and t_after < 20  # t alone: from 120 steps off to within 20


@pytest.mark.slow
def test_gidm_plus_recovers_a_known_epsilon(world):
    _, _, eps_before, eps_after = _fit_noise_and_time(world, "eps", 0, 0.3, 40)
    assert eps_after < eps_before / 2  # epsilon alone: the error at least halved


@pytest.mark.slow
def test_gidm_plus_moves_t_and_epsilon_jointly_towards_the_truth(world):
    t_before, t_after, eps_before, eps_after = _fit_noise_and_time(world, "t,eps", 120, 0.3, 150)
    assert t_after < 0.7 * t_before and eps_after < 0.8 * eps_before


def test_psnr_and_ssim_on_constructed_images():
    a = np.full((16, 16, 3), 0.5)
    assert psnr(a, a + 0.1) == pytest.approx(20.0)  # data range 1: 10 log10(1 / 0.01)
    assert psnr(a, a) == float("inf")
    rng = np.random.default_rng(0)
    image = rng.random((16, 16, 3))
    assert ssim(image, image) == pytest.approx(1.0)
    assert ssim(image, rng.random((16, 16, 3))) < 0.3
    assert 0.5 < ssim(image, np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1)) < 1
    photos = rng.random((4, 8, 8, 3))
    order = [2, 0, 3, 1]
    recon = np.clip(photos[order] + rng.normal(0, 0.01, photos.shape), 0, 1)
    assert list(match(recon, photos)) == order
    assert [s["photo"] for s in image_scores(recon, photos)] == order and min(s["psnr"] for s in image_scores(recon, photos)) > 35


def test_the_client_file_carries_no_photo_noise_or_timestep(world, tmp_path):
    update = client_update(world["base"], world["photos"], ClientConfig(batch_size=2, seed=7))
    path = tmp_path / "update.safetensors"
    write_update(str(path), update.tensors, update.metadata)
    tensors, metadata, facts = read_update(str(path))
    assert set(metadata) <= KEYS and facts.what == "gradient" and facts.batch_size == 2
    assert facts.parameter_count == sum(p.numel() for p in world["base"].unet.parameters())
    assert all(name.startswith("unet.") for name in tensors)
    x0, eps, t = _truth(world, update)
    shapes = {tuple(v.shape) for v in tensors.values()}
    assert tuple(x0.shape) not in shapes and tuple(eps.shape) not in shapes
    data = path.read_bytes()
    for secret in (x0, eps):
        assert secret.float().numpy().tobytes()[:64] not in data
    assert (world["photos"][0] * 255).astype(np.uint8).tobytes()[:64] not in data
    assert all(str(int(v)) not in metadata.values() for v in t if int(v) != 2)  # 2 is the batch size
    with pytest.raises(ValueError):
        write_update(str(tmp_path / "x.safetensors"), update.tensors, {"lora_audit.fl.photos": "x"})


def test_defences_clip_noise_and_sparsify(world):
    base, photos = world["base"], world["photos"]
    clipped = client_update(base, photos, ClientConfig(batch_size=1, seed=1, defence=Defence(clip_norm=1e-3)))
    norm = float(torch.sqrt(sum((g ** 2).sum() for g in clipped.tensors.values())))
    assert norm == pytest.approx(1e-3, rel=1e-4)
    assert clipped.defence_report["epsilon"] == "inf"
    noisy = client_update(base, photos, ClientConfig(batch_size=1, seed=1, defence=Defence(1e-3, 1.0)))
    assert float(torch.sqrt(sum((g ** 2).sum() for g in noisy.tensors.values()))) > 10 * norm
    assert 0 < noisy.defence_report["epsilon"] < dp_epsilon(0.5, 0.25, 1, 1e-5)
    grads = [torch.randn(100), torch.randn(10, 10)]
    kept = sparsify(grads, 0.1)
    assert sum(int((g != 0).sum()) for g in kept) == 20
    assert min(float(g[g != 0].abs().min()) for g in kept) >= max(float(g[g == 0].abs().max()) if (g == 0).any()
                                                                 else 0 for g in [torch.where(k != 0, torch.zeros_like(o), o) for k, o in zip(kept, grads)])


def test_an_interrupted_inversion_resumes_to_the_same_result(world, tmp_path):
    update = client_update(world["base"], world["photos"], ClientConfig(batch_size=1, seed=2))
    config = InversionConfig(method="ig", iterations=6, checkpoint_every=2, t_grid=4)
    with server_view(world["base"], update.tensors, update.metadata, _facts(update)) as view:
        whole = run_inversion(view, config)

        def stop(stage, step, total, metrics):
            if step == 4:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            run_inversion(view, config, out=tmp_path, progress=stop)
        assert (tmp_path / "checkpoint.pt").is_file()
        resumed = run_inversion(view, config, out=tmp_path)
    assert resumed.iterations == whole.iterations == 6
    assert torch.allclose(resumed.images, whole.images, atol=1e-5)
    assert resumed.t_estimate == whole.t_estimate


@pytest.mark.parametrize("method", ["gidm", "gidm+", "ig", "dlg"])
def test_every_method_runs_on_a_batch_and_lowers_the_distance(world, method):
    update = client_update(world["base"], world["photos"], ClientConfig(batch_size=2, seed=4))
    _, eps, t = _truth(world, update)
    known = None if method == "gidm+" else {"eps": eps, "t": t}
    with server_view(world["base"], update.tensors, update.metadata, _facts(update)) as view:
        result = run_inversion(view, InversionConfig(method=method, iterations=6, generator_steps=1, t_grid=4,
                                                     checkpoint_every=3), known=known)
    assert result.images.shape == (2, 16, 16, 3) and 0 <= float(result.images.min()) <= float(result.images.max()) <= 1
    assert result.history[-1] <= result.history[0]
    assert (result.t_estimate is None) == (known is not None)


def _write(world, tmp_path, **config):
    update = client_update(world["base"], world["photos"], ClientConfig(**config))
    path = tmp_path / f"{config.get('what', 'gradient')}.safetensors"
    write_update(str(path), update.tensors, update.metadata)
    return path


@pytest.mark.parametrize("what", ["gradient", "lora-update"])
def test_scan_reports_an_update_as_such(world, tmp_path, what):
    path = _write(world, tmp_path, what=what, batch_size=2, local_steps=2 if what == "lora-update" else 1)
    result = scan_file(str(path))
    ids = [f.rule_id for f in result.findings]
    assert ids.count("LA005") == 1 and result.error is None
    assert not [i for i in ids if i == "LA003" or i.startswith("LA2") or i.startswith("LA3")]
    evidence = next(f for f in result.findings if f.rule_id == "LA005").evidence
    assert evidence["what"] == what and evidence["batch_size"] == 2 and evidence["model_id"].startswith("toy:")
    assert evidence["tensor_count"] > 0 and evidence["parameter_count"] > 0
    assert evidence["local_steps"] == (2 if what == "lora-update" else 1)


def test_update_evidence_has_numbers_and_the_defence_as_an_object():
    facts = UpdateFacts("gradient", 2, "toy:x", 3, 1200, defence={"clip_norm": 1.0, "mode": "dp", "sizes": [1, 2]})
    evidence = make_finding("LA005", "m", facts.evidence()).evidence
    assert evidence == {"what": "gradient", "batch_size": 2, "model_id": "toy:x", "tensor_count": 3,
                        "parameter_count": 1200, "local_steps": 1,
                        "defence": {"clip_norm": "1.0", "mode": "dp", "sizes": "[1, 2]"}, "defence_count": 3}


def _photo_folder(images: np.ndarray, folder: Path) -> Path:
    """``images`` [N, H, W, 3] in [0, 1] written as p0.png, p1.png ... into a new ``folder``."""
    from PIL import Image

    folder.mkdir()
    for i, photo in enumerate(images):
        Image.fromarray((photo * 255).astype(np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_cli_commands_write_and_fail_in_one_line(world, tmp_path, capsys):
    photos = _photo_folder(world["photos"], tmp_path / "photos")
    base = str(world["root"] / "base")
    update, secrets = tmp_path / "u.safetensors", tmp_path / "s.safetensors"
    assert main(["fl-client", str(photos), "-o", str(update), "--batch", "2", "--base", base,
                 "--save-secrets", str(secrets)]) == 0
    assert main(["fl-client", str(photos), "-o", str(update), "--base", base]) == 4  # exists: --force
    out = tmp_path / "inv"
    assert main(["invert-gradients", str(update), "-o", str(out), "--method", "gidm", "--secrets", str(secrets),
                 "--iterations", "3", "--generator-steps", "1", "--references", str(photos), "--base", base]) == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["images"]) == 2 and {"psnr", "ssim", "identity_similarity"} <= set(report["images"][0])
    assert report["noise_and_timestep"] == "known" and (out / "grid.png").is_file()
    assert (out / "reconstruction_1.png").is_file()
    capsys.readouterr()
    assert main(["invert-gradients", str(update), "-o", str(out), "--method", "gidm"]) == 4  # no --secrets
    assert main(["invert-gradients", str(photos / "p0.png"), "-o", str(out)]) == 2  # not an update file
    assert main(["invert-gradients", str(tmp_path / "missing.safetensors"), "-o", str(out)]) == 2
    assert main(["invert-gradients", str(update), "-o", str(out), "--method", "bogus"]) == 4
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 4 and "Traceback" not in err
    assert main(["invert-gradients", "--help"]) == 0 and main(["fl-client", "--help"]) == 0
    assert main(["evaluate-gradients", "--help"]) == 0


@pytest.mark.slow
def test_the_harness_resumes_and_summarises(world, tmp_path):
    from lora_audit.federated.evaluate import GridConfig, evaluate_grid

    base = world["base"]
    embedder = get_family("toy").face_embedder("cpu")
    config = GridConfig(identities=[300_020, 300_021], batches=(1,), conditions=("known", "unknown"),
                        methods=("gidm",), iterations=2, generator_steps=1, noise_multipliers=(0.1,))
    summary = evaluate_grid(base, config, lambda i, n: identity_photos(i, n, 16),
                            lambda i: identity_photos(i, 3, 16, first_view=100), embedder, tmp_path)
    assert set(summary["cells"]) == {"b1-known-gidm", "b1-unknown-gidm+", "defence/clip1-noise0.1"}
    cell = summary["cells"]["b1-unknown-gidm+"]
    assert cell["images"] == 2 and cell["rank1_ci"][0] <= cell["rank1"] <= cell["rank1_ci"][1]
    assert "t_abs_error" in cell and summary["cells"]["defence/clip1-noise0.1"]["defence"]["noise_multiplier"] == 0.1
    done = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/*.json")}
    assert evaluate_grid(base, config, lambda i, n: identity_photos(i, n, 16),
                         lambda i: identity_photos(i, 3, 16, first_view=100), embedder, tmp_path) == summary
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/*.json")} == done


@pytest.mark.slow
def test_every_federated_flag_from_the_cli(world, tmp_path, capsys):
    photos = _photo_folder(world["photos"], tmp_path / "photos")
    base = str(world["root"] / "base")
    lora = tmp_path / "lora.safetensors"
    assert main(["fl-client", str(photos), "--output", str(lora), "--what", "lora-update", "--local-steps", "2",
                 "--lr", "0.05", "--seed", "3", "--clip-norm", "0.5", "--noise-multiplier", "0.1", "--keep", "0.5",
                 "--base", base, "--device", "cpu"]) == 0
    assert main(["fl-client", str(photos), "--output", str(lora), "--base", base, "--force"]) == 0
    assert main(["fl-client", str(photos), "-o", str(tmp_path / "x.safetensors"), "--noise-multiplier", "1",
                 "--base", base]) == 4  # noise needs a clipping norm
    assert main(["fl-client", str(photos), "-o", str(tmp_path / "x.safetensors"), "--what", "photos"]) == 4
    out = tmp_path / "inv"
    args = ["invert-gradients", str(lora), "--output", str(out), "--method", "dlg", "--iterations", "2",
            "--seed", "1", "--layers", "up_blocks,conv_out", "--base", base, "--device", "cpu"]
    assert main(args) == 0
    assert main([*args[:5], "ig", *args[6:]]) == 4  # another inversion's checkpoint is there
    assert main([*args[:5], "ig", *args[6:], "--force"]) == 0
    assert main([*args[:-4], "--layers", "nothing", "--base", base, "--force"]) == 4
    evaluation = tmp_path / "eval"
    assert main(["evaluate-gradients", "--output", str(evaluation), "--identities", "2", "--first-identity", "302000",
                 "--batches", "1", "--conditions", "unknown", "--methods", "ig", "--iterations", "1",
                 "--generator-steps", "1", "--clip-norm", "0.5", "--noise-multipliers", "0.1", "--keep", "0.5",
                 "--layers", "conv_out", "--shard", "0/1", "--base", base, "--device", "cpu"]) == 0
    summary = json.loads((evaluation / "summary.json").read_text())
    assert set(summary["cells"]) == {"b1-unknown-ig", "defence/clip0.5-noise0.1", "defence/keep0.5"}
    assert main(["evaluate-gradients", "--shard", "2/1"]) == 4
    assert main(["evaluate-gradients", "--methods", "gidm+"]) == 4
    err = capsys.readouterr().err
    assert "Traceback" not in err
