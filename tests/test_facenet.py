"""FaceNet: state_dict compatibility with facenet-pytorch's checkpoints, loading, and embeddings.

The key -> shape table below is written out from timesler/facenet-pytorch ``models/inception_resnet_v1.py``
(module names, channels, kernel sizes), independently of :mod:`lora_audit.identity.facenet`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lora_audit.errors import UsageError
from lora_audit.identity.facenet import (
    CASIA_WEBFACE_FILE,
    VGGFACE2_FILE,
    FaceNetEmbedder,
    InceptionResnetV1,
    default_weights_path,
)

VGGFACE2_CLASSES, CASIA_CLASSES = 8631, 10575


def _basic(prefix: str, c_in: int, c_out: int, kh: int, kw: int | None = None) -> dict[str, tuple]:
    """BasicConv2d: conv (no bias) + BatchNorm2d with its running stats and counter."""
    bn = {f"{prefix}.bn.{k}": (c_out,) for k in ("weight", "bias", "running_mean", "running_var")}
    return {f"{prefix}.conv.weight": (c_out, c_in, kh, kw or kh), **bn, f"{prefix}.bn.num_batches_tracked": ()}


def _seq(prefix: str, *convs: tuple) -> dict[str, tuple]:
    return {k: v for i, conv in enumerate(convs) for k, v in _basic(f"{prefix}.{i}", *conv).items()}


def _residual(prefix: str, channels: int, concat: int) -> dict[str, tuple]:
    return {f"{prefix}.conv2d.weight": (channels, concat, 1, 1), f"{prefix}.conv2d.bias": (channels,)}


def _block35(p: str) -> dict[str, tuple]:
    return {**_basic(f"{p}.branch0", 256, 32, 1), **_seq(f"{p}.branch1", (256, 32, 1), (32, 32, 3)),
            **_seq(f"{p}.branch2", (256, 32, 1), (32, 32, 3), (32, 32, 3)), **_residual(p, 256, 96)}


def _block17(p: str) -> dict[str, tuple]:
    return {**_basic(f"{p}.branch0", 896, 128, 1),
            **_seq(f"{p}.branch1", (896, 128, 1), (128, 128, 1, 7), (128, 128, 7, 1)), **_residual(p, 896, 256)}


def _block8(p: str) -> dict[str, tuple]:
    return {**_basic(f"{p}.branch0", 1792, 192, 1),
            **_seq(f"{p}.branch1", (1792, 192, 1), (192, 192, 1, 3), (192, 192, 3, 1)), **_residual(p, 1792, 384)}


def facenet_pytorch_table(classes: int | None = VGGFACE2_CLASSES) -> dict[str, tuple]:
    """Key -> shape of facenet-pytorch's InceptionResnetV1 state_dict, with ``logits`` for ``classes``."""
    table = {}
    for name, conv in {"conv2d_1a": (3, 32, 3), "conv2d_2a": (32, 32, 3), "conv2d_2b": (32, 64, 3),
                       "conv2d_3b": (64, 80, 1), "conv2d_4a": (80, 192, 3), "conv2d_4b": (192, 256, 3)}.items():
        table |= _basic(name, *conv)
    for i in range(5):
        table |= _block35(f"repeat_1.{i}")
    table |= _basic("mixed_6a.branch0", 256, 384, 3)
    table |= _seq("mixed_6a.branch1", (256, 192, 1), (192, 192, 3), (192, 256, 3))
    for i in range(10):
        table |= _block17(f"repeat_2.{i}")
    table |= _seq("mixed_7a.branch0", (896, 256, 1), (256, 384, 3))
    table |= _seq("mixed_7a.branch1", (896, 256, 1), (256, 256, 3))
    table |= _seq("mixed_7a.branch2", (896, 256, 1), (256, 256, 3), (256, 256, 3))
    for i in range(5):
        table |= _block8(f"repeat_3.{i}")
    table |= _block8("block8")
    table["last_linear.weight"] = (512, 1792)
    table |= {f"last_bn.{k}": (512,) for k in ("weight", "bias", "running_mean", "running_var")}
    table["last_bn.num_batches_tracked"] = ()
    if classes is not None:
        table |= {"logits.weight": (classes, 512), "logits.bias": (classes,)}
    return table


def _params(table: dict[str, tuple]) -> int:
    """Parameters (not BatchNorm running stats or counters), as ``sum(p.numel() for p in parameters())``."""
    return sum(int(np.prod(s)) for k, s in table.items() if not k.endswith(("running_mean", "running_var",
                                                                           "num_batches_tracked")))


def _random_state(table: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    """A facenet-pytorch-shaped state_dict of random weights scaled so that activations stay finite."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in table.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith(("running_var", "bn.weight")):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif len(shape) > 1:  # He initialisation
            state[key] = torch.randn(shape, generator=g) * np.sqrt(2 / np.prod(shape[1:]))
        else:
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return state


@pytest.fixture(scope="module")
def vggface2_state():
    return _random_state(facenet_pytorch_table(VGGFACE2_CLASSES))


@pytest.fixture(scope="module")
def vggface2_file(tmp_path_factory, vggface2_state):
    path = tmp_path_factory.mktemp("torch_home") / "checkpoints" / VGGFACE2_FILE
    path.parent.mkdir()
    torch.save(vggface2_state, path)
    return path


@pytest.fixture(scope="module")
def images():
    noise = np.random.default_rng(0).random((160, 160, 3))
    ramp = np.broadcast_to(np.linspace(0, 1, 160)[None, :, None], (160, 160, 3))
    return np.stack([noise, ramp]).astype(np.float32)  # [2, 160, 160, 3] in [0, 1]


def test_the_key_table_matches_the_upstream_source():
    table = facenet_pytorch_table()
    # A BasicConv2d has 6 entries; a residual block adds conv2d.weight and conv2d.bias.
    counts = {"conv2d_": 36, "repeat_1.0.": 38, "repeat_1.": 5 * 38, "mixed_6a.": 24, "repeat_2.0.": 26,
              "repeat_2.": 10 * 26, "mixed_7a.": 42, "repeat_3.": 5 * 26, "block8.": 26, "last_": 6, "logits.": 2}
    for prefix, count in counts.items():
        assert sum(k.startswith(prefix) for k in table) == count, prefix
    assert len(table) == 716 and sum(k.endswith("num_batches_tracked") for k in table) == 112
    spots = {
        "conv2d_1a.conv.weight": (32, 3, 3, 3),
        "conv2d_4b.bn.running_var": (256,),
        "repeat_1.4.branch2.2.conv.weight": (32, 32, 3, 3),
        "repeat_1.0.conv2d.weight": (256, 96, 1, 1),
        "mixed_6a.branch1.2.conv.weight": (256, 192, 3, 3),
        "repeat_2.9.branch1.1.conv.weight": (128, 128, 1, 7),
        "repeat_2.9.branch1.2.conv.weight": (128, 128, 7, 1),
        "repeat_2.3.conv2d.bias": (896,),
        "mixed_7a.branch0.1.conv.weight": (384, 256, 3, 3),
        "mixed_7a.branch2.2.bn.num_batches_tracked": (),
        "repeat_3.0.branch1.1.conv.weight": (192, 192, 1, 3),
        "block8.conv2d.weight": (1792, 384, 1, 1),
        "last_linear.weight": (512, 1792),
        "last_bn.running_mean": (512,),
        "logits.weight": (8631, 512),
        "logits.bias": (8631,),
    }
    assert {k: table[k] for k in spots} == spots
    # By hand: stem 615,552 + 5 x 77,440 + 1,710,080 + 10 x 690,048 + 3,346,176 + 6 x 1,600,768
    # + head 918,528 = 23,482,624; logits add 512 x 8631 + 8631.
    assert _params(table) == 27_910_327
    assert _params(facenet_pytorch_table(CASIA_CLASSES)) == 28_907_599
    assert _params(facenet_pytorch_table(None)) == 23_482_624


@pytest.mark.parametrize("classes", [VGGFACE2_CLASSES, CASIA_CLASSES, None])
def test_our_state_dict_has_facenet_pytorchs_keys_and_shapes(classes):
    model = InceptionResnetV1(classes)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == facenet_pytorch_table(classes)
    assert sum(p.numel() for p in model.parameters()) == _params(facenet_pytorch_table(classes))


def test_batchnorms_use_tensorflows_eps():
    norms = [m for m in InceptionResnetV1().modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 112 and {(m.eps, m.momentum) for m in norms} == {(1e-3, 0.1)}


def test_loads_a_vggface2_style_checkpoint_and_embeds_unit_vectors(vggface2_file, vggface2_state, images):
    embedder = FaceNetEmbedder.load(str(vggface2_file), device="cpu")
    assert (embedder.image_size, embedder.dim) == (160, 512)
    assert torch.equal(embedder.model.block8.conv2d.weight, vggface2_state["block8.conv2d.weight"])
    assert not hasattr(embedder.model, "logits")
    out = embedder.embed(images)
    assert out.shape == (2, 512) and out.dtype == np.float32 and np.isfinite(out).all()
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert out[0] @ out[1] < 0.99
    # The network sees (255 x - 127.5) / 128, as facenet-pytorch's fixed_image_standardization gives it.
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.inference_mode():
        direct = embedder.model((x * 255 - 127.5) / 128).numpy()
    assert np.allclose(out, direct, atol=1e-5)


def test_a_checkpoint_without_logits_or_bn_counters_loads_to_the_same_embeddings(
        tmp_path, vggface2_file, vggface2_state, images):
    features = {k: v for k, v in vggface2_state.items()
                if not k.startswith("logits.") and not k.endswith("num_batches_tracked")}
    torch.save(features, tmp_path / "features.pt")
    full = FaceNetEmbedder.load(vggface2_file, device="cpu").embed(images)
    assert np.array_equal(FaceNetEmbedder.load(tmp_path / "features.pt", device="cpu").embed(images), full)


def test_the_verification_threshold_names_its_source_and_the_checkpoint(tmp_path, vggface2_file, vggface2_state):
    threshold, source = FaceNetEmbedder.load(vggface2_file, device="cpu").verification_threshold()
    assert threshold == pytest.approx(1 - 1.04 ** 2 / 2) and "deepface" in source and "no threshold" not in source
    casia = {**vggface2_state, "logits.weight": torch.zeros(10575, 512), "logits.bias": torch.zeros(10575)}
    features = {k: v for k, v in vggface2_state.items() if not k.startswith("logits.")}
    other = {**vggface2_state, "logits.weight": torch.zeros(100, 512), "logits.bias": torch.zeros(100)}
    for name, state, says in (("casia", casia, "CASIA-WebFace"), ("features", features, "no logits layer)"),
                              ("other", other, "an unknown checkpoint (100 classes)")):
        torch.save(state, tmp_path / f"{name}.pt")
        embedder = FaceNetEmbedder.load(tmp_path / f"{name}.pt", device="cpu")
        assert embedder.verification_threshold()[0] == threshold
        assert f"{says}, for which no threshold is published" in embedder.verification_threshold()[1]


def test_no_weights_means_the_torch_cache(monkeypatch, tmp_path, vggface2_file):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert default_weights_path() == tmp_path / "checkpoints" / VGGFACE2_FILE
    with pytest.raises(UsageError, match=r"no FaceNet weights .* not found") as caught:
        FaceNetEmbedder.load(None)
    assert "\n" not in str(caught.value) and caught.value.exit_code == 4
    assert caught.value.input == "face_weights"  # the CLI words it as --face-weights
    monkeypatch.setenv("TORCH_HOME", str(vggface2_file.parent.parent))
    assert FaceNetEmbedder.load(None, device="cpu").dim == 512
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_weights_path() == tmp_path / "torch" / "checkpoints" / VGGFACE2_FILE


def _wrong_checkpoints(state: dict[str, torch.Tensor]) -> dict[str, tuple[object, str]]:
    """name -> (what to save, or bytes to write; the expected message)."""
    narrow = dict(state, **{"last_linear.weight": torch.zeros(128, 1792)})
    extra = dict(state, **{"fc.weight": torch.zeros(3)})
    missing = {k: v for k, v in state.items() if not k.startswith("repeat_3.4.")}
    half_logits = {k: v for k, v in state.items() if k != "logits.bias"}
    return {
        "narrow": (narrow, r"1 wrong shapes, e\.g\. last_linear\.weight \[128, 1792\] != \[512, 1792\]"),
        "extra": (extra, r"1 unexpected keys, e\.g\. fc\.weight"),
        "missing": (missing, r"22 missing keys, e\.g\. repeat_3\.4\."),  # 26 less 4 optional BN counters
        "half_logits": (half_logits, r"logits"),
        "wrapped": ({"state_dict": {"last_linear.weight": state["last_linear.weight"]}}, r"not a state_dict"),
        "garbage": (b"not a checkpoint at all", r"not a readable PyTorch checkpoint"),
    }


def test_wrong_checkpoints_give_one_line_usage_errors(tmp_path, vggface2_state):
    for name, (content, message) in _wrong_checkpoints(vggface2_state).items():
        path = tmp_path / f"{name}.pt"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        with pytest.raises(UsageError, match=message) as caught:
            FaceNetEmbedder.load(path, device="cpu")
        assert str(path) in str(caught.value) and "\n" not in str(caught.value), name


def test_a_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such file") as caught:
        FaceNetEmbedder.load(str(tmp_path / CASIA_WEBFACE_FILE))
    assert caught.value.exit_code == 4
    with pytest.raises(UsageError, match="no such file"):
        FaceNetEmbedder.load(tmp_path)  # a directory
