"""Face detection and cropping of reference photos with scikit-image's LBP cascade."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from lora_audit.identity.detect import (
    MIN_DETECT_SIDE,
    NO_FACE,
    FaceCrop,
    crop_face,
    crop_faces,
    face_box,
    square_around,
)

# Read off scikit-image's 512x512 astronaut(): the head, hair included, spans rows 15-170 and
# cols 150-300; the nose tip, about the middle of the face, is at row 125, col 222.
HEAD = (15, 170, 150, 300)
NOSE = (125, 222)


@pytest.fixture(scope="module")
def astronaut():
    return data.astronaut()  # [512, 512, 3] uint8, bundled with scikit-image


def _on_the_face(box) -> bool:
    top, left, height, width = box
    centred = abs(top + height / 2 - NOSE[0]) <= 15 and abs(left + width / 2 - NOSE[1]) <= 15
    return centred and HEAD[0] <= top and top + height <= HEAD[1] and HEAD[2] <= left and left + width <= HEAD[3]


def test_finds_the_astronauts_face(astronaut):
    box = face_box(astronaut)
    assert box is not None and _on_the_face(box)
    assert 60 <= box[2] <= 110  # brows to chin is about 75 px
    assert face_box(astronaut.astype(np.float32) / 255) == box


def test_large_photos_are_searched_downscaled_and_boxed_at_full_size(astronaut):
    big = np.kron(astronaut, np.ones((3, 3, 1), dtype=np.uint8))  # [1536, 1536, 3]
    box = face_box(big)
    assert box is not None and _on_the_face([v / 3 for v in box])


def test_the_crop_is_a_square_around_the_face_with_a_margin(astronaut):
    box = face_box(astronaut)
    top, left, side = square_around(box, astronaut.shape, margin=0.2)
    assert side == round(max(box[2:]) * 1.4)
    assert top <= box[0] and box[0] + box[2] <= top + side and left <= box[1] and box[1] + box[3] <= left + side
    crop = crop_face(astronaut, margin=0.2)
    assert crop.shape == (side, side, 3) and crop.dtype == np.float32
    assert np.allclose(crop, astronaut[top:top + side, left:left + side] / 255)
    assert crop_face(astronaut, size=160).shape == (160, 160, 3)


def test_squares_stay_inside_the_photo():
    assert square_around((0, 0, 40, 40), (100, 200, 3), margin=0.5) == (0, 0, 80)  # shifted in
    assert square_around((70, 150, 30, 40), (100, 200, 3), margin=0.5) == (20, 120, 80)
    assert square_around((10, 10, 80, 80), (100, 200, 3), margin=0.5) == (0, 0, 100)  # shrunk to the photo


def test_photos_without_a_face_are_reported_not_raised(astronaut):
    noise = np.random.default_rng(0).random((240, 320, 3))
    flat = np.full((128, 128, 3), 200, dtype=np.uint8)
    assert crop_face(noise) is None and crop_face(flat) is None
    crops, problems = crop_faces([noise, astronaut, flat], ["noise.png", "astronaut.png", "flat.png"], size=160)
    assert [c.name for c in crops] == ["astronaut.png"]
    assert isinstance(crops[0], FaceCrop) and crops[0].image.shape == (160, 160, 3) and crops[0].square is not None
    assert problems == [("noise.png", NO_FACE), ("flat.png", NO_FACE)]


def test_every_photo_is_searched_and_tiny_ones_are_reported_never_taken_as_faces():
    black = np.zeros((63, 63, 3))  # once accepted whole as a "face" because it was small
    assert crop_face(black) is None
    tiny = np.zeros((MIN_DETECT_SIDE - 1, MIN_DETECT_SIDE - 1, 3))
    assert crop_face(tiny) is None
    crops, problems = crop_faces([tiny, black], ["tiny.png", "black.png"], size=16)
    assert crops == [] and problems[1] == ("black.png", NO_FACE)
    assert problems[0][0] == "tiny.png" and problems[0][1].startswith("too small to find a face in (23x23 px")


def test_bad_input_is_a_value_error(astronaut):
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        crop_face(astronaut[..., 0])
    with pytest.raises(ValueError, match="names"):
        crop_faces([astronaut], ["a", "b"])
