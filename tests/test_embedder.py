"""The toy face embedder: interface, training loop (save, load, resume) and the evaluation metrics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lora_audit.toyworld.embedder import ToyFaceEmbedder, ToyFaceNet, ToyNetConfig
from lora_audit.identity.metrics import roc_auc, tar_at_far
from lora_audit.toyworld.lab.eval_embedder import degrade, embedding_metrics, evaluate_embedder
from lora_audit.toyworld.renderer import render_batch
from lora_audit.toyworld.lab.train_embedder import CHECKPOINT_NAME, EmbedderConfig, train_embedder

TINY = EmbedderConfig.tiny()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("embedder")
    return out, train_embedder(TINY, out)


def _untrained(config: EmbedderConfig = TINY) -> ToyFaceEmbedder:
    torch.manual_seed(config.seed)
    return ToyFaceEmbedder(ToyFaceNet(ToyNetConfig(config.image_size, config.channels, config.dim)), device="cpu")


def test_training_saves_an_embedder_that_loads_back_to_identical_embeddings(trained):
    out, summary = trained
    assert summary["steps"] == TINY.steps and summary["params"] > 0
    assert {"config.json", "model.safetensors", CHECKPOINT_NAME} <= {p.name for p in out.iterdir()}
    images = render_batch([0, 1, 2], [0, 1, 2], seed=5, size=TINY.image_size)
    first, second = ToyFaceEmbedder.load(out, device="cpu"), ToyFaceEmbedder.load(out, device="cpu")
    assert np.array_equal(first.embed(images), second.embed(images))
    resaved = ToyFaceEmbedder.load(second.save(out / "copy"), device="cpu")
    assert np.array_equal(first.embed(images), resaved.embed(images))


def test_embeddings_are_unit_vectors_for_numpy_and_torch_inputs_of_any_size():
    embedder = _untrained()
    images = render_batch([0, 1, 2, 3, 4], [0] * 5, size=24)  # resized to the embedder's 16 px
    out = embedder.embed(images)
    assert out.shape == (5, embedder.dim) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert np.allclose(embedder.embed(torch.from_numpy(images)), out, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        embedder.embed(images[0])


def test_metrics_of_a_perfect_and_of_a_random_embedding():
    labels = np.repeat(np.arange(120), 5)
    image_index = np.tile(np.arange(5), 120)
    perfect = np.eye(120, dtype=np.float32)[labels]
    metrics = embedding_metrics(perfect, labels, image_index)
    assert metrics["auc"] == 1.0 and metrics["tar_at_far_1e-3"] == 1.0 and metrics["rank1"] == 1.0
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(len(labels), 32))
    metrics = embedding_metrics(noise / np.linalg.norm(noise, axis=1, keepdims=True), labels, image_index)
    assert abs(metrics["auc"] - 0.5) < 0.03 and metrics["rank1"] < 0.05


def test_auc_and_tar_on_hand_made_scores():
    assert roc_auc(np.array([0.9, 0.8]), np.array([0.1, 0.85])) == 0.75
    assert roc_auc(np.array([0.5]), np.array([0.5])) == 0.5  # ties count half
    impostor = np.linspace(0, 1, 1000)  # at FAR 1e-3 the threshold is just above the second-highest impostor
    assert tar_at_far(np.array([1.0, 0.9995, 0.5]), impostor, 1e-3) == pytest.approx(2 / 3)


def test_degrade_blurs_and_adds_noise_deterministically():
    images = render_batch([0, 1], [0, 0], size=16)
    out = degrade(images, seed=3)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert np.array_equal(out, degrade(images, seed=3)) and not np.array_equal(out, degrade(images, seed=4))
    assert 0.01 < np.abs(out - images).mean() < 0.1


def test_an_interrupted_run_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_one_does(tmp_path, trained):
    class Stop(Exception):
        pass

    def stop_at_15(step, total, metrics):
        if step == 15:
            raise Stop

    with pytest.raises(Stop):
        train_embedder(TINY, tmp_path, stop_at_15)
    steps = []
    summary = train_embedder(TINY, tmp_path, lambda step, total, metrics: steps.append(step))
    assert steps[0] == TINY.checkpoint_every + 1 and steps[-1] == summary["steps"] == TINY.steps
    images = render_batch([0, 1, 2], [0, 1, 2], seed=5, size=TINY.image_size)
    resumed = ToyFaceEmbedder.load(tmp_path, device="cpu").embed(images)
    uninterrupted = ToyFaceEmbedder.load(trained[0], device="cpu").embed(images)
    assert np.allclose(resumed, uninterrupted, atol=1e-4)
    with pytest.raises(ValueError, match="another config"):
        train_embedder(dataclasses.replace(TINY, lr=1e-4), tmp_path)


def test_training_separates_the_training_identities_better_than_no_training(trained):
    ids = range(TINY.identities)
    before = evaluate_embedder(_untrained(), ids, 6, seed=TINY.render_seed, size=TINY.image_size)
    after = evaluate_embedder(ToyFaceEmbedder.load(trained[0], device="cpu"), ids, 6, seed=TINY.render_seed,
                              size=TINY.image_size)
    assert after["gallery_size"] == TINY.identities
    assert after["clean"]["auc"] > before["clean"]["auc"] + 0.05
    assert after["clean"]["impostor_cos"] < before["clean"]["impostor_cos"]
