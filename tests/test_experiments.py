"""Lesson 05's experiment runner: runs, cache, same images for every strategy, summaries (no long training)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from tlcourse import data, experiments
from tlcourse.settings import get_settings


def test_runs_check_their_fields():
    with pytest.raises(ValueError, match="Unknown strategy"):
        experiments.Run("fashion", "retrain", 5, 0)
    with pytest.raises(ValueError, match="at least 1"):
        experiments.Run("fashion", "scratch", 0, 0)
    with pytest.raises(ValueError, match="frozen"):
        experiments.Run("fashion", "fine-tune", 5, 0, frozen=3)
    runs = experiments.grid(["a"], ["scratch", "freeze"], [1, 2], [0, 1], frozen=[3, 6])
    assert len(runs) == 2 * (1 + 2) * 2 and {r.frozen for r in runs if r.strategy == "freeze"} == {3, 6}


def test_lesson_grid_has_three_seeds_everywhere_and_reaches_the_regimes():
    s = get_settings()
    runs = experiments.lesson_runs(s)
    df = pd.DataFrame([r.__dict__ for r in runs])
    seeds = df.groupby(["domain", "strategy", "per_class", "frozen"]).seed.nunique()
    assert (seeds >= 3).all()
    far = df[df.domain == s.far_dataset]
    assert far.per_class.max() >= 500 and far.per_class.min() <= 5
    assert {"scratch", "head-only"} <= set(far[far.per_class == far.per_class.max()].strategy)
    near = df[df.domain == s.dataset]
    assert near.per_class.min() <= 2 and near.per_class.max() == 60  # the sample's 60 cats
    smallest = min(set(near[near.strategy == "scratch"].per_class) & set(near[near.strategy == "fine-tune"].per_class))
    assert smallest <= 5 and set(near[near.per_class == smallest].strategy) >= {"scratch", "head-only", "fine-tune"}
    assert set(df[df.domain == s.few_shot_dataset].per_class) == set(s.few_shot_sizes)
    for domain in (s.dataset, s.far_dataset):  # the freeze-depth sweep on both domains
        assert df[(df.domain == domain) & (df.strategy == "freeze")].frozen.nunique() >= 2
    assert df.curve.any()


def test_every_strategy_trains_on_the_same_images():
    s = get_settings()
    df = data.items("cats_dogs", s)
    pos = experiments.train_positions("cats_dogs", 5, 1, s)
    train = df[df.split == "train"].reset_index(drop=True)
    picked = data.subsample(df, 5, 1).query("split == 'train'")
    assert sorted(train.fname[pos]) == sorted(picked.fname)
    assert train.label[pos].value_counts().tolist() == [5, 5]
    assert not np.array_equal(pos, experiments.train_positions("cats_dogs", 5, 2, s))


def test_results_are_cached_per_run_and_resume(monkeypatch, tmp_path):
    from dataclasses import replace

    s = replace(get_settings(), cache_dir=tmp_path)
    calls = []

    def fake(run, settings):
        calls.append(run)
        curve = [{"epoch": 1, "train_loss": 1.0, "accuracy": 0.5, "seconds": 0.1}] if run.curve else []
        return {"accuracy": 0.5 + run.seed / 10, "epochs": 1, "curve": curve, "n_classes": 2,
                "seconds": 0.1, "n_train": 2}

    monkeypatch.setattr(experiments, "train_run", fake)
    monkeypatch.setattr(experiments, "_prepare", lambda runs, settings: None)
    monkeypatch.setenv("TLCOURSE_WORKERS", "1")  # a patched function does not reach worker processes
    runs = experiments.grid(["cats_dogs"], ["scratch"], [1], [0, 1])
    first = experiments.run_grid(runs, s, progress=False)
    assert first.attrs["trained"] == 2 and len(calls) == 2
    again = experiments.run_grid(runs, s, progress=False)
    assert again.attrs["trained"] == 0 and again.accuracy.tolist() == first.accuracy.tolist()
    # a request with a curve needs a result with one; the result with a curve serves both
    curved = [replace(r, curve=True) for r in runs]
    experiments.run_grid(curved + runs, s, progress=False)
    assert len(calls) == 4
    # a damaged file is trained again, and a changed recipe changes the key
    path = experiments.result_path(runs[0], s)
    path.write_text("{not json")
    assert experiments.load_result(runs[0], s) is None
    saved = json.loads(experiments.result_path(runs[1], s).read_text())
    monkeypatch.setattr(experiments, "SCRATCH", replace(experiments.SCRATCH, lr=1.0))
    assert experiments.run_key(runs[1], s) != saved["key"]


def test_scratch_network_and_its_budget():
    net = experiments.scratch_cnn(1, 10)
    assert net(torch.zeros(4, 1, 28, 28)).shape == (4, 10)
    assert experiments.scratch_cnn(3, 37)(torch.zeros(2, 3, 32, 32)).shape == (2, 37)
    assert sum(p.numel() for p in net.parameters()) < 200_000
    r = experiments.SCRATCH
    for n in (10, 50, 200, 1000, 5000):
        steps = n // experiments.scratch_batch_size(n)
        assert experiments.scratch_epochs(n) >= r.epochs
        assert experiments.scratch_epochs(n) * steps >= r.min_steps
    assert experiments.curve_epochs(100)[0] == 1 and experiments.curve_epochs(100)[-1] == 100


def test_shift_flip_changes_training_batches_only():
    cb = experiments.ShiftFlip(shift=2, flip=True)

    class Fake:
        training = True
        xb = (torch.arange(2 * 28 * 28, dtype=torch.float).reshape(2, 1, 28, 28),)

    fake = Fake()
    cb.learn = fake
    torch.manual_seed(0)
    before = fake.xb[0].clone()
    cb.before_batch()
    assert fake.xb[0].shape == before.shape and not torch.equal(fake.xb[0], before)
    fake.training, fake.xb = False, (before,)
    cb.before_batch()
    assert torch.equal(fake.xb[0], before)


def _toy():
    rows = []
    for seed, (a, b, c) in enumerate([(0.9, 0.6, 0.5), (0.85, 0.62, 0.52), (0.88, 0.55, 0.48)]):
        rows += [dict(domain="d", strategy="fine-tune", per_class=2, seed=seed, frozen=0, accuracy=a, seconds=1),
                 dict(domain="d", strategy="head-only", per_class=2, seed=seed, frozen=0, accuracy=b, seconds=1),
                 dict(domain="d", strategy="scratch", per_class=2, seed=seed, frozen=0, accuracy=c, seconds=1)]
    return pd.DataFrame(rows)


def test_compare_and_winner_call_ties_ties(monkeypatch):
    monkeypatch.setattr(experiments.data, "test_rows", lambda name, settings: pd.DataFrame(index=range(72)))
    df = _toy()
    w = experiments.winner(df, "d", 2, get_settings())
    assert w["best"] == "fine-tune" and w["runner_up"] == "head-only" and w["decided"]
    assert w["margin_low"] > 0.2
    tie = experiments.compare(df, "d", 2, "head-only", "scratch", get_settings())
    assert tie["decided"]  # +10, +10, +7 points on every seed
    df.loc[(df.strategy == "scratch") & (df.seed == 1), "accuracy"] = 0.7
    assert not experiments.compare(df, "d", 2, "head-only", "scratch", get_settings())["decided"]
    summary = experiments.summary(df)
    assert set(summary.columns) >= {"mean", "std", "low", "high", "seeds"}
