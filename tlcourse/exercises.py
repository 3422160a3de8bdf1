"""Check functions for the exercises, one convention for the whole course.

In a notebook every exercise is two code cells:

1. the *exercise* cell (tag ``exercise``): ``answer = ...`` and a call to its check
   function.  Left as it is, the check says "not done yet" and the notebook runs on;
2. the *solution* cell right after it (tag ``solution``, collapsed in JupyterLab),
   which sets the same variable and calls the same check.

A check never raises for a wrong answer: it prints what is wrong and a hint, and
returns ``False``; ``True`` for a right answer, ``None`` for "not done yet".
Student copies (``tlcourse student``) drop the solution cells.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

PLACEHOLDERS = (Ellipsis, None)
_CHECKS: dict[str, Callable[[Any], bool | None]] = {}


def _say(ok: bool | None, name: str, message: str) -> bool | None:
    """Print one line of feedback with a recognisable marker and return ``ok``."""
    mark = {True: "✅ Correct", False: "❌ Not yet", None: "⏳ Not done yet"}[ok]
    print(f"{mark} ({name}): {message}")
    return ok


def exercise(func: Callable[[Any], tuple[bool, str]]) -> Callable[[Any], bool | None]:
    """Turn ``func(answer) -> (ok, message)`` into a check with the course's behaviour.

    The wrapper handles the placeholder, catches mistakes that would otherwise be
    a traceback (wrong type, missing attribute) and prints the feedback.
    """
    name = func.__name__.removeprefix("check_").replace("_", " ")

    def check(answer: Any) -> bool | None:
        if any(answer is p for p in PLACEHOLDERS):
            return _say(None, name, "replace the `...` with your answer and run the cell again.")
        try:
            ok, message = func(answer)
        except Exception as err:  # a wrong kind of answer must not stop the notebook
            return _say(False, name, f"your answer could not be checked ({type(err).__name__}: "
                                     f"{err}). Check its type against the exercise text.")
        return _say(ok, name, message)

    check.__name__ = func.__name__
    check.__doc__ = func.__doc__
    _CHECKS[func.__name__] = check
    return check


def all_checks() -> dict[str, Callable[[Any], bool | None]]:
    """Every registered check by function name (used by the tests)."""
    return dict(_CHECKS)


def _close(value: float, target: float, tol: float) -> bool:
    return abs(float(value) - float(target)) <= tol


# --- 00_setup ---------------------------------------------------------------------

@exercise
def check_batch_shape(answer: Sequence[int]) -> tuple[bool, str]:
    """00_setup: the shape of one training batch of images, as a tuple."""
    from tlcourse.settings import get_settings

    s = get_settings()
    shape = tuple(int(v) for v in answer)
    if len(shape) != 4:
        return False, (f"a batch of images has 4 dimensions, your answer has {len(shape)}. "
                       "Hint: look at `xb.shape` for `xb, yb = dls.one_batch()`.")
    if shape[1] != 3:
        return False, "the second dimension is the number of colour channels (red, green, blue)."
    if shape[2:] != (s.image_size, s.image_size):
        return False, (f"height and width should be the mode's image size, {s.image_size}. "
                       "Hint: `settings.get_settings().image_size`.")
    if shape[0] != s.batch_size:
        return False, f"the first dimension is the batch size, {s.batch_size} in this mode."
    return True, f"a batch is {shape}: batch, channels, height, width."


# --- 01_imagenet ------------------------------------------------------------------

#: The layer and input size that 01_imagenet's exercise 2 asks about.
LESSON01_LAYER = "blocks.4"
LESSON01_SIZE = 224
_LESSON01_SHAPE: list[tuple[int, ...]] = []  # computed once, on first use


@exercise
def check_first_cnn_year(answer: int) -> tuple[bool, str]:
    """01_imagenet: the first year in which a CNN won ILSVRC, from the package's table."""
    from tlcourse.plots import ilsvrc_table

    table = ilsvrc_table()
    winners = table[table["kind"] == "winner"]
    first = int(winners.loc[winners["era"] == "CNN", "year"].min())
    year = int(answer)
    if year == first:
        label = winners.loc[winners["year"] == first, "label"].iloc[0]
        return True, f"{first}: {label} was the first CNN to win the challenge."
    if year not in set(winners["year"]):
        return False, (f"{year} is not a challenge year in the table (it runs from "
                       f"{winners['year'].min()} to {winners['year'].max()}). Hint: filter the "
                       "table on its `era` column and take the smallest `year`.")
    era = winners.loc[winners["year"] == year, "era"].iloc[0]
    if era != "CNN":
        return False, f"in {year} the winner was from the {era} era, not a CNN. Look at later years."
    return False, (f"a CNN did win in {year}, but not for the first time. Hint: "
                   "`table[table['era'] == 'CNN']['year'].min()`.")


def _lesson01_shape() -> tuple[int, ...]:
    """Output shape of the backbone's LESSON01_LAYER for one LESSON01_SIZE image (computed once)."""
    if not _LESSON01_SHAPE:
        import torch

        from tlcourse.activations import activations
        from tlcourse.models import create_model

        model = create_model(pretrained=False)  # the shapes do not depend on the weights
        x = torch.zeros(3, LESSON01_SIZE, LESSON01_SIZE)
        _LESSON01_SHAPE.append(tuple(activations(model, x, LESSON01_LAYER)[LESSON01_LAYER].shape[1:]))
    return _LESSON01_SHAPE[0]


@exercise
def check_layer_output_shape(answer: Sequence[int]) -> tuple[bool, str]:
    """01_imagenet: (channels, height, width) of the backbone's ``blocks.4`` for a 224-px photo."""
    size, expected = LESSON01_SIZE, _lesson01_shape()
    shape = tuple(int(v) for v in answer)
    if len(shape) == 4:
        return False, ("that has 4 numbers: leave out the batch dimension and give "
                       "(channels, height, width). Hint: `tuple(t.shape[1:])`.")
    if len(shape) != 3:
        return False, (f"give 3 numbers (channels, height, width), not {len(shape)}. Hint: "
                       f"activations.layer_table(net) lists every layer's output shape.")
    if shape[0] != expected[0]:
        return False, (f"{LESSON01_LAYER!r} does not have {shape[0]} output channels. Hint: look up "
                       f"the row {LESSON01_LAYER!r} of `activations.layer_table(net)`.")
    if shape[1:] != expected[1:]:
        return False, (f"the channels are right, the height and width are not: the input is "
                       f"{size}×{size} and every stride-2 stage halves it. Capture the layer "
                       "and look at its shape.")
    return True, (f"{LESSON01_LAYER!r} turns a {size}×{size} photo into {expected[0]} maps of "
                  f"{expected[1]}×{expected[2]}: fewer positions, more kinds of feature.")


@exercise
def check_helmet_labels(answer: Sequence[str]) -> tuple[bool, str]:
    """01_imagenet: every ImageNet class name that contains 'helmet' (any case)."""
    from tlcourse.models import imagenet_labels

    if isinstance(answer, str):
        return False, "give a list of class names, not one string. Hint: a list comprehension."
    expected = {name for name in imagenet_labels() if "helmet" in name.lower()}
    given = set(answer)
    missing, extra = expected - given, given - expected
    if extra:
        return False, (f"{len(extra)} of your names are not ImageNet class names containing "
                       f"'helmet', e.g. {sorted(extra)[0]!r}. Use the full names from "
                       "`models.imagenet_labels()`, as they are.")
    if missing:
        return False, (f"{len(missing)} class name(s) are missing. Hint: some names list synonyms "
                       "after commas, so search the whole name with `'helmet' in name.lower()`.")
    astronauts = [name for name in imagenet_labels() if "astronaut" in name.lower()]
    return True, (f"{len(expected)} classes: {sorted(expected)}. Class names containing "
                  f"'astronaut': {astronauts or 'none at all'}.")


# --- 02_feature_extraction --------------------------------------------------------

@exercise
def check_pooled_features(answer: Callable) -> tuple[bool, str]:
    """02: ``answer(model, x)`` returns the pooled body features, as the cut model does."""
    import torch

    from tlcourse import models

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
    """02: ``answer(train_x, train_y, valid_x)`` predicts the class whose mean feature is nearest."""
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
        return False, (f"return one class index per validation row: shape ({len(valid_x)},), got "
                       f"{tuple(got.shape)}. Hint: `.argmin(dim=1)` over the distances.")
    agree = float((got.long() == expected).float().mean())
    if agree < 0.99:
        return False, (f"your predictions agree with nearest-class-mean on {agree:.0%} of the rows. "
                       "Hint: class means `train_x[train_y == c].mean(0)`, distances "
                       "`torch.cdist(valid_x, means)`, then the index of the smallest.")
    acc = float((got.long() == valid_y).float().mean())
    return True, f"on the check's toy data your classifier scores {acc:.0%} with no training loop at all."


#: Changes that need new features (letters of the exercise's list).
_RECOMPUTE = frozenset("ace")


@exercise
def check_needs_recompute(answer: set[str]) -> tuple[bool, str]:
    """02: which changes make the cached features stale (a set of letters)."""
    chosen = {str(a).strip().lower() for a in answer}
    if not chosen <= set("abcdef"):
        return False, f"use letters a to f only; got {sorted(chosen - set('abcdef'))}."
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


# --- 06_your_own_data -----------------------------------------------------------------

#: Problems a clean copy must not have any more (it may still hold small images or small classes).
_UNCLEAN = ("unreadable", "duplicate_across", "duplicate_within", "wrong_extension", "mode",
            "hidden", "odd_name", "not_image", "outside_class", "empty_class")


@exercise
def check_clean_copy(answer) -> tuple[bool, str]:
    """06: the path of a cleaned copy of the folder (RGB images, plain names, no bad files)."""
    from pathlib import Path

    from tlcourse import checker

    if isinstance(answer, checker.CheckResult):
        return False, ("that is a check result; set `answer` to the *folder* of your clean copy "
                       "(a path), and the check will run the checker on it.")
    folder = Path(answer)
    if not folder.is_dir():
        return False, f"{folder} is not a folder. Hint: create it with `clean.mkdir(parents=True)`."
    try:
        result = checker.check(folder, raise_on_error=False, progress=False)
    except checker.FolderError as err:
        return False, f"the checker could not read it: {err}"
    if not result.ok:
        return False, f"{result.issues[0].detail}"
    left = [i for i in result.issues if i.kind in _UNCLEAN]
    if left:
        first = left[0]
        return False, (f"the copy still has {len(left)} problem(s), e.g. {first.title} in "
                       f"{first.path}; these files are left out or converted every time. Hint: copy "
                       "only the rows of `result.items`, open each with `checker.load_image` (RGB) "
                       "and save it under a plain name like `0007.png` in a folder per label.")
    return True, (f"the copy has {len(result.items)} clean images in {len(result.classes)} classes, "
                  "and the original folder was only read.")


@exercise
def check_labels_csv(answer) -> tuple[bool, str]:
    """06: a CheckResult of a CSV of file names and labels, written outside the image folder."""
    from tlcourse import checker

    if not isinstance(answer, checker.CheckResult):
        return False, ("set `answer` to what `checker.check(csv_path, root=...)` returns. "
                       f"You gave a {type(answer).__name__}.")
    if answer.source.suffix.lower() != ".csv":
        return False, ("this result comes from checking a folder, not a CSV. Write the CSV with "
                       "`result.items[['fname', 'label']].to_csv(path, index=False)` and check the CSV.")
    if answer.root.resolve() in answer.source.resolve().parents:
        return False, ("the CSV is inside the image folder: the course never writes there. Save it "
                       "in `S.cache_dir` and pass `root=` the image folder.")
    missing = answer.by_kind("missing")
    if missing:
        return False, (f"{len(missing)} file names in the CSV were not found, e.g. {missing[0].path}. "
                       "Hint: names must be relative to `root`, as in `result.items.fname`.")
    if not answer.ok:
        return False, answer.issues[0].detail
    return True, (f"{len(answer.items)} images in {len(answer.classes)} classes, labelled by a CSV "
                  "that lives outside your image folder.")


@exercise
def check_download_error(answer) -> tuple[bool, str]:
    """06: the DownloadError caught from a download that cannot work."""
    from tlcourse import download

    if isinstance(answer, download.DownloadError):
        lines = str(answer).splitlines()
        return True, (f"caught it. The learner sees {len(lines)} short lines instead of a traceback, "
                      "and your code can fall back to quick mode in the `except` branch.")
    if isinstance(answer, str):
        return False, ("that is the message; set `answer` to the exception object itself: "
                       "`except download.DownloadError as err: answer = err`.")
    if isinstance(answer, BaseException):
        return False, (f"that is a {type(answer).__name__}; catch `download.DownloadError`, the one "
                       "error every failed course download ends in.")
    return False, "wrap the `download.fetch(...)` call in `try:` / `except download.DownloadError as err:`."


# --- 05_transfer_vs_scratch -----------------------------------------------------------

def _toy_results():
    """A small results table (as ``experiments.run_grid`` returns) with a known answer."""
    import pandas as pd

    curves = {("scratch", 2): [[0.20, 0.30, 0.25], [0.20, 0.35, 0.15]],
              ("scratch", 20): [[0.20, 0.40, 0.45], [0.25, 0.50, 0.35]],
              ("fine-tune", 2): [[0.40, 0.60, 0.55], [0.50, 0.45, 0.65]],
              ("fine-tune", 20): [[0.60, 0.90, 0.80], [0.70, 0.75, 0.90]]}
    rows = [{"domain": "toy", "strategy": s, "per_class": n, "seed": seed, "epoch": e + 1, "epochs": 3,
             "accuracy": acc}
            for (s, n), seeds in curves.items() for seed, curve in enumerate(seeds)
            for e, acc in enumerate(curve)]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)


@exercise
def check_final_mean(answer: Callable) -> tuple[bool, str]:
    """05: ``answer(df)`` is the mean final-epoch accuracy per (strategy, per_class)."""
    import numpy as np
    import pandas as pd

    df = _toy_results()
    last = df[df.epoch == df.epochs]
    expected = last.groupby(["strategy", "per_class"])["accuracy"].mean()
    got = answer(df.copy())
    if isinstance(got, pd.DataFrame):
        if "accuracy" in got.columns:
            got = got["accuracy"]
        elif got.shape[1] == 1:
            got = got.iloc[:, 0]
        else:
            return False, ("return one number per (strategy, per_class): a Series. Hint: "
                           "`.groupby([...])['accuracy'].mean()`.")
    if not isinstance(got, pd.Series):
        return False, f"return a pandas Series, not a {type(got).__name__}."
    if got.index.nlevels != 2:
        return False, (f"the index has {got.index.nlevels} level(s); it needs two, strategy and "
                       "per_class. Hint: group by both columns.")
    if list(got.index.names) == ["per_class", "strategy"]:
        got = got.reorder_levels(["strategy", "per_class"])
    got = got.reindex(expected.index)
    if got.isna().any():
        return False, ("some (strategy, per_class) pairs are missing or named differently. Hint: "
                       "`df.groupby(['strategy', 'per_class'])`.")
    values = got.to_numpy(dtype=float)
    if np.allclose(values, expected.to_numpy()):
        return True, "one number per run, averaged over seeds: the start of every comparison."
    every = df.groupby(["strategy", "per_class"])["accuracy"].mean().reindex(expected.index)
    best = df.groupby(["strategy", "per_class"])["accuracy"].max().reindex(expected.index)
    if np.allclose(values, every.to_numpy()):
        return False, ("that averages every epoch. Hint: keep only each run's last epoch first, "
                       "`df[df.epoch == df.epochs]`.")
    if np.allclose(values, best.to_numpy()):
        return False, ("that is the best epoch, which you could only pick by peeking at the "
                       "validation set. Hint: keep the rows where `epoch == epochs`.")
    return False, ("the numbers differ from the mean final accuracy. Hint: filter "
                   "`df.epoch == df.epochs`, then group by strategy and per_class and take the mean.")


@exercise
def check_overtakes(answer: Callable) -> tuple[bool, str]:
    """05: ``answer(sizes, a, b)`` is the first measured size where b >= a, else None."""
    cases = [(([1, 2, 5, 10], [0.5, 0.5, 0.5, 0.5], [0.2, 0.4, 0.6, 0.8]), 5, "b passes a in the middle"),
             (([1, 2, 5], [0.1, 0.2, 0.3], [0.5, 0.6, 0.7]), 1, "b is ahead from the start"),
             (([1, 2, 5], [0.9, 0.9, 0.9], [0.1, 0.2, 0.3]), None, "b never catches up"),
             (([2, 20], [0.5, 0.5], [0.4, 0.5]), 20, "b equals a at the second size")]
    for (sizes, a, b), expected, story in cases:
        got = answer(list(sizes), list(a), list(b))
        if got != expected:
            hint = "return the size itself, not its position in the list." \
                if expected is not None and got == sizes.index(expected) else \
                "'at least' includes equality: use >=." if story.startswith("b equals") else \
                "return None when b is below a at every size." if expected is None else \
                "walk through the sizes in order and stop at the first where b >= a."
            return False, f"when {story}, the answer is {expected}, yours is {got!r}. Hint: {hint}"
    return True, "that is how you read a crossing off a sweep (without interpolating between sizes)."


@exercise
def check_trainable_fraction(answer: float) -> tuple[bool, str]:
    """05: the fraction of the body's weights that train when its first 3 groups are frozen."""
    import timm

    from tlcourse import experiments
    from tlcourse.settings import get_settings

    body = timm.create_model(get_settings().arch, pretrained=False, num_classes=0)
    counts = [sum(p.numel() for p in g.parameters()) for g in experiments.body_groups(body)]
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


# --- 03_head_only ---------------------------------------------------------------------

#: Exercise 2 of 03_head_only: a VGG-style head for this image size and number of classes.
LESSON03_SIZE, LESSON03_CLASSES = 224, 2


@exercise
def check_count_trainable(answer: Callable) -> tuple[bool, str]:
    """03: ``answer(model)`` returns (trainable, frozen) parameter counts of any model."""
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 4))
    model[0].weight.requires_grad_(False)          # 216 weights frozen, its 8 biases still train
    model[3].requires_grad_(False)                 # 32 + 4 frozen
    expected = (8 + 16, 216 + 36)
    got = tuple(int(v) for v in answer(model))
    if got == expected:
        return True, (f"{got[0]} trainable and {got[1]} frozen on the check's toy model: count "
                      "`p.numel()` and split on `p.requires_grad`, tensor by tensor.")
    if len(got) != 2:
        return False, f"return two numbers, (trainable, frozen); got {len(got)}."
    if got == expected[::-1]:
        return False, "the two numbers are swapped: trainable first, then frozen."
    if got == (3, 3):  # counted tensors instead of the numbers in them
        return False, "that counts tensors; count the numbers in them with `p.numel()`."
    if got[0] + got[1] != sum(expected):
        return False, (f"your two counts add up to {sum(got)}, but the toy model has {sum(expected)} "
                       "parameters. Hint: loop over `model.parameters()` and add `p.numel()`.")
    return False, ("the total is right but the split is not. Hint: a tensor trains when "
                   "`p.requires_grad` is True; a layer can have a frozen weight and a trainable bias.")


@exercise
def check_vgg_head_params(answer: int) -> tuple[bool, str]:
    """03: parameters of the VGG-style head on this body for 224-px images and 2 classes."""
    from fastai.vision.learner import TimmBody

    from tlcourse import models, training

    body = TimmBody(models.create_model(pretrained=False, num_classes=0))  # as vision_learner cuts it
    shape = training.body_output_shape(body, LESSON03_SIZE)
    head = training.vgg_head(shape, LESSON03_CLASSES)
    expected = sum(p.numel() for p in head.parameters())
    value = int(answer)
    c, h, w = shape
    if value == expected:
        return True, (f"{expected:,} parameters: the flattened map has {c}×{h}×{w} = {c * h * w:,} "
                      "numbers, and almost all of the head's weights connect them to the 256 units.")
    first = c * h * w * 256
    if value == first or value == first + 256:
        return False, "that is the first dense layer only; add the output layer (256 → 2, with biases)."
    if value == c * 256 + 256 + 256 * 2 + 2:
        return False, (f"that is the count for a 1×1 map, i.e. after pooling. A {LESSON03_SIZE}-px image "
                       f"gives a {h}×{w} map: use `training.body_output_shape(body, {LESSON03_SIZE})`.")
    return False, (f"not quite. Hint: build the head with `training.vgg_head(shape, {LESSON03_CLASSES})` for "
                   f"the body's output shape at {LESSON03_SIZE} px and sum `p.numel()` over its "
                   "parameters; the weights of a dense layer are inputs × outputs, plus one bias per output.")


@exercise
def check_frozen_batchnorm(answer) -> tuple[bool, str]:
    """03: a learner whose body is frozen completely, BatchNorm included (``train_bn=False``)."""
    if not hasattr(answer, "model") or not hasattr(answer, "opt"):
        return False, "pass the Learner itself (what `models.learner(...)` returns)."
    body, head = answer.model[0], answer.model[1]
    body_trainable = sum(p.numel() for p in body.parameters() if p.requires_grad)
    head_frozen = sum(p.numel() for p in head.parameters() if not p.requires_grad)
    if head_frozen:
        return False, (f"{head_frozen:,} head parameters are frozen: the head must train. "
                       "Did you call `learn.freeze_to(...)` with a wrong number?")
    if body_trainable:
        return False, (f"{body_trainable:,} body parameters still train; with fastai's default "
                       "`train_bn=True` those are the BatchNorm layers. Hint: pass `train_bn=False` "
                       "to `models.learner`.")
    return True, ("nothing in the body trains now, not even BatchNorm: only the head's "
                  f"{sum(p.numel() for p in head.parameters()):,} parameters will change.")


# --- 04_fine_tuning -------------------------------------------------------------------

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
def check_batchnorm_lr(answer: float) -> tuple[bool, str]:
    """04: the rate of the frozen body's BatchNorm layers in fine_tune's first step (base_lr=2e-3)."""
    base_lr = 2e-3
    value = float(answer)
    if abs(value - base_lr / 10) <= 1e-9:
        return True, ("2e-4: `slice(base_lr)` gives the head base_lr and every other group a tenth of "
                      "it, and the only body weights that train then are BatchNorm's.")
    if abs(value) <= 1e-12:
        return False, ("the body is frozen, but fastai keeps its BatchNorm layers training "
                       "(train_bn=True), so they do get a rate.")
    if abs(value - base_lr) <= 1e-9:
        return False, "that is the head's rate; `slice(hi)` gives the other groups less."
    if abs(value - base_lr / 2 / 100) <= 1e-9 or abs(value - base_lr / 100) <= 1e-9:
        return False, ("that is a rate of the second step (after unfreeze). The first step calls "
                       "`fit_one_cycle(freeze_epochs, slice(base_lr), ...)`.")
    return False, ("not quite. Hint: `training.expected_lrs(slice(2e-3), 4)`, or read fine_tune's "
                   "source: its first step uses `slice(base_lr)`.")
