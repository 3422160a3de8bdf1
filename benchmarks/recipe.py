"""How the course's training recipe (``models.RECIPE``) was chosen, and what it scores.

Every candidate is run on cats vs dogs at the quick mode's size (``per_class`` images a class)
with *selection* seeds and judged on the validation split only; the chosen recipe is then
reported on the test split with the course's seeds, which took no part in the choice::

    python benchmarks/recipe.py [--out build/benchmarks/recipe.csv]

Prints both tables and writes every single run as CSV.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from fastai.vision.all import set_seed

from tlcourse import data, models, settings

SELECTION_SEEDS = (10, 11, 12)
FROZEN = models.Recipe().learner_kwargs()
CANDIDATES = {  # name: (how to train, learning rate, extra learner arguments)
    "head 1e-2, fastai BN": ("head", 1e-2, {}),
    "head 1e-2, train_bn=False": ("head", 1e-2, {"train_bn": False}),
    "head 1e-3, BN stats frozen": ("head", 1e-3, FROZEN),
    "head 3e-3, BN stats frozen": ("head", 3e-3, FROZEN),
    "head 1e-2, BN stats frozen": ("head", 1e-2, FROZEN),
    "fine_tune 2e-3, fastai BN": ("fine_tune", 2e-3, {}),
    "fine_tune 1e-3, BN stats frozen": ("fine_tune", 1e-3, FROZEN),
    "fine_tune 2e-3, BN stats frozen": ("fine_tune", 2e-3, FROZEN),
    "fine_tune 5e-3, BN stats frozen": ("fine_tune", 5e-3, FROZEN),
}


def run(how: str, lr: float, extra: dict, seed: int, s: settings.Settings, split: str) -> float:
    """Accuracy on ``split`` of one run: head only (``fit_one_cycle``) or ``fine_tune``."""
    set_seed(seed, reproducible=True)
    dls = data.get_dls(s.dataset, s, per_class=s.per_class, seed=seed)
    learn = models.learner(dls, s.arch, **{**extra, "cbs": [type(cb)() for cb in extra.get("cbs", [])]})
    with learn.no_bar(), learn.no_logging():
        if how == "head":
            learn.fit_one_cycle(s.epochs, lr)
        else:
            learn.fine_tune(s.epochs, base_lr=lr, freeze_epochs=1, lr_mult=models.RECIPE.lr_mult)
        if split == "valid":
            return float(learn.validate()[1])
    return models.test_accuracy(learn, data.test_rows(s.dataset, s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/benchmarks/recipe.csv"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    s = settings.get_settings()
    start = time.perf_counter()
    rows = [dict(candidate=name, seed=seed, split="valid", accuracy=run(*spec, seed, s, "valid"))
            for name, spec in CANDIDATES.items() for seed in SELECTION_SEEDS]
    chosen = {"head only (RECIPE)": ("head", models.RECIPE.head_lr, models.RECIPE.learner_kwargs()),
              "fine_tune (RECIPE)": ("fine_tune", models.RECIPE.base_lr, models.RECIPE.learner_kwargs()),
              "head only, fastai BN": ("head", models.RECIPE.head_lr, {}),
              "fine_tune, fastai BN": ("fine_tune", models.RECIPE.base_lr, {})}
    rows += [dict(candidate=name, seed=seed, split="test", accuracy=run(*spec, seed, s, "test"))
             for name, spec in chosen.items() for seed in s.seeds]
    df = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    table = df.groupby(["split", "candidate"], sort=False)["accuracy"].agg(["mean", "std", "min", "max"]) * 100
    print(table.round(1).to_string())
    print(f"{len(df)} runs in {time.perf_counter() - start:.0f} s; written to {args.out}")


if __name__ == "__main__":
    main()
