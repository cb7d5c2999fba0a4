"""Finding the face in a reference photo and cropping it square, with scikit-image's LBP face cascade.

Detection runs on a greyscale copy whose longer side is at most :data:`DETECT_SIDE` pixels, with
OpenCV's frontal-face LBP cascade as bundled by scikit-image (a 24x24 window, so faces under about
24 px at that scale are missed; profiles and strongly tilted faces are too). The largest detection
wins; it is widened by ``margin`` times its side on every side (0.2, about davidsandberg/facenet's
44 px margin at 160 px) and cut from the full-resolution photo as a square.

Every photo is searched: one whose shorter side is under :data:`MIN_DETECT_SIDE` pixels (the
cascade's window) is too small to hold a findable face and is reported, never taken as a face.
Families whose photos are face crops by construction (the toy world's renders) skip detection
altogether (:attr:`lora_audit.families.Family.detect_faces`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from skimage import data
from skimage.color import rgb2gray
from skimage.feature import Cascade
from skimage.transform import rescale, resize

MARGIN = 0.2
MIN_DETECT_SIDE = 24  # the LBP cascade's window
DETECT_SIDE = 512
NO_FACE = "no frontal face found"


@functools.cache
def _cascade() -> Cascade:
    return Cascade(data.lbp_frontal_face_cascade_filename())


def _as_float(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 or float in [0, 1] -> float32 in [0, 1]."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255
    return image.astype(np.float32, copy=False)


def face_box(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, height, width) of the largest frontal face in ``image`` [H, W, 3], or None."""
    grey = rgb2gray(_as_float(image))  # [H, W]
    scale = min(1.0, DETECT_SIDE / max(grey.shape))
    if scale < 1:
        grey = rescale(grey, scale, anti_aliasing=True)
    cascade = _cascade()
    found = cascade.detect_multi_scale(grey, scale_factor=1.2, step_ratio=1,
                                       min_size=(cascade.window_height, cascade.window_width),
                                       max_size=grey.shape)
    if not found:
        return None
    best = max(found, key=lambda d: d["height"] * d["width"])
    return tuple(round(best[k] / scale) for k in ("r", "c", "height", "width"))


def square_around(box: tuple[int, int, int, int], shape: tuple[int, ...], margin: float = MARGIN
                  ) -> tuple[int, int, int]:
    """(top, left, side) of the square centred on ``box`` grown by ``margin`` x its side each way.

    The square is shifted (and, if larger than the photo, shrunk) to lie inside a photo of ``shape``.
    """
    top, left, height, width = box
    side = min(round(max(height, width) * (1 + 2 * margin)), shape[0], shape[1])
    top = int(np.clip(round(top + height / 2 - side / 2), 0, shape[0] - side))
    left = int(np.clip(round(left + width / 2 - side / 2), 0, shape[1] - side))
    return top, left, side


@dataclass(frozen=True)
class FaceCrop:
    """One photo's face crop."""

    name: str
    image: np.ndarray  # [S, S, 3] float32 in [0, 1]
    square: tuple[int, int, int]  # (top, left, side) cut from the photo


def _crop(image: np.ndarray, margin: float, size: int | None) -> tuple[np.ndarray, tuple[int, int, int]] | str:
    """(crop, its square in the photo), or why there is none."""
    image = _as_float(image)
    if min(image.shape[:2]) < MIN_DETECT_SIDE:
        return f"too small to find a face in ({image.shape[0]}x{image.shape[1]} px; at least {MIN_DETECT_SIDE})"
    box = face_box(image)
    if box is None:
        return NO_FACE
    square = square_around(box, image.shape, margin)
    top, left, side = square
    image = image[top:top + side, left:left + side]
    if size is not None and image.shape[:2] != (size, size):
        image = resize(image, (size, size), anti_aliasing=True).astype(np.float32)
    return image, square


def crop_face(image: np.ndarray, margin: float = MARGIN, size: int | None = None) -> np.ndarray | None:
    """The largest face of ``image`` [H, W, 3] (uint8, or float in [0, 1]) as a square float32 crop.

    Resized to ``size`` x ``size`` when given. None when no face is found (a photo under
    :data:`MIN_DETECT_SIDE` px holds none that can be found).
    """
    found = _crop(image, margin, size)
    return None if isinstance(found, str) else found[0]


def crop_faces(images: Sequence[np.ndarray], names: Sequence[str], margin: float = MARGIN,
               size: int | None = None) -> tuple[list[FaceCrop], list[tuple[str, str]]]:
    """Face crops of many photos, and ``(name, reason)`` for each photo left out (no face found, too small).

    Pass ``size`` to get crops that stack into one [N, size, size, 3] batch.
    """
    if len(images) != len(names):
        raise ValueError(f"{len(images)} images but {len(names)} names")
    crops, problems = [], []
    for image, name in zip(images, names):
        found = _crop(image, margin, size)
        if isinstance(found, str):
            problems.append((name, found))
        else:
            crops.append(FaceCrop(name, *found))
    return crops, problems
