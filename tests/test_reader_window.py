"""The reader's window: tensor data read once into this thread's reused buffer, and everything handed
out stays right when the window moves (a large file), is reused by another file, or holds bad values."""

import hashlib

import numpy as np
import pytest
from safetensors.numpy import load_file

import lora_audit.weights.safetensors_file as reader
import lora_audit.weights.stats as stats
from lora_audit.testing import synthetic as S
from lora_audit.weights.safetensors_file import SafetensorsFile
from lora_audit.weights import open_lora
from lora_audit.weights.stats import weight_stats


def _tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"t{i:02d}": rng.standard_normal((8 + i, 16)).astype(np.float32) for i in range(12)}


def _expected(path) -> dict[str, np.ndarray]:
    return {name: np.asarray(array, np.float32) for name, array in load_file(str(path)).items()}


@pytest.mark.parametrize("dtype", ["F16", "BF16", "F32", "F64"])
@pytest.mark.parametrize("window", [None, 1024])  # the whole data section, or a window that must move
def test_reads_hashes_and_nan_checks_match_the_file(tmp_path, monkeypatch, dtype, window):
    if window:
        monkeypatch.setattr(reader, "_WINDOW_BYTES", window)
    tensors = _tensors(0)
    tensors["t05"][3, 4] = np.nan
    tensors["t09"][0, 0] = np.inf
    path = S.save_synthetic(tmp_path / "f.safetensors", tensors, {"k": "v"}, dtype=dtype)
    expected = _expected(path) if dtype != "BF16" else {n: S.round_to_bf16(t) for n, t in tensors.items()}
    with SafetensorsFile(str(path)) as f:
        assert f.sha256() == hashlib.sha256(path.read_bytes()).hexdigest()  # before any read: from the file
        assert f.non_finite() == ["t05", "t09"]
        assert f.sha256() == hashlib.sha256(path.read_bytes()).hexdigest()  # after: from the window
        got = {name: f.read(name) for name in reversed(sorted(f.tensors))}  # backwards: the window moves back
        out = np.empty(f.tensors["t07"].numel)
        np.testing.assert_array_equal(f.read_into("t07", out), np.asarray(expected["t07"], np.float64))
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array)


def test_arrays_outlive_the_window_reused_by_another_file(tmp_path):
    one = S.save_synthetic(tmp_path / "one.safetensors", _tensors(1), dtype="F16")
    two = S.save_synthetic(tmp_path / "two.safetensors", _tensors(2), dtype="F16")
    with SafetensorsFile(str(one)) as f:
        kept = {name: f.read(name) for name in f.tensors}
    with SafetensorsFile(str(two)) as f:  # fills the same window with other bytes
        others = {name: f.read(name) for name in f.tensors}
    for name, array in _expected(one).items():
        np.testing.assert_array_equal(kept[name], array)
        assert not np.array_equal(kept[name], others[name])


def test_statistics_do_not_depend_on_the_window_or_the_arena(tmp_path, monkeypatch):
    lora = S.make_lora("sd15", rank=4, max_modules=12, seed=3, dtype="F16")
    path = S.save_synthetic(tmp_path / "l.safetensors", S.as_kohya(lora))
    with open_lora(str(path)) as f:
        whole = weight_stats(f).modules
    monkeypatch.setattr(reader, "_WINDOW_BYTES", 4096)
    monkeypatch.setattr(stats._Arena, "LARGEST", 100)  # most factors get arrays of their own
    with open_lora(str(path)) as f:
        small = weight_stats(f).modules
    assert [(m.dw_norm, m.effective_rank) for m in whole] == [(m.dw_norm, m.effective_rank) for m in small]
    deltas = S.delta_weights(lora)
    for module in whole:
        dw = deltas[module.name]
        assert module.dw_norm == pytest.approx(float(np.linalg.norm(dw)), rel=1e-5)


def test_a_large_file_with_factors_far_apart_is_read_about_once(tmp_path, monkeypatch):
    from test_crafted import encode

    rng = np.random.default_rng(4)
    ups, downs = {}, {}
    for i in range(30):  # every module's up and down lie a window apart: each read would refill it
        name = f"lora_unet_down_blocks_0_attentions_0_transformer_blocks_{i}_attn2_to_k"
        ups[f"{name}.lora_up.weight"] = ("F16", (320, 2), rng.standard_normal((320, 2)).astype(np.float16).tobytes())
        downs[f"{name}.lora_down.weight"] = ("F16", (2, 768), rng.standard_normal((2, 768)).astype(np.float16).tobytes())
    path = tmp_path / "far.safetensors"
    path.write_bytes(encode({**ups, "filler": ("I8", (64 << 10,), None), **downs}))
    with open_lora(str(path)) as f:
        expected = [(m.dw_norm, m.effective_rank) for m in weight_stats(f).modules]
    monkeypatch.setattr(reader, "_WINDOW_BYTES", 16 << 10)  # the file is five windows long
    read, preadv = [], reader.os.preadv
    monkeypatch.setattr(reader.os, "preadv", lambda fd, views, at: read.append(preadv(fd, views, at)) or read[-1])
    with open_lora(str(path)) as f:
        got = [(m.dw_norm, m.effective_rank) for m in weight_stats(f).modules]
    assert got == expected and len(got) == 30
    assert sum(read) <= 3 * path.stat().st_size  # not a window per factor (60 windows: 12 times the file)


def test_huge_tensor_name_sets_are_grouped_but_not_kept(tmp_path, monkeypatch):
    import lora_audit.weights.modules as modules

    monkeypatch.setattr(modules, "_CACHED_NAMES", 10)
    small = S.save_synthetic(tmp_path / "small.safetensors", S.as_kohya(S.make_lora("sd15", rank=2, max_modules=3)))
    large = S.save_synthetic(tmp_path / "large.safetensors", S.as_kohya(S.make_lora("sd15", rank=2, max_modules=8)))
    modules._grouping.cache_clear()
    with open_lora(str(large)) as f:  # 24 tensors: more than the cache takes
        assert len(f.modules) == 8
    assert modules._grouping.cache_info().currsize == 0
    with open_lora(str(small)) as f:
        assert len(f.modules) == 3
    assert modules._grouping.cache_info().currsize == 1


def test_a_product_that_overflows_leaves_that_module_unknown_not_the_file(tmp_path):
    from test_crafted import encode

    from lora_audit.scan.engine import scan_file

    rng = np.random.default_rng(5)
    k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    v = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v"
    down, up = rng.standard_normal((4, 768)), rng.standard_normal((320, 4))
    path = tmp_path / "huge.safetensors"  # finite Grams (1e200), an r x r product of 1e400: inf
    path.write_bytes(encode({f"{k}.lora_down.weight": down * 1e100, f"{k}.lora_up.weight": up * 1e100,
                             f"{v}.lora_down.weight": down, f"{v}.lora_up.weight": up}))
    result = scan_file(str(path))
    assert result.error is None
    huge, normal = sorted(result.stats.modules, key=lambda m: m.name)
    assert np.isnan(huge.effective_rank)
    assert normal.effective_rank == pytest.approx(stats.effective_rank(np.linalg.svd(up @ down, compute_uv=False)))


def test_a_file_rewritten_during_the_scan_gets_no_hash_of_mixed_bytes(tmp_path):
    import os

    from lora_audit.errors import InvalidFileError

    path = S.save_synthetic(tmp_path / "f.safetensors", _tensors(6), {"k": "v"}, dtype="F16")
    with SafetensorsFile(str(path)) as f:
        f.non_finite()  # the data section is in the window
        other = S.encode_safetensors(_tensors(7), {"k": "v"}, dtype="F16")  # the same size, other bytes
        assert len(other) == path.stat().st_size
        path.write_bytes(other)
        os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000_000))
        with pytest.raises(InvalidFileError, match="changed while being read"):
            f.sha256()
    from lora_audit.scan.engine import scan_file

    assert scan_file(str(path)).sha256 == hashlib.sha256(other).hexdigest()  # a scan of what is there now


def test_eigenproblems_solved_in_batches_equal_one_module_at_a_time(tmp_path, monkeypatch):
    """70 modules of rank 4 are more than one batch of eigenproblems (64 at most): every module's effective
    rank is the same as when each is solved alone, and equals the SVD of its dW."""
    lora = S.make_lora("sd15", rank=4, max_modules=70, seed=5, dtype="F16")
    path = S.save_synthetic(tmp_path / "l.safetensors", S.as_kohya(lora))
    with open_lora(str(path)) as f:
        assert len(f.modules) == 70
        batched = weight_stats(f).modules
    monkeypatch.setattr(stats, "_EIGEN_BATCH_ELEMENTS", 1)  # one module per call
    with open_lora(str(path)) as f:
        alone = weight_stats(f).modules
    assert [m.effective_rank for m in batched] == pytest.approx([m.effective_rank for m in alone], rel=1e-9)
    deltas = S.delta_weights(lora)
    for module in batched[::9]:
        singular = np.linalg.svd(deltas[module.name].reshape(module.shape[0], -1), compute_uv=False)
        assert module.effective_rank == pytest.approx(stats.effective_rank(singular[:4]), rel=1e-4)


def test_a_header_longer_than_the_first_read_is_read_whole(tmp_path):
    metadata = {"ss_tag_frequency": "x" * 200_000, "k": "v"}  # a 200 KB header: past the first 64 KiB read
    path = S.save_synthetic(tmp_path / "long.safetensors", _tensors(4), metadata, dtype="F16")
    with SafetensorsFile(str(path)) as f:
        assert f.header_length > reader._FIRST_READ and f.metadata == metadata
        for name, array in _expected(path).items():
            np.testing.assert_array_equal(f.read(name), array)
        assert f.sha256() == hashlib.sha256(path.read_bytes()).hexdigest()
