"""Small image files made on the fly for the folder-checking tests (no data set needed)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

#: A mean colour per class, so that a classifier has something to learn.
COLOURS = {"cat": (200, 60, 60), "dog": (60, 60, 200), "bird": (60, 200, 60),
           "robin": (200, 120, 40), "wren": (90, 70, 50)}


def picture(label: str, rng: np.random.Generator | int, size: int | tuple[int, int] = 40,
            noise: float = 40) -> Image.Image:
    """A noisy RGB image whose mean colour is ``COLOURS[label]``; ``rng`` may be a seed."""
    rng = np.random.default_rng(rng) if isinstance(rng, int) else rng
    width, height = (size, size) if isinstance(size, int) else size
    pixels = np.array(COLOURS[label], dtype=float) + rng.normal(0, noise, (height, width, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write(root: Path, rel: str, payload: bytes | Image.Image, fmt: str | None = None) -> Path:
    """Write ``payload`` (bytes, or an image saved in ``fmt``) at ``root / rel``; return the path."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(payload, Image.Image):
        payload.save(path, format=fmt)
    else:
        path.write_bytes(payload)
    return path
