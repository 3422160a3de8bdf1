"""Checks of the exercises in notebook 00_setup."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from tlcourse import data, models
from tlcourse.data import images
from tlcourse.exercises import exercise
from tlcourse.settings import get_settings


#: The breed whose test photos 00_setup's exercise 2 asks about.
LESSON00_BREED = "Siamese"


@exercise
def check_batch_shape(answer: Sequence[int]) -> tuple[bool, str]:
    """00_setup: the shape of one training batch of ``data.get_dls(S.dataset, S)``, as a tuple."""
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
    rows = data.subsample(data.items(s.dataset, s), s.per_class)  # what data.get_dls(S.dataset, S) uses
    expected = data.batch_size(int((rows.split == "train").sum()), s)
    if shape[0] != expected:
        return False, (f"the first dimension is the batch size, and it is not {shape[0]}. Hint: with "
                       f"few training images the course uses smaller batches than `S.batch_size` "
                       f"({s.batch_size}): read it off `xb.shape` or `dls.bs`.")
    return True, f"a batch is {shape}: batch, channels, height, width."


@cache  # the model runs over the test photos once per kernel
def _breed_hits(breed: str) -> int:
    """How many test photos of ``breed`` have an ImageNet class of that breed's name in their top-5."""
    df = data.items("pet_breeds", get_settings())
    rows = df[(df.split == "test") & (df.breed == breed)]
    net = models.create_model()
    word = breed.lower().replace("_", " ")
    hits = 0
    for fname in rows.fname:
        top = models.top_k(net, images.load_image(f"{df.attrs['path']}/{fname}"), k=5)
        hits += any(word in label.lower() for label, _ in top)
    return hits


@exercise
def check_breed_in_top5(answer: int) -> tuple[bool, str]:
    """00_setup: how many of the 3 Siamese test photos have ImageNet's Siamese class in their top-5."""
    if isinstance(answer, bool) or not float(answer).is_integer():
        return False, "give a whole number of photos (an int from 0 to 3), not a share or a bool."
    expected, given = _breed_hits(LESSON00_BREED), int(answer)
    if not 0 <= given <= 3:
        return False, f"there are 3 test photos of {LESSON00_BREED}, so the answer is between 0 and 3."
    if given != expected:
        return False, (f"not {given}. Hint: for each test photo of {LESSON00_BREED}, call "
                       "`models.top_k(net, photo, k=5)` and look for a label containing "
                       f"'{LESSON00_BREED.lower()}' (any case); count the photos where one does.")
    return True, (f"{expected} of 3: ImageNet has a class named after this breed, so its head can "
                  "name it without any training on our data.")
