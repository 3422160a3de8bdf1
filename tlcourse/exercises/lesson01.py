"""Checks of the exercises in notebook 01_imagenet."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache

from tlcourse.activations import activations
from tlcourse.exercises import exercise
from tlcourse.models import create_model, imagenet_labels
from tlcourse.plots import ilsvrc_table


#: The layer and input size that 01_imagenet's exercise 2 asks about.
LESSON01_LAYER = "blocks.4"
LESSON01_SIZE = 224


@exercise
def check_first_cnn_year(answer: int) -> tuple[bool, str]:
    """01_imagenet: the first year in which a CNN won ILSVRC, from the package's table."""
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


@cache
def _lesson01_shape() -> tuple[int, ...]:
    """Output shape of the backbone's LESSON01_LAYER for one LESSON01_SIZE image (computed once)."""
    import torch

    with torch.random.fork_rng():  # a random-weight model must not move the caller's seed
        model = create_model(pretrained=False)  # the shapes do not depend on the weights
    x = torch.zeros(3, LESSON01_SIZE, LESSON01_SIZE)
    return tuple(activations(model, x, LESSON01_LAYER)[LESSON01_LAYER].shape[1:])


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
                       f"hooks.layer_table(net) lists every layer's output shape.")
    if shape[0] != expected[0]:
        return False, (f"{LESSON01_LAYER!r} does not have {shape[0]} output channels. Hint: look up "
                       f"the row {LESSON01_LAYER!r} of `hooks.layer_table(net)`.")
    if shape[1:] != expected[1:]:
        return False, (f"the channels are right, the height and width are not: the input is "
                       f"{size}×{size} and every stride-2 stage halves it. Capture the layer "
                       "and look at its shape.")
    return True, (f"{LESSON01_LAYER!r} turns a {size}×{size} photo into {expected[0]} maps of "
                  f"{expected[1]}×{expected[2]}: fewer positions, more kinds of feature.")


@exercise
def check_cat_classes(answer: Sequence[int]) -> tuple[bool, str]:
    """01_imagenet: indices of every ImageNet class whose name contains the word 'cat' (a whole word)."""
    labels = imagenet_labels()
    if isinstance(answer, str) or any(isinstance(i, str) for i in answer):
        return False, "give a list of class indices (ints), not names. Hint: `enumerate(labels)`."
    given = {int(i) for i in answer}
    expected = {i for i, name in enumerate(labels) if re.search(r"\bcat\b", name.lower())}
    extra, missing = sorted(given - expected), sorted(expected - given)
    if extra:
        example = labels[extra[0]] if 0 <= extra[0] < len(labels) else f"index {extra[0]}"
        return False, (f"{len(extra)} of your indices are not classes with the whole word 'cat', "
                       f"e.g. {example!r}. Hint: 'catamaran' contains the letters, not the word; "
                       r"`re.search(r'\bcat\b', name.lower())` finds whole words.")
    if missing:
        return False, (f"{len(missing)} class(es) are missing. Hint: the word can be anywhere in "
                       "the name, after a comma too, and in any case.")
    others = [labels[i].split(",")[0] for i in sorted(expected) if not 281 <= i <= 285]
    return True, (f"{len(expected)} classes, but only 281-285 are house cats; the others are "
                  f"{others}: a name is not a species, which is why the course groups classes by "
                  "index range.")
