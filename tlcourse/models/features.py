"""The frozen network as a feature extractor: cut, extract once, cache, probe.

The cheapest kind of transfer learning runs the pretrained *body* of a network
once over every image, keeps the pooled feature vector it produces, and trains
only a small classifier (a *linear probe*) on those vectors.  This module holds
the reusable parts of lesson 02:

* :func:`backbone` gives the offline backbone without its ImageNet classifier
  (``num_classes=0``: the output is the pooled 1280-number vector) together with
  an identity string for cache keys;
* :func:`cached_features` extracts features for a data set once and stores them
  under ``settings.cache_dir / "features"``, keyed by model, data, image size and
  transforms; a later call with the same key loads them, any change recomputes,
  a damaged file is recomputed with a short message, and a cache folder that
  cannot be written is skipped with one message (the features are still returned);
* :func:`pixel_features` gives the raw-pixel baseline in the same form;
* :func:`train_linear_probe` (PyTorch) and :func:`sklearn_probe` (scikit-learn's
  logistic regression, as a cross-check) train the classifier;
* :func:`probe_curve` trains probes on ``per_class`` labelled images a class for
  several seeds and scores them on the held-out **test** split; :func:`summarise`
  gives mean and spread over the seeds;
* :func:`project_2d` and :func:`time_epochs` feed the lesson's figure and its
  speed comparison.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from tlcourse import data, models, stats
from tlcourse.data.images import load_image
from tlcourse.settings import OFFLINE_ARCH, Settings, atomic_path, cache_dir

#: Bump when the layout of a cache file changes; old files are then recomputed.
CACHE_VERSION = 3


# --- the body and its identity --------------------------------------------------

def model_identity(pretrained: bool = True, seed: int = 0) -> str:
    """A string that names the backbone's weights exactly, for cache keys.

    Pretrained weights are named by the SHA-256 of the converted weight file (so
    new weights give new features); random weights by the seed that drew them.
    """
    if pretrained:
        sidecar = models.weights_path().with_suffix(".sha256")
        return f"{OFFLINE_ARCH}:imagenet-sha256-{sidecar.read_text().strip()}"
    return f"{OFFLINE_ARCH}:random-seed{seed}"


def backbone(pretrained: bool = True, seed: int = 0) -> tuple[nn.Module, str]:
    """The offline backbone cut before its classifier, in eval mode, and its identity.

    ``num_classes=0`` makes timm replace the 1000-class ``classifier`` with an
    identity, so the model returns the globally average-pooled output of the last
    convolution: one vector of ``model.num_features`` numbers per image.  With
    ``pretrained=False`` the weights are timm's random initialisation drawn from
    ``seed``, so the same seed gives the same network; the draw happens in a forked
    random state, so the caller's global torch seed is left as it was.
    """
    if pretrained:
        model = models.create_model(pretrained=True, num_classes=0)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = models.create_model(pretrained=False, num_classes=0)
    return model.eval(), model_identity(pretrained, seed)


# --- images and transforms ------------------------------------------------------

def default_transform(model: nn.Module, image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """Resize to a square of ``image_size``, make a tensor and normalise with the model's statistics."""
    from torchvision import transforms as T

    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    return T.Compose([T.Resize((image_size, image_size)), T.ToTensor(), T.Normalize(mean, std)])


def class_names(df: pd.DataFrame) -> list[str]:
    """Class names in sorted order, the order fastai's vocab uses too."""
    return sorted(df["label"].astype(str).unique())


def load_images(df: pd.DataFrame, transform: Callable[[Image.Image], torch.Tensor],
                classes: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of ``df`` as one transformed batch, and their class indices."""
    classes = list(classes or class_names(df))
    root = Path(df.attrs["path"])
    images = torch.stack([transform(load_image(root / f)) for f in df["fname"]])
    labels = torch.tensor([classes.index(str(v)) for v in df["label"]], dtype=torch.long)
    return images, labels


class _ImageTable(torch.utils.data.Dataset):
    """Rows of an ``items`` DataFrame as (image tensor, class index) pairs."""

    def __init__(self, df: pd.DataFrame, transform: Callable, classes: Sequence[str]):
        self.root, self.transform = Path(df.attrs["path"]), transform
        self.files = list(df["fname"])
        index = {c: i for i, c in enumerate(classes)}
        self.labels = [index[str(v)] for v in df["label"]]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_image(self.root / self.files[i])), self.labels[i]


@torch.no_grad()
def extract(model: nn.Module, df: pd.DataFrame, transform: Callable, classes: Sequence[str] | None = None,
            batch_size: int = 32, device: str = "cpu", progress: bool = True,
            desc: str = "extracting features") -> tuple[torch.Tensor, torch.Tensor]:
    """Features of every image in ``df`` (in row order) and their class indices; no caching.

    The model runs in eval mode under ``no_grad``: nothing in it changes, which is
    what makes the result reusable.  A ``tqdm`` bar counts the batches.
    """
    from tqdm.auto import tqdm

    classes = list(classes or class_names(df))
    # One pass over the photos, then the features are cached: worker processes would cost more to
    # start than they save on a laptop, and on a GPU this runs once per data set, not every epoch.
    loader = torch.utils.data.DataLoader(_ImageTable(df, transform, classes), batch_size=batch_size,
                                         shuffle=False, num_workers=0)
    model = model.eval().to(device)
    xs, ys = [], []
    for xb, yb in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
        xs.append(model(xb.to(device)).float().flatten(1).cpu())
        ys.append(yb)
    return torch.cat(xs), torch.cat(ys)


# --- the cache --------------------------------------------------------------------

def data_identity(df: pd.DataFrame) -> dict:
    """What identifies the images: the file list with labels and splits, and their pixels.

    Pixels are identified by the folder's ``manifest.json`` when it has one (written
    with a checksum of its source, as for the Fashion-MNIST PNGs), otherwise by the
    SHA-256 of every file's bytes; either way new pixels under old names change the key.
    """
    root = Path(df.attrs["path"])
    manifest = root / "manifest.json"
    rows = df[["fname", "label", "split"]].astype(str).to_csv(index=False)
    if manifest.is_file():
        pixels = hashlib.sha256(manifest.read_bytes()).hexdigest()
    else:
        digest = hashlib.sha256()
        for fname in df["fname"]:
            digest.update(hashlib.sha256((root / fname).read_bytes()).digest())
        pixels = digest.hexdigest()
    return {"pixels_sha256": pixels, "files_sha256": hashlib.sha256(rows.encode()).hexdigest(),
            "n_images": len(df)}


def cache_key(model_id: str, dataset: str, df: pd.DataFrame, image_size: int, transform_desc: str) -> tuple[str, dict]:
    """The SHA-256 key of one set of features, and the description it was hashed from."""
    described = {"version": CACHE_VERSION, "model": model_id, "dataset": dataset,
                 "data": data_identity(df), "image_size": int(image_size), "transforms": transform_desc}
    text = json.dumps(described, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest(), described


def _checksum(tensors: Sequence[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Features:
    """Cached features of one data set under one model: training, validation and test parts."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    valid_x: torch.Tensor
    valid_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    key: str
    path: Path
    from_cache: bool

    def __repr__(self) -> str:
        return (f"Features({len(self.train_x)} train + {len(self.valid_x)} valid + {len(self.test_x)} test images, "
                f"{self.train_x.shape[1]} numbers each, {len(self.classes)} classes, "
                f"{'loaded from cache' if self.from_cache else 'computed'}: {self.path.name})")


_PARTS = ("train_x", "train_y", "valid_x", "valid_y", "test_x", "test_y")


def _load(path: Path, key: str) -> dict | None:
    """The stored payload when ``path`` is a complete file for ``key``; ``None`` (with a note) otherwise."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        ok = (payload["key"] == key and payload["checksum"] == _checksum([payload[p] for p in _PARTS]))
    except Exception as err:  # truncated or garbled bytes surface as many error types
        print(f"Feature cache {path.name} could not be read ({type(err).__name__}); recomputing it.")
        return None
    if not ok:
        print(f"Feature cache {path.name} failed its checksum; recomputing it.")
        return None
    return payload


def _save(path: Path, payload: dict) -> None:
    """Write ``payload`` next to ``path`` first, then move it into place in one step."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


#: Cache folders already reported as not writable (one message each per session).
_UNWRITABLE: set[Path] = set()


def _try_save(path: Path, payload: dict) -> bool:
    """:func:`_save`, or one message (per folder) and ``False`` when the folder cannot be written."""
    try:
        _save(path, payload)
        return True
    except OSError as err:  # PermissionError, read-only file system, disk full ...
        if path.parent not in _UNWRITABLE:
            _UNWRITABLE.add(path.parent)
            print(f"Note: cannot write the feature cache folder {path.parent} ({type(err).__name__}: "
                  f"{err.strerror or err}). Carrying on without the cache: features are recomputed "
                  "in every new session. To keep them, point TLCOURSE_CACHE at a writable folder.")
        return False


def cached_features(model: nn.Module, model_id: str, df: pd.DataFrame, image_size: int,
                    dataset: str | None = None, transform: Callable | None = None,
                    transform_desc: str | None = None, batch_size: int = 32, device: str = "cpu",
                    progress: bool = True, verbose: bool = True, cache: Path | None = None) -> Features:
    """Features of ``df``'s training, validation and test images, from the cache when possible.

    The cache key hashes ``model_id`` (see :func:`model_identity`), the data set's
    name and identity (:func:`data_identity`), ``image_size`` and a description of
    the transforms (``repr(transform)`` unless ``transform_desc`` is given), so a
    change to any of them computes new features instead of reusing stale ones.
    Files live in ``cache / "features"`` (``cache``: ``settings.cache_dir``, by default the
    machine's course cache) and are written atomically; if that folder cannot be written,
    the features are returned uncached.  ``device``: where the network runs (``settings.device``).
    """
    if not {"fname", "label", "split"} <= set(df.columns) or "path" not in df.attrs:
        raise ValueError("df must be an items() table: columns fname, label, split and "
                         "df.attrs['path']; build it with tlcourse.data.items().")
    missing = [split for split in data.SPLITS if not (df["split"] == split).any()]
    if missing:
        raise ValueError(f"df has no {' or '.join(missing)} rows: it needs train, valid and test rows "
                         "(the `split` column).")
    transform = transform or default_transform(model, image_size)
    transform_desc = transform_desc if transform_desc is not None else repr(transform)
    dataset = dataset or Path(df.attrs["path"]).name
    key, described = cache_key(model_id, dataset, df, image_size, transform_desc)
    path = (cache or cache_dir()) / "features" / f"{model_id.split(':')[0]}-{key[:20]}.pt"
    classes = class_names(df)

    payload = _load(path, key)
    if payload is not None:
        if verbose:
            print(f"Cache hit: loaded features from {path}")
        return Features(*(payload[p] for p in _PARTS), classes=list(payload["classes"]), key=key,
                        path=path, from_cache=True)

    short_id = "pretrained" if "imagenet" in model_id else model_id.split(":")[-1]
    start = time.perf_counter()
    parts = []
    for split in data.SPLITS:
        rows = df[df["split"] == split]
        desc = f"{split} features ({short_id})"
        parts.extend(extract(model, rows, transform, classes, batch_size, device, progress, desc=desc))
    payload = dict(zip(_PARTS, parts), key=key, classes=classes, described=json.dumps(described),
                   checksum=_checksum(parts))
    saved = _try_save(path, payload)
    if verbose:
        where = f"saved {path}" if saved else "did not save them"
        print(f"Cache miss: computed features in {time.perf_counter() - start:.1f} s and {where}")
    return Features(*parts, classes=classes, key=key, path=path, from_cache=False)


def dataset_features(settings: Settings, pretrained: bool = True, seed: int = 0, name: str | None = None,
                     **kwargs) -> Features:
    """Cached features of the mode's data set (or ``name``) under the offline backbone."""
    s = settings
    name = name or s.dataset
    model, model_id = backbone(pretrained, seed)
    return cached_features(model, model_id, data.items(name, s), s.image_size, dataset=name,
                           device=s.device, cache=s.cache_dir, **kwargs)


def pixel_features(df: pd.DataFrame, size: int = 32) -> Features:
    """The raw-pixel baseline: every image resized to ``size`` x ``size`` RGB, flattened, in 0-1.

    Same form as :func:`cached_features` (train, valid and test parts, class indices
    in sorted order), so the same probe can be trained on pixels instead of features.
    Not cached: resizing a few hundred small photos takes well under a second.
    """
    from torchvision import transforms as T

    if "path" not in df.attrs:
        raise ValueError("df must be an items() table with df.attrs['path']; use tlcourse.data.items().")
    to_pixels = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Lambda(torch.flatten)])
    classes = class_names(df)
    parts: list[torch.Tensor] = []
    for split in data.SPLITS:
        parts.extend(load_images(df[df["split"] == split], to_pixels, classes))
    return Features(*parts, classes=classes, key=f"pixels-{size}", path=Path(f"pixels-{size}px (not cached)"),
                    from_cache=False)


# --- linear probes ----------------------------------------------------------------

@contextmanager
def single_thread() -> Iterator[None]:
    """Run the block on one CPU thread (torch, BLAS and OpenMP), then restore the settings.

    Probes and projections work on a few hundred short vectors: one thread is as
    fast as several there, and on a busy or shared CPU several threads keep
    waiting for each other and can run ten times slower.
    """
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def _centre_spread(train_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = train_x.mean(0, keepdim=True)
    return mean, (train_x - mean).pow(2).mean().sqrt().clamp_min(1e-8)


def _scale(train_x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Centre on the training mean and divide by one overall spread.

    One scalar (not a per-feature std) keeps the geometry of the features and is
    stable with one image per class; it only puts random and pretrained features,
    whose sizes differ a lot, on the same footing for the optimiser.
    """
    mean, spread = _centre_spread(train_x)
    return [(t - mean) / spread for t in (train_x, *others)]


@dataclass
class ProbeResult:
    """A trained linear probe: the layer, its held-out accuracy and its loss per epoch.

    ``head`` reads features scaled with the training set's ``mean`` and ``spread``;
    :meth:`predict` applies that scaling to raw features.
    """

    head: nn.Linear
    accuracy: float
    losses: list[float]
    mean: torch.Tensor
    spread: torch.Tensor

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class indices for raw (unscaled) feature vectors ``x``."""
        return self.head((x.float() - self.mean) / self.spread).argmax(dim=1)


def train_linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, valid_x: torch.Tensor,
                       valid_y: torch.Tensor, epochs: int = 100, lr: float = 1e-2,
                       weight_decay: float = 1e-3, batch_size: int | None = None, seed: int = 0) -> ProbeResult:
    """Train one ``nn.Linear`` on features with Adam and report accuracy on held-out rows.

    ``valid_x``/``valid_y`` are whichever held-out rows to score: validation rows
    while choosing settings, the test rows (``Features.test_x``) for results.

    Full-batch by default (the features are small); ``batch_size`` switches to
    shuffled mini-batches.  ``seed`` fixes the initial weights and the shuffling.
    """
    if len(train_x) != len(train_y) or len(valid_x) != len(valid_y):
        raise ValueError("features and labels differ in length: pass matching x and y tensors.")
    with single_thread():
        return _train_probe(train_x, train_y, valid_x, valid_y, epochs, lr, weight_decay, batch_size, seed)


def _train_probe(train_x: torch.Tensor, train_y: torch.Tensor, valid_x: torch.Tensor, valid_y: torch.Tensor,
                 epochs: int, lr: float, weight_decay: float, batch_size: int | None, seed: int) -> ProbeResult:
    n_classes = int(max(train_y.max(), valid_y.max())) + 1
    mean, spread = _centre_spread(train_x.float())
    train_x, valid_x = _scale(train_x.float(), valid_x.float())
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # the head's first weights, without reseeding the caller
        torch.manual_seed(seed)
        head = nn.Linear(train_x.shape[1], n_classes)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    bs = batch_size or len(train_x)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=gen)
        total = 0.0
        for i in range(0, len(order), bs):
            idx = order[i:i + bs]
            loss = nn.functional.cross_entropy(head(train_x[idx]), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(train_x))
    with torch.no_grad():
        acc = float((head(valid_x).argmax(1) == valid_y).float().mean())
    return ProbeResult(head, acc, losses, mean, spread)


def sklearn_probe(train_x: torch.Tensor, train_y: torch.Tensor, valid_x: torch.Tensor,
                  valid_y: torch.Tensor, C: float = 1.0, seed: int = 0) -> float:
    """Held-out accuracy (on ``valid_x``: validation or test rows) of scikit-learn's
    ``LogisticRegression`` on the same scaled features."""
    from sklearn.linear_model import LogisticRegression

    train_x, valid_x = _scale(train_x.float(), valid_x.float())
    clf = LogisticRegression(C=C, max_iter=2000, random_state=seed)
    with single_thread():
        clf.fit(train_x.numpy(), train_y.numpy())
        return float(clf.score(valid_x.numpy(), valid_y.numpy()))


def pick_per_class(y: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``per_class`` random examples of every class in ``y`` (fewer if a class has
    fewer), drawn with a generator of their own (the global random state is left alone)."""
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1 image per class, got {per_class}.")
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c in torch.unique(y):
        members = torch.nonzero(y == c).flatten()
        picked.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    return torch.cat(picked).sort().values


def probe_curve(feats: dict[str, Features], per_class: Sequence[int], seeds: Sequence[int],
                include_all: bool = False, progress: bool = True, **probe_kwargs) -> pd.DataFrame:
    """Test accuracy of the linear probe for each feature set, labelled images a class and seed.

    For every seed a different random ``per_class`` training images of each class
    are labelled (sizes larger than the smallest class are skipped); the probe is
    scored on the whole **test** split, which no choice was tuned on.
    ``include_all`` adds the smallest class's size as a last point.  Returns one row
    per probe: ``features``, ``per_class``, ``seed``, ``accuracy`` (a fraction).
    """
    from tqdm.auto import tqdm

    rows = []
    jobs = []
    for name, f in feats.items():
        smallest = int(torch.bincount(f.train_y).min())
        sizes = sorted({n for n in per_class if n <= smallest} | ({smallest} if include_all else set()))
        jobs += [(name, f, n, seed) for n in sizes for seed in seeds]
    for name, f, n, seed in tqdm(jobs, desc="linear probes", disable=not progress):
        idx = pick_per_class(f.train_y, n, seed)
        res = train_linear_probe(f.train_x[idx], f.train_y[idx], f.test_x, f.test_y, seed=seed, **probe_kwargs)
        rows.append({"features": name, "per_class": n, "seed": seed, "accuracy": res.accuracy})
    return pd.DataFrame(rows)


def summarise(curve: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation (over seeds), worst and best seed of :func:`probe_curve`'s accuracy.

    One row per feature set and ``per_class``; ``n`` counts the seeds.
    """
    stats = curve.groupby(["features", "per_class"], sort=False)["accuracy"]
    return stats.agg(mean="mean", std="std", min="min", max="max", n="count")


def clearly_ahead(curve: pd.DataFrame, first: str, second: str, per_class: int) -> bool:
    """Whether ``first`` beat ``second`` at ``per_class`` by the course's one rule
    (:func:`tlcourse.stats.verdict`: on every seed, by more than the seeds' spread)."""
    part = curve[curve["per_class"] == per_class].set_index("seed")
    by = {name: part[part["features"] == name]["accuracy"] for name in (first, second)}
    return stats.verdict(by[first], by[second]) == "ahead"


# --- pictures and timings ---------------------------------------------------------

def project_2d(x: torch.Tensor, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Two coordinates per feature vector, by PCA or t-SNE (fixed ``seed``)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}.")
    arr = _scale(x.float())[0].numpy()
    with single_thread():
        if method == "pca":
            return PCA(n_components=2, random_state=seed).fit_transform(arr)
        perplexity = float(min(30, max(2, (len(arr) - 1) // 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(arr)


def neighbour_agreement(x: torch.Tensor, y: torch.Tensor, k: int = 5) -> tuple[float, float]:
    """Share of each vector's ``k`` nearest neighbours (Euclidean, among ``x``) with its class.

    Returns the measured share and the share expected by chance (if neighbours
    were drawn at random), so a number near the second means "no class structure".
    """
    if len(x) <= k:
        raise ValueError(f"need more than k={k} vectors, got {len(x)}.")
    dist = torch.cdist(x.float(), x.float())
    dist.fill_diagonal_(float("inf"))
    nearest = dist.topk(k, largest=False).indices
    share = float((y[nearest] == y[:, None]).float().mean())
    counts = torch.bincount(y)
    chance = float(((counts[y] - 1) / (len(y) - 1)).float().mean())
    return share, chance


@dataclass
class EpochTimes:
    """Best-of-``repeats`` wall time of one training epoch each way, and their ratio."""

    network_s: float
    cached_s: float
    n_images: int
    batch_size: int

    @property
    def ratio(self) -> float:
        return self.network_s / self.cached_s

    def __str__(self) -> str:
        return (f"one epoch over {self.n_images} images, batch size {self.batch_size}:\n"
                f"  through the frozen network: {self.network_s * 1000:10.2f} ms\n"
                f"  on cached features:         {self.cached_s * 1000:10.2f} ms\n"
                f"  ratio: cached features are {self.ratio:.0f} times faster per epoch")


def time_epochs(body: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 16,
                repeats: int = 2, cached_repeats: int = 20, device: str = "cpu", seed: int = 0,
                cached: torch.Tensor | None = None) -> EpochTimes:
    """Time one epoch of training a linear head through the frozen ``body`` and on its cached features.

    Both loops do the same work per batch on the head (forward, cross-entropy,
    backward, Adam step); the first also runs every batch through the body under
    ``no_grad``, which is what caching saves.  The images are decoded in memory
    beforehand, so loading files does not inflate the first time.  Each loop runs
    once to warm up, then the best of ``repeats`` (``cached_repeats``) epochs counts.
    ``cached`` may pass the body's features of ``images`` (same order) when they
    are already at hand; otherwise they are computed here first, untimed.
    """
    body = body.eval().to(device)
    images, labels = images.to(device), labels.to(device)
    gen = torch.Generator().manual_seed(seed)
    if cached is None:
        with torch.no_grad():
            cached = torch.cat([body(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    elif len(cached) != len(images):
        raise ValueError(f"cached has {len(cached)} rows for {len(images)} images: pass the features "
                         "of exactly these images, in the same order.")
    cached = cached.to(device)
    with torch.random.fork_rng(devices=[]):  # the head's first weights, without reseeding the caller
        torch.manual_seed(seed)
        head = nn.Linear(cached.shape[1], int(labels.max()) + 1).to(device)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)

    def sync() -> None:
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    def epoch(inputs: torch.Tensor, through_body: bool) -> float:
        order = torch.randperm(len(inputs), generator=gen).to(device)
        sync()
        start = time.perf_counter()
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            x = inputs[idx]
            if through_body:
                with torch.no_grad():
                    x = body(x)
            loss = nn.functional.cross_entropy(head(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sync()
        return time.perf_counter() - start

    epoch(images[:batch_size], True)
    network = min(epoch(images, True) for _ in range(repeats))
    epoch(cached, False)
    on_cache = min(epoch(cached, False) for _ in range(cached_repeats))
    return EpochTimes(network, on_cache, len(images), batch_size)
