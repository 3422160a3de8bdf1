"""Is the offline data set a fair test of transfer?

Trains the course's architecture twice per seed on 20 training images a class for
the same number of epochs: once head-only on the pretrained ImageNet backbone, once
from random initialisation (every weight trains).  Prints both accuracies and the
gap, mean over seeds.  Run: ``TLCOURSE_MODE=quick python benchmarks/transfer_gap.py``.
"""

from __future__ import annotations

import statistics

from tlcourse import training
from tlcourse.settings import get_settings

PRETRAINED_LR, SCRATCH_LR = 2e-2, 2e-3


def accuracy_after_training(pretrained: bool, seed: int, per_class: int = 20) -> float:
    """Validation accuracy of one run (``fresh_learner`` seeds it before data and model are made)."""
    s = get_settings()
    learn = training.fresh_learner(seed, dls_kwargs={"per_class": per_class}, pretrained=pretrained)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(s.epochs, PRETRAINED_LR if pretrained else SCRATCH_LR)
        return float(learn.validate()[1])


def transfer_gap(seeds: tuple[int, ...] = (0, 1, 2), per_class: int = 20) -> dict[str, float]:
    """Mean accuracies of head-only transfer and of scratch training, and their gap in points."""
    head = [accuracy_after_training(True, seed, per_class) for seed in seeds]
    scratch = [accuracy_after_training(False, seed, per_class) for seed in seeds]
    result = {"head_only": statistics.mean(head), "scratch": statistics.mean(scratch)}
    result["gap_points"] = 100 * (result["head_only"] - result["scratch"])
    return result


def main() -> None:
    s = get_settings()
    r = transfer_gap()
    print(f"{s.dataset}, {s.arch}, {s.image_size} px, {s.epochs} epochs, 20 images a class, 3 seeds")
    print(f"head-only on pretrained backbone: {r['head_only']:.1%}")
    print(f"same architecture from scratch:   {r['scratch']:.1%}")
    print(f"transfer gap: {r['gap_points']:.1f} accuracy points")


if __name__ == "__main__":
    main()
