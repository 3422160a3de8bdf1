"""Data sets of the course, in the folder layout fastai reads.

Offline (quick mode, tests):

* ``shapes``: five outline classes (circle, square, triangle, star, cross) drawn at
  random size, position and angle, filled with a patch of one real photo and laid on
  a patch of another.  The photos ship inside scikit-image.  Only the outline tells
  the classes apart, so colour and texture are no shortcut: a network has to see
  shape, which is what ImageNet features are good at.  See ``datasets.md``.
* ``digits``: scikit-learn's real handwritten digits (8x8 grey), the far domain.

Full mode adds ``pets``, Oxford-IIIT Pets from fastai's URL (see ``download.py``).

Every generated set is written once into the cache, with a manifest, and reused.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from fastai.vision.all import (
    DataLoaders,
    ImageDataLoaders,
    Resize,
    aug_transforms,
)
from PIL import Image, ImageDraw, ImageFilter

from tlcourse.settings import Settings, get_settings

SHAPES = ("circle", "cross", "square", "star", "triangle")
#: Colour photos and textures bundled in scikit-image's wheel (no download).
PHOTOS = ("astronaut", "brick", "chelsea", "coffee", "grass", "gravel", "rocket",
          "hubble_deep_field", "immunohistochemistry", "retina", "stereo_motorcycle")
GENERATOR_VERSION = 2
OFFLINE = ("shapes", "digits")
DATASETS = OFFLINE + ("pets",)


def _photo(name: str) -> np.ndarray:
    """An RGB uint8 array of one bundled scikit-image photo."""
    from skimage import color, data

    img = getattr(data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle returns (left, right, disparity)
        img = img[0]
    if img.ndim == 2:
        img = color.gray2rgb(img)
    return np.ascontiguousarray(img[..., :3])


def _patch(photos: list[np.ndarray], rng: np.random.Generator, size: int) -> Image.Image:
    """A random square crop of a random photo, resized to ``size``."""
    img = photos[rng.integers(len(photos))]
    h, w = img.shape[:2]
    side = int(rng.uniform(0.25, 0.6) * min(h, w))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = Image.fromarray(img[y:y + side, x:x + side])
    return crop.resize((size, size), Image.BILINEAR)


def _outline(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Polygon points of one shape of radius ``r`` centred at (cx, cy)."""
    if kind == "circle":
        pts = [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 64, endpoint=False)]
    elif kind == "square":
        pts = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
        pts = [(x * 0.75, y * 0.75) for x, y in pts]
    elif kind == "triangle":
        pts = [(math.cos(t), math.sin(t)) for t in (math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
    elif kind == "star":
        pts = [((1.0 if k % 2 == 0 else 0.42) * math.cos(math.pi / 2 + k * math.pi / 5),
                (1.0 if k % 2 == 0 else 0.42) * math.sin(math.pi / 2 + k * math.pi / 5)) for k in range(10)]
    elif kind == "cross":
        a, b = 0.3, 0.9
        pts = [(a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a),
               (-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a)]
    else:
        raise ValueError(f"Unknown shape {kind!r}; choose one of {SHAPES}.")
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def draw_shape(kind: str, rng: np.random.Generator, photos: list[np.ndarray], size: int = 128) -> Image.Image:
    """One image: a ``kind`` outline filled with one photo patch over another."""
    background, fill = _patch(photos, rng, size), _patch(photos, rng, size)
    # A softer, paler background keeps the photo's statistics but lets the outline stand out.
    background = background.filter(ImageFilter.GaussianBlur(size / 64))
    background = Image.blend(background, Image.new("RGB", (size, size), (128, 128, 128)), 0.35)
    r = rng.uniform(0.28, 0.42) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    mask = Image.new("L", (size * 2, size * 2), 0)
    pts = _outline(kind, cx * 2, cy * 2, r * 2, rng.uniform(0, 2 * math.pi))
    ImageDraw.Draw(mask).polygon(pts, fill=255, outline=255)
    mask = mask.resize((size, size), Image.LANCZOS)
    tint = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    fill = Image.blend(fill, tint, float(rng.uniform(0.55, 0.85)))
    return Image.composite(fill, background, mask)


def _manifest_ok(root: Path, params: dict) -> bool:
    """True when ``root`` holds a complete set made with exactly ``params``."""
    manifest = root / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        saved = json.loads(manifest.read_text())
    except json.JSONDecodeError:
        return False
    if saved.get("params") != params:
        return False
    return all((root / f).is_file() for f in saved.get("files", []))


def _write_set(root: Path, params: dict, images: dict[str, dict[str, list[Image.Image]]]) -> Path:
    """Write ``images[split][label]`` as PNGs under ``root`` with a manifest, atomically."""
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    files = []
    for split, classes in images.items():
        for label, imgs in classes.items():
            (tmp / split / label).mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(imgs):
                rel = f"{split}/{label}/{label}_{i:04d}.png"
                img.save(tmp / rel)
                files.append(rel)
    (tmp / "manifest.json").write_text(json.dumps({"params": params, "files": files}, indent=1))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root


def make_shapes(root: Path | None = None, train_per_class: int = 50, valid_per_class: int = 30,
                size: int = 128, seed: int = 0) -> Path:
    """Generate (or reuse) the shapes set; the same arguments always give the same pixels."""
    params = dict(name="shapes", version=GENERATOR_VERSION, train=train_per_class,
                  valid=valid_per_class, size=size, seed=seed)
    root = root or get_settings().cache_dir / "data" / f"shapes-{train_per_class}-{valid_per_class}-{size}-{seed}"
    if _manifest_ok(root, params):
        return root
    photos = [_photo(p) for p in PHOTOS]
    rng = np.random.default_rng(seed)
    counts = {"train": train_per_class, "valid": valid_per_class}
    images = {split: {k: [draw_shape(k, rng, photos, size) for _ in range(n)] for k in SHAPES}
              for split, n in counts.items()}
    return _write_set(root, params, images)


def make_digits(root: Path | None = None, train_per_class: int = 50, valid_per_class: int = 30,
                size: int = 32, seed: int = 0) -> Path:
    """Write scikit-learn's handwritten digits as ``size``-pixel PNGs (the far domain)."""
    from sklearn.datasets import load_digits

    params = dict(name="digits", train=train_per_class, valid=valid_per_class, size=size, seed=seed)
    root = root or get_settings().cache_dir / "data" / f"digits-{train_per_class}-{valid_per_class}-{size}-{seed}"
    if _manifest_ok(root, params):
        return root
    digits = load_digits()
    rng = np.random.default_rng(seed)
    images: dict[str, dict[str, list[Image.Image]]] = {"train": {}, "valid": {}}
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == d))
        need = train_per_class + valid_per_class
        if need > len(idx):
            raise ValueError(f"digits has only {len(idx)} images of class {d}; asked for {need}.")
        pics = [Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).convert("RGB")
                .resize((size, size), Image.BICUBIC) for i in idx[:need]]
        images["train"][str(d)] = pics[:train_per_class]
        images["valid"][str(d)] = pics[train_per_class:]
    return _write_set(root, params, images)


def pets_path() -> Path:
    """Oxford-IIIT Pets photos, from fastai's URL through :mod:`tlcourse.download` (full mode).

    The download is resumable and checked; a failure raises ``download.DownloadError``
    with one short message saying how to go on.
    """
    from tlcourse import download

    return download.pets_images()


def dataset_path(name: str | None = None, settings: Settings | None = None) -> Path:
    """Folder of data set ``name`` (default: the current mode's), made or fetched if needed."""
    s = settings or get_settings()
    name = name or s.dataset
    if name not in DATASETS:
        raise ValueError(f"Unknown data set {name!r}: choose one of {', '.join(DATASETS)}.")
    if name == "pets":
        return pets_path()
    train, valid = (s.train_per_class or 150), (s.valid_per_class or 30)
    if name == "shapes":
        return make_shapes(train_per_class=train, valid_per_class=valid)
    # load_digits has 174 to 183 images a class: 145 + 25 fits every class.
    return make_digits(train_per_class=min(train, 145), valid_per_class=min(valid, 25))


def folder_items(root: Path) -> pd.DataFrame:
    """The items table of a generated set in ``root`` (``train/<class>/*.png``, ``valid/...``)."""
    files = sorted(Path(root).glob("*/*/*.png"))
    df = pd.DataFrame({"fname": [str(p.relative_to(root)) for p in files],
                       "label": [p.parent.name for p in files],
                       "is_valid": [p.parts[-3] == "valid" for p in files]})
    df.attrs["path"] = str(root)
    return df


def items(name: str | None = None, settings: Settings | None = None) -> pd.DataFrame:
    """One row per image: ``fname`` (relative to ``df.attrs['path']``), ``label``, ``is_valid``."""
    s = settings or get_settings()
    name = name or s.dataset
    root = dataset_path(name, s)
    if name == "pets":
        files = sorted(p for p in root.iterdir() if p.suffix == ".jpg")
        labels = [p.name.rsplit("_", 1)[0] for p in files]
        rng = np.random.default_rng(42)
        df = pd.DataFrame({"fname": [p.name for p in files], "label": labels,
                           "is_valid": rng.random(len(files)) < 0.2})
        df.attrs["path"] = str(root)
        return df
    return folder_items(root)


def subsample(df: pd.DataFrame, per_class: int | None, seed: int = 0) -> pd.DataFrame:
    """Keep ``per_class`` random training images of each class (all validation images)."""
    if per_class is None:
        return df
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}.")
    shuffled = df[~df.is_valid].sample(frac=1.0, random_state=seed)
    train = shuffled.groupby("label", sort=False).head(per_class)
    out = pd.concat([train, df[df.is_valid]])
    out.attrs = dict(df.attrs)
    return out.reset_index(drop=True)


def get_dls(name: str | None = None, per_class: int | None = None, seed: int = 0,
            augment: bool = False, settings: Settings | None = None, **kwargs) -> DataLoaders:
    """fastai ``DataLoaders`` for data set ``name`` at the current mode's size.

    ``per_class`` limits the training images per class (default: the mode's
    ``train_per_class``); validation always uses the whole validation split.
    """
    s = settings or get_settings()
    df = items(name, s)
    per_class = per_class if per_class is not None else s.train_per_class
    df = subsample(df, per_class, seed)
    batch_tfms = aug_transforms(size=s.image_size, min_scale=0.75) if augment else None
    # fastai drops the last incomplete training batch: a batch larger than the
    # training set would leave nothing to train on.
    n_train = int((~df.is_valid).sum())
    return ImageDataLoaders.from_df(
        df, path=df.attrs["path"], fn_col="fname", label_col="label", valid_col="is_valid",
        item_tfms=Resize(s.image_size), batch_tfms=batch_tfms, bs=max(1, min(s.batch_size, n_train)),
        seed=seed, device=s.device, num_workers=0, **kwargs)
