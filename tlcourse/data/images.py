"""The course's one image loader: any input becomes an upright RGB Pillow image, in memory.

The audit (lesson 06), training, feature extraction, scratch tensors and ``learn.predict`` all open
images through :func:`load_image`, so an image is prepared the same way whatever its form (a path,
bytes from an upload widget, a numpy array or tensor, a Pillow or fastai image). Files are only read.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from pathlib import Path

import numpy as np
import torch
from fastai.vision.all import PILImage
from PIL import Image, ImageFile, ImageOps

_STRICT_LOCK = threading.Lock()
_STRICT = {"users": 0, "user_setting": False}  # how many decode strictly now; what the user had set


@contextlib.contextmanager
def strict_decoding():
    """Decode with Pillow's truncation check on, whatever ``ImageFile.LOAD_TRUNCATED_IMAGES`` (the
    forum "fix" that silently fills a broken photo with grey) says; re-entrant, shared by threads,
    and the user's own setting is restored afterwards."""
    with _STRICT_LOCK:
        if _STRICT["users"] == 0:
            _STRICT["user_setting"] = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _STRICT["users"] += 1
    try:
        yield
    finally:
        with _STRICT_LOCK:
            _STRICT["users"] -= 1
            if _STRICT["users"] == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _STRICT["user_setting"]


def truncation_hint() -> str:
    """For a truncated-file message: that the user's ``LOAD_TRUNCATED_IMAGES`` would hide it."""
    user = _STRICT["user_setting"] if _STRICT["users"] else ImageFile.LOAD_TRUNCATED_IMAGES
    return (" (ImageFile.LOAD_TRUNCATED_IMAGES = True, set in this session, would hide it and fill "
            "the rest with grey)") if user else ""


class ImageError(ValueError):
    """An image that cannot be loaded faithfully; the message says why and what to do."""


def not_finite(arr: np.ndarray) -> int:
    """How many values of a float array are NaN or infinite (0 for other dtypes)."""
    return int((~np.isfinite(arr)).sum()) if np.issubdtype(arr.dtype, np.floating) else 0


def _stretch(arr: np.ndarray) -> np.ndarray:
    """Map an array's own range (lowest to highest value) onto 0-255, as uint8."""
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    return ((arr - lo) / max(hi - lo, 1e-12) * 255).round().clip(0, 255).astype(np.uint8)


def to_rgb(im: Image.Image) -> Image.Image:
    """An RGB copy of ``im``, whatever its mode: transparency goes on white (not black), 16-bit
    and float images are stretched to 0-255 (not clipped to white), palettes are expanded.
    A float image with NaN or infinite pixels raises :class:`ImageError` (it would be black)."""
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("I", "F") or im.mode.startswith(("I;16", "F;")):
        arr = np.asarray(im)
        if bad := not_finite(arr):
            raise ImageError(f"{bad} of {arr.size} pixels are not numbers (NaN or infinite); the "
                             "image would come out black. Fix those pixels in the program that made "
                             "it (or save it again as an 8-bit PNG).")
        return Image.fromarray(_stretch(arr)).convert("RGB")
    if im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im, mask=im.getchannel("A"))
        return background
    return im.convert("RGB")


def _from_array(arr: np.ndarray) -> Image.Image:
    """An RGB image from an array (H x W, H x W x 1/3/4, or channels first): ``uint8`` as it is,
    floats in 0-1 scaled by 255, other numbers stretched to 0-255 like 16-bit and float files."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channels first (a tensor's layout) -> channels last
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageError(f"a numpy array of shape {arr.shape} is not an image: give height x width "
                         "(grey) or height x width x 3 (RGB) or x 4 (RGBA).")
    if bad := not_finite(arr):
        raise ImageError(f"{bad} of {arr.size} values in the array are not numbers (NaN or "
                         "infinite); the image would come out black. Replace them first, for "
                         "example with np.nan_to_num(arr).")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        alpha = arr[..., 3].astype(np.float64) if arr.ndim == 3 and arr.shape[-1] == 4 else None
        colour = arr if alpha is None else arr[..., :3]
        unit = np.issubdtype(colour.dtype, np.floating) and colour.min() >= 0 and colour.max() <= 1
        arr = (colour * 255).round().astype(np.uint8) if unit else _stretch(colour)
        if alpha is not None:
            alpha = alpha if alpha.max() <= 1 else alpha / (65535 if alpha.max() > 255 else 255)
            arr = np.dstack([arr, (alpha * 255).round().clip(0, 255).astype(np.uint8)])
    return to_rgb(Image.fromarray(np.ascontiguousarray(arr)))


def load_image(source) -> Image.Image:
    """The course's one image loader: ``source`` as an upright RGB Pillow image, in memory.

    ``source``: a file path, the file's bytes (an upload widget's), an open binary file, a numpy array
    or tensor, or a Pillow image (fastai's ``PILImage`` too).  The EXIF orientation is applied, modes
    become RGB as in :func:`to_rgb`, and a truncated file or NaN pixels raise :class:`ImageError` (or
    ``OSError``) with the reason, even with ``LOAD_TRUNCATED_IMAGES`` set.  Files are only read.
    """
    if isinstance(source, Image.Image):
        return _prepare(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    if isinstance(source, (str, os.PathLike)) or hasattr(source, "read"):
        with strict_decoding(), Image.open(source) as im:
            return _prepare(im)
    if hasattr(source, "detach") and hasattr(source, "numpy"):  # a torch tensor (channels first)
        source = source.detach().cpu().numpy()
    if isinstance(source, np.ndarray):
        return _from_array(source)
    raise TypeError(f"load_image takes a file path, bytes, a numpy array or a Pillow image, "
                    f"not {type(source).__name__}.")


def _prepare(im: Image.Image) -> Image.Image:
    """Decode (strictly), turn upright by EXIF, convert to RGB; ``im`` itself is not changed."""
    try:
        with strict_decoding():
            im.load()
            im.im  # noqa: B018 - raises AssertionError when load() could not decode (see below)
    except AssertionError:
        # fastai's PILImage.create(Image.open(path)) swaps the class of a lazily opened file,
        # so load() no longer knows its format: open the same file (or stream) again.
        name, fp = getattr(im, "filename", ""), getattr(im, "fp", None)
        if name and os.path.isfile(name):
            with Image.open(name) as again:
                return _prepare(again)
        if fp is not None and hasattr(fp, "seek"):
            fp.seek(0)
            return _prepare(Image.open(fp))
        raise ImageError("this Pillow image holds no pixels (its file was closed before it was "
                         "loaded): pass the file's path or bytes instead.") from None
    except OSError as err:
        if "truncated" in str(err).lower():
            raise ImageError("the image is truncated: the file stops before the image ends"
                             f"{truncation_hint()}. Use a complete copy of the file.") from None
        raise
    return to_rgb(ImageOps.exif_transpose(im))


class RGBImage(PILImage):
    """fastai's ``PILImage``, created by :func:`load_image` from any input, so every mode
    becomes proper RGB and ``learn.predict`` prepares an image exactly as training did."""

    @classmethod
    def create(cls, fn: Path | str | os.PathLike | bytes | bytearray | memoryview | np.ndarray
               | Image.Image | torch.Tensor, **kwargs):
        # The annotation matters: fastai's predict() uses it to know which inputs it may
        # hand straight to this function (anything else raises a bare AssertionError).
        return cls(load_image(fn))


class ImagePath:
    """``get_x`` of the course's DataBlock: a row's ``fname`` joined to ``root``, the same join
    the audit opened (absolute names in a CSV included), so what it accepted, training reads."""

    __name__ = "ImagePath"  # fastai's Transform names (and pickles) a getter by it

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __call__(self, row):  # no annotations: fastai's dispatch would read them as types
        return self.root / row["fname"]

    def __repr__(self) -> str:
        return f"ImagePath({str(self.root)!r})"
