"""Tests of the attack's encoder input (dW sketches) and the VAE encoder model."""

import math

import numpy as np
import pytest
import torch

from lora_audit.testing import synthetic as S
from lora_audit.attack.encoder import EncoderConfig, WeightEncoder
from lora_audit.attack.model import AttackConfig, AttackModel
from lora_audit.attack.features import ModuleSketcher
from lora_audit.weights import open_lora


def write(tmp_path, name, tensors):
    return open_lora(str(S.save_synthetic(tmp_path / name, tensors)))


def small(lora, names):
    """``lora`` restricted to ``names``."""
    return S.SyntheticLora(lora.family, {n: lora.modules[n] for n in names},
                           {n: t for n, t in lora.tucker.items() if n in names}, dtype=lora.dtype)


def test_two_factorisations_give_identical_features(tmp_path):
    lora = S.make_lora("sd15", rank=4, max_modules=3, dtype="F64", seed=1)
    other = S.refactorize(lora, seed=2)
    sketcher = ModuleSketcher()
    with write(tmp_path, "a.safetensors", S.as_kohya(lora)) as a, \
            write(tmp_path, "b.safetensors", S.as_kohya(other)) as b:
        fa, fb = sketcher.sketch(a), sketcher.sketch(b)
        assert set(fa) == set(lora.modules)
        for m in a.modules:
            assert not np.allclose(a.file.read(m.keys["down"]), b.file.read(m.keys["down"]))
    for name in fa:
        assert fa[name].shape == (64,)
        np.testing.assert_allclose(fa[name], fb[name], rtol=1e-10, atol=1e-14)


def test_any_rank_and_factor_path_equals_full_delta(tmp_path):
    sketcher = ModuleSketcher()
    features = []
    for rank in (4, 8):
        lora = S.make_lora("sd15", rank=rank, max_modules=3, dtype="F64", seed=rank)
        with write(tmp_path, f"r{rank}.safetensors", S.as_kohya(lora)) as f:
            features.append(sketcher.sketch(f))
            for m in f.modules:
                np.testing.assert_allclose(features[-1][m.name], sketcher.sketch_delta(f.delta(m)), rtol=1e-10)
    assert features[0].keys() == features[1].keys()
    assert all(features[0][n].shape == features[1][n].shape == (64,) for n in features[0])

    conv = "unet.down_blocks.0.resnets.0.conv1"  # 320 x 320 x 3 x 3
    lora = small(S.make_lora("sd15", rank=4, conv=True, tucker=True, dtype="F64"), [conv])
    truth = S.delta_weights(lora)[conv]
    for layout, tensors in (("locon", S.as_locon(lora)), ("dora", S.as_dora(lora))):
        with write(tmp_path, f"{layout}.safetensors", tensors) as f:
            (m,) = f.modules
            assert m.kind == ("locon" if layout == "locon" else "dora")
            assert ("mid" in m.keys) == (layout == "locon")
            np.testing.assert_allclose(sketcher.sketch(f)[conv], sketcher.sketch_delta(truth), rtol=1e-10)


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_loha_and_lokr_use_the_delta(tmp_path, kind):
    lora = S.make_lora("sd15", rank=4, max_modules=2, dtype="F64", lokr_factor=-1 if kind == "lokr" else None)
    tensors = S.as_loha(lora) if kind == "loha" else S.as_lokr(lora)
    sketcher = ModuleSketcher()
    with write(tmp_path, "x.safetensors", tensors) as f:
        assert {m.kind for m in f.modules} == {kind}
        features = sketcher.sketch(f)
    for name, dw in S.delta_weights(lora).items():
        np.testing.assert_allclose(features[name], sketcher.sketch_delta(dw), rtol=1e-9)


def test_encoder_shapes_padding_and_step(tmp_path):
    full = S.make_lora("sd15", rank=4, max_modules=3, seed=3)
    names = list(full.modules)
    config = EncoderConfig(names, sketch_k=4, width=16, layers=1, heads=2, latent_len=5, latent_dim=6, latent_rank=7)
    attack = AttackModel(AttackConfig(family="sd1", encoder=config))
    with write(tmp_path, "full.safetensors", S.as_kohya(full)) as a, \
            write(tmp_path, "part.safetensors", S.as_kohya(small(full, names[1:]))) as b:
        inputs = [attack.file_inputs(a), attack.file_inputs(b)]
    sketches, padding = (torch.stack(x) for x in zip(*inputs))
    assert sketches.shape == (2, 3, 16) and sketches.dtype == torch.float32
    assert padding.tolist() == [[False, False, False], [True, False, False]]
    assert not sketches[1, 0].any() and torch.equal(sketches[0, 1:], sketches[1, 1:])

    torch.manual_seed(0)
    encoder = WeightEncoder(config).eval()
    sketches = sketches * 1e3  # LoRA deltas are small; scale them so the test sees their effect
    step = torch.tensor([100, 100])
    with torch.no_grad():
        mu, logvar = encoder(sketches, step, padding)
        assert mu.shape == logvar.shape == (2, 7)
        noisy = sketches.clone()
        noisy[1, 0] = torch.randn(16)  # a missing module's input is ignored
        torch.testing.assert_close(encoder(noisy, step, padding)[0], mu)
        assert not torch.allclose(encoder(noisy, step)[0][1], mu[1])
        assert not torch.allclose(encoder(sketches, torch.tensor([100, 900]), padding)[0][1], mu[1])
    z1, z2 = (encoder.sample(mu, logvar, torch.Generator().manual_seed(7)) for _ in range(2))
    assert z1.shape == (2, 7) and torch.equal(z1, z2)
    assert attack.to_latent(z1).shape == (2, 5, 6)


def test_same_seed_same_sketch_matrices():
    a, b, c = ModuleSketcher(seed=5), ModuleSketcher(seed=5), ModuleSketcher(seed=6)
    assert np.array_equal(a.matrix(320), b.matrix(320)) and a.matrix(320).shape == (320, 8)
    assert not np.allclose(a.matrix(320), c.matrix(320))
    dw = np.random.default_rng(0).normal(size=(64, 96))
    assert np.array_equal(a.sketch_delta(dw), b.sketch_delta(dw))


def test_documented_sd15_memory_figures():
    shapes = S.module_shapes("sd15").values()
    dims = {d for s in shapes for d in (s[0], math.prod(s[1:]))}
    assert len(shapes) == 350 and len(dims) == 16 and sum(dims) * 8 == 768_000
    assert max((s[0] + math.prod(s[1:])) * 8 for s in shapes) == 194_560
    assert sum(math.prod(s) for s in shapes) == 941_940_736
