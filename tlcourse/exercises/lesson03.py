"""Checks of the exercises in notebook 03_head_only."""

from __future__ import annotations

from collections.abc import Callable

from tlcourse import models, training
from tlcourse.exercises import exercise
from tlcourse.models import hooks


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

    body = TimmBody(models.create_model(pretrained=False, num_classes=0))  # as vision_learner cuts it
    shape = hooks.body_output_shape(body, LESSON03_SIZE)
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
                       f"gives a {h}×{w} map: use `hooks.body_output_shape(body, {LESSON03_SIZE})`.")
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


