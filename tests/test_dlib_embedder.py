"""dlib's face embedder, the real families' default, on real faces that ship offline.

Same person: scikit-image's astronaut (Eileen Collins), flipped, cropped and rescaled, and as a tiny
face crop (the whole-image fallback). Another person: matplotlib's sample photo of Grace Hopper.
Not faces: scikit-image's coffee, camera (a distant figure), chelsea the cat, a flat grey image and
toy-world renders.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data, io
from skimage.transform import rescale, resize, rotate

from lora_audit.errors import MissingInputError
from lora_audit.families.stable_diffusion import StableDiffusion
from lora_audit.identity import dlib_embedder
from lora_audit.identity.detect import NO_FACE
from lora_audit.identity.dlib_embedder import COSINE_THRESHOLD, PUBLISHED_DISTANCE, DlibFaceEmbedder
from lora_audit.identity.scoring import OperatingPoint, load_references, reference_crops, score_leak
from lora_audit.scan.identity import _consistency, verdict_finding
from lora_audit.toyworld.renderer import render_batch


def _float(image: np.ndarray) -> np.ndarray:
    """uint8 or float, grey or RGB(A) -> [H, W, 3] float32 in [0, 1]."""
    image = np.asarray(image)
    image = image.astype(np.float32) / 255 if image.dtype == np.uint8 else image.astype(np.float32)
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]


ASTRONAUT = _float(data.astronaut())  # [512, 512, 3]
HOPPER = _float(io.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))  # [600, 512, 3]
FACE_BOX = (76, 175, 91, 91)  # (top, left, height, width) of the astronaut's face, as dlib finds it


@pytest.fixture(scope="module")
def embedder():
    return DlibFaceEmbedder("cpu")


@pytest.fixture(scope="module")
def astronaut(embedder):
    return embedder.descriptors(ASTRONAUT[None])[0]  # [128] raw


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _same_person(a: np.ndarray, b: np.ndarray) -> tuple[bool, bool]:
    """(dlib's published rule, lora-audit's cosine form of it) on two raw descriptors."""
    return bool(np.linalg.norm(a - b) < PUBLISHED_DISTANCE), _cosine(a, b) >= COSINE_THRESHOLD


def test_the_astronaut_found_where_she_is(embedder):
    top, left, height, width = embedder.face_box(ASTRONAUT)
    assert abs(top - FACE_BOX[0]) <= 3 and abs(left - FACE_BOX[1]) <= 3 and abs(height - FACE_BOX[2]) <= 3


@pytest.mark.parametrize("variant", ["flip", "crop and half size", "rotated 15 degrees", "face crop 64 px",
                                     "face crop 32 px (no face found: whole image)"])
def test_the_same_person_passes_both_forms_of_the_rule(embedder, astronaut, variant):
    top, left, h, w = FACE_BOX
    image = {"flip": ASTRONAUT[:, ::-1],
             "crop and half size": rescale(ASTRONAUT[0:300, 100:400], 0.5, channel_axis=-1),
             "rotated 15 degrees": rotate(ASTRONAUT, 15, mode="edge"),
             "face crop 64 px": resize(ASTRONAUT[30:230, 120:320], (64, 64), anti_aliasing=True),
             "face crop 32 px (no face found: whole image)": resize(ASTRONAUT[top:top + h, left:left + w], (32, 32),
                                                                    anti_aliasing=True)}[variant]
    if variant.startswith("face crop 32"):
        assert embedder.face_box(image) is None  # the fallback is what scores it
    assert _same_person(embedder.descriptors(image[None].astype(np.float32))[0], astronaut) == (True, True)


def test_another_person_fails_both(embedder, astronaut):
    hopper = embedder.descriptors(HOPPER[None])[0]
    assert embedder.face_box(HOPPER) is not None
    assert _same_person(hopper, astronaut) == (False, False)
    flipped = embedder.descriptors(HOPPER[None, :, ::-1].copy())[0]
    assert _same_person(flipped, hopper) == (True, True)  # and she is herself


NON_FACES = {"coffee": data.coffee, "camera": data.camera, "chelsea the cat": data.chelsea,
             "flat grey": lambda: np.full((256, 256, 3), 128, np.uint8)}


@pytest.mark.parametrize("name", list(NON_FACES))
def test_non_faces_hold_no_face_and_match_nobody(embedder, astronaut, name):
    image = _float(NON_FACES[name]())
    assert embedder.face_box(image) is None
    assert _same_person(embedder.descriptors(image[None])[0], astronaut) == (False, False)


def test_toy_renders_are_not_real_faces(embedder, astronaut):
    toys = render_batch([300001, 300002, 300003], [0, 0, 0], size=64)  # [3, 64, 64, 3]
    crops, problems = embedder.face_crops(list(toys), ["a", "b", "c"])
    assert crops == [] and problems == [("a", NO_FACE), ("b", NO_FACE), ("c", NO_FACE)]
    raw = embedder.descriptors(toys)
    assert (np.linalg.norm(raw - astronaut, axis=1) > PUBLISHED_DISTANCE).all()


def test_embeddings_are_unit_rows_of_the_raw_descriptors(embedder):
    images = np.stack([resize(ASTRONAUT, (128, 128), anti_aliasing=True), resize(HOPPER, (128, 128)),
                       np.full((128, 128, 3), 0.5)]).astype(np.float32)  # [3, 128, 128, 3]
    out = embedder.embed(images)
    assert out.shape == (3, 128) and out.dtype == np.float32 and (embedder.dim, embedder.image_size) == (128, 150)
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    raw = embedder.descriptors(images)
    assert ((np.linalg.norm(raw, axis=1) > 1.1) & (np.linalg.norm(raw, axis=1) < 1.7)).all()  # not unit (docstring)
    assert np.allclose(out, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    assert np.allclose(embedder.embed(torch.from_numpy(images)), out, atol=1e-6)  # torch in, same out
    uint8 = (images * 255 + 0.5).astype(np.uint8)
    assert np.allclose(embedder.embed(uint8), out, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        embedder.embed(images[0])


def test_the_fingerprint_hashes_the_model_files(embedder, tmp_path):
    assert embedder.fingerprint().startswith("DlibFaceEmbedder:")
    assert embedder.fingerprint() == DlibFaceEmbedder().fingerprint()
    shape, resnet = embedder.paths
    (tmp_path / shape.name).symlink_to(shape)
    (tmp_path / resnet.name).write_bytes(b"other weights")
    other = DlibFaceEmbedder(models=tmp_path)  # nothing loads until it embeds
    assert other.fingerprint() != embedder.fingerprint()
    (tmp_path / resnet.name).unlink()
    with pytest.raises(MissingInputError, match=f"{resnet.name} not found"):
        DlibFaceEmbedder(models=tmp_path)


def test_the_operating_point_is_dlibs_rule_in_cosine_form(embedder):
    threshold, source = embedder.verification_threshold()
    assert threshold == COSINE_THRESHOLD == 0.907
    assert "dlib" in source and "Euclidean distance < 0.6" in source and "one pair of photos" in source
    # two descriptors of the mean measured norm, 0.6 apart, are exactly at the threshold
    assert 1 - PUBLISHED_DISTANCE ** 2 / (2 * 1.39 ** 2) == pytest.approx(threshold, abs=1e-3)


def test_reference_photos_are_searched_by_dlibs_detector(embedder, astronaut, tmp_path):
    tilted = (rotate(ASTRONAUT, 20, mode="edge") * 255 + 0.5).astype(np.uint8)  # the LBP cascade misses it
    Image.fromarray(tilted).save(tmp_path / "astronaut_tilted.png")
    Image.fromarray(data.coffee()).save(tmp_path / "coffee.png")
    Image.new("RGB", (128, 128), (128, 128, 128)).save(tmp_path / "grey.png")
    references = load_references(str(tmp_path))
    faces, problems = reference_crops(references, 96, embedder=embedder)
    assert faces.shape == (1, 96, 96, 3) and faces.dtype == np.float32
    assert problems == [("coffee.png", NO_FACE), ("grey.png", NO_FACE)]
    assert _same_person(embedder.descriptors(faces)[0], astronaut) == (True, True)  # the crop is her face
    lbp_faces, lbp_problems = reference_crops(references, 96)  # no embedder: scikit-image's cascade
    assert lbp_faces is None and ("astronaut_tilted.png", NO_FACE) in lbp_problems


def test_the_sd_families_score_with_dlib_unless_given_facenet_weights(tmp_path):
    from lora_audit.identity.facenet import FaceNetEmbedder, InceptionResnetV1

    family = StableDiffusion("sd1", 768)
    dlib = family.face_embedder("cpu", None)
    assert isinstance(dlib, DlibFaceEmbedder)
    null = family.owner_null(dlib, 512, 3)
    assert isinstance(null, OperatingPoint) and null.threshold == COSINE_THRESHOLD and "dlib" in null.source
    weights = tmp_path / "facenet.pt"
    torch.save(InceptionResnetV1().state_dict(), weights)  # random weights: which class is chosen, nothing more
    assert isinstance(family.face_embedder("cpu", str(weights)), FaceNetEmbedder)


def test_the_verdict_with_dlib_names_its_operating_point(embedder):
    null = StableDiffusion("sd1", 768).owner_null(embedder, 512, 2)
    reconstructions = np.stack([ASTRONAUT[:, ::-1], rescale(ASTRONAUT, 0.5, channel_axis=-1).repeat(2, 0).repeat(2, 1)
                                ]).astype(np.float32)  # [2, 512, 512, 3]
    owner = np.stack([ASTRONAUT, rotate(ASTRONAUT, -10, mode="edge")]).astype(np.float32)
    match = score_leak(reconstructions, owner, embedder, null)
    assert match.leaks and match.similarity > COSINE_THRESHOLD
    someone = resize(HOPPER, (512, 512), anti_aliasing=True)[None].astype(np.float32)
    other = score_leak(reconstructions, someone, embedder, null)
    assert not other.leaks and other.similarity < COSINE_THRESHOLD
    finding = verdict_finding(match)
    assert finding.rule_id == "LA304" and "dlib" in finding.evidence["threshold_source"]
    assert verdict_finding(other).rule_id == "LA305"


def test_the_consistency_finding_names_the_embedder(embedder, tmp_path):
    generic = {"mean": 0.8, "std": 0.01, "embedder": embedder.fingerprint()}
    about = {"attack": "vae", "step": 100, "step_source": "metadata", "latents": 2, "seeds": 2}
    finding = _consistency(0.95, generic, about, tmp_path / "grid.png", {"values": [0.9] * 20, "source": "test"})
    assert finding.rule_id == "LA301" and finding.evidence["embedder"] == embedder.fingerprint()
    assert (finding.evidence["step"], finding.evidence["step_source"]) == (100, "metadata")
    assert finding.evidence["threshold"] == pytest.approx(0.83) and finding.evidence["identity_consistency"] == 0.95


def test_a_missing_install_is_a_clear_missing_input(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib now raises ImportError
    with pytest.raises(MissingInputError, match=r"pip install 'lora-privacy-audit\[faces\]'") as caught:
        DlibFaceEmbedder()
    assert caught.value.input == "face_weights"
    with pytest.raises(MissingInputError, match="not installed"):  # the scan reports it as LA303
        StableDiffusion("sd1", 768).face_embedder("cpu", None)


def test_missing_model_files_package_is_a_clear_missing_input(monkeypatch):
    monkeypatch.setitem(sys.modules, "face_recognition_models", None)
    with pytest.raises(MissingInputError, match="face-recognition-models are not installed"):
        dlib_embedder.models_dir()
    with pytest.raises(MissingInputError):
        DlibFaceEmbedder()


def test_the_model_files_are_found_without_importing_their_package():
    folder = dlib_embedder.models_dir()
    assert folder.name == "models" and (folder / dlib_embedder.RESNET_FILE).is_file()
    assert isinstance(folder, Path) and "face_recognition_models" not in sys.modules


def test_large_photos_are_searched_small_and_scored_at_full_resolution(embedder, astronaut):
    large = ASTRONAUT.repeat(3, axis=0).repeat(3, axis=1)  # [1536, 1536, 3]: detection runs on a 640 px copy
    top, left, height, width = embedder.face_box(large)  # dlib's boxes come in steps of its pyramid's scales
    centre, expected = np.array([top + height / 2, left + width / 2]), 3 * np.array([76 + 91 / 2, 175 + 91 / 2])
    assert np.abs(centre - expected).max() < 0.15 * 3 * 91 and 0.8 < height / (3 * 91) < 1.2
    assert _same_person(embedder.descriptors(large[None])[0], astronaut) == (True, True)


def test_the_embedder_pickles_without_its_models(embedder):
    import pickle

    embedder.embed(ASTRONAUT[None, ::4, ::4])  # models loaded
    copy = pickle.loads(pickle.dumps(embedder))
    assert copy._models is None and copy.fingerprint() == embedder.fingerprint()
    assert np.allclose(copy.embed(ASTRONAUT[None, ::4, ::4]), embedder.embed(ASTRONAUT[None, ::4, ::4]), atol=1e-6)
