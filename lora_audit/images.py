"""Loading photos: a folder of them as an image batch, or one photo whatever its mode.

Images are decoded by Pillow with its decompression-bomb guard on (a photo of more than
:data:`MAX_PIXELS` pixels is refused, not decoded); 16-bit and 32-bit greyscale photos are scaled
by their bit depth (32-bit integers beyond 16 bits by their range, floats as [0, 1]) instead of
being clipped to white.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from lora_audit.errors import InvalidFileError, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_PIXELS = 50_000_000  # about a 7000 x 7000 photo; larger ones are refused (Pillow's default warns at 89M)
_WIDE_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0}


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
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise InvalidFileError(str(path), f"a {image.width}x{image.height} image is larger than "
                                           f"{MAX_PIXELS:,} pixels; give a smaller photo")
                image.load()
                image = _rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidFileError(str(path), f"refused as a decompression bomb ({e.__class__.__name__})") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InvalidFileError(str(path), f"not a readable image ({e.__class__.__name__})") from None
    if size is not None:
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
    return np.asarray(image, dtype=np.float32) / 255


def _rgb(image):
    """An 8-bit RGB copy of ``image``; 16/32-bit greyscale is scaled by its range, not clipped."""
    from PIL import Image

    if image.mode in _WIDE_MODES or image.mode == "F":
        grey = np.asarray(image, dtype=np.float64)  # [H, W]
        top = 1.0 if image.mode == "F" else _WIDE_MODES[image.mode]
        if image.mode == "I" and grey.max(initial=0) > top:  # 32-bit integers beyond 16 bits: their own range
            top = grey.max()
        grey = (np.clip(grey / top, 0, 1) * 255 + 0.5).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return image.convert("RGB")


def load_image_folder(folder: str, size: int) -> np.ndarray:
    """All photos of ``folder`` as [N, size, size, 3] float32 in [0, 1]."""
    return np.stack([load_image(p, size) for p in image_files(folder)])
