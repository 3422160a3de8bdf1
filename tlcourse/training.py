"""Inside fastai's transfer-learning recipe (lessons 03 and 04): ``vision_learner`` cuts a network into
a *body* and a new *head*, its parameters into *layer groups* for ``freeze_to``, ``slice`` learning rates
and ``fine_tune``.  Here: the groups shown and cut finer, a VGG-style head, gradual unfreezing written out."""

from __future__ import annotations

import numpy as np
import pandas as pd
from fastai.torch_core import norm_bias_params, params
from fastai.vision.all import Learner
from torch import nn

from tlcourse.models import body_groups
from tlcourse.models.records import History


def split_body(model: nn.Module, n_body_groups: int = 3) -> list[list[nn.Parameter]]:
    """Parameter groups of a ``vision_learner`` model: the body's stages (``models.body_groups``) shared
    out evenly into ``n_body_groups`` groups, early first, then the head.  fastai cuts a timm model only
    into ``[body, head]``; more groups let ``freeze_to`` and ``slice(lo, hi)`` act on parts of the body."""
    if not isinstance(model, nn.Sequential) or len(model) < 2:
        raise ValueError("split_body expects a vision_learner model, nn.Sequential(body, head); "
                         f"got {type(model).__name__}.")
    stages = body_groups(model[0])
    if not 1 <= n_body_groups <= len(stages):
        raise ValueError(f"n_body_groups must be between 1 and {len(stages)} (the body's stages), "
                         f"got {n_body_groups}.")
    chunks = np.array_split(np.arange(len(stages)), n_body_groups)
    groups = [[p for i in chunk for p in stages[i].parameters()] for chunk in chunks]
    return groups + [list(params(model[1:]))]


def four_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """Splitter: early, middle and late body, then the head (a function: ``learn.export`` pickles it)."""
    return split_body(model, n_body_groups=3)


def group_names(n_groups: int) -> list[str]:
    """Readable names for ``n_groups`` layer groups: the body's parts, then the head."""
    n_body = n_groups - 1
    named = {1: ["body"], 3: ["body: early", "body: middle", "body: late"]}
    return named.get(n_body, [f"body {i + 1}/{n_body}" for i in range(n_body)]) + ["head"]


def _layer_name(param_name: str) -> str:
    """Its layer's name: ``0.model.blocks.3.1.conv.weight`` -> ``blocks.3``, ``1.4.weight`` -> ``head``."""
    parts = param_name.split(".")
    if parts[0] != "0":
        return "head"
    parts = parts[2:] if len(parts) > 2 and parts[1] == "model" else parts[1:]
    return ".".join(parts[:2]) if parts[0] in ("blocks", "stages", "layers", "features") else parts[0]


def _opt(learn: Learner):
    """The learner's optimiser, created if ``fit`` has not made it yet."""
    if learn.opt is None:
        learn.create_opt()
    return learn.opt


def _counts(plist: list[nn.Parameter]) -> dict[str, int]:
    """Parameters in ``plist``: in all, trainable and frozen."""
    total = sum(p.numel() for p in plist)
    trainable = sum(p.numel() for p in plist if p.requires_grad)
    return dict(params=total, trainable=trainable, frozen=total - trainable)


def param_summary(learn: Learner) -> pd.DataFrame:
    """One row per layer group: its layers, parameters in all, trainable, frozen, trainable in
    BatchNorm, and its learning rate; read from ``requires_grad``, so exactly what ``fit`` updates."""
    opt = _opt(learn)
    norm_ids = {id(p) for p in norm_bias_params(learn.model, with_bias=False)}
    layer_of = {id(p): _layer_name(n) for n, p in learn.model.named_parameters()}
    rows = []
    for name, plist, hyper in zip(group_names(len(opt.param_lists)), opt.param_lists, opt.hypers):
        layers = list(dict.fromkeys(layer_of.get(id(p), "?") for p in plist))
        shown = ", ".join(layers) if len(layers) <= 4 else f"{layers[0]} ... {layers[-1]}"
        bn = _counts([p for p in plist if id(p) in norm_ids])["trainable"]
        rows.append(dict(group=name, layers=shown, **_counts(plist), trainable_in_batchnorm=bn,
                         lr=float(hyper["lr"])))
    df = pd.DataFrame(rows)
    total = df[["params", "trainable", "frozen", "trainable_in_batchnorm"]].sum()
    df.loc[len(df)] = dict(group="total", layers="", **total.to_dict(), lr=float("nan"))
    return df


def params_by_layer_type(module: nn.Module) -> pd.DataFrame:
    """Per layer type of ``module`` (Conv2d, Linear ...): how many layers, parameters, trainable, frozen."""
    rows = [dict(layer_type=type(sub).__name__, layers=1, **_counts(list(sub.parameters(recurse=False))))
            for sub in module.modules() if next(sub.parameters(recurse=False), None) is not None]
    if not rows:
        raise ValueError(f"{type(module).__name__} has no parameters.")
    return (pd.DataFrame(rows).groupby("layer_type").sum()
            .sort_values("params", ascending=False).reset_index())


def group_lrs(learn: Learner) -> list[float]:
    """The learning rate of every layer group, read from the optimiser (early groups first)."""
    return [float(h["lr"]) for h in _opt(learn).hypers]


def set_lrs(learn: Learner, lr: float | slice) -> list[float]:
    """Give the optimiser ``lr`` as ``fit_one_cycle(..., lr)`` would; return the per-group (peak) rates."""
    _opt(learn).set_hyper("lr", lr)
    return group_lrs(learn)


def expected_lrs(lr: float | slice, n_groups: int) -> list[float]:
    """fastai's rule for spreading ``lr`` over ``n_groups`` layer groups, written out: a number goes to
    every group; ``slice(hi)`` gives the head ``hi``, every other group ``hi / 10``; ``slice(lo, hi)``
    runs from ``lo`` (earliest group) to ``hi`` (head) evenly on a log scale (a constant factor apart)."""
    if n_groups < 1:
        raise ValueError(f"n_groups must be at least 1, got {n_groups}.")
    if not isinstance(lr, slice):
        return [float(lr)] * n_groups
    if lr.stop is None:
        raise ValueError("A learning-rate slice needs a stop value: slice(hi) or slice(lo, hi).")
    if not lr.start:
        return [lr.stop / 10] * (n_groups - 1) + [float(lr.stop)]
    if n_groups == 1:
        return [float(lr.stop)]
    return [float(v) for v in np.geomspace(lr.start, lr.stop, n_groups)]


def vgg_head(in_shape: tuple[int, int, int], n_out: int, hidden: int = 256, p: float = 0.6) -> nn.Sequential:
    """The classic Keras VGG16 head: flatten the feature map, dense ``hidden`` units with ReLU,
    dropout ``p``, dense output.  No pooling, so its size depends on ``in_shape`` (the image size)."""
    c, h, w = in_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(inplace=True),
                         nn.Dropout(p), nn.Linear(hidden, n_out))


def gradual_schedule(total_epochs: int, freeze_epochs: int = 1) -> list[tuple[int, int]]:
    """``(freeze_to argument, epochs)`` for gradual unfreezing of a four-group learner: the head for
    ``freeze_epochs``, then ``freeze_to(-2)``, ``(-3)``, ``unfreeze`` share the rest (later: any extra)."""
    rest = total_epochs - freeze_epochs
    if freeze_epochs < 1 or rest < 3:
        raise ValueError(f"Need freeze_epochs >= 1 and at least 3 epochs after it; got "
                         f"total_epochs={total_epochs}, freeze_epochs={freeze_epochs}.")
    shares = [len(a) for a in np.array_split(np.arange(rest), 3)][::-1]
    return [(-1, freeze_epochs)] + list(zip((-2, -3, 0), shares))


def gradual_unfreeze(learn: Learner, total_epochs: int, base_lr: float = 2e-3, freeze_epochs: int = 1,
                     lr_mult: float = 100, record: list | None = None) -> None:
    """Unfreeze one layer group at a time from the head down, with ``fine_tune``'s rates: ``slice(base_lr)``
    for the head alone, then ``slice(base_lr/2/lr_mult, base_lr/2)`` while the groups open up.  Needs four
    or more groups (``splitter=four_groups``); each stage's History is appended to ``record``."""
    if len(learn.opt.param_lists if learn.opt else learn.splitter(learn.model)) < 4:
        raise ValueError("Gradual unfreezing with freeze_to(-2), freeze_to(-3) needs at least four "
                         "layer groups; create the learner with splitter=training.four_groups.")
    names = {-1: "head only", -2: "freeze_to(-2)", -3: "freeze_to(-3)", 0: "unfreeze"}
    for n, epochs in gradual_schedule(total_epochs, freeze_epochs):
        learn.freeze_to(n)
        if n == -1:
            learn.fit_one_cycle(epochs, slice(base_lr), pct_start=0.99)
        else:
            learn.fit_one_cycle(epochs, slice(base_lr / 2 / lr_mult, base_lr / 2), pct_start=0.3, div=5.0)
        if record is not None:
            record.append(History.of(learn, names[n]))
