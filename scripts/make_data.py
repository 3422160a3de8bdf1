"""Build the two small data sets that ship inside the ``tlcourse`` package.

Run once by a maintainer (the results are committed); learners never need it::

    python scripts/make_data.py --pets PETS_FOLDER --fashion FASHION_FOLDER

``PETS_FOLDER`` holds Oxford-IIIT Pet JPEGs named as in the official archive
(``Abyssinian_101.jpg``, ``beagle_12.jpg``), in any subfolders: the course's
source sample, or the official ``images/`` folder, of which the names in
``--names`` (default: the names already packaged) are taken.  ``FASHION_FOLDER``
holds the four original Fashion-MNIST ``*-ubyte.gz`` files.

What it writes, under ``tlcourse/datasets/``:

* ``pets/images/*.jpg``: every photo, short side resized to 160 px, JPEG quality 85;
* ``pets/labels.csv``: ``fname, breed, species, split`` with a fixed split of the
  10 photos of each breed: 5 train, 2 valid, 3 test (seeded, so it never changes);
* ``fashion_mnist.npz``: a class-balanced subset of Fashion-MNIST: 600 training and
  100 validation images a class from its training file, 100 test images a class
  from its test file (uint8, 28x28), with the class names;
* ``checksums.json``: SHA-256 of every file above, which the package verifies.

The same inputs always give the same bytes (fixed seeds, sorted inputs).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

OUT = Path(__file__).resolve().parents[1] / "tlcourse" / "datasets"
SHORT_SIDE, QUALITY = 160, 85
SPLIT = {"train": 5, "valid": 2, "test": 3}
FASHION = {"train": 600, "valid": 100, "test": 100}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resized_jpeg(src: Path) -> bytes:
    """The photo upright, in RGB, short side ``SHORT_SIDE``, as JPEG bytes."""
    with Image.open(src) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        scale = SHORT_SIDE / min(im.size)
        if scale < 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=QUALITY, optimize=True)
    return buf.getvalue()


def breed_of(name: str) -> str:
    return name.rsplit("_", 1)[0]


def make_pets(source: Path, names: list[str] | None) -> pd.DataFrame:
    files = {p.name: p for p in source.rglob("*.jpg")}
    wanted = sorted(names or files)
    missing = [n for n in wanted if n not in files]
    if missing:
        raise SystemExit(f"{len(missing)} photos are not in {source}, e.g. {missing[:3]}")
    folder = OUT / "pets" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    rng = np.random.default_rng(0)
    by_breed: dict[str, list[str]] = {}
    for name in wanted:
        by_breed.setdefault(breed_of(name), []).append(name)
    for breed, members in sorted(by_breed.items()):
        if len(members) != sum(SPLIT.values()):
            raise SystemExit(f"{breed} has {len(members)} photos; the split needs {sum(SPLIT.values())}.")
        splits = [s for s, n in SPLIT.items() for _ in range(n)]
        for name, split in zip(members, rng.permutation(splits)):
            (folder / name).write_bytes(resized_jpeg(files[name]))
            species = "cat" if breed[0].isupper() else "dog"
            rows.append(dict(fname=name, breed=breed, species=species, split=split))
    df = pd.DataFrame(rows)
    df.to_csv(OUT / "pets" / "labels.csv", index=False)
    return df


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def balanced(y: np.ndarray, counts: list[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Disjoint index sets, each with ``counts[i]`` examples of every class."""
    parts: list[list[np.ndarray]] = [[] for _ in counts]
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        start = 0
        for i, n in enumerate(counts):
            parts[i].append(np.sort(idx[start:start + n]))
            start += n
    return [np.concatenate(p) for p in parts]


def make_fashion(source: Path) -> dict[str, int]:
    rng = np.random.default_rng(0)
    x = read_idx(source / "train-images-idx3-ubyte.gz")
    y = read_idx(source / "train-labels-idx1-ubyte.gz")
    tx = read_idx(source / "t10k-images-idx3-ubyte.gz")
    ty = read_idx(source / "t10k-labels-idx1-ubyte.gz")
    train, valid = balanced(y, [FASHION["train"], FASHION["valid"]], rng)
    (test,) = balanced(ty, [FASHION["test"]], rng)
    arrays = dict(train_x=x[train], train_y=y[train], valid_x=x[valid], valid_y=y[valid],
                  test_x=tx[test], test_y=ty[test], classes=np.array(FASHION_CLASSES))
    np.savez_compressed(OUT / "fashion_mnist.npz", **arrays)
    return {k: len(v) for k, v in arrays.items() if k.endswith("_y")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pets", type=Path, required=True)
    parser.add_argument("--fashion", type=Path, required=True)
    parser.add_argument("--names", type=Path, help="a labels.csv whose fname column lists the photos to take")
    args = parser.parse_args()
    names = list(pd.read_csv(args.names)["fname"]) if args.names else None
    pets = make_pets(args.pets, names)
    print(pets.groupby(["species", "split"]).size().unstack())
    print(make_fashion(args.fashion))
    files = sorted(p for p in OUT.rglob("*") if p.is_file() and p.name != "checksums.json"
                   and p.suffix in (".jpg", ".csv", ".npz"))
    checksums = {str(p.relative_to(OUT)): sha256(p) for p in files}
    (OUT / "checksums.json").write_text(json.dumps(checksums, indent=0, sort_keys=True) + "\n")
    total = sum(p.stat().st_size for p in files)
    print(f"{len(files)} files, {total / 1e6:.1f} MB in {OUT}")


if __name__ == "__main__":
    main()
