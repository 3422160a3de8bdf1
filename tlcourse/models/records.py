"""What happened during training, from fastai's callbacks: :class:`History` (the ``Recorder`` per epoch
and batch, joinable across stages; lessons 03-04), :class:`GroupLrs` (each layer group's rate; lesson 04)
and :class:`EpochLog` (loss and accuracy per epoch, validating only where a curve needs it; lesson 05)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import reduce

import numpy as np
import pandas as pd
from fastai.torch_core import get_random_states, set_random_states
from fastai.vision.all import Callback, CancelValidException, Learner, LRFinder, Recorder


@dataclass(frozen=True)
class History:
    """What fastai's ``Recorder`` saw during one or more ``fit`` calls.  ``epochs``: one row per epoch
    (``epoch`` from 1 across stages, ``stage``, ``train_loss``, ``valid_loss``, metrics); ``batches``:
    one row per training batch (``epoch`` as a fraction, ``stage``, smoothed ``loss``, head ``lr``)."""

    epochs: pd.DataFrame
    batches: pd.DataFrame

    @classmethod
    def of(cls, learn: Learner, stage: str = "") -> History:
        """The history of the learner's most recent ``fit`` (the Recorder keeps only that one)."""
        rec = learn.recorder
        names = [n for n in rec.metric_names[1:] if n != "time"]
        epochs = pd.DataFrame([list(v)[: len(names)] for v in rec.values], columns=names, dtype=float)
        epochs.insert(0, "epoch", np.arange(1, len(epochs) + 1))
        epochs.insert(1, "stage", stage)
        per_epoch = (len(rec.losses) / max(len(rec.values), 1)) or 1
        batches = pd.DataFrame({"epoch": (np.arange(len(rec.losses)) + 1) / per_epoch, "stage": stage,
                                "loss": [float(v) for v in rec.losses], "lr": [float(v) for v in rec.lrs]})
        return cls(epochs, batches)

    def then(self, other: History) -> History:
        """This history followed by ``other``, whose epochs are shifted to continue on."""
        shift = float(self.epochs["epoch"].max()) if len(self.epochs) else 0.0
        e, b = (df.assign(epoch=df["epoch"] + shift) for df in (other.epochs, other.batches))
        return History(pd.concat([self.epochs, e], ignore_index=True),
                       pd.concat([self.batches, b], ignore_index=True))

    @classmethod
    def join(cls, parts: list[History]) -> History:
        """Stages recorded one after the other, as one history."""
        if not parts:
            raise ValueError("join needs at least one History.")
        return reduce(History.then, parts)

    @property
    def final_accuracy(self) -> float:
        """Validation accuracy after the last epoch."""
        if "accuracy" not in self.epochs or not len(self.epochs):
            raise ValueError("This history has no accuracy column; create the learner with metrics=accuracy.")
        return float(self.epochs["accuracy"].iloc[-1])


class GroupLrs(Callback):
    """Every layer group's learning rate at every training batch (the Recorder keeps only the last
    group's): ``table()`` per batch, ``peaks()`` each group's peak per ``fit`` call; ``lr_find`` skipped."""

    def __init__(self):
        self.rows, self.fit_index = [], -1  # fit_index: which fit call (0 for the first) is running

    def _finding(self) -> bool:
        return any(isinstance(cb, LRFinder) for cb in self.learn.cbs)

    def before_fit(self):
        if not self._finding():
            self.fit_index += 1

    def after_batch(self):
        if self.training and not self._finding():
            self.rows.append({"fit": self.fit_index,
                              **{f"group {i}": float(h["lr"]) for i, h in enumerate(self.opt.hypers)}})

    def table(self) -> pd.DataFrame:
        """One row per training batch: ``fit`` (0 for the first fit call) and each group's rate."""
        return pd.DataFrame(self.rows)

    def peaks(self) -> pd.DataFrame:
        """The largest rate of each group in each fit call (the peak of a one-cycle schedule)."""
        if not self.rows:
            raise ValueError("no rates recorded yet: add the callback and train first.")
        return self.table().groupby("fit").max()


class EpochLog(Callback):
    """Train loss and (when ``curve``) validation accuracy after every epoch across one run's ``fit``
    calls; without ``curve`` validation is skipped (the run's result is its test accuracy)."""

    order = Recorder.order + 1

    def __init__(self, curve: bool, at: Iterable[int] | None = None):
        self.curve, self.rows = curve, []
        self.at = None if at is None else set(at)  # the epochs to validate (default: all)

    def _validates(self) -> bool:
        return self.curve and (self.at is None or len(self.rows) + 1 in self.at)

    def before_epoch(self):
        self._start = time.perf_counter()

    def before_validate(self):
        # Starting a DataLoader draws random numbers; restore them so validating never changes training.
        self._rng = get_random_states()
        if not self._validates():
            raise CancelValidException()

    def after_validate(self):
        set_random_states(**self._rng)

    def after_epoch(self):
        names = [n for n in self.recorder.metric_names[1:] if n != "time"]
        values = dict(zip(names, self.recorder.values[-1]))
        accuracy = values.get("accuracy") if self._validates() else None
        self.rows.append({"epoch": len(self.rows) + 1, "train_loss": float(values["train_loss"]),
                          "accuracy": None if accuracy is None else float(accuracy),
                          "seconds": time.perf_counter() - self._start})
