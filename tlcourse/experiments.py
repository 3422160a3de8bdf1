"""Lesson 05's experiments: when does an ImageNet start help, measured instead of claimed.

One *run* trains one strategy on one data set, with some training images a class and one
seed, and reports its accuracy on the data set's fixed test split.  The strategies:

* ``head-only``: lesson 02's linear probe on the frozen body's *cached* features (fast).
* ``fine-tune``: fastai's ``fine_tune`` with the course's recipe (:data:`tlcourse.models.RECIPE`).
* ``freeze``: the same, but the first ``k`` body groups stay frozen after the first epoch.
* ``scratch``: a small random CNN (:func:`scratch_cnn`, :data:`SCRATCH`) on small images in memory.

All strategies of one seed train on the *same* images (:func:`train_positions`).  :func:`run_grid`
keeps one JSON file per finished run under ``cache_dir/experiments``, keyed by all it depends on, so
a repeated or interrupted grid trains only what is missing.  :func:`lesson_runs` is lesson 05's grid.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import suppress
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.vision.all import (Callback, ConvLayer, CrossEntropyLossFlat, DataLoader, DataLoaders, Flatten,
                               Learner, accuracy)
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from tlcourse import data, models, stats
from tlcourse.data.images import load_image
from tlcourse.models import features, records
from tlcourse.settings import Settings, atomic_path

STRATEGIES = ("scratch", "head-only", "fine-tune", "freeze")
#: Bump when what a run computes changes; old results are then trained again.
VERSION = 4


@dataclass(frozen=True)
class ScratchRecipe:
    """How the scratch baseline trains, chosen on validation data by ``benchmarks/scratch_lr.py``.

    ``lr``, the peak of ``fit_one_cycle``: ``lr_find`` (Fashion-MNIST, 100 a class) suggested
    4e-3; whole runs at 5e-3, 1e-2, 2e-2 and 4e-2 scored 77.1, 78.3, 78.9 and 79.2 % on the
    validation split (3 seeds not used elsewhere): 2e-2 is the higher end of what is safe.
    A run lasts ``epochs`` epochs, or ``min_steps`` optimiser steps when that is more, so a
    small training set is not cut off early.  ``photo_size``: pixels a side of Pets photos.
    """

    lr: float = 2e-2
    weight_decay: float = 0.05
    epochs: int = 12
    min_steps: int = 250
    max_batch_size: int = 64
    widths: tuple[int, ...] = (32, 64, 128)
    photo_size: int = 32
    shift: int = 2
    flip: bool = True


@dataclass(frozen=True)
class ProbeRecipe:
    """The head-only run: lesson 02's linear probe on cached features (full batch, Adam)."""

    epochs: int = 100
    lr: float = 1e-2
    weight_decay: float = 1e-3


SCRATCH = ScratchRecipe()
PROBE = ProbeRecipe()


@dataclass(frozen=True)
class Run:
    """One training run.  ``frozen`` counts the frozen body groups (``freeze`` only);
    ``curve=True`` also measures validation accuracy after every epoch (for the
    learning curves); a saved run with a curve serves a request without one."""

    domain: str
    strategy: str
    per_class: int
    seed: int
    frozen: int = 0
    curve: bool = False

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"Unknown strategy {self.strategy!r}: choose one of {', '.join(STRATEGIES)}.")
        if self.per_class < 1:
            raise ValueError(f"per_class must be at least 1, got {self.per_class}.")
        if self.strategy != "freeze" and self.frozen:
            raise ValueError("frozen only applies to the 'freeze' strategy.")


def grid(domains: Sequence[str], strategies: Sequence[str], sizes: Sequence[int], seeds: Sequence[int],
         frozen: Sequence[int] = (), curve: bool = False) -> list[Run]:
    """Every combination as a list of runs (``frozen`` lists the depths of ``freeze`` runs)."""
    return [Run(domain, strategy, int(size), int(seed), int(k), curve)
            for domain, size, strategy in product(domains, sizes, strategies)
            for k in (frozen if strategy == "freeze" else (0,)) for seed in seeds]


def _identity(run: Run) -> dict:
    """The fields that name a run's result (all but ``curve``)."""
    return {k: v for k, v in asdict(run).items() if k != "curve"}


#: Learning curves on the far domain are measured on this many validation images a class (of
#: 100): validating 1,000 images through EfficientNet after every epoch would double a run.
CURVE_VALID_PER_CLASS = 30


def curve_valid(domain: str, s: Settings) -> np.ndarray:
    """Positions, among the validation rows, of the images the learning curves are measured on."""
    valid = _table(domain, s).query("split == 'valid'").reset_index(drop=True)
    if domain != s.far_dataset:
        return np.arange(len(valid))
    return np.sort(valid.groupby("label", sort=False).head(CURVE_VALID_PER_CLASS).index.to_numpy())


def network_size(domain: str, settings: Settings) -> int:
    """Pixels a side of the images an ImageNet network sees for ``domain``."""
    return settings.far_image_size if domain == settings.far_dataset else settings.image_size


def scratch_size(domain: str, settings: Settings) -> int:
    """Pixels a side of the images the scratch CNN sees: Fashion-MNIST's own 28, photos smaller."""
    return 28 if domain == settings.far_dataset else SCRATCH.photo_size


@lru_cache(maxsize=8)
def _data_digest() -> str:
    return hashlib.sha256(json.dumps(data.verify_packaged(), sort_keys=True).encode()).hexdigest()[:16]


def run_key(run: Run, s: Settings) -> dict:
    """Everything the result of ``run`` depends on, as plain JSON values."""
    key = {"version": VERSION, "run": _identity(run), "mode": s.mode, "arch": s.arch, "data": _data_digest(),
           "batch_size": s.batch_size}
    if run.strategy == "scratch":
        key.update(scratch=asdict(SCRATCH), size=scratch_size(run.domain, s))
    else:
        key.update(size=network_size(run.domain, s), recipe=asdict(models.RECIPE))
        key.update(probe=asdict(PROBE)) if run.strategy == "head-only" else key.update(epochs=s.sweep_epochs)
    return key


def result_path(run: Run, s: Settings) -> Path:
    """Where the result of ``run`` is saved: its fields and a digest of :func:`run_key` in the name."""
    digest = hashlib.sha256(json.dumps(run_key(run, s), sort_keys=True).encode()).hexdigest()[:12]
    name = f"{run.domain}_{run.strategy}_k{run.frozen}_n{run.per_class}_seed{run.seed}_{digest}.json"
    return s.cache_dir / "experiments" / name


def load_result(run: Run, s: Settings) -> dict | None:
    """The saved result of ``run``, or ``None`` when it is missing, stale or lacks a needed curve."""
    try:
        saved = json.loads(result_path(run, s).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    result = saved.get("result")
    if saved.get("key") != json.loads(json.dumps(run_key(run, s))) or not isinstance(result, dict):
        return None
    if run.curve and not any(point.get("accuracy") is not None for point in result.get("curve") or []):
        return None  # saved without a learning curve, which this request needs
    return result


@lru_cache(maxsize=16)
def _table(domain: str, s: Settings) -> pd.DataFrame:
    return data.items(domain, s)


def train_positions(domain: str, per_class: int, seed: int, s: Settings) -> np.ndarray:
    """Positions, among the data set's training rows, of the images ``data.subsample`` picks:
    the cached features and the scratch tensors are in training-row order, so these positions
    select there the images the fine-tune run reads."""
    df = _table(domain, s)
    train = df[df.split == "train"].reset_index(drop=True)
    picked = set(data.subsample(df, per_class, seed).query("split == 'train'")["fname"])
    return np.flatnonzero(train["fname"].isin(picked).to_numpy())


def domain_features(domain: str, s: Settings) -> features.Features:
    """Cached ImageNet features of ``domain`` at the size an ImageNet network sees it."""
    model, model_id = features.backbone(True)
    return features.cached_features(model, model_id, _table(domain, s), network_size(domain, s),
                                    dataset=domain, device=s.device, verbose=False, cache=s.cache_dir)


def _square(img: Image.Image, size: int) -> Image.Image:
    """The centre square of ``img``, resized to ``size`` pixels a side."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)


def image_tensors(domain: str, s: Settings) -> dict:
    """Every image of ``domain`` as uint8 tensors at the scratch size, per split, cached on disk:
    Fashion-MNIST straight from the packaged arrays (1 channel, 28 px), photos centre-cropped
    to a square and resized (3 channels)."""
    df, size = _table(domain, s), scratch_size(domain, s)
    classes = features.class_names(df)
    rows = df[["fname", "label", "split"]].to_csv(index=False)
    digest = hashlib.sha256(f"{rows}{size}{_data_digest()}".encode()).hexdigest()[:16]
    path = s.cache_dir / "tensors" / f"{domain}-{size}px-{digest}.pt"
    with suppress(Exception):  # a missing or damaged file is (re)built
        return torch.load(path, weights_only=True)
    out, root = {"classes": classes}, Path(df.attrs["path"])
    arrays = data.fashion_arrays() if domain == s.far_dataset else None
    for split in data.SPLITS:
        part = df[df.split == split]
        if arrays is not None:  # the table's rows of the arrays (file i of a split is row i)
            rows = [int(Path(f).stem) for f in part["fname"]]
            x = torch.from_numpy(arrays[f"{split}_x"][rows]).unsqueeze(1)
        else:
            x = torch.stack([torch.from_numpy(np.array(_square(load_image(root / f), size))).permute(2, 0, 1)
                             for f in part["fname"]])
        out[f"{split}_x"] = x.contiguous()
        out[f"{split}_y"] = torch.tensor([classes.index(str(v)) for v in part["label"]])
    with atomic_path(path) as tmp:
        torch.save(out, tmp)
    return out


def scratch_cnn(n_in: int, n_out: int, widths: Sequence[int] = SCRATCH.widths) -> nn.Sequential:
    """A small CNN: per width a stride-2 3x3 ``ConvLayer`` (convolution, BatchNorm, ReLU), then pooling,
    dropout and a linear layer.  About 0.1 million weights by default (EfficientNet-Lite0: 3.4
    million): enough for 28-pixel clothing, few enough to train on a CPU in seconds."""
    channels = (n_in, *widths)
    convs = [ConvLayer(c_in, c_out, ks=3, stride=2) for c_in, c_out in zip(channels, channels[1:])]
    return nn.Sequential(*convs, nn.AdaptiveAvgPool2d(1), Flatten(), nn.Dropout(0.2),
                         nn.Linear(channels[-1], n_out))


class ShiftFlip(Callback):
    """Augmentation for small images held in memory: a random shift of up to ``shift`` pixels
    (padding by repeating the border) and a random left-right flip, per image, training only."""

    def __init__(self, shift: int = 2, flip: bool = True):
        self.shift, self.flip = shift, flip

    def before_batch(self):
        if not self.training:
            return
        x, p = self.xb[0], self.shift
        n, _, h, w = x.shape
        if p:
            padded = nn.functional.pad(x, (p, p, p, p), mode="replicate")
            dx, dy = torch.randint(0, 2 * p + 1, (2, n)).tolist()
            x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
        if self.flip:
            x = torch.where((torch.rand(n) < 0.5)[:, None, None, None], x.flip(-1), x)
        self.learn.xb = (x,)


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - 0.5) / 0.25


def scratch_batch_size(n_train: int) -> int:
    """Batches of up to ``SCRATCH.max_batch_size``, and at least 4 batches an epoch."""
    return max(2, min(SCRATCH.max_batch_size, n_train // 4))


def scratch_epochs(n_train: int) -> int:
    """``SCRATCH.epochs``, or more when that would be fewer than ``SCRATCH.min_steps`` steps."""
    steps = n_train // scratch_batch_size(n_train)
    return max(SCRATCH.epochs, math.ceil(SCRATCH.min_steps / max(steps, 1)))


def _tensor_dl(x: torch.Tensor, y: torch.Tensor, bs: int, train: bool, device: str) -> DataLoader:
    """A fastai ``DataLoader`` that cuts batches straight out of two tensors (no per-image work)."""
    return DataLoader(list(range(len(x))), bs=bs, shuffle=train, drop_last=train, device=device,
                      create_batch=lambda idx: (x[torch.as_tensor(idx)], y[torch.as_tensor(idx)]),
                      retain=lambda res, b: res, num_workers=0)


@lru_cache(maxsize=1)
def _scratch_dir() -> tempfile.TemporaryDirectory:
    """Where this process's learners keep their files: one temporary folder, removed at exit."""
    return tempfile.TemporaryDirectory(prefix="tlcourse-05-", ignore_cleanup_errors=True)


def scratch_learner(domain: str, per_class: int, seed: int, s: Settings,
                    valid: str = "valid", **kwargs) -> Learner:
    """A fastai ``Learner`` for the scratch CNN on ``per_class`` images a class held in memory,
    validated on split ``valid``.  Made inside ``models.seeded(seed)`` (as :func:`train_run`
    does), a run repeats exactly."""
    t = image_tensors(domain, s)
    idx = torch.from_numpy(train_positions(domain, per_class, seed, s))
    train_x, train_y = _as_float(t["train_x"][idx]), t["train_y"][idx]
    keep = torch.from_numpy(curve_valid(domain, s)) if valid == "valid" else slice(None)
    vx, vy = t[f"{valid}_x"][keep], t[f"{valid}_y"][keep]
    dls = DataLoaders(_tensor_dl(train_x, train_y, scratch_batch_size(len(idx)), True, s.device),
                      _tensor_dl(_as_float(vx), vy, 256, False, s.device))
    dls.c = len(t["classes"])
    model = scratch_cnn(int(t["train_x"].shape[1]), len(t["classes"]))
    cbs = [ShiftFlip(SCRATCH.shift, SCRATCH.flip)] + list(kwargs.pop("cbs", []))
    return Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy, cbs=cbs,
                   path=Path(_scratch_dir().name), wd=SCRATCH.weight_decay, **kwargs)


def curve_epochs(total: int, points: int = 12) -> list[int]:
    """About ``points`` epochs from 1 to ``total``, evenly spaced on a log scale (for a long curve)."""
    return sorted({int(round(v)) for v in np.geomspace(1, total, points)})


def _train_scratch(run: Run, s: Settings) -> dict:
    epochs = scratch_epochs(len(train_positions(run.domain, run.per_class, run.seed, s)))
    log = records.EpochLog(run.curve, curve_epochs(epochs))
    learn = scratch_learner(run.domain, run.per_class, run.seed, s, cbs=[log])
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(epochs, SCRATCH.lr)
    t, model = image_tensors(run.domain, s), learn.model.eval()
    with torch.no_grad():  # the test split, in batches of 512
        preds = torch.cat([model(_as_float(x)).argmax(1) for x in t["test_x"].split(512)])
    return {"accuracy": float((preds == t["test_y"]).float().mean()), "epochs": epochs, "curve": log.rows,
            "n_classes": len(t["classes"])}


def _train_head(run: Run, s: Settings) -> dict:
    f = domain_features(run.domain, s)
    idx = torch.from_numpy(train_positions(run.domain, run.per_class, run.seed, s))
    keep = torch.from_numpy(curve_valid(run.domain, s))

    def probe(epochs):
        return features.train_linear_probe(f.train_x[idx], f.train_y[idx], f.valid_x[keep], f.valid_y[keep],
                                           epochs=epochs, lr=PROBE.lr, weight_decay=PROBE.weight_decay,
                                           seed=run.seed)

    test = float((probe(PROBE.epochs).predict(f.test_x) == f.test_y).float().mean())
    # the same seed repeats the same steps, so a shorter run is a prefix of the long one
    parts = {e: probe(e) for e in curve_epochs(PROBE.epochs, points=8)} if run.curve else {}
    curve = [{"epoch": e, "train_loss": p.losses[-1], "accuracy": p.accuracy} for e, p in parts.items()]
    return {"accuracy": test, "epochs": PROBE.epochs, "curve": curve, "n_classes": len(f.classes)}


def _train_network(run: Run, s: Settings) -> dict:
    df = data.subsample(_table(run.domain, s), run.per_class, run.seed)
    valid = df[df.split == "valid"].reset_index(drop=True).iloc[curve_valid(run.domain, s)]
    df = pd.concat([df[df.split == "train"], valid])  # data.get_dls, with the curves' validation rows
    dls = data.datablock(df.attrs["path"], network_size(run.domain, s), augment=True).dataloaders(
        df, path=s.cache_dir, bs=data.batch_size(int((df.split == "train").sum()), s), seed=run.seed,
        device=s.device, num_workers=s.num_workers, pin_memory=s.pin_memory)
    log, r = records.EpochLog(run.curve), models.RECIPE
    kwargs = r.learner_kwargs([log])
    if run.strategy == "freeze":
        kwargs["splitter"] = models.group_splitter
    learn = models.learner(dls, arch=s.arch, path=Path(_scratch_dir().name), **kwargs)
    with learn.no_bar(), learn.no_logging():
        if run.strategy == "fine-tune":
            learn.fine_tune(s.sweep_epochs, base_lr=r.base_lr, freeze_epochs=r.freeze_epochs,
                            lr_mult=r.lr_mult)
        else:  # fine_tune written out, with freeze_to(k) in place of unfreeze()
            learn.freeze()  # creates the optimiser: one parameter group per body group, one for the head
            learn.fit_one_cycle(r.freeze_epochs, slice(r.base_lr), pct_start=0.99)
            learn.freeze_to(run.frozen)
            lrs = [r.base_lr / 2 / r.lr_mult] * (len(learn.opt.param_groups) - 1) + [r.base_lr / 2]
            learn.fit_one_cycle(s.sweep_epochs, lrs, pct_start=0.3, div=5.0)
    learn.remove_cb(log)
    acc = models.test_accuracy(learn, data.test_rows(run.domain, s))
    return {"accuracy": acc, "epochs": r.freeze_epochs + s.sweep_epochs, "curve": log.rows,
            "n_classes": int(dls.c)}


def train_run(run: Run, s: Settings) -> dict:
    """Train ``run`` and return its result: test ``accuracy``, ``epochs``, ``seconds``,
    ``n_classes`` and (with ``curve``) one dict per epoch."""
    start = time.perf_counter()
    train = {"scratch": _train_scratch, "head-only": _train_head}.get(run.strategy, _train_network)
    with models.seeded(run.seed):
        result = train(run, s)
    return {**result, "seconds": time.perf_counter() - start,
            "n_train": len(train_positions(run.domain, run.per_class, run.seed, s))}


def _train_and_save(run: Run, s: Settings) -> dict:
    """Train one run on one CPU thread and save it, atomically (the work of one worker process)."""
    torch.set_num_threads(1)
    result = train_run(run, s)
    with atomic_path(result_path(run, s)) as tmp:  # an interrupted run leaves no half-written file
        tmp.write_text(json.dumps({"key": run_key(run, s), "result": result}))
    return result


def _prepare(runs: Sequence[Run], s: Settings) -> None:
    """Compute the cached inputs the runs share (features, image tensors) once, before training."""
    for strategy, make in (("head-only", domain_features), ("scratch", image_tensors)):
        for domain in dict.fromkeys(r.domain for r in runs if r.strategy == strategy):
            make(domain, s)


def run_grid(runs: Iterable[Run], settings: Settings, progress: bool = True,
             workers: int | None = None) -> pd.DataFrame:
    """Run (or load) every run; one row per run with its test accuracy.

    Finished runs are read from ``cache_dir/experiments``, each new one saved as it ends.  Every
    run uses one CPU thread and its own seed; ``workers`` processes (default: ``TLCOURSE_WORKERS``,
    else one per CPU core, at most 2) train side by side, with the same numbers as one would.
    """
    s, runs = settings, list(dict.fromkeys(runs))
    curved = {replace(r, curve=False) for r in runs if r.curve}  # a run with a curve serves one without
    runs = [r for r in runs if r.curve or r not in curved]
    results = {run: load_result(run, s) for run in runs}
    missing = [run for run, result in results.items() if result is None]
    loaded, threads = len(runs) - len(missing), torch.get_num_threads()
    workers = min(workers or int(os.environ.get("TLCOURSE_WORKERS", min(2, os.cpu_count() or 1))),
                  len(missing))
    bar = tqdm(total=len(runs), initial=loaded, desc="runs", unit="run", disable=not progress)
    try:
        torch.set_num_threads(1)
        if missing:
            _prepare(missing, s)
        if workers > 1:  # longest runs first, so that both workers finish at about the same time
            order = sorted(missing, key=lambda r: (r.strategy == "head-only", -r.per_class))
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(_train_and_save, run, s): run for run in order}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update(1)
        else:
            for run in missing:
                bar.set_postfix_str(f"training {run.domain} {run.strategy} n={run.per_class} seed={run.seed}")
                results[run] = _train_and_save(run, s)
                bar.update(1)
    finally:
        torch.set_num_threads(threads)
        bar.set_postfix_str(f"{len(missing)} trained, {loaded} loaded from the cache")
        bar.close()
    df = pd.DataFrame([{**_identity(run), **results[run]} for run in runs])
    if len(df):
        df["chance"] = 1 / df["n_classes"]
    df.attrs.update(trained=len(missing), loaded=loaded)
    return df


#: Sizes at which the network strategies run in quick mode (fine_tune costs seconds an image on a CPU).
QUICK_NETWORK_SIZES = {"near": (5, 20), "few_shot": (), "far": (5,)}
#: Sizes at which scratch runs in quick mode (photos: it stays near chance at every size).
QUICK_SCRATCH_SIZES = {"near": (5, 20, 60), "few_shot": (5,), "far": (5, 20, 100, 500)}


def network_sizes(kind: str, s: Settings, strategy: str = "fine-tune") -> tuple[int, ...]:
    """Sizes at which ``strategy`` (fine-tune or scratch) runs: all in full mode, some in quick mode."""
    every = getattr(s, f"{kind}_sizes")
    if s.mode == "full":
        return tuple(every)
    quick = QUICK_SCRATCH_SIZES if strategy == "scratch" else QUICK_NETWORK_SIZES
    return tuple(n for n in quick[kind] if n in every)


def curve_sizes(kind: str, s: Settings) -> tuple[int, int]:
    """The small and the large size of the learning curves: the smallest size where all
    three strategies run, and the largest where fine-tune runs (quick mode, near) or
    where scratch runs (far: quick mode has no fine-tune there)."""
    ft, sc = network_sizes(kind, s), network_sizes(kind, s, "scratch")
    both = [n for n in ft if n in sc]
    return min(both), (max(sc) if kind == "far" else max(both))


def freeze_plan(s: Settings) -> dict:
    """The freeze-depth sweep: one size per domain, the depths ``k`` (0 is fine-tune)."""
    n = models.n_body_groups(s.arch)
    quick = s.mode == "quick" or s.scale == "smoke"
    depths = {0, n // 2, n} if quick else {*range(0, n + 1, 2 if n > 6 else 1), n}
    return {"sizes": {s.dataset: network_sizes("near", s)[0], s.far_dataset: network_sizes("far", s)[0]},
            "depths": tuple(sorted(depths))}


def lesson_runs(s: Settings, seeds: Sequence[int] | None = None) -> list[Run]:
    """Every run lesson 05 shows (the notebook, the tests and the benchmark use this one list)."""
    seeds = tuple(seeds if seeds is not None else s.seeds)
    runs = []
    for kind, domain in (("near", s.dataset), ("few_shot", s.few_shot_dataset), ("far", s.far_dataset)):
        curves = curve_sizes(kind, s) if kind != "few_shot" else ()
        for n in getattr(s, f"{kind}_sizes"):
            trained = [st for st in ("scratch", "fine-tune") if n in network_sizes(kind, s, st)]
            runs += grid([domain], ["head-only", *trained], [n], seeds, curve=n in curves)
    plan = freeze_plan(s)
    for domain, n in plan["sizes"].items():
        runs += grid([domain], ["freeze"], [n], seeds, frozen=[k for k in plan["depths"] if k > 0])
    return runs


def lesson_grid(s: Settings, seeds: Sequence[int] | None = None, progress: bool = True) -> pd.DataFrame:
    """:func:`run_grid` over :func:`lesson_runs`."""
    return run_grid(lesson_runs(s, seeds), s, progress)


def summary(df: pd.DataFrame, by: Sequence[str] = ("domain", "strategy", "per_class")) -> pd.DataFrame:
    """Test accuracy per group over seeds: mean, std, lowest, highest, number of seeds."""
    return (df.groupby(list(by)).agg(mean=("accuracy", "mean"), std=("accuracy", "std"),
                                     low=("accuracy", "min"), high=("accuracy", "max"),
                                     seeds=("accuracy", "count"), seconds=("seconds", "mean"))
            .reset_index())


def curves(df: pd.DataFrame) -> pd.DataFrame:
    """The learning curves in ``df`` (runs made with ``curve=True``), one row per epoch."""
    return pd.DataFrame([{"domain": r.domain, "strategy": r.strategy, "per_class": r.per_class,
                          "seed": r.seed, "chance": r.chance, **point}
                         for r in df.itertuples() for point in (r.curve or [])
                         if point.get("accuracy") is not None])


def compare(df: pd.DataFrame, domain: str, per_class: int, a: str, b: str, s: Settings) -> dict:
    """``a`` minus ``b`` on the same seeds (same training images): mean, lowest and highest
    difference, and whether the gap is *decided*: the same sign on every seed and larger
    than one standard error of a test accuracy on this many test images."""
    part = df[(df.domain == domain) & (df.per_class == per_class) & (df.frozen == 0)]
    pa, pb = (part[part.strategy == x].set_index("seed")["accuracy"] for x in (a, b))
    seeds = pa.index.intersection(pb.index)
    if not len(seeds):
        raise ValueError(f"no seeds with both {a} and {b} on {domain} at {per_class} a class.")
    diff = pa[seeds] - pb[seeds]
    p = float((pa[seeds].mean() + pb[seeds].mean()) / 2)
    se = math.sqrt(max(p * (1 - p), 1e-4) / int(data.test_rows(domain, s).shape[0]))
    return {"a": a, "b": b, "mean": float(diff.mean()), "low": float(diff.min()), "high": float(diff.max()),
            "seeds": len(seeds), "se": se, "decided": stats.decided(diff, se) != 0}


def winner(df: pd.DataFrame, domain: str, per_class: int, s: Settings) -> dict:
    """The best strategy at one size, the strategies tied with it, and its lead over the rest.

    ``tied``: the strategies whose gap to the best is not decided (:func:`compare`); ``runner_up``:
    the best one outside that group, ``margin`` the lead over it (mean, lowest and highest seed),
    ``decided`` whether that is decided.  When all tie, ``margin`` is the gap to the second best.
    """
    part = summary(df[(df.domain == domain) & (df.per_class == per_class) & (df.frozen == 0)])
    ranked = list(part.sort_values("mean", ascending=False).strategy)
    if len(ranked) < 2:
        raise ValueError(f"only {ranked} ran on {domain} at {per_class} a class: nothing to compare.")
    best, means = ranked[0], part.set_index("strategy")["mean"]
    tied = [o for o in ranked[1:] if not compare(df, domain, per_class, best, o, s)["decided"]]
    rest = [o for o in ranked[1:] if o not in tied]
    gap = compare(df, domain, per_class, best, (rest or ranked[1:])[0], s)
    return {"domain": domain, "per_class": int(per_class), "best": best, "best_mean": float(means[best]),
            "tied": ", ".join(tied), "strategies": ", ".join(ranked), "runner_up": rest[0] if rest else None,
            "runner_up_mean": float(means[rest[0]]) if rest else math.nan, "margin": gap["mean"],
            "margin_low": gap["low"], "margin_high": gap["high"], "decided": bool(rest) and gap["decided"]}


def compared_sizes(df: pd.DataFrame, domain: str) -> list[int]:
    """The sizes of ``domain`` at which scratch and at least one pretrained strategy ran."""
    ran = df[(df.domain == domain) & (df.frozen == 0)].groupby("per_class").strategy.agg(set)
    return sorted(int(n) for n, strategies in ran.items() if "scratch" in strategies and len(strategies) > 1)


#: What the source articles advise in each corner of the guide.
ADVICE = {("little", "near"): ("head-only", "keep the pretrained layers, retrain only the last one"),
          ("much", "near"): ("fine-tune", "start from the pretrained weights and retrain all layers"),
          ("little", "far"): ("scratch", "transfer is of little use when the tasks differ"),
          ("much", "far"): ("scratch", "with enough data and a different task, train (nearly) everything")}


def strategy_guide(df: pd.DataFrame, s: Settings) -> pd.DataFrame:
    """The 2x2 guide (little/much data x near/far domain) as measured: one row per cell.

    *Little* and *much* are the smallest and largest sizes where scratch ran next to a pretrained
    strategy (:func:`compared_sizes`); the strategies that ran there compete.  ``verdict``:
    ``agrees`` (the advice is the decided winner), ``disagrees`` (beaten decidedly), ``tie`` or
    ``not run``.
    """
    rows = []
    for similarity, domain in (("near", s.dataset), ("far", s.far_dataset)):
        sizes = compared_sizes(df, domain)
        for amount, n in (("little", min(sizes)), ("much", max(sizes))):
            w = winner(df, domain, n, s)
            advice, text = ADVICE[(amount, similarity)]
            if advice in [w["best"]] + [t for t in w["tied"].split(", ") if t]:
                verdict = "agrees" if w["decided"] else "tie"
            else:
                ran = set(df[(df.domain == domain) & (df.per_class == n)].strategy)
                verdict = "disagrees" if advice in ran else "not run"
            rows.append({"amount": amount, "similarity": similarity, **w, "advice": advice,
                         "advice_text": text, "verdict": verdict})
    return pd.DataFrame(rows)


def grid_cost(results: pd.DataFrame, s: Settings) -> pd.DataFrame:
    """Estimated CPU time of the *full-mode* grid, from the seconds the quick runs took here.

    Per kind (scratch, or fine-tune and freeze) the measured seconds per training image and epoch
    times each full-mode run's images and epochs (and, for the network, the ratio of pixels).
    Head-only runs on cached features cost next to nothing.
    """
    full = replace(s, mode="full", dataset="pets", image_size=224, far_image_size=128, sweep_epochs=8,
                   far_sizes=tuple(sorted(set(s.far_sizes) | {600})))
    n_classes = {"pets": 37, s.few_shot_dataset: 37, s.far_dataset: 10, s.dataset: 2}
    measured = results[results.strategy != "head-only"]
    kind = np.where(measured.strategy == "scratch", "scratch", "network")
    per = measured.seconds.groupby(kind).sum() / (measured.n_train * measured.epochs).groupby(kind).sum()
    rows = []
    for run in (r for r in lesson_runs(full) if r.strategy != "head-only"):
        n_train = run.per_class * n_classes.get(run.domain, 37)
        if run.strategy == "scratch":
            seconds = n_train * scratch_epochs(n_train) * per.get("scratch", np.nan)
        else:
            here = network_size(run.domain if run.domain != "pets" else s.dataset, s)
            epochs = models.RECIPE.freeze_epochs + full.sweep_epochs
            ratio = (network_size(run.domain, full) / here) ** 2
            seconds = n_train * epochs * per.get("network", np.nan) * ratio
        rows.append({"strategy": run.strategy, "domain": run.domain, "estimated_s": seconds})
    out = pd.DataFrame(rows).groupby(["domain", "strategy"]).agg(runs=("estimated_s", "size"),
                                                                 estimated_s=("estimated_s", "sum"))
    return out.reset_index()
