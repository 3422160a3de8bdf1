"""Checks of the exercises in notebook 04_fine_tuning."""

from __future__ import annotations

from collections.abc import Sequence

from tlcourse.exercises import exercise

#: Exercise 1 of 04_fine_tuning: rates for ``slice(LO, HI)`` over four layer groups.
LESSON04_SLICE = (1e-5, 1e-3)


@exercise
def check_slice_lrs(answer: Sequence[float]) -> tuple[bool, str]:
    """04: the four per-group learning rates fastai gives ``slice(1e-5, 1e-3)``."""
    import numpy as np

    lo, hi = LESSON04_SLICE
    expected = np.geomspace(lo, hi, 4)
    got = np.asarray([float(v) for v in answer])
    if got.shape != (4,):
        return False, f"give one rate per layer group, 4 in all; got {got.size}."
    if np.allclose(got, expected, rtol=1e-3):
        ratio = expected[1] / expected[0]
        return True, (f"each group's rate is {ratio:.2f} times the one before: evenly spaced on a "
                      "log scale from the earliest group to the head.")
    if np.allclose(got, np.linspace(lo, hi, 4), rtol=1e-3):
        return False, ("those are evenly spaced on a linear scale; fastai spaces them evenly on a "
                       "log scale (each rate a constant multiple of the one before).")
    if np.allclose(got[::-1], expected, rtol=1e-3):
        return False, "right rates, wrong order: the earliest group gets the smallest rate, the head the largest."
    return False, ("not quite. Hint: `training.set_lrs(learn, slice(1e-5, 1e-3))` on the four-group "
                   "learner, or `np.geomspace(1e-5, 1e-3, 4)`.")


@exercise
def check_trainable_groups(answer: Sequence[int]) -> tuple[bool, str]:
    """04: indices of the groups that train completely after ``freeze_to(-2)`` (four groups)."""
    got = sorted({int(v) for v in answer})
    if got == [2, 3]:
        return True, ("freeze_to(-2) leaves the last two groups free (the late body and the head); "
                      "groups 0 and 1 train only their BatchNorm layers.")
    if got == [0, 1]:
        return False, "those are the groups it freezes; the question asks which ones train."
    if got == [3]:
        return False, "that is freeze_to(-1) (= freeze). With -2 one more group opens up."
    if got == [0, 1, 2, 3]:
        return False, ("every group has *some* trainable parameters (BatchNorm); ask which have *all* "
                       "of them trainable: `all(p.requires_grad for p in group)`.")
    return False, ("not quite. Hint: `[i for i, g in enumerate(learn.opt.param_lists) "
                   "if all(p.requires_grad for p in g)]` after `learn.freeze_to(-2)`.")


@exercise
def check_earliest_lr(answer: float) -> tuple[bool, str]:
    """04: the earliest body group's peak rate in fine_tune's second step (base_lr=2e-3, lr_mult=100)."""
    base_lr, lr_mult = 2e-3, 100
    value = float(answer)
    if abs(value - base_lr / 2 / lr_mult) <= 1e-12:
        return True, ("1e-5: fine_tune halves base_lr before unfreezing, and `slice(base_lr / lr_mult, "
                      "base_lr)` gives the earliest group the low end.")
    if abs(value - base_lr / lr_mult) <= 1e-12:
        return False, "close: fine_tune halves base_lr before its second step. Look at `base_lr /= 2`."
    if abs(value - base_lr / 2) <= 1e-12 or abs(value - base_lr) <= 1e-12:
        return False, "that is the head's rate; the earliest group gets the low end of the slice."
    if abs(value - base_lr / 10) <= 1e-12:
        return False, "that is the first step's rate for the body groups (`slice(base_lr)`), before unfreezing."
    return False, ("not quite. Hint: `training.expected_lrs(slice(lo, hi), 4)[0]` with the slice "
                   "fine_tune uses after `unfreeze()`.")
