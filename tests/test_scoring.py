"""Scoring reconstructions against the owner's photos: similarity, impostor FAR, verdict, finding."""

from __future__ import annotations

import json
import math

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
    ImpostorGallery,
    OperatingPoint,
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


FIXED = OperatingPoint(0.5, "test: fixed threshold", "one pair of photos")


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


def _gallery(centres) -> ImpostorGallery:
    return ImpostorGallery(np.asarray(centres, dtype=np.float64), f"test: {len(centres)} identities")


def test_the_null_is_the_same_statistic_against_other_peoples_photo_sets(embedder):
    """FAR = share of other identities' photo-set centres the reconstructions score at least as high against."""
    recon, owner = np.stack([_noise(2), _noise(3)]), np.stack([_noise(2), _noise(4)])
    others = np.stack([np.stack([_noise(10 + 2 * i), _noise(11 + 2 * i)]) for i in range(50)])  # [50, 2, S, S, 3]
    gallery = ImpostorGallery.from_photos(embedder, others, "test: 50 noise identities")
    assert gallery.centres.shape == (50, embedder.dim)
    score = score_leak(recon, owner, embedder, gallery, far=0.01)
    # By hand: the same statistic (mean cosine of the reconstructions to a photo set's centre) per identity.
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    r = unit(embedder.embed(recon))  # [2, D]
    by_hand = [float((r @ unit(unit(embedder.embed(o)).mean(0))).mean()) for o in others]  # [50]
    own = float((r @ unit(unit(embedder.embed(owner)).mean(0))).mean())
    assert score.similarity == pytest.approx(own, abs=1e-6)
    assert score.far == np.mean(np.array(by_hand) >= score.similarity) and score.impostors == 50
    assert score.rank == 1 + int((np.array(by_hand) > score.similarity).sum())
    assert score.leaks == (score.far <= 0.01) and score.target_far == 0.01


def test_the_verdict_flips_exactly_at_the_target_far(embedder):
    recon, refs = np.stack([_noise(2), _noise(3)]), np.stack([_noise(2), _noise(4)])
    similarity = score_leak(recon, refs, embedder, FIXED).similarity
    m = embedder.embed(recon).astype(np.float64).mean(0)  # a centre c scores m . c (unit embeddings)
    along = m / np.linalg.norm(m)
    across = np.eye(embedder.dim)[0] - along[0] * along
    across /= np.linalg.norm(across)

    def centre(score):  # the unit centre the reconstructions score exactly ``score`` against
        a = score / np.linalg.norm(m)
        return a * along + np.sqrt(1 - a ** 2) * across

    below = [centre(t) for t in np.linspace(-0.2, similarity - 0.05, 99)]
    for last, far, leaks in ((similarity, 0.01, True), (similarity, 0.0, False),
                             (similarity + 0.01, 0.01, True), (similarity + 0.01, 0.005, False)):
        score = score_leak(recon, refs, embedder, _gallery([*below, centre(last)]), far=far)
        assert score.far == pytest.approx(0.01) and score.leaks == leaks, (last, far)
    assert score.rank == 2  # one impostor above the owner


def test_an_operating_point_says_what_it_was_made_for_and_a_generic_null_is_measured(embedder):
    recon, refs = np.stack([_noise(2), _noise(3)]), np.stack([_noise(2), _noise(4)])
    similarity = score_leak(recon, refs, embedder, FIXED).similarity
    at = OperatingPoint(similarity, "test", "one pair of photos")
    above = OperatingPoint(float(np.nextafter(similarity, np.inf)), "test", "one pair of photos")
    assert score_leak(recon, refs, embedder, at).leaks and not score_leak(recon, refs, embedder, above).leaks
    generic = np.stack([embedder.embed(np.stack([_noise(40 + g), _noise(60 + g)])) for g in range(8)])  # [8, 2, D]
    generic[0] = embedder.embed(recon)  # one group exactly as close to the owner as the reconstructions
    score = score_leak(recon, refs, embedder, at, generic=generic)
    assert score.far is None and score.rank is None and score.generic_null == (1, 8)
    evidence = verdict_finding(score).evidence
    assert evidence["impostor_far"] is None and evidence["impostor_far_note"].startswith("not measured")
    assert "owner_rank" not in evidence and "target_far" not in evidence and evidence["impostors"] == 0
    assert evidence["threshold"] == pytest.approx(similarity, rel=1e-3) and evidence["threshold_source"] == "test"
    assert "one pair of photos" in evidence["statistic"]
    assert (evidence["generic_null_reached"], evidence["generic_null_groups"]) == (1, 8)


def test_findings_and_the_rules_to_add(embedder):
    face = _noise(5)
    gallery = _gallery(np.eye(embedder.dim)[1:101])  # 100 near-orthogonal identities
    leak = verdict_finding(score_leak(face[None], face[None], embedder, gallery), consistency="LA301")
    clean = verdict_finding(score_leak(_ramp(0)[None], _ramp(1)[None], embedder, gallery), consistency="LA302")
    assert (leak.rule_id, leak.severity) == ("LA304", Severity.HIGH)
    assert (clean.rule_id, clean.severity) == ("LA305", Severity.INFO)
    assert "similarity 1.000" in leak.message and "paper score 1.000" in leak.message
    assert "rank 1 of 101 photo sets" in leak.message and "none of 100 other people's photo sets" in leak.message
    assert leak.message.endswith("the weights decode to one consistent identity (LA301), and it is the owner's")
    assert clean.message.endswith("the reconstructions show no consistent identity either (LA302)")
    unspecific = [verdict_finding(score_leak(a[None], b[None], embedder, gallery), consistency="LA310")
                  for a, b in ((face, face), (_ramp(0), _ramp(1)))]
    assert [f.rule_id for f in unspecific] == ["LA304", "LA305"]
    assert unspecific[0].message.endswith("the weights render a consistent face (LA310), and it is the owner's")
    assert unspecific[1].message.endswith("the weights render a consistent face (LA310), but not one these photos match")
    assert "test: 100 identities" in leak.evidence["threshold_source"]
    assert (leak.evidence["owner_rank"], leak.evidence["photo_sets"], leak.evidence["impostors"]) == (1, 101, 100)
    for finding in (leak, clean):
        rule = RULES[finding.rule_id]
        assert (finding.severity, finding.title, finding.remediation) == (rule.severity, rule.title, rule.remediation)


def test_verdict_evidence_holds_the_scores_as_numbers(embedder):
    face = _noise(5)
    gallery = _gallery(np.eye(embedder.dim)[1:101])
    for recon, refs in ((face[None], face[None]), (np.stack([_noise(2), _noise(3)]), np.stack([_noise(2), _noise(4)]))):
        score = score_leak(recon, refs, embedder, gallery)
        evidence = verdict_finding(score).evidence
        for key, value in (("owner_similarity", score.similarity), ("paper_score", score.paper_score),
                           ("threshold", score.threshold), ("target_far", score.target_far),
                           ("impostor_far", score.far), ("best_pair_similarity", score.best_pair_similarity),
                           ("best_pair_ssim", score.ssim)):
            assert isinstance(evidence[key], float) and evidence[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key
        assert (evidence["owner_rank"], evidence["impostors"]) == (score.rank, score.impostors)
        assert (evidence["reconstructions"], evidence["reference_photos"]) == (score.reconstructions, score.references)
        assert evidence["threshold_source"] == score.source and evidence["statistic"] == score.statistic
        if math.isinf(score.psnr):  # identical images
            assert evidence["best_pair_psnr_db"] is None
        else:
            assert evidence["best_pair_psnr_db"] == pytest.approx(score.psnr, rel=1e-3)
        json.dumps(evidence, allow_nan=False)
    assert math.isinf(score_leak(face[None], face[None], embedder, gallery).psnr)  # the first case was identical


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


def test_32_bit_and_float_greyscale_photos_keep_their_tones(tmp_path):
    from lora_audit.images import load_image

    wide = (np.arange(64 * 64).reshape(64, 64) * 100_000).astype(np.int32)  # beyond 16 bits
    Image.fromarray(wide, mode="I").save(tmp_path / "i32.tiff")
    Image.fromarray(np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64), mode="F").save(tmp_path / "f.tiff")
    for name in ("i32.tiff", "f.tiff"):
        photo = load_image(tmp_path / name)
        assert photo.min() == 0 and photo.max() == 1 and abs(photo.mean() - 0.5) < 0.01, name
