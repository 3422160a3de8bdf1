"""Lesson 05's whole grid as a table: domain x size x strategy x seed, test accuracy.

Runs (or loads from the course cache) every run of ``experiments.lesson_runs`` for the
given seeds, prints one line per run, then mean and spread per (domain, size, strategy),
and writes both tables as CSV.  Report it on seeds that chose nothing:

    TLCOURSE_MODE=quick python benchmarks/transfer_grid.py --seeds 3 4 5 --out build/transfer_grid

(the settings were chosen on seeds 0-2 and the scratch learning rate on 10-12).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from tlcourse import experiments
from tlcourse.settings import get_settings


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5])
    parser.add_argument("--out", type=Path, default=Path("build/transfer_grid"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    s = get_settings()
    start = time.perf_counter()
    df = experiments.lesson_grid(s, seeds=args.seeds)
    elapsed = time.perf_counter() - start
    runs = df.drop(columns=["curve"]).sort_values(["domain", "per_class", "strategy", "frozen", "seed"])
    cols = ["domain", "per_class", "strategy", "frozen", "seed", "accuracy", "epochs", "seconds"]
    print(runs[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    table = experiments.summary(df, by=["domain", "per_class", "strategy", "frozen"])
    print()
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    args.out.mkdir(parents=True, exist_ok=True)
    runs[cols].to_csv(args.out / "runs.csv", index=False)
    table.to_csv(args.out / "summary.csv", index=False)
    print(f"\n{len(df)} runs ({df.attrs['trained']} trained, {df.attrs['loaded']} from the cache) in "
          f"{elapsed:.0f} s; seeds {args.seeds}; CSV in {args.out}/")


if __name__ == "__main__":
    main()
