"""One or two torch threads on this machine: decoding, feature extraction and training.

Each task runs a fixed amount of work with ``torch.set_num_threads(n)`` for n = 1 and 2,
first on an otherwise idle machine, then while a second process keeps one core busy (what
a laptop running a browser, or a second notebook, looks like)::

    python benchmarks/threads.py [--out build/benchmarks/threads.csv]

Prints seconds per task and writes CSV.  ``settings.set_threads`` uses the result: the
course's default on a CPU is one thread (``TLCOURSE_THREADS`` overrides it).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path

import pandas as pd
import torch
from fastai.vision.all import set_seed

from tlcourse import data, models
from tlcourse.data.images import load_image
from tlcourse.models import features
from tlcourse.settings import get_settings


def _spin(stop) -> None:
    """Keep one core busy until ``stop`` is set (plain Python, so it holds one core)."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def decode(n_images: int = 60) -> None:
    """Open, decode and resize photos as the data loaders do."""
    df = data.items("cats_dogs", get_settings()).head(n_images)
    transform = features.default_transform(models.create_model(num_classes=0), 128)
    for name in df.fname:
        transform(load_image(data.pets_dir() / name))


def extract(model: torch.nn.Module, batch: torch.Tensor) -> None:
    """Four batches through the frozen body, as lesson 02 extracts features."""
    with torch.no_grad():
        for _ in range(4):
            model(batch)


def train(learn, steps: int = 4) -> None:
    """A few fine-tuning steps through the whole network, as lesson 04 trains."""
    xb, yb = learn.dls.one_batch()
    learn.unfreeze()
    opt = torch.optim.SGD(learn.model.parameters(), lr=1e-4)
    for _ in range(steps):
        loss = learn.loss_func(learn.model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()


def timed(task, repeats: int = 3) -> float:
    task()  # warm up
    return min(_once(task) for _ in range(repeats))


def _once(task) -> float:
    start = time.perf_counter()
    task()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/benchmarks/threads.csv"))
    args = parser.parse_args()
    set_seed(0)
    body = models.create_model(num_classes=0)
    batch = torch.randn(16, 3, 128, 128)
    learn = models.learner(data.get_dls("cats_dogs", get_settings(), per_class=8, seed=0), get_settings().arch)
    tasks = {"decode 60 photos": decode, "features: 4 batches of 16": lambda: extract(body, batch),
             "fine-tune: 4 steps": lambda: train(learn)}
    rows = []
    for load in ("idle", "one core busy"):
        stop = mp.Event()
        spinner = mp.Process(target=_spin, args=(stop,)) if load != "idle" else None
        if spinner:
            spinner.start()
        try:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                for name, task in tasks.items():
                    rows.append(dict(machine=load, threads=threads, task=name, seconds=timed(task)))
        finally:
            if spinner:
                stop.set()
                spinner.join()
    df = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    table = df.pivot_table(index=["machine", "task"], columns="threads", values="seconds")
    table["2 threads / 1 thread"] = table[2] / table[1]
    print(table.round(2).to_string())


if __name__ == "__main__":
    main()
