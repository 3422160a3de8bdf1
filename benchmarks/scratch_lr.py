"""How the scratch baseline's learning rate was chosen (run once; the result is ``experiments.SCRATCH.lr``).

1. ``lr_find`` on the scratch CNN (Fashion-MNIST, 100 images a class, validation split)
   prints fastai's suggestions (the steepest slope and the valley of the loss curve);
2. a short list of learning rates around them is trained for the recipe's epochs and
   scored on the *validation* split (never the test split), on seeds that no result of
   the course uses (10, 11, 12).

Run: ``TLCOURSE_MODE=quick python benchmarks/scratch_lr.py`` (a few minutes on a CPU).
"""

from __future__ import annotations

import time

import torch

from tlcourse import experiments, models
from tlcourse.settings import get_settings

SEEDS = (10, 11, 12)


def main(domain: str = "fashion", per_class: int = 100, lrs=(5e-3, 1e-2, 2e-2, 4e-2)) -> None:
    torch.set_num_threads(1)
    s = get_settings()
    with models.seeded(SEEDS[0]):
        learn = experiments.scratch_learner(domain, per_class, SEEDS[0], s)
        with learn.no_bar(), learn.no_logging():
            found = learn.lr_find(show_plot=False)
    print(f"lr_find on {domain}, {per_class} a class: {found}")
    n_train = len(experiments.train_positions(domain, per_class, SEEDS[0], s))
    epochs = experiments.scratch_epochs(n_train)
    for lr in lrs:
        start, accs = time.perf_counter(), []
        for seed in SEEDS:
            with models.seeded(seed):
                learn = experiments.scratch_learner(domain, per_class, seed, s)
                with learn.no_bar(), learn.no_logging():
                    learn.fit_one_cycle(epochs, lr)
                    accs.append(float(learn.validate()[1]))
        mean = sum(accs) / len(accs)
        print(f"lr {lr:g}: validation accuracy {mean:.1%} (seeds {', '.join(f'{a:.1%}' for a in accs)}), "
              f"{epochs} epochs, {(time.perf_counter() - start) / len(SEEDS):.1f} s a run")


if __name__ == "__main__":
    main()
