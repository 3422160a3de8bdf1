"""Linear probe on pretrained versus random-init features versus raw pixels, on the test split.

For each task (cats versus dogs; the 37 breeds) and each number of labelled
training images a class, trains the course's linear probe
(:func:`tlcourse.features.train_linear_probe`, default settings) on

* the pooled features of the ImageNet-pretrained EfficientNet-Lite0,
* the same network with random weights (a new random network for every seed),
* the raw pixels, resized to ``--pixels`` a side and flattened,

and scores it on the task's held-out test split.  The seeds (100, 101, 102 by
default) are used nowhere else in the course, so no setting was picked on them.
Prints mean, standard deviation and range over the seeds and writes one row per
probe to a CSV file.

Run:  ``TLCOURSE_MODE=quick python benchmarks/probe.py [--out build/benchmarks/probe.csv]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from tlcourse import data
from tlcourse.models import features
from tlcourse.settings import get_settings

SEEDS = (100, 101, 102)
#: Task -> labelled training images a class to try (sizes above the smallest class are skipped).
SIZES = {"cats_dogs": (1, 2, 5, 10, 20, 50), "pet_breeds": (1, 2, 5)}


def photo_vectors(model: torch.nn.Module, model_id: str, image_size: int) -> dict[str, torch.Tensor]:
    """Feature vector of every packaged Pets photo by file name (both tasks use the same photos)."""
    table = data.items("pet_breeds", get_settings())
    f = features.cached_features(model, model_id, table, image_size, dataset="pet_breeds",
                                 progress=False, verbose=False)
    names = [*(table[table["split"] == split]["fname"] for split in data.SPLITS)]
    vectors = torch.cat([f.train_x, f.valid_x, f.test_x])
    return dict(zip(pd.concat(names), vectors))


def task_features(task: str, vectors: dict[str, torch.Tensor]) -> features.Features:
    """``Features`` of ``task``'s table assembled from per-photo vectors."""
    table = data.items(task, get_settings())
    classes = features.class_names(table)
    parts: list[torch.Tensor] = []
    for split in data.SPLITS:
        rows = table[table["split"] == split]
        parts.append(torch.stack([vectors[f] for f in rows["fname"]]))
        parts.append(torch.tensor([classes.index(str(v)) for v in rows["label"]]))
    return features.Features(*parts, classes=classes, key=task, path=Path(task), from_cache=False)


def run(seeds: tuple[int, ...] = SEEDS, pixels: int = 32) -> pd.DataFrame:
    """One row per probe: ``task``, ``features``, ``per_class``, ``seed``, ``accuracy``."""
    s = get_settings()
    pretrained = photo_vectors(*features.backbone(pretrained=True), s.image_size)
    rows = []
    for seed in seeds:
        random_init = photo_vectors(*features.backbone(pretrained=False, seed=seed), s.image_size)
        for task, sizes in SIZES.items():
            feats = {"pretrained": task_features(task, pretrained),
                     "random init": task_features(task, random_init),
                     "raw pixels": features.pixel_features(data.items(task, get_settings()), pixels)}
            curve = features.probe_curve(feats, sizes, [seed], progress=False)
            rows.append(curve.assign(task=task))
    return pd.concat(rows, ignore_index=True)[["task", "features", "per_class", "seed", "accuracy"]]


def table(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and range (in %) over seeds, one row per task, feature set and size."""
    stats = results.groupby(["task", "features", "per_class"], sort=False)["accuracy"]
    out = 100 * stats.agg(["mean", "std", "min", "max"])
    return out.assign(seeds=stats.count()).round(1)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/benchmarks/probe.csv"), help="CSV file to write")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="seeds (not used elsewhere)")
    parser.add_argument("--pixels", type=int, default=32, help="side of the raw-pixel baseline's images")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = get_settings()
    start = time.perf_counter()
    results = run(tuple(args.seeds), args.pixels)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results.to_csv(args.out, index=False)
    print(f"{s.mode} mode, {s.arch}, {s.image_size} px, raw pixels at {args.pixels} px, seeds {args.seeds}; "
          f"test accuracy (%) of the linear probe:")
    with pd.option_context("display.max_rows", None, "display.width", 120):
        print(table(results))
    print(f"wrote {len(results)} rows to {args.out} in {time.perf_counter() - start:.0f} s")
    return results


if __name__ == "__main__":
    main()
