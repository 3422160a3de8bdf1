"""The course's data sets as tables fastai reads, with a fixed held-out test split.

Two small sets ship inside the package (``scripts/make_data.py``, ``datasets.md``), so quick mode
needs no network: an Oxford-IIIT Pet sample (10 photos of each of the 37 breeds) for ``cats_dogs``
and ``pet_breeds``, and a Fashion-MNIST subset (``fashion``, the far domain).  Full mode downloads
the whole Oxford-IIIT Pet (``pets``) through :mod:`tlcourse.data.download`.

Every table has one row per image: ``fname`` (relative to ``df.attrs["path"]``), ``label``,
``split`` (``train``, ``valid`` or ``test``) and ``is_valid``.  Settings are chosen on
``valid``; results are reported on ``test``, which nothing is tuned on.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from fastai.vision.all import (CategoryBlock, ColReader, ColSplitter, DataBlock, DataLoaders, ImageBlock,
                               Resize, aug_transforms)
from PIL import Image

from tlcourse.data import download
from tlcourse.data.images import ImagePath, RGBImage, load_image
from tlcourse.settings import Settings, atomic_path


#: Data set name -> what it is.  ``cats_dogs``, ``pet_breeds`` and ``fashion`` ship with the package.
DATASETS = {
    "cats_dogs": "Oxford-IIIT Pet sample, cat or dog (2 classes, near domain)",
    "pet_breeds": "Oxford-IIIT Pet sample, 37 breeds (few-shot, near domain)",
    "fashion": "Fashion-MNIST subset, 10 kinds of clothing (28x28 grey, far domain)",
    "pets": "Oxford-IIIT Pet, all 7,390 photos, 37 breeds (full mode, downloaded)",
}
SPLITS = ("train", "valid", "test")


def packaged_dir() -> Path:
    """Folder of the data files inside the installed package (read only)."""
    return Path(str(resources.files("tlcourse") / "datasets"))


def pets_dir() -> Path:
    """Folder of the 370 packaged Oxford-IIIT Pet photos, named as in the official archive."""
    return packaged_dir() / "pets" / "images"


def verify_packaged() -> dict[str, str]:
    """Check every packaged file against ``checksums.json`` (each hashed once per process) and
    return the checksums; a missing or damaged file raises, saying to reinstall the package."""
    root = packaged_dir()
    expected = json.loads((root / "checksums.json").read_text())
    bad = [rel for rel, digest in expected.items() if not (root / rel).is_file() or download.checked_once(
           root / rel, digest, lambda: None if download.sha256_file(root / rel) == digest else "damaged")]
    if bad:
        raise RuntimeError(f"{len(bad)} packaged data files are missing or damaged (e.g. {bad[0]}) in "
                           f"{root}: reinstall the course with  pip install --force-reinstall tlcourse")
    return expected


def _balanced_test(df: pd.DataFrame, split: str) -> pd.Series:
    """Rows of ``split`` to keep so that every label has as many as the rarest one, taken breed
    by breed in turn so that a shortened class still covers all its breeds."""
    part = df[df.split == split].sort_values(["breed", "fname"]).copy()
    part["turn"] = part.groupby("breed").cumcount()
    n = part.groupby("label").size().min()
    kept = part.sort_values(["turn", "breed"]).groupby("label").head(n)
    return df.index.isin(kept.index) | (df.split != split)


def pet_sample(label: str = "species") -> pd.DataFrame:
    """The packaged Pets table, labelled by ``species`` (cat/dog) or ``breed``.

    Of each breed's 10 photos, 5 are for training, 2 for validation and 3 for the test; for
    cat-versus-dog the validation and test rows are balanced, so guessing one class scores 50 %."""
    if label not in ("species", "breed"):
        raise ValueError(f"label must be 'species' or 'breed', got {label!r}.")
    df = pd.read_csv(packaged_dir() / "pets" / "labels.csv")
    df["label"] = df[label]
    if label == "species":
        df = df[_balanced_test(df, "valid") & _balanced_test(df, "test")]
    return _finish(df[["fname", "label", "split", "breed"]], pets_dir())


def _finish(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    df = df.reset_index(drop=True)
    df["is_valid"] = df["split"] == "valid"
    df.attrs["path"] = str(path)
    return df


def fashion_arrays() -> dict[str, np.ndarray]:
    """The packaged Fashion-MNIST subset: ``<split>_x`` (N, 28, 28) uint8, ``<split>_y``, ``classes``."""
    with np.load(packaged_dir() / "fashion_mnist.npz") as npz:
        return {k: npz[k] for k in npz.files}


def _made_once(final: Path, files: int, make: Callable[[Path], None], **about) -> Path:
    """``final``, made by ``make(folder)`` unless its ``manifest.json`` counts ``files`` files: one process
    at a time, resumed where an interrupted one stopped, renamed to ``final`` only when complete."""
    def complete() -> bool:
        try:
            return json.loads((final / "manifest.json").read_text()).get("files") == files
        except (OSError, ValueError):
            return False

    if complete():
        return final
    with download.locked(final.parent / f".{final.name}.lock"):
        if complete():  # another process finished it while we waited
            return final
        partial = final.with_name(final.name + ".partial")
        if final.exists():  # a folder without a valid manifest: finish it where it stopped
            shutil.rmtree(partial, ignore_errors=True)
            final.rename(partial)
        partial.mkdir(parents=True, exist_ok=True)
        make(partial)
        (partial / "manifest.json").write_text(json.dumps({"files": files, **about}))
        partial.rename(final)
    return final


def fashion(cache: Path) -> pd.DataFrame:
    """The Fashion-MNIST subset as PNG files under ``cache`` (fastai reads files), written once
    (see :func:`_made_once`), and its table."""
    arrays = fashion_arrays()
    classes = [str(c) for c in arrays["classes"]]
    digest = verify_packaged()["fashion_mnist.npz"]
    rows = [dict(fname=f"{split}/{i:05d}.png", label=classes[y], split=split)
            for split in SPLITS for i, y in enumerate(arrays[f"{split}_y"])]

    def write(folder: Path) -> None:
        for split in SPLITS:
            (folder / split).mkdir(exist_ok=True)
            for i, img in enumerate(arrays[f"{split}_x"]):
                Image.fromarray(img).save(folder / split / f"{i:05d}.png")

    root = _made_once(cache / "data" / f"fashion-{digest[:12]}", len(rows), write, sha256=digest)
    return _finish(pd.DataFrame(rows), root)


def full_pets(settings: Settings) -> pd.DataFrame:
    """The whole Oxford-IIIT Pet data set (full mode), downloaded on first use, labelled by breed.

    A seeded draw puts 20 % of the photos in the test split and 10 % in validation.  The table points
    at a copy resized once (:func:`resized_copy`), so no epoch decodes the full-size JPEGs."""
    s = settings
    root = download.pets_images()
    files = sorted(p.name for p in root.iterdir() if p.suffix == ".jpg")
    draw = np.random.default_rng(42).random(len(files))
    split = np.where(draw < 0.2, "test", np.where(draw < 0.3, "valid", "train"))
    breeds = [f.rsplit("_", 1)[0] for f in files]
    if s.resized_short_side:
        root = resized_copy(root, files, s.resized_short_side, s.cache_dir, workers=max(1, s.num_workers))
    return _finish(pd.DataFrame({"fname": files, "label": breeds, "split": split, "breed": breeds}), root)


def _resize_one(source: Path, target: Path, short_side: int) -> None:
    """Write ``source`` as an RGB JPEG whose short side is at most ``short_side``, atomically."""
    with Image.open(source) as im:
        if im.format == "JPEG":
            im.draft("RGB", (short_side, short_side))  # decode at 1/2, 1/4 or 1/8 scale when that suffices
        img = load_image(im)  # the course's one loader: upright, RGB, damaged files raise
    scale = short_side / min(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.LANCZOS)
    with atomic_path(target) as tmp:
        img.save(tmp, format="JPEG", quality=90)


def resized_copy(root: Path, files: list[str], short_side: int, cache: Path, workers: int = 1,
                 progress: bool = True) -> Path:
    """The folder of a copy of ``root / f`` for every ``f`` in ``files`` with short side ``short_side``,
    made once in the cache by ``workers`` threads (resumed when interrupted, see :func:`_made_once`)."""
    from tqdm.auto import tqdm  # imported when needed, like the progress bar

    listing = "\n".join(f"{f}:{(root / f).stat().st_size}" for f in files)
    digest = hashlib.sha256(listing.encode()).hexdigest()[:12]

    def resize(folder: Path) -> None:
        todo = [f for f in files if not (folder / f).is_file()]
        with tqdm(total=len(files), initial=len(files) - len(todo), unit="photo", disable=not progress,
                  desc=f"Resizing the photos to {short_side} px (once)") as bar, \
                ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for _ in pool.map(lambda f: _resize_one(root / f, folder / f, short_side), todo):
                bar.update(1)

    return _made_once(cache / "data" / f"pets-{short_side}px-{digest}", len(files), resize,
                      short_side=short_side, source=str(root))


def items(name: str, settings: Settings) -> pd.DataFrame:
    """The table of data set ``name`` (for example ``settings.dataset``, the mode's main one)."""
    tables = {"cats_dogs": lambda: pet_sample("species"), "pet_breeds": lambda: pet_sample("breed"),
              "fashion": lambda: fashion(settings.cache_dir), "pets": lambda: full_pets(settings)}
    if name not in tables:
        raise ValueError(f"Unknown data set {name!r}: choose one of {', '.join(DATASETS)}.")
    df = tables[name]()
    if settings.max_per_class is None:
        return df
    return _finish(df.groupby(["split", "label"], sort=False).head(settings.max_per_class), df.attrs["path"])


def subsample(df: pd.DataFrame, per_class: int | None, seed: int = 0) -> pd.DataFrame:
    """What a ``DataBlock`` may see: ``per_class`` random training images of each class (None: all,
    the same for the same seed) and every validation image, never the test rows."""
    train = df[df.split == "train"]
    if per_class is not None:
        if per_class < 1:
            raise ValueError(f"per_class must be at least 1, got {per_class}.")
        most = int(train.groupby("label").size().min())
        if per_class > most:
            raise ValueError(f"asked for {per_class} training images a class, but the smallest class "
                             f"has {most}: use per_class <= {most}.")
        train = train.sample(frac=1.0, random_state=seed).groupby("label", sort=False).head(per_class)
    out = pd.concat([train, df[df.split == "valid"]])
    out.attrs = dict(df.attrs)
    return out.reset_index(drop=True)


def batch_size(n_train: int, settings: Settings, largest: int | None = None) -> int:
    """The mode's batch size (or ``largest``), or half the training set when that is smaller:
    fastai drops the last incomplete batch, so half the set gives at least two steps an epoch."""
    return max(2, min(largest or settings.batch_size, n_train // 2))


def datablock(path: str | Path, image_size: int, augment: bool = True) -> DataBlock:
    """The course's one ``DataBlock`` for an items table (lessons, lesson 06's folders): images
    ``path / fname`` (``images.ImagePath``, ``RGBImage``), labels ``label``, split by ``is_valid``."""
    return DataBlock(blocks=(ImageBlock(cls=RGBImage), CategoryBlock), get_x=ImagePath(path),
                     get_y=ColReader("label"), splitter=ColSplitter("is_valid"),
                     item_tfms=Resize(image_size),
                     batch_tfms=aug_transforms(size=image_size, min_scale=0.75) if augment else None)


def get_dls(name: str, settings: Settings, per_class: int | None = None, seed: int = 0,
            augment: bool = True, image_size: int | None = None, **kwargs) -> DataLoaders:
    """fastai ``DataLoaders`` for the training and validation rows of data set ``name``.

    ``per_class`` limits the training images a class (default: the mode's); the test rows are left
    out, for :func:`test_rows`.  The same ``seed`` picks and shuffles the same way.  Learners write
    checkpoints to the cache (the loaders' ``path``); workers follow :func:`settings.loader_plan`."""
    s = settings
    df = subsample(items(name, s), per_class if per_class is not None else s.per_class, seed)
    return datablock(df.attrs["path"], image_size or s.image_size, augment).dataloaders(
        df, path=s.cache_dir, bs=batch_size(int((~df.is_valid).sum()), s), seed=seed,
        **{"device": s.device, "num_workers": s.num_workers, "pin_memory": s.pin_memory, **kwargs})


def test_rows(name: str, settings: Settings) -> pd.DataFrame:
    """The test rows of data set ``name``: what every result of the course is reported on."""
    df = items(name, settings)
    return df[df.split == "test"]
