"""What happened during training, read from fastai's callbacks: one home for every record.

* :class:`History`: fastai's ``Recorder`` after a ``fit`` (one row per epoch, one per
  batch), joinable across the stages of ``fine_tune`` (lessons 03 and 04, ``plots``);
* :class:`GroupLrs`: the learning rate of every layer group at every batch, which the
  ``Recorder`` does not keep (lesson 04);
* :class:`EpochLog`: train loss and validation accuracy per epoch across the ``fit``
  calls of one run, validating only where a learning curve needs it (lesson 05).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from fastai.vision.all import Callback, CancelValidException, Learner, Recorder


@dataclass(frozen=True)
class History:
    """What fastai's ``Recorder`` saw during one or more ``fit`` calls.

    ``epochs``: one row per epoch (``epoch`` counts from 1 across stages, ``stage``,
    ``train_loss``, ``valid_loss`` and the metrics).  ``batches``: one row per training
    batch (``epoch`` as a fraction, ``stage``, smoothed ``loss``, ``lr`` of the head).
    """

    epochs: pd.DataFrame
    batches: pd.DataFrame

    @classmethod
    def of(cls, learn: Learner, stage: str = "") -> History:
        """The history of the learner's most recent ``fit`` (the Recorder keeps only that one)."""
        rec = learn.recorder
        names = [n for n in rec.metric_names[1:] if n != "time"]
        values = [list(v)[: len(names)] for v in rec.values]
        epochs = pd.DataFrame(values, columns=names, dtype=float)
        epochs.insert(0, "epoch", np.arange(1, len(epochs) + 1))
        epochs.insert(1, "stage", stage)
        n_epochs = max(len(rec.values), 1)
        per_epoch = (len(rec.losses) / n_epochs) or 1
        batches = pd.DataFrame({"epoch": (np.arange(len(rec.losses)) + 1) / per_epoch, "stage": stage,
                                "loss": [float(v) for v in rec.losses], "lr": [float(v) for v in rec.lrs]})
        return cls(epochs, batches)

    def then(self, other: History) -> History:
        """This history followed by ``other``, whose epochs are shifted to continue on."""
        shift = float(self.epochs["epoch"].max()) if len(self.epochs) else 0.0
        e, b = other.epochs.copy(), other.batches.copy()
        e["epoch"] += shift
        b["epoch"] += shift
        return History(pd.concat([self.epochs, e], ignore_index=True),
                       pd.concat([self.batches, b], ignore_index=True))

    @classmethod
    def join(cls, parts: list[History]) -> History:
        """Stages recorded one after the other, as one history."""
        if not parts:
            raise ValueError("join needs at least one History.")
        out = parts[0]
        for part in parts[1:]:
            out = out.then(part)
        return out

    @property
    def final_accuracy(self) -> float:
        """Validation accuracy after the last epoch."""
        if "accuracy" not in self.epochs or not len(self.epochs):
            raise ValueError("This history has no accuracy column; create the learner with metrics=accuracy.")
        return float(self.epochs["accuracy"].iloc[-1])


class GroupLrs(Callback):
    """Record the learning rate of every layer group at every training batch.

    fastai's Recorder keeps only the last group's rate; this callback keeps them all,
    so you can see what the optimiser really used.  ``table()`` gives one row per
    batch; ``peaks()`` the largest rate of each group in each ``fit`` call.  Runs of
    ``lr_find`` are skipped.
    """

    def __init__(self):
        self.rows: list[dict] = []
        self.fit_index = -1

    def _finding(self) -> bool:
        from fastai.callback.schedule import LRFinder

        return any(isinstance(cb, LRFinder) for cb in self.learn.cbs)

    def before_fit(self):
        if not self._finding():
            self.fit_index += 1

    def after_batch(self):
        if self.training and not self._finding():
            row = {"fit": self.fit_index}
            row.update({f"group {i}": float(h["lr"]) for i, h in enumerate(self.opt.hypers)})
            self.rows.append(row)

    def table(self) -> pd.DataFrame:
        """One row per training batch: ``fit`` (0 for the first fit call) and each group's rate."""
        return pd.DataFrame(self.rows)

    def peaks(self) -> pd.DataFrame:
        """The largest rate of each group in each fit call (the peak of a one-cycle schedule)."""
        if not self.rows:
            raise ValueError("no rates recorded yet: add the callback and train first.")
        return self.table().groupby("fit").max()


class EpochLog(Callback):
    """Train loss and (when ``curve``) validation accuracy after every epoch, across the
    ``fit`` calls of one run; without ``curve`` validation is skipped (the run's result is
    its test accuracy, measured afterwards)."""

    order = Recorder.order + 1

    def __init__(self, curve: bool, at: Iterable[int] | None = None):
        self.curve, self.rows = curve, []
        self.at = None if at is None else set(at)  # the epochs to validate (default: all)

    def _validates(self) -> bool:
        return self.curve and (self.at is None or len(self.rows) + 1 in self.at)

    def before_epoch(self):
        self._start = time.perf_counter()

    def before_validate(self):
        # Starting a DataLoader draws random numbers; restoring the generators keeps training
        # the same whether or not the epoch is validated.
        self._rng = (torch.get_rng_state(), random.getstate(), np.random.get_state())
        if not self._validates():
            raise CancelValidException()

    def after_validate(self):
        torch.set_rng_state(self._rng[0])
        random.setstate(self._rng[1])
        np.random.set_state(self._rng[2])

    def after_epoch(self):
        names = [n for n in self.recorder.metric_names[1:] if n != "time"]
        values = dict(zip(names, self.recorder.values[-1]))
        self.rows.append({"epoch": len(self.rows) + 1, "train_loss": float(values["train_loss"]),
                          "accuracy": float(values["accuracy"]) if self._validates() and "accuracy" in values else None,
                          "seconds": time.perf_counter() - self._start})
