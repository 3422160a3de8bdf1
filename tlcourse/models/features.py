"""The frozen network as a feature extractor (lesson 02): the pretrained body runs once over every image,
:func:`cached_features` keeps the pooled vectors on disk, and only a small *linear probe* trains on them."""

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
from threadpoolctl import threadpool_limits
from timm.data import resolve_data_config
from torch import nn
from torchvision import transforms as T
from tqdm.auto import tqdm

from tlcourse import data, models, stats
from tlcourse.data.download import sha256_file
from tlcourse.data.images import load_image
from tlcourse.settings import OFFLINE_ARCH, Settings, atomic_path, cache_dir

#: Bump when the layout of a cache file changes; old files are then recomputed.
CACHE_VERSION = 3


# --- the body and its identity --------------------------------------------------

def model_identity(pretrained: bool = True, seed: int = 0) -> str:
    """A string that names the backbone's weights exactly, for cache keys: the SHA-256 of
    the converted weight file when pretrained, the seed that drew them when random."""
    if pretrained:
        sidecar = models.weights_path().with_suffix(".sha256")
        return f"{OFFLINE_ARCH}:imagenet-sha256-{sidecar.read_text().strip()}"
    return f"{OFFLINE_ARCH}:random-seed{seed}"


def backbone(pretrained: bool = True, seed: int = 0) -> tuple[nn.Module, str]:
    """The offline backbone without its classifier (one pooled vector per image), in eval mode, and
    its identity; random weights are drawn from ``seed`` without reseeding the caller."""
    with models.seeded(seed):
        return models.create_model(pretrained, num_classes=0), model_identity(pretrained, seed)


# --- images and transforms ------------------------------------------------------

def default_transform(model: nn.Module, image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """Resize to a square of ``image_size``, make a tensor and normalise with the model's statistics."""
    cfg = resolve_data_config({}, model=model)  # timm's ImageNet statistics for a model without its own
    return T.Compose([T.Resize((image_size, image_size)), T.ToTensor(),
                      T.Normalize(tuple(cfg["mean"]), tuple(cfg["std"]))])


def class_names(df: pd.DataFrame) -> list[str]:
    """Class names in sorted order, the order fastai's vocab uses too."""
    return sorted(df["label"].astype(str).unique())


def load_images(df: pd.DataFrame, transform: Callable[[Image.Image], torch.Tensor],
                classes: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of ``df`` as one transformed batch, and their class indices."""
    classes = list(classes or class_names(df))
    root = Path(df.attrs["path"])
    return (torch.stack([transform(load_image(root / f)) for f in df["fname"]]),
            torch.tensor([classes.index(str(v)) for v in df["label"]], dtype=torch.long))


@torch.no_grad()
def extract(model: nn.Module, df: pd.DataFrame, transform: Callable, classes: Sequence[str] | None = None,
            batch_size: int = 32, device: str = "cpu", progress: bool = True,
            desc: str = "extracting features") -> tuple[torch.Tensor, torch.Tensor]:
    """Features of every image in ``df`` (row order) and their class indices, uncached; the model
    runs in eval mode under ``no_grad``, so nothing in it changes."""
    classes = list(classes or class_names(df))
    model = model.eval().to(device)
    xs, ys = [], []
    # Decoded here, batch by batch: workers would cost more to start than they save, as this runs once.
    for i in tqdm(range(0, len(df), batch_size), desc=desc, disable=not progress, unit="batch"):
        xb, yb = load_images(df.iloc[i:i + batch_size], transform, classes)
        xs.append(model(xb.to(device)).float().flatten(1).cpu())
        ys.append(yb)
    return torch.cat(xs), torch.cat(ys)


# --- the cache --------------------------------------------------------------------

def data_identity(df: pd.DataFrame) -> dict:
    """What identifies the images: the file list with labels and splits, and the pixels (by
    the folder's ``manifest.json`` when it has one, else by every file's SHA-256)."""
    root = Path(df.attrs["path"])
    manifest = root / "manifest.json"
    rows = df[["fname", "label", "split"]].astype(str).to_csv(index=False)
    if manifest.is_file():
        pixels = sha256_file(manifest)
    else:  # the SHA-256 of the files' SHA-256s, in row order
        per_file = b"".join(bytes.fromhex(sha256_file(root / f)) for f in df["fname"])
        pixels = hashlib.sha256(per_file).hexdigest()
    return {"pixels_sha256": pixels, "files_sha256": hashlib.sha256(rows.encode()).hexdigest(),
            "n_images": len(df)}


def cache_key(model_id: str, dataset: str, df: pd.DataFrame, image_size: int,
              transform_desc: str) -> tuple[str, dict]:
    """The SHA-256 key of one set of features, and the description it was hashed from."""
    described = {"version": CACHE_VERSION, "model": model_id, "dataset": dataset,
                 "data": data_identity(df), "image_size": int(image_size), "transforms": transform_desc}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest(), described


def _checksum(tensors: Sequence[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(str(tuple(t.shape)).encode() + t.contiguous().numpy().tobytes())
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
        return (f"Features({len(self.train_x)} train + {len(self.valid_x)} valid + {len(self.test_x)} test "
                f"images, {self.train_x.shape[1]} numbers each, {len(self.classes)} classes, "
                f"{'loaded from cache' if self.from_cache else 'computed'}: {self.path.name})")


_PARTS = ("train_x", "train_y", "valid_x", "valid_y", "test_x", "test_y")


def _load(path: Path, key: str) -> dict | None:
    """The stored payload when ``path`` is a complete file for ``key``; ``None`` (with a note) otherwise."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload["key"] == key and payload["checksum"] == _checksum([payload[p] for p in _PARTS]):
            return payload
        print(f"Feature cache {path.name} failed its checksum; recomputing it.")
    except Exception as err:  # truncated or garbled bytes surface as many error types
        print(f"Feature cache {path.name} could not be read ({type(err).__name__}); recomputing it.")
    return None


#: Cache folders already reported as not writable (one message each per session).
_UNWRITABLE: set[Path] = set()


def cached_features(model: nn.Module, model_id: str, df: pd.DataFrame, image_size: int,
                    dataset: str | None = None, transform: Callable | None = None,
                    transform_desc: str | None = None, batch_size: int = 32, device: str = "cpu",
                    progress: bool = True, verbose: bool = True, cache: Path | None = None) -> Features:
    """Features of ``df``'s train, valid and test images, from ``cache / "features"`` when possible,
    keyed by ``model_id``, the data (:func:`data_identity`), ``image_size`` and the transforms
    (``transform_desc`` or ``repr(transform)``); written atomically, an unwritable folder gets one message."""
    if not {"fname", "label", "split"} <= set(df.columns) or "path" not in df.attrs:
        raise ValueError("df must be an items() table: columns fname, label, split and "
                         "df.attrs['path']; build it with tlcourse.data.items().")
    if missing := [split for split in data.SPLITS if not (df["split"] == split).any()]:
        raise ValueError(f"df has no {' or '.join(missing)} rows: it needs train, valid and test rows "
                         "(the `split` column).")
    transform = transform or default_transform(model, image_size)
    transform_desc = transform_desc if transform_desc is not None else repr(transform)
    dataset = dataset or Path(df.attrs["path"]).name
    key, described = cache_key(model_id, dataset, df, image_size, transform_desc)
    path = (cache or cache_dir()) / "features" / f"{model_id.split(':')[0]}-{key[:20]}.pt"
    classes = class_names(df)

    if (payload := _load(path, key)) is not None:
        if verbose:
            print(f"Cache hit: loaded features from {path}")
        return Features(*(payload[p] for p in _PARTS), classes=list(payload["classes"]), key=key,
                        path=path, from_cache=True)

    short_id = "pretrained" if "imagenet" in model_id else model_id.split(":")[-1]
    start = time.perf_counter()
    parts = [part for split in data.SPLITS
             for part in extract(model, df[df["split"] == split], transform, classes, batch_size, device,
                                 progress, desc=f"{split} features ({short_id})")]
    try:
        with atomic_path(path) as tmp:  # written next to ``path``, then moved into place in one step
            torch.save(dict(zip(_PARTS, parts), key=key, classes=classes, described=json.dumps(described),
                            checksum=_checksum(parts)), tmp)
        where = f"saved {path}"
    except OSError as err:  # PermissionError, read-only file system, disk full ...
        where = "did not save them"
        if path.parent not in _UNWRITABLE:
            _UNWRITABLE.add(path.parent)
            print(f"Note: cannot write the feature cache folder {path.parent} ({type(err).__name__}: "
                  f"{err.strerror or err}). Carrying on without the cache: features are recomputed "
                  "in every new session. To keep them, point TLCOURSE_CACHE at a writable folder.")
    if verbose:
        print(f"Cache miss: computed features in {time.perf_counter() - start:.1f} s and {where}")
    return Features(*parts, classes=classes, key=key, path=path, from_cache=False)


def dataset_features(settings: Settings, pretrained: bool = True, seed: int = 0, name: str | None = None,
                     **kwargs) -> Features:
    """Cached features of the mode's data set (or ``name``) under the offline backbone."""
    name = name or settings.dataset
    model, model_id = backbone(pretrained, seed)
    return cached_features(model, model_id, data.items(name, settings), settings.image_size, dataset=name,
                           device=settings.device, cache=settings.cache_dir, **kwargs)


def pixel_features(df: pd.DataFrame, size: int = 32) -> Features:
    """The raw-pixel baseline in :func:`cached_features`'s form: every image resized to ``size``
    x ``size`` RGB, flattened, in 0-1.  Not cached: that takes well under a second."""
    if "path" not in df.attrs:
        raise ValueError("df must be an items() table with df.attrs['path']; use tlcourse.data.items().")
    to_pixels = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Lambda(torch.flatten)])
    classes = class_names(df)
    parts = [part for split in data.SPLITS
             for part in load_images(df[df["split"] == split], to_pixels, classes)]
    return Features(*parts, classes=classes, key=f"pixels-{size}", path=Path(f"pixels-{size}px (not cached)"),
                    from_cache=False)


# --- linear probes ----------------------------------------------------------------

@contextmanager
def single_thread() -> Iterator[None]:
    """Run the block on one CPU thread (torch, BLAS, OpenMP), then restore the settings: on a few
    hundred short vectors one thread is as fast, and on a shared CPU several wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def _scale(train_x: torch.Tensor,
           *others: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The training mean, one overall spread, and every tensor centred and scaled by them: a scalar keeps
    the geometry, yet puts random and pretrained features (sizes far apart) on one footing."""
    mean = train_x.mean(0, keepdim=True)
    spread = (train_x - mean).pow(2).mean().sqrt().clamp_min(1e-8)
    return mean, spread, [(t - mean) / spread for t in (train_x, *others)]


def _epoch(head: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, order: torch.Tensor,
           batch_size: int, body: nn.Module | None = None) -> list[tuple[torch.Tensor, int]]:
    """One epoch of steps on ``head`` over ``x[order]``, through the frozen ``body`` first if given;
    each batch's (loss, size)."""
    steps = []
    for idx in order.split(batch_size):
        inputs = x[idx]
        if body is not None:
            with torch.no_grad():
                inputs = body(inputs)
        loss = nn.functional.cross_entropy(head(inputs), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps.append((loss.detach(), len(idx)))
    return steps


@dataclass
class ProbeResult:
    """A trained linear probe: the layer, its held-out accuracy and loss per epoch; ``head`` reads
    features scaled with the training ``mean`` and ``spread``, which :meth:`predict` applies."""

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
                       valid_y: torch.Tensor, epochs: int = 100, lr: float = 1e-2, weight_decay: float = 1e-3,
                       batch_size: int | None = None, seed: int = 0) -> ProbeResult:
    """Train one ``nn.Linear`` on features with Adam, full-batch unless ``batch_size``; accuracy on
    held-out rows (validation to choose settings, test for results); ``seed`` fixes weights and order."""
    if len(train_x) != len(train_y) or len(valid_x) != len(valid_y):
        raise ValueError("features and labels differ in length: pass matching x and y tensors.")
    with single_thread():
        n_classes = int(max(train_y.max(), valid_y.max())) + 1
        mean, spread, (train_x, valid_x) = _scale(train_x.float(), valid_x.float())
        gen = torch.Generator().manual_seed(seed)
        with models.seeded(seed):
            head = nn.Linear(train_x.shape[1], n_classes)
        opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
        losses = []
        for _ in range(epochs):
            order = torch.randperm(len(train_x), generator=gen)
            steps = _epoch(head, opt, train_x, train_y, order, batch_size or len(train_x))
            losses.append(sum(float(loss) * n for loss, n in steps) / len(train_x))
        with torch.no_grad():
            acc = float((head(valid_x).argmax(1) == valid_y).float().mean())
    return ProbeResult(head, acc, losses, mean, spread)


def sklearn_probe(train_x: torch.Tensor, train_y: torch.Tensor, valid_x: torch.Tensor,
                  valid_y: torch.Tensor, C: float = 1.0, seed: int = 0) -> float:
    """Held-out accuracy (on ``valid_x``: validation or test rows) of scikit-learn's
    ``LogisticRegression`` on the same scaled features, as a cross-check."""
    from sklearn.linear_model import LogisticRegression

    _, _, (train_x, valid_x) = _scale(train_x.float(), valid_x.float())
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
    members = (torch.nonzero(y == c).flatten() for c in torch.unique(y))
    return torch.cat([m[torch.randperm(len(m), generator=gen)[:per_class]] for m in members]).sort().values


def probe_curve(feats: dict[str, Features], per_class: Sequence[int], seeds: Sequence[int],
                include_all: bool = False, progress: bool = True, **probe_kwargs) -> pd.DataFrame:
    """Test accuracy of the linear probe per feature set, ``per_class`` and seed (each seed labels other
    random training images; sizes above the smallest class skipped, ``include_all`` adds it), scored on
    the whole **test** split: one row per probe (``features``, ``per_class``, ``seed``, ``accuracy``)."""
    jobs = []
    for name, f in feats.items():
        smallest = int(torch.bincount(f.train_y).min())
        sizes = sorted({n for n in per_class if n <= smallest} | ({smallest} if include_all else set()))
        jobs += [(name, f, n, seed) for n in sizes for seed in seeds]
    rows = []
    for name, f, n, seed in tqdm(jobs, desc="linear probes", disable=not progress):
        idx = pick_per_class(f.train_y, n, seed)
        probe = train_linear_probe(f.train_x[idx], f.train_y[idx], f.test_x, f.test_y, seed=seed,
                                   **probe_kwargs)
        rows.append({"features": name, "per_class": n, "seed": seed, "accuracy": probe.accuracy})
    return pd.DataFrame(rows)


def summarise(curve: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation (over seeds), worst and best seed of :func:`probe_curve`'s accuracy:
    one row per feature set and ``per_class``; ``n`` counts the seeds."""
    by = curve.groupby(["features", "per_class"], sort=False)["accuracy"]
    return by.agg(mean="mean", std="std", min="min", max="max", n="count")


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
    _, _, (scaled,) = _scale(x.float())
    arr = scaled.numpy()
    with single_thread():
        if method == "pca":
            return PCA(n_components=2, random_state=seed).fit_transform(arr)
        perplexity = float(min(30, max(2, (len(arr) - 1) // 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(arr)


def neighbour_agreement(x: torch.Tensor, y: torch.Tensor, k: int = 5) -> tuple[float, float]:
    """Share of each vector's ``k`` nearest neighbours (Euclidean, among ``x``) with its class,
    and the share expected by chance: a number near the second means "no class structure"."""
    if len(x) <= k:
        raise ValueError(f"need more than k={k} vectors, got {len(x)}.")
    nearest = torch.cdist(x.float(), x.float()).fill_diagonal_(float("inf")).topk(k, largest=False).indices
    share = float((y[nearest] == y[:, None]).float().mean())
    chance = float(((torch.bincount(y)[y] - 1) / (len(y) - 1)).float().mean())
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
    """Time one epoch of training a linear head through the frozen ``body`` and on its features (the
    body's forward pass is what caching saves); each loop warms up, then its best of ``repeats``
    (``cached_repeats``) counts.  ``cached``: ``images``' features if at hand (else computed, untimed)."""
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
    with models.seeded(seed):
        head = nn.Linear(cached.shape[1], int(labels.max()) + 1).to(device)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)

    sync = torch.cuda.synchronize if str(device).startswith("cuda") else lambda: None

    def timed(inputs: torch.Tensor, through: nn.Module | None) -> float:
        order = torch.randperm(len(inputs), generator=gen).to(device)
        sync()
        start = time.perf_counter()
        _epoch(head, opt, inputs, labels, order, batch_size, through)
        sync()
        return time.perf_counter() - start

    timed(images[:batch_size], body)
    network = min(timed(images, body) for _ in range(repeats))
    timed(cached, None)
    on_cache = min(timed(cached, None) for _ in range(cached_repeats))
    return EpochTimes(network, on_cache, len(images), batch_size)
