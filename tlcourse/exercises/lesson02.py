"""Checks of the exercises in notebook 02_feature_extraction."""

from __future__ import annotations

from collections.abc import Callable

from tlcourse import models
from tlcourse.exercises import exercise


@exercise
def check_pooled_features(answer: Callable) -> tuple[bool, str]:
    """02: ``answer(model, x)`` returns the pooled body features, as the cut model does."""
    import torch

    with torch.random.fork_rng(devices=[]):  # a fixed random network; the notebook's seed untouched
        torch.manual_seed(0)
        model = models.create_model(pretrained=False, num_classes=0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        got = answer(model, x)
    if not isinstance(got, torch.Tensor):
        return False, f"return a tensor, not a {type(got).__name__}."
    if got.dim() == 4:
        return False, (f"your tensor has shape {tuple(got.shape)}: still a map of positions. "
                       "Hint: average over height and width with `.mean(dim=(2, 3))`.")
    if tuple(got.shape) != tuple(expected.shape):
        return False, (f"expected shape {tuple(expected.shape)} (images, features), got "
                       f"{tuple(got.shape)}. Hint: start from `model.forward_features(x)`.")
    if not torch.allclose(got, expected, atol=1e-4, rtol=1e-3):
        return False, ("the shape is right but the numbers differ from the model's own pooled "
                       "output. Hint: average-pool (mean), not max-pool, over height and width.")
    return True, (f"forward_features gives {model.num_features} maps per image; averaging each "
                  "over its positions gives the vector that the linear probe learns from.")


@exercise
def check_nearest_mean(answer: Callable) -> tuple[bool, str]:
    """02: ``answer(train_x, train_y, test_x)`` predicts the class whose mean feature is nearest."""
    import torch

    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=gen) * 1.5
    train_y = torch.arange(40) % 4
    valid_y = torch.arange(60) % 4
    train_x = centres[train_y] + torch.randn(40, 16, generator=gen)
    valid_x = centres[valid_y] + torch.randn(60, 16, generator=gen)
    means = torch.stack([train_x[train_y == c].mean(0) for c in range(4)])
    expected = torch.cdist(valid_x, means).argmin(1)
    got = torch.as_tensor(answer(train_x, train_y, valid_x))
    if got.shape != (len(valid_x),):
        return False, (f"return one class index per row of the third argument: shape ({len(valid_x)},), got "
                       f"{tuple(got.shape)}. Hint: `.argmin(dim=1)` over the distances.")
    agree = float((got.long() == expected).float().mean())
    if agree < 0.99:
        return False, (f"your predictions agree with nearest-class-mean on {agree:.0%} of the rows. "
                       "Hint: class means `train_x[train_y == c].mean(0)`, distances "
                       "`torch.cdist(test_x, means)`, then the index of the smallest.")
    acc = float((got.long() == valid_y).float().mean())
    return True, f"on the check's toy data your classifier scores {acc:.0%} with no training loop at all."


#: Exercise 3's list as the notebook shows it: letter -> (the change, whether the cached
#: features must be computed again).  The notebook's text is checked against this table.
CHANGES: dict[str, tuple[str, bool]] = {
    "a": ("resizing the images to a different size before the body", True),
    "b": ("a different learning rate for the linear probe", False),
    "c": ("using random weights instead of the ImageNet weights", True),
    "d": ("training the probe on 5 images a class instead of 10", False),
    "e": ("normalising the images with a different mean and standard deviation", True),
    "f": ("a different seed for picking which training images get labels", False),
}
_RECOMPUTE = frozenset(letter for letter, (_, stale) in CHANGES.items() if stale)


@exercise
def check_needs_recompute(answer: set[str]) -> tuple[bool, str]:
    """02: which changes make the cached features stale (a set of letters)."""
    chosen = {str(a).strip().lower() for a in answer}
    if not chosen <= set(CHANGES):
        return False, f"use the letters {', '.join(CHANGES)} only; got {sorted(chosen - set(CHANGES))}."
    if chosen == _RECOMPUTE:
        return True, ("features depend on the pixels that go in (size, normalisation) and the weights "
                      "that process them; the probe's settings and which rows it trains on do not.")
    extra, missing = chosen - _RECOMPUTE, _RECOMPUTE - chosen
    hints = []
    if extra:
        hints.append(f"{', '.join(sorted(extra))}: this only changes what happens *after* the body, "
                     "so the stored vectors stay valid")
    if missing:
        hints.append(f"{', '.join(sorted(missing))}: this changes the body's input or its weights, "
                     "so every vector changes")
    return False, "; ".join(hints) + ". Hint: ask whether the body would output different numbers."


