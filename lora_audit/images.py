"""Loading a folder of photos as an image batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lora_audit.errors import InvalidFileError, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def image_files(folder: str) -> list[Path]:
    """Image files directly in ``folder``, sorted; a clear error when there are none."""
    path = Path(folder)
    if not path.is_dir():
        raise UsageError(f"{folder} is not a directory of photos")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UsageError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_image(path: Path, size: int | None = None) -> np.ndarray:
    """One RGB image as [H, W, 3] float32 in [0, 1], centre-cropped to a square and resized to ``size``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise InvalidFileError(str(path), f"not a readable image ({e.__class__.__name__})") from None
    if size is not None:
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
    return np.asarray(image, dtype=np.float32) / 255


def load_image_folder(folder: str, size: int) -> np.ndarray:
    """All photos of ``folder`` as [N, size, size, 3] float32 in [0, 1]."""
    return np.stack([load_image(p, size) for p in image_files(folder)])
