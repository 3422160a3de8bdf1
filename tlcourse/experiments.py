"""Lesson 05's experiments: transfer versus scratch, measured instead of claimed.

One *run* trains one network with one *strategy* on one data set, with a given
number of training images per class and a given seed, and records train loss,
validation loss and accuracy after every epoch.  :func:`run_grid` runs a list of
runs, keeps one JSON file per finished run under ``cache_dir/experiments`` and
returns everything as one tidy :class:`pandas.DataFrame` (one row per epoch).
A repeated or interrupted grid loads the runs that are already on disk and
trains only the missing ones.

The strategies all get the same number of epochs:

* ``scratch``: random weights, every layer trains (``fit_one_cycle``).
* ``head-only``: ImageNet weights, the body stays frozen, only the new head trains.
* ``fine-tune``: ImageNet weights, fastai's ``fine_tune``: one epoch with the body
  frozen, then everything trains with discriminative learning rates.
* ``freeze-first-k``: ``fine_tune``'s recipe, except that the second phase keeps the
  first ``k`` layer groups of the body frozen (``learn.freeze_to(k)``).

So ``fine-tune`` is ``freeze-first-k`` with ``k = 0`` and ``head-only`` is the same
recipe with every body group frozen: the three pretrained strategies differ only in
how deep training reaches, which is what the freeze-depth sweep varies.  As in
fastai, BatchNorm layers keep training in frozen groups (``train_bn=True``).  The
learning rates are in :data:`RECIPE`, which is part of every result's key.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.vision.all import Callback, CancelValidException, L, Recorder, params, set_seed
from torch import nn
from tqdm.auto import tqdm

from tlcourse import data, models
from tlcourse.settings import Settings, get_settings

STRATEGIES = ("scratch", "head-only", "fine-tune", "freeze-first-k")
#: Everything about the training recipe that is not in a run or in the settings.
#: Changing it changes every run's key, so old results are not reused by mistake.
RECIPE = {"version": 2, "base_lr": 1e-2, "scratch_lr": 3e-3, "freeze_epochs": 1, "lr_mult": 100}
COLUMNS = ("domain", "strategy", "pretrained", "per_class", "seed", "frozen_groups", "n_groups",
           "n_classes", "n_valid", "epoch", "epochs", "train_loss", "valid_loss", "accuracy", "seconds",
           "trainable_params")
RESULTS_FOLDER = "experiments"


# --- layer groups -------------------------------------------------------------------

def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm))


def named_body_groups(body: nn.Module) -> list[tuple[str, nn.Module]]:
    """The body of a network cut into named layer groups, from the input side.

    A group is a stage the architecture itself defines: for EfficientNet the stem
    (first convolution and its BatchNorm), each of the 7 stages in ``blocks`` and the
    last 1x1 convolution with its BatchNorm (9 groups); for a ResNet the stem and
    ``layer1`` to ``layer4`` (5 groups).  A BatchNorm child joins the group before it
    and children without weights (activations, pooling) are skipped.
    """
    inner = getattr(body, "model", body)  # fastai wraps timm models in a TimmBody
    groups: list[tuple[list[str], list[nn.Module]]] = []
    for name, child in inner.named_children():
        if not any(True for _ in child.parameters()):
            continue
        if name in ("blocks", "stages", "layers"):
            groups.extend(([f"{name}.{i}"], [stage]) for i, stage in enumerate(child.children()))
        elif _is_norm(child) and groups:
            groups[-1][0].append(name)
            groups[-1][1].append(child)
        else:
            groups.append(([name], [child]))
    if len(groups) < 2:
        raise ValueError(f"Could not cut {type(inner).__name__} into layer groups; "
                         "the freeze-depth sweep needs a body made of several stages.")
    return [("+".join(names), mods[0] if len(mods) == 1 else nn.Sequential(*mods))
            for names, mods in groups]


def body_groups(body: nn.Module) -> list[nn.Module]:
    """The layer groups of :func:`named_body_groups`, without their names."""
    return [group for _, group in named_body_groups(body)]


def group_splitter(model: nn.Module) -> L:
    """fastai splitter: one parameter group per body group, then one for the head.

    With it ``learn.freeze_to(k)`` freezes exactly the first ``k`` body groups and
    ``learn.freeze()`` freezes the whole body, as fastai's default splitter does.
    """
    return L([params(g) for g in body_groups(model[0])] + [params(model[1:])])


@lru_cache(maxsize=None)
def n_body_groups(arch: str) -> int:
    """How many layer groups :func:`body_groups` finds in ``arch`` (no weights loaded)."""
    import timm

    return len(body_groups(timm.create_model(arch, pretrained=False, num_classes=0)))


# --- runs ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """Everything that defines one training run apart from the mode's settings.

    ``frozen_groups`` only matters for ``freeze-first-k``; the other strategies
    fill it in (``0`` for scratch and fine-tune, every body group for head-only).
    ``every_epoch=False`` validates only after the last epoch: faster, for runs of
    which only the final accuracy is used.  It is not part of the run's identity: a
    saved run with every epoch validated also serves a request without.
    """

    domain: str
    strategy: str
    per_class: int
    seed: int
    epochs: int
    frozen_groups: int = 0
    every_epoch: bool = True

    @property
    def pretrained(self) -> bool:
        return self.strategy != "scratch"


def make_run(domain: str, strategy: str, per_class: int, seed: int, epochs: int,
             frozen_groups: int = 0, n_groups: int | None = None, every_epoch: bool = True) -> Run:
    """A checked :class:`Run` with ``frozen_groups`` filled in for its strategy.

    ``freeze-first-k`` with ``k = 0`` *is* fine-tune and with ``k = n_groups`` *is*
    head-only (the same recipe), so those become the named strategy and share its
    results instead of being trained twice.  ``n_groups`` defaults to the number of
    body groups of the mode's architecture.
    """
    if n_groups is None:
        n_groups = n_body_groups(get_settings().arch)
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}.")
    if per_class < 1 or epochs < 1:
        raise ValueError(f"per_class and epochs must be at least 1, got {per_class} and {epochs}.")
    if strategy != "scratch" and epochs < 2:
        raise ValueError("Pretrained strategies need at least 2 epochs: one with the body frozen "
                         "(to train the new head), then the rest of the recipe.")
    if strategy == "freeze-first-k":
        if not 0 <= frozen_groups <= n_groups:
            raise ValueError(f"frozen_groups must be between 0 and {n_groups} (the body's layer "
                             f"groups), got {frozen_groups}.")
        if frozen_groups == 0:
            strategy = "fine-tune"
        elif frozen_groups == n_groups:
            strategy = "head-only"
    if strategy in ("scratch", "fine-tune"):
        frozen_groups = 0
    elif strategy == "head-only":
        frozen_groups = n_groups
    return Run(domain, strategy, int(per_class), int(seed), int(epochs), int(frozen_groups),
               bool(every_epoch))


def grid(domains: Sequence[str], strategies: Sequence[str], sizes: Sequence[int],
         seeds: Sequence[int], epochs: int, frozen: Sequence[int] = (0,),
         every_epoch: bool = True, settings: Settings | None = None) -> list[Run]:
    """Every combination as a list of runs (``frozen`` only varies ``freeze-first-k``)."""
    s = settings or get_settings()
    n = n_body_groups(s.arch)
    runs = []
    for domain in domains:
        for size in sizes:
            for strategy in strategies:
                for k in (frozen if strategy == "freeze-first-k" else (0,)):
                    for seed in seeds:
                        runs.append(make_run(domain, strategy, size, seed, epochs, k, n, every_epoch))
    return list(dict.fromkeys(runs))  # drop duplicates, keep the order


def run_key(run: Run, settings: Settings) -> dict:
    """Everything the result of ``run`` depends on, as plain JSON-able values."""
    s = settings
    identity = {k: v for k, v in asdict(run).items() if k != "every_epoch"}
    return {"run": identity, "mode": s.mode, "arch": s.arch, "device": s.device,
            "image_size": s.image_size, "batch_size": s.batch_size,
            "train_per_class": s.train_per_class, "valid_per_class": s.valid_per_class,
            "data_version": data.GENERATOR_VERSION, "recipe": RECIPE}


def result_path(run: Run, settings: Settings) -> Path:
    """The file that holds ``run``'s result: readable name plus a hash of its key."""
    key = json.dumps(run_key(run, settings), sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    name = (f"{run.domain}_{run.strategy}_k{run.frozen_groups}_n{run.per_class}"
            f"_seed{run.seed}_e{run.epochs}_{digest}.json")
    return settings.cache_dir / RESULTS_FOLDER / name


def load_result(run: Run, settings: Settings) -> list[dict] | None:
    """The saved epochs of ``run``, or ``None`` when it has not finished (or is unreadable)."""
    path = result_path(run, settings)
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if saved.get("key") != json.loads(json.dumps(run_key(run, settings))):
        return None
    rows = saved.get("rows")
    if not isinstance(rows, list) or len(rows) != run.epochs:
        return None
    if run.every_epoch and any(row.get("accuracy") is None for row in rows):
        return None  # saved with only the final epoch validated; this request needs them all
    return rows


def save_result(run: Run, settings: Settings, rows: list[dict]) -> Path:
    """Write ``rows`` for ``run`` atomically (a crash never leaves a half-written result)."""
    path = result_path(run, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": run_key(run, settings), "rows": rows}, indent=1))
    os.replace(tmp, path)
    return path


# --- training -----------------------------------------------------------------------

class EpochLog(Callback):
    """Copy fastai's ``Recorder`` values after every epoch, across several ``fit`` calls.

    ``Recorder`` starts afresh at each ``fit``; ``fine_tune`` calls ``fit`` twice, so
    this callback keeps the whole history and adds each epoch's wall time.
    """

    order = Recorder.order + 1

    def __init__(self, epochs: int, every_epoch: bool = True):
        self.epochs, self.every_epoch = epochs, every_epoch
        self.rows: list[dict] = []

    def before_epoch(self):
        self._start = time.perf_counter()

    def before_validate(self):
        # Starting a DataLoader draws from the global random generators; restoring them
        # afterwards makes training exactly the same whether or not an epoch is validated.
        self._rng = (torch.get_rng_state(), random.getstate(), np.random.get_state())
        if not self.every_epoch and len(self.rows) + 1 < self.epochs:
            raise CancelValidException()  # only the run's last epoch is validated

    def after_validate(self):
        torch_state, python_state, numpy_state = self._rng
        torch.set_rng_state(torch_state)
        random.setstate(python_state)
        np.random.set_state(numpy_state)

    def after_epoch(self):
        names = [n for n in self.recorder.metric_names[1:] if n != "time"]
        values = dict(zip(names, self.recorder.values[-1]))  # no validation: train_loss only
        trainable = sum(p.numel() for p in self.learn.model.parameters() if p.requires_grad)

        def number(name):
            return float(values[name]) if name in values else None

        self.rows.append({"epoch": len(self.rows) + 1, "train_loss": number("train_loss"),
                          "valid_loss": number("valid_loss"), "accuracy": number("accuracy"),
                          "seconds": time.perf_counter() - self._start,
                          "trainable_params": int(trainable)})


def batch_size(run: Run, settings: Settings) -> int:
    """The mode's batch size, made to split ``run``'s training images into equal batches.

    fastai drops the last incomplete training batch, so 10 images with a batch size
    of 16 would train on nothing; 25 images would train on 16 and skip 9.  The
    largest size up to the mode's that gives equal batches trains on (nearly) all.
    """
    df = data.subsample(data.items(run.domain, settings), run.per_class, run.seed)
    n_train = int((~df.is_valid).sum())
    return max(1, n_train // math.ceil(n_train / settings.batch_size))


def train_run(run: Run, settings: Settings) -> list[dict]:
    """Train ``run`` from a fixed seed and return one dict per epoch.

    The seed is set right before the data (which also picks the training subset)
    and the learner are built, so the same run gives the same numbers again.
    """
    s = replace(settings, batch_size=batch_size(run, settings))
    set_seed(run.seed, reproducible=True)
    dls = data.get_dls(run.domain, per_class=run.per_class, seed=run.seed, settings=s)
    log = EpochLog(run.epochs, run.every_epoch)
    learn = models.learner(dls, pretrained=run.pretrained, arch=s.arch,
                           splitter=group_splitter, cbs=log)
    lr, first = RECIPE["base_lr"], RECIPE["freeze_epochs"]
    with learn.no_bar(), learn.no_logging():
        if run.strategy == "scratch":
            learn.fit_one_cycle(run.epochs, RECIPE["scratch_lr"])
        elif run.strategy == "fine-tune":
            learn.fine_tune(run.epochs - first, lr, freeze_epochs=first, lr_mult=RECIPE["lr_mult"])
        else:  # fine_tune with freeze_to(k) in place of unfreeze()
            learn.freeze()
            learn.fit_one_cycle(first, slice(lr), pct_start=0.99)
            learn.freeze_to(run.frozen_groups)
            learn.fit_one_cycle(run.epochs - first, slice(lr / 2 / RECIPE["lr_mult"], lr / 2),
                                pct_start=0.3, div=5.0)
    n_groups = len(learn.opt.param_groups) - 1
    for row in log.rows:
        row.update(n_classes=int(dls.c), n_groups=n_groups, n_valid=len(dls.valid_ds))
    return log.rows


def run_grid(runs: Iterable[Run], settings: Settings | None = None,
             progress: bool = True) -> pd.DataFrame:
    """Run (or load) every run and return all epochs as one tidy DataFrame.

    Finished runs are read from ``cache_dir/experiments``; only missing ones train,
    each saved as soon as it ends, so stopping the kernel loses at most one run.
    """
    s = settings or get_settings()
    runs = list(dict.fromkeys(runs))
    frames, trained = [], 0
    bar = tqdm(runs, desc="experiments", unit="run", disable=not progress)
    for run in bar:
        rows = load_result(run, s)
        if rows is None:
            bar.set_postfix_str(f"training {run.domain} {run.strategy} n={run.per_class} seed={run.seed}")
            rows = train_run(run, s)
            save_result(run, s, rows)
            trained += 1
        frame = pd.DataFrame(rows).astype({"valid_loss": float, "accuracy": float})
        for field, value in asdict(run).items():
            frame[field] = value
        frame["pretrained"] = run.pretrained
        frames.append(frame)
    bar.set_postfix_str(f"{trained} trained, {len(runs) - trained} loaded from disk")
    bar.close()
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    df = pd.concat(frames, ignore_index=True)
    df.attrs["trained"] = trained
    return df[list(COLUMNS)]


# --- summaries ----------------------------------------------------------------------

def final(df: pd.DataFrame) -> pd.DataFrame:
    """Only each run's last epoch (the accuracy a run ends with)."""
    return df[df.epoch == df.epochs].reset_index(drop=True)


def summary(df: pd.DataFrame, by: Sequence[str] = ("domain", "strategy", "per_class")) -> pd.DataFrame:
    """Final accuracy per group over seeds: mean, min, max, std and number of seeds."""
    return (final(df).groupby(list(by))
            .agg(mean=("accuracy", "mean"), low=("accuracy", "min"), high=("accuracy", "max"),
                 std=("accuracy", "std"), seeds=("accuracy", "count"), n_valid=("n_valid", "min"))
            .reset_index())


def noise(a: pd.Series, b: pd.Series) -> float:
    """How big a gap between two rows of :func:`summary` must be to count as real.

    The larger of: either row's spread over seeds (max - min), and one standard
    error of the difference of two accuracies measured on ``n_valid`` images, so
    that two seeds that happen to agree (both at chance, say) do not make a
    one-image difference look like a finding.
    """
    n = float(min(a.n_valid, b.n_valid))
    se = math.sqrt((a["mean"] * (1 - a["mean"]) + b["mean"] * (1 - b["mean"])) / n)
    return float(max(a.high - a.low, b.high - b.low, se))


def epochs_to_reach(curve: Sequence[float], target: float) -> int | None:
    """The first epoch (counted from 1) whose value is at least ``target``, else ``None``."""
    for epoch, value in enumerate(curve, start=1):
        if value >= target:
            return epoch
    return None


def crossing(sizes: Sequence[float], a: Sequence[float], b: Sequence[float]) -> float | None:
    """Where curve ``b`` overtakes curve ``a`` (or the other way round), on a log scale.

    Returns the size at which ``b - a`` changes sign, interpolated linearly in
    ``log(size)`` between the two measured sizes around it, or ``None`` when one
    curve stays above the other at every measured size.
    """
    diff = np.asarray(b, float) - np.asarray(a, float)
    x = np.log(np.asarray(sizes, float))
    for i in range(len(diff) - 1):
        if diff[i] == 0:
            return float(sizes[i])
        if diff[i] * diff[i + 1] < 0:
            t = diff[i] / (diff[i] - diff[i + 1])
            return float(math.exp(x[i] + t * (x[i + 1] - x[i])))
    return None


def winners(df: pd.DataFrame) -> pd.DataFrame:
    """For every domain and size: the best strategy, the runner-up and whether the win is clear.

    A win is *clear* when the gap between the two best means is larger than the
    :func:`noise` of the comparison; otherwise the two are a tie for an experiment
    of this size.  Only the named strategies compete: ``freeze-first-k`` runs
    (several depths under one name) belong to the freeze-depth sweep.
    """
    rows = []
    main = df[df.strategy != "freeze-first-k"]
    for (domain, size), group in summary(main).groupby(["domain", "per_class"]):
        ranked = group.sort_values("mean", ascending=False).reset_index(drop=True)
        best, second = ranked.iloc[0], ranked.iloc[1] if len(ranked) > 1 else None
        scratch = ranked[ranked.strategy == "scratch"]
        pretrained = ranked[ranked.strategy != "scratch"]
        margin = float(best["mean"] - second["mean"]) if second is not None else math.nan
        threshold = noise(best, second) if second is not None else math.nan
        rows.append({"domain": domain, "per_class": int(size), "winner": best.strategy,
                     "winner_acc": float(best["mean"]),
                     "runner_up": second.strategy if second is not None else None,
                     "margin": margin, "noise": threshold, "clear": bool(margin > threshold),
                     "best_pretrained": pretrained.iloc[0].strategy if len(pretrained) else None,
                     "gain_over_scratch": (float(pretrained.iloc[0]["mean"] - scratch.iloc[0]["mean"])
                                           if len(pretrained) and len(scratch) else math.nan)})
    return pd.DataFrame(rows)


#: The articles' advice by amount of data (claim a), as the strategy it recommends.
ADVICE = {"little": ("head-only", "retrain only the last layer"),
          "more": ("fine-tune", "retrain more layers"),
          "lots": ("fine-tune", "start from the pretrained weights and retrain everything")}


def strategy_guide(df: pd.DataFrame, near: str, far: str) -> pd.DataFrame:
    """The measured strategy guide: one row per (domain, size) with the advice and a verdict.

    Sizes are read as *little* (smallest), *lots* (largest) and *more* (in between).
    The verdict on the size advice (claim a) is ``agrees`` when the advised strategy
    wins by more than the :func:`noise`, ``disagrees`` when another strategy beats it
    by more than that, and ``tie`` otherwise (the experiment cannot tell them apart).  ``less_help_far`` says whether the ImageNet start gained less
    over scratch on the far domain than on the near one at that size (claim b).
    """
    table = winners(df)
    sizes = sorted(table.per_class.unique())
    table["amount"] = ["little" if n == sizes[0] else "lots" if n == sizes[-1] else "more"
                       for n in table.per_class]
    table["advice"] = [ADVICE[a][0] for a in table.amount]
    table["advice_text"] = [ADVICE[a][1] for a in table.amount]
    verdicts = []
    stats = summary(df[df.strategy != "freeze-first-k"]).set_index(["domain", "per_class", "strategy"])
    for row in table.itertuples():
        if row.winner == row.advice:
            verdicts.append("agrees" if row.clear else "tie")
            continue
        win = stats.loc[(row.domain, row.per_class, row.winner)]
        adv = stats.loc[(row.domain, row.per_class, row.advice)]
        verdicts.append("tie" if win["mean"] - adv["mean"] <= noise(win, adv) else "disagrees")
    table["verdict"] = verdicts
    table["similarity"] = table.domain.map({near: "near", far: "far"})
    gains = table.pivot(index="per_class", columns="domain", values="gain_over_scratch")
    if near in gains and far in gains:
        table["less_help_far"] = table.per_class.map(gains[far] < gains[near])
    return table.sort_values(["domain", "per_class"]).reset_index(drop=True)
