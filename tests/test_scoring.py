"""Scoring reconstructions against the owner's photos: similarity, impostor FAR, verdict, finding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from lora_audit.errors import UsageError
from lora_audit.identity.detect import NO_FACE
from lora_audit.identity.embedder import FaceEmbedder
from lora_audit.results import Severity
from lora_audit.rules import RULES
from lora_audit.identity.scoring import (
    ImpostorReference,
    impostor_reference_from_embeddings,
    load_references,
    reference_crops,
    score_leak,
)
from lora_audit.scan.identity import verdict_finding

SIDE = 16


class PixelEmbedder(FaceEmbedder):
    """Deterministic stand-in: the 8x8 image minus its mean, flattened (cosine = pixel correlation)."""

    image_size = 8
    dim = 3 * 8 * 8

    def __init__(self):
        super().__init__("cpu")

    def _embed_batch(self, images: torch.Tensor) -> torch.Tensor:
        flat = images.flatten(1)  # [B, 192]
        return flat - flat.mean(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def embedder():
    return PixelEmbedder()


def _ramp(axis: int) -> np.ndarray:
    """[SIDE, SIDE, 3] grey ramp along ``axis`` (0: top to bottom, 1: left to right)."""
    ramp = np.linspace(0, 1, SIDE, dtype=np.float32)
    image = np.broadcast_to(ramp[:, None] if axis == 0 else ramp[None, :], (SIDE, SIDE))
    return np.repeat(image[..., None], 3, axis=-1)


def _noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(SIDE, SIDE, 3)).astype(np.float32)


FIXED = ImpostorReference(source="test: fixed threshold", threshold=0.5)


def test_identical_images_score_one(embedder):
    face = _noise(0)
    score = score_leak(np.stack([face, face]), np.stack([face] * 3), embedder, FIXED)
    assert score.similarity == pytest.approx(1, abs=1e-6)
    assert score.paper_score == pytest.approx(1, abs=1e-6)
    assert score.best_pair_similarity == pytest.approx(1, abs=1e-6)
    assert score.ssim == pytest.approx(1) and score.psnr == np.inf
    assert score.leaks and (score.references, score.reconstructions) == (3, 2)


def test_different_images_do_not_leak(embedder):
    score = score_leak(_ramp(1)[None], _ramp(0)[None], embedder, FIXED)
    assert abs(score.similarity) < 1e-3 and score.paper_score == pytest.approx(0.5, abs=1e-3)
    assert not score.leaks and score.ssim < 0.5


def test_similarity_is_to_the_mean_reference_and_the_pair_is_the_best_match(embedder):
    # The ramps are orthogonal, so the owner's mean embedding is at 45 degrees to each.
    score = score_leak(_ramp(1)[None], np.stack([_ramp(0), _ramp(1)]), embedder, FIXED)
    assert score.similarity == pytest.approx(2 ** -0.5, abs=1e-4)
    assert score.best_pair_similarity == pytest.approx(1, abs=1e-6)
    assert score.ssim == pytest.approx(1) and score.psnr == np.inf


def test_reference_is_resized_to_the_reconstruction(embedder):
    face = _noise(1)
    bigger = np.repeat(np.repeat(face, 2, axis=0), 2, axis=1)  # [32, 32, 3]
    score = score_leak(face[None], bigger[None], embedder, FIXED)
    assert score.ssim > 0.9 and 20 < score.psnr < np.inf


def test_far_and_threshold_on_a_constructed_sample():
    values = np.linspace(0, 1, 1000)
    impostors = ImpostorReference(source="test", similarities=np.random.default_rng(0).permutation(values))
    threshold = impostors.threshold_at_far(0.01)
    assert threshold == np.nextafter(values[989], np.inf)  # just above the 11th highest: 10 of 1000 reach it
    assert impostors.far_at(threshold) == 0.01 and impostors.far_at(values[990]) == 0.01
    assert impostors.far_at(np.nextafter(values[990], np.inf)) == 0.009
    assert impostors.far_at(values[989]) == 0.011
    assert impostors.percentile_of(threshold) == 99.0
    assert impostors.threshold_at_far(1e-3) == np.nextafter(values[998], np.inf)  # only 1.0 reaches it
    assert impostors.threshold_at_far(1e-4) > 1.0 and impostors.far_at(impostors.threshold_at_far(1e-4)) == 0
    assert impostors.far_at(-1) == 1 and impostors.far_at(2) == 0
    hundred = ImpostorReference(source="test", similarities=np.linspace(0, 1, 100))
    assert hundred.far_at(hundred.threshold_at_far(0.29)) == 0.29  # 0.29 * 100 is 28.999...


def test_tied_impostors_never_exceed_the_far():
    impostors = ImpostorReference(source="test", similarities=[0.1, 0.5, 0.5, 0.5, 0.9])
    assert impostors.threshold_at_far(0.4) == np.nextafter(0.5, np.inf)  # just above the ties: 0.7 is accepted
    assert impostors.far_at(0.5) == 0.8 and impostors.far_at(impostors.threshold_at_far(0.4)) == 0.2


def test_fixed_threshold_without_a_sample():
    assert FIXED.far_at(0.9) is None and FIXED.percentile_of(0.9) is None
    assert FIXED.threshold_at_far(1e-3) == 0.5
    with pytest.raises(ValueError):
        ImpostorReference(source="nothing")


def test_impostor_pairs_from_embeddings():
    embeddings = np.array([[2.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 3.0]])
    impostors = impostor_reference_from_embeddings(embeddings, np.array([0, 0, 1, 2]), "test")
    # Pairs of different labels: (0,2) (0,3) (1,2) (1,3) (2,3); cosines of unit rows.
    assert impostors.pairs == 5
    assert impostors.similarities == pytest.approx(np.sort([2 ** -0.5, 0, 2 ** -0.5, 0, 2 ** -0.5]))


def test_verdict_flips_exactly_at_the_threshold(embedder):
    recon, refs = np.stack([_noise(2), _noise(3)]), np.stack([_noise(2), _noise(4)])
    similarity = score_leak(recon, refs, embedder, FIXED).similarity
    at = ImpostorReference(source="test", threshold=similarity)
    above = ImpostorReference(source="test", threshold=float(np.nextafter(similarity, np.inf)))
    assert score_leak(recon, refs, embedder, at).leaks
    assert not score_leak(recon, refs, embedder, above).leaks
    sample = ImpostorReference(source="test", similarities=np.r_[np.linspace(-0.5, 0.1, 99), similarity])
    score = score_leak(recon, refs, embedder, sample, far=0.01)  # one impostor may reach it: it is ours
    assert score.threshold == np.nextafter(0.1, np.inf) and score.leaks and score.far == 0.01
    score = score_leak(recon, refs, embedder, sample, far=0.0)  # none may: just above the similarity
    assert score.threshold == np.nextafter(similarity, np.inf) and not score.leaks and score.far == 0.01


def test_findings_and_the_rules_to_add(embedder):
    face = _noise(5)
    sample = ImpostorReference(source="test: 100 pairs", similarities=np.linspace(-0.3, 0.3, 100))
    leak = verdict_finding(score_leak(face[None], face[None], embedder, sample))
    clean = verdict_finding(score_leak(_ramp(0)[None], _ramp(1)[None], embedder, sample))
    assert (leak.rule_id, leak.severity) == ("LA304", Severity.HIGH)
    assert (clean.rule_id, clean.severity) == ("LA305", Severity.INFO)
    assert "similarity 1.000" in leak.message and "paper score 1.000" in leak.message
    assert "none of 100 impostor pairs" in leak.message and "test: 100 pairs" in leak.evidence["threshold"]
    assert all(isinstance(v, str) for v in leak.evidence.values())
    for finding in (leak, clean):
        rule = RULES[finding.rule_id]
        assert (finding.severity, finding.title, finding.remediation) == (rule.severity, rule.title, rule.remediation)


def test_reference_crops_find_faces_and_report_the_rest(tmp_path):
    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
    Image.new("RGB", (128, 128), (128, 128, 128)).save(tmp_path / "grey.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    references = load_references(str(tmp_path))
    assert [name for name, _ in references.photos] == ["astronaut.png", "grey.png"]
    assert references.unreadable == [("broken.png", "not a readable image (UnidentifiedImageError)")]
    images, problems = reference_crops(references, 32)
    assert images.shape == (1, 32, 32, 3) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 1
    assert problems == [("broken.png", "not a readable image (UnidentifiedImageError)"), ("grey.png", NO_FACE)]
    whole, problems = reference_crops(references, 16, detect=False)  # a family whose photos are crops already
    assert whole.shape == (2, 16, 16, 3) and problems == references.unreadable


def test_a_folder_without_a_usable_photo_is_a_clear_input_error(tmp_path):
    with pytest.raises(UsageError, match="holds no image files") as e:
        load_references(str(tmp_path))
    assert e.value.input == "references"
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(UsageError, match="no readable photo.*broken.png: not a readable image") as e:
        load_references(str(tmp_path))
    assert "\n" not in str(e.value) and e.value.input == "references"
    Image.new("L", (20000, 20000)).save(tmp_path / "huge.png")  # a 'decompression bomb': refused, not decoded
    with pytest.raises(UsageError, match="huge.png: refused as a decompression bomb"):
        load_references(str(tmp_path))
    Image.new("RGB", (128, 128), (128, 128, 128)).save(tmp_path / "grey.png")
    faces, problems = reference_crops(load_references(str(tmp_path)), 32)
    assert faces is None and [name for name, _ in problems] == ["broken.png", "huge.png", "grey.png"]


def test_sixteen_bit_greyscale_photos_keep_their_tones(tmp_path):
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    (_, photo), = load_references(str(tmp_path)).photos
    assert photo.shape == (64, 64, 3) and photo.min() == 0 and photo.max() == 1
    assert abs(photo.mean() - 0.5) < 0.01  # not clipped to white
