"""Test-wide settings: tiny models run fastest on one thread (two threads contend on a 2-core CI machine)."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    try:
        import torch
    except ImportError:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_toy_base():
    """The tiny toy base pipeline (16x16) as a DiffusionBase, built once per test module."""
    from lora_audit.diffusion.base import DiffusionBase
    from lora_audit.toyworld.pipeline import ToyBaseConfig, make_toy_pipeline

    pipe = make_toy_pipeline(ToyBaseConfig.tiny())
    pipe.set_progress_bar_config(disable=True)
    return DiffusionBase(pipe, "toy")


@pytest.fixture(scope="module")
def toy_images():
    """Three 16x16 renders of one private identity, as training photos."""
    from lora_audit.toyworld.renderer import render_batch

    return render_batch([300_000] * 3, [0, 1, 2], seed=0, size=16)
