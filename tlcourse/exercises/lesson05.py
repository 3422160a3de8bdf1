"""Checks of the exercises in notebook 05_transfer_vs_scratch.

Exercises 1 and 2 are experiments: the learner writes down a prediction, runs a few
runs through ``experiments.run_grid`` and reports what was measured.  The checks
re-read the same runs from the course cache (they are trained once, whoever asks
first), check the measured number and explain it next to the prediction.
"""

from __future__ import annotations

from tlcourse import experiments, models
from tlcourse.exercises import exercise
from tlcourse.settings import Settings, get_settings


#: Exercise 1: head-only minus scratch on the far domain at a size the sweep skips.
NEW_SIZE = 50
#: Exercise 2: a freeze depth the sweep skips, on the near domain.
NEW_DEPTH = 2


def _prediction_and_measurement(answer) -> tuple[float, float]:
    if not isinstance(answer, dict) or not {"predicted", "measured"} <= set(answer):
        raise TypeError("answer must be a dict with the keys 'predicted' and 'measured'")
    return float(answer["predicted"]), float(answer["measured"])


def size_gap_runs(s: Settings):
    """The runs of exercise 1: head-only and scratch on the far domain at ``NEW_SIZE`` a class."""
    size = min(NEW_SIZE, s.max_per_class or NEW_SIZE)  # the dress rehearsal has a few images a class
    return experiments.grid([s.far_dataset], ["head-only", "scratch"], [size], s.seeds)


def freeze_runs(s: Settings):
    """The runs of exercise 2: ``NEW_DEPTH`` groups frozen on the near domain, at the sweep's size."""
    n = experiments.freeze_plan(s)["sizes"][s.dataset]
    return experiments.grid([s.dataset], ["freeze"], [n], s.seeds, frozen=[NEW_DEPTH])


@exercise
def check_new_size_gap(answer: dict) -> tuple[bool, str]:
    """05: ``{"predicted": ..., "measured": ...}``: head-only minus scratch (fractions), far domain, 50 a class."""
    predicted, measured = _prediction_and_measurement(answer)
    s = get_settings()
    means = experiments.run_grid(size_gap_runs(s), s, progress=False).groupby("strategy")["accuracy"].mean()
    truth = float(means["head-only"] - means["scratch"])
    if abs(measured - truth) > 0.002:
        if abs(measured - 100 * truth) < 0.2 or abs(measured / 100 - truth) <= 0.002:
            return False, "give the gap as a fraction (0.05 for 5 points), like the accuracies."
        if abs(measured + truth) <= 0.002:
            return False, "that is scratch minus head-only; the question asks head-only minus scratch."
        return False, ("that is not the gap of the mean test accuracies over the seeds. Hint: "
                       "`df.groupby('strategy')['accuracy'].mean()`, then subtract scratch from head-only.")
    off = 100 * (predicted - truth)
    verdict = ("scratch has caught up" if truth <= 0.01 else "the ImageNet features are still ahead")
    return True, (f"measured {100 * truth:+.1f} points ({verdict}); your prediction was {off:+.1f} points off. "
                  "On clothing the frozen ImageNet features are worth a few points at most, at any size: "
                  "a small network that learns its features from the clothing itself does about as well, "
                  "while on pet photos the same features are worth about 30 points.")


@exercise
def check_freeze_depth(answer: dict) -> tuple[bool, str]:
    """05: ``{"predicted": ..., "measured": ...}``: mean test accuracy with 2 body groups frozen (near domain)."""
    predicted, measured = _prediction_and_measurement(answer)
    s = get_settings()
    df = experiments.run_grid(freeze_runs(s), s, progress=False)
    truth = float(df["accuracy"].mean())
    if abs(measured - truth) > 0.002:
        if abs(measured / 100 - truth) <= 0.002:
            return False, "give the accuracy as a fraction between 0 and 1."
        if any(abs(measured - a) <= 0.002 for a in df["accuracy"]):
            return False, "that is one seed's accuracy; average over all the seeds you ran."
        return False, "that is not the mean test accuracy of the runs. Hint: `df['accuracy'].mean()`."
    n = experiments.freeze_plan(s)["sizes"][s.dataset]
    ft = experiments.run_grid(experiments.grid([s.dataset], ["fine-tune"], [n], s.seeds), s, progress=False)
    diff = truth - float(ft["accuracy"].mean())
    spread = float(df["accuracy"].max() - df["accuracy"].min())
    within = abs(diff) <= spread
    return True, (f"{100 * truth:.1f}% with {NEW_DEPTH} groups frozen, {100 * diff:+.1f} points from fine-tuning "
                  f"everything (seeds spread over {100 * spread:.1f} points, so "
                  f"{'that difference is within the noise' if within else 'that difference is larger than the noise'}); "
                  f"your prediction was {100 * (predicted - truth):+.1f} points off. With the recipe's "
                  "lr_mult the body trains at a hundredth of the head's rate, so in a short run freezing "
                  "two more groups changes the network (and its accuracy) very little.")


@exercise
def check_trainable_fraction(answer: float) -> tuple[bool, str]:
    """05: the fraction of the body's weights that train when its first 3 groups are frozen."""
    import timm

    body = timm.create_model(get_settings().arch, pretrained=False, num_classes=0)
    counts = [sum(p.numel() for p in g.parameters()) for g in models.body_groups(body)]
    expected = sum(counts[3:]) / sum(counts)
    value = float(answer)
    if abs(value - expected) <= 0.002:
        return True, (f"{expected:.1%} of the weights still train: most of a network's weights sit "
                      "in its late, wide layers, so freezing the early ones saves little memory.")
    if abs(value - 100 * expected) <= 0.2:
        return False, "that looks like a percentage; give a fraction between 0 and 1."
    if abs(value - (1 - expected)) <= 0.002:
        return False, "that is the frozen fraction; the question asks what is left to train."
    if value > 1:
        return False, "that is a count, not a fraction. Hint: divide by the total number of weights."
    return False, ("not quite. Hint: count each group's weights with "
                   "`sum(p.numel() for p in g.parameters())`, then divide the sum over groups 3 onwards "
                   "(`counts[3:]`) by the sum over all groups.")
