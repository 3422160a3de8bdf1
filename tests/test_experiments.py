"""Lesson 05's experiment runner, its summaries, its figures and its exercise checks.

Training tests use a tiny shapes set (3 training and 2 validation images per class,
32-pixel inputs, 2 epochs) in a cache of their own, so they take seconds.
"""

from __future__ import annotations

import dataclasses
import json
import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import timm
import torch

from tlcourse import exercises, experiments, plots
from tlcourse.settings import get_settings

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Quick-mode settings shrunk to a toy size, with every cache in a temporary folder.

    Toy networks gain nothing from a second thread, and on a busy machine two threads
    waiting for each other make them many times slower, so these tests use one.
    """
    root = tmp_path_factory.mktemp("experiments")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLCOURSE_MODE", "quick")
        mp.setenv("TLCOURSE_CACHE", str(root / "cache"))
        s = dataclasses.replace(get_settings(), image_size=32, batch_size=8, train_per_class=3,
                                valid_per_class=2, cache_dir=root / "results_a")
        yield s
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_runs(tiny):
    return [experiments.make_run("shapes", "scratch", 3, 0, 2),
            experiments.make_run("shapes", "head-only", 3, 0, 2),
            experiments.make_run("shapes", "fine-tune", 3, 0, 2),
            experiments.make_run("shapes", "freeze-first-k", 3, 0, 2, frozen_groups=4)]


@pytest.fixture(scope="module")
def tiny_results(tiny, tiny_runs):
    return experiments.run_grid(tiny_runs, tiny, progress=False)


def count_training(monkeypatch):
    """Wrap ``train_run`` so the test can count how many runs really train."""
    calls = []
    original = experiments.train_run

    def counted(run, settings):
        calls.append(run)
        return original(run, settings)

    monkeypatch.setattr(experiments, "train_run", counted)
    return calls


# --- runs and layer groups ------------------------------------------------------------

def test_make_run_names_the_ends_of_the_freeze_sweep():
    assert experiments.make_run("shapes", "freeze-first-k", 5, 0, 4, 0).strategy == "fine-tune"
    head = experiments.make_run("shapes", "freeze-first-k", 5, 0, 4, 9, n_groups=9)
    assert (head.strategy, head.frozen_groups) == ("head-only", 9)
    assert experiments.make_run("shapes", "head-only", 5, 0, 4).frozen_groups == 9
    assert experiments.make_run("shapes", "scratch", 5, 0, 4, 3).frozen_groups == 0
    assert experiments.make_run("shapes", "freeze-first-k", 5, 0, 4, 3).frozen_groups == 3
    assert not experiments.make_run("shapes", "scratch", 5, 0, 1).pretrained


@pytest.mark.parametrize("kwargs, match", [
    (dict(strategy="transfer"), "Unknown strategy"),
    (dict(strategy="freeze-first-k", frozen_groups=12), "between 0 and 9"),
    (dict(strategy="fine-tune", epochs=1), "at least 2 epochs"),
    (dict(per_class=0), "at least 1"),
])
def test_make_run_rejects_bad_runs_with_advice(kwargs, match):
    args = dict(domain="shapes", strategy="fine-tune", per_class=5, seed=0, epochs=4) | kwargs
    with pytest.raises(ValueError, match=match):
        experiments.make_run(**args)


def test_grid_covers_every_combination_once():
    s = get_settings()
    runs = experiments.grid(["shapes", "digits"], ["scratch", "fine-tune", "freeze-first-k"],
                            [2, 5], [0, 1], 4, frozen=[0, 3, 6], settings=s)
    # freeze-first-k with k=0 is fine-tune, so it adds only k=3 and k=6
    assert len(runs) == 2 * 2 * 2 * (1 + 1 + 2) and len(set(runs)) == len(runs)


def test_body_groups_follow_the_architecture():
    effnet = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    groups = experiments.body_groups(effnet)
    assert len(groups) == 9 == experiments.n_body_groups("tf_efficientnet_lite0")
    names = [name for name, _ in experiments.named_body_groups(effnet)]
    assert names[0] == "conv_stem+bn1" and names[1] == "blocks.0" and names[-1] == "conv_head+bn2"
    assert groups[1] is effnet.blocks[0] and groups[7] is effnet.blocks[6]
    in_groups = sum(p.numel() for g in groups for p in g.parameters())
    assert in_groups == sum(p.numel() for p in effnet.parameters())
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=0)
    assert len(experiments.body_groups(resnet)) == 5


def test_group_splitter_gives_each_weight_one_group():
    from torch import nn

    body = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    model = nn.Sequential(body, nn.Linear(body.num_features, 5))
    split = experiments.group_splitter(model)
    assert len(split) == 10
    ids = [id(p) for group in split for p in group]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_batch_size_never_leaves_a_run_without_a_batch(tiny):
    # fastai drops an incomplete last batch: 10 images at batch size 16 would train on nothing
    s = dataclasses.replace(tiny, batch_size=16)
    assert experiments.batch_size(experiments.make_run("shapes", "fine-tune", 2, 0, 2), s) == 10
    s = dataclasses.replace(tiny, batch_size=8)
    assert experiments.batch_size(experiments.make_run("shapes", "fine-tune", 3, 0, 2), s) == 7


def test_result_file_depends_on_everything_that_defines_the_run(tiny, tiny_runs):
    run = tiny_runs[0]
    path = experiments.result_path(run, tiny)
    assert path.parent == tiny.cache_dir / "experiments"
    assert path == experiments.result_path(run, dataclasses.replace(tiny))
    for change in (dict(image_size=64), dict(batch_size=4), dict(valid_per_class=5)):
        assert experiments.result_path(run, dataclasses.replace(tiny, **change)) != path
    assert experiments.result_path(dataclasses.replace(run, seed=1), tiny) != path


# --- training, saving, resuming -------------------------------------------------------

def test_results_are_tidy(tiny_results, tiny_runs):
    df = tiny_results
    assert list(df.columns) == list(experiments.COLUMNS)
    assert len(df) == 2 * len(tiny_runs) and df.attrs["trained"] == len(tiny_runs)
    assert sorted(df.epoch.unique()) == [1, 2]
    assert df.accuracy.between(0, 1).all() and (df.train_loss > 0).all() and (df.seconds > 0).all()
    assert set(df.n_classes) == {5} and set(df.n_groups) == {9} and set(df.n_valid) == {10}
    last = experiments.final(df).set_index("strategy")["trainable_params"]
    # how deep training reaches: head only < first 4 groups frozen < everything
    assert last["head-only"] < last["freeze-first-k"] < last["fine-tune"] == last["scratch"]


def test_a_repeated_grid_loads_instead_of_training(tiny, tiny_runs, tiny_results, monkeypatch):
    calls = count_training(monkeypatch)
    again = experiments.run_grid(tiny_runs, tiny, progress=False)
    assert calls == [] and again.attrs["trained"] == 0
    pd.testing.assert_frame_equal(again, tiny_results)


def test_an_interrupted_grid_trains_only_what_is_missing(tiny, tiny_runs, tiny_results, monkeypatch):
    calls = count_training(monkeypatch)
    lost = experiments.result_path(tiny_runs[1], tiny)
    lost.unlink()                                            # never finished ...
    lost.with_name(f".{lost.name}.123.tmp").write_text("{")  # ... and was cut off while saving
    broken = experiments.result_path(tiny_runs[2], tiny)
    broken.write_text(broken.read_text()[:40])               # a damaged file is not a result
    df = experiments.run_grid(tiny_runs, tiny, progress=False)
    assert calls == [tiny_runs[1], tiny_runs[2]] and df.attrs["trained"] == 2
    pd.testing.assert_frame_equal(df.drop(columns="seconds"), tiny_results.drop(columns="seconds"))
    saved = json.loads(lost.read_text())
    assert saved["key"]["run"]["strategy"] == "head-only" and len(saved["rows"]) == 2


def test_same_seeds_give_the_same_numbers(tiny, tiny_runs, tiny_results, monkeypatch):
    other = dataclasses.replace(tiny, cache_dir=tiny.cache_dir.parent / "results_b")
    calls = count_training(monkeypatch)
    again = experiments.run_grid(tiny_runs, other, progress=False)
    assert len(calls) == len(tiny_runs)  # a fresh cache: everything trained again
    measured = ["train_loss", "valid_loss", "accuracy"]
    pd.testing.assert_frame_equal(again.drop(columns="seconds"), tiny_results.drop(columns="seconds"),
                                  check_exact=False, rtol=1e-5, atol=1e-6)
    seed1 = experiments.run_grid([dataclasses.replace(tiny_runs[2], seed=1)], other, progress=False)
    assert not np.allclose(seed1[measured].to_numpy(),
                           tiny_results[tiny_results.strategy == "fine-tune"][measured].to_numpy())


def test_final_only_runs_validate_once_and_never_hide_a_needed_curve(tiny, tiny_runs, tiny_results,
                                                                     monkeypatch):
    calls = count_training(monkeypatch)
    # a saved full curve also serves a request for the final accuracy only
    quick = [dataclasses.replace(run, every_epoch=False) for run in tiny_runs]
    loaded = experiments.run_grid(quick, tiny, progress=False)
    assert calls == [] and loaded.accuracy.notna().all()
    # a new run validated at its end only: its earlier epochs have no validation numbers ...
    other = dataclasses.replace(tiny, cache_dir=tiny.cache_dir.parent / "results_c")
    run = dataclasses.replace(tiny_runs[0], every_epoch=False)
    df = experiments.run_grid([run], other, progress=False)
    assert df.accuracy.isna().tolist() == [True, False] and df.train_loss.notna().all()
    # validating or not does not change training: same losses, same final accuracy
    full = tiny_results[tiny_results.strategy == "scratch"]
    assert df.train_loss.tolist() == pytest.approx(full.train_loss.tolist(), rel=1e-6)
    assert df.accuracy.iloc[-1] == pytest.approx(full.accuracy.iloc[-1])
    # ... so a request for the whole curve trains it again
    df = experiments.run_grid([tiny_runs[0]], other, progress=False)
    assert len(calls) == 2 and df.accuracy.notna().all()


# --- summaries ------------------------------------------------------------------------

def toy(domain="near", strategies=None, sizes=(2, 5, 20), seeds=(0, 1), epochs=3, n_classes=5,
        n_valid=100_000):
    """A synthetic results table: final accuracy per (strategy, size) plus a seed offset."""
    strategies = strategies or {"scratch": (0.2, 0.3, 0.5), "head-only": (0.6, 0.65, 0.7),
                                "fine-tune": (0.4, 0.7, 0.9)}
    rows = []
    for strategy, finals in strategies.items():
        for size, acc in zip(sizes, finals):
            for seed in seeds:
                for epoch in range(1, epochs + 1):
                    value = acc * epoch / epochs + 0.01 * seed
                    rows.append(dict(domain=domain, strategy=strategy, pretrained=strategy != "scratch",
                                     per_class=size, seed=seed, frozen_groups=0, n_groups=9,
                                     n_classes=n_classes, n_valid=n_valid, epoch=epoch, epochs=epochs,
                                     train_loss=2.0 - value, valid_loss=2.1 - value, accuracy=value,
                                     seconds=0.5, trainable_params=1000))
    return pd.DataFrame(rows, columns=list(experiments.COLUMNS))


def test_crossing_interpolates_on_a_log_scale():
    assert experiments.crossing([1, 100], [0.5, 0.5], [0.4, 0.6]) == pytest.approx(10.0)
    assert experiments.crossing([2, 5, 20], [0.6, 0.65, 0.7], [0.4, 0.7, 0.9]) is not None
    assert experiments.crossing([2, 5], [0.1, 0.2], [0.3, 0.4]) is None


def test_epochs_to_reach():
    assert experiments.epochs_to_reach([0.2, 0.5, 0.7], 0.5) == 2
    assert experiments.epochs_to_reach([0.2, 0.3], 0.9) is None


def test_winners_and_the_strategy_guide():
    df = pd.concat([toy("near"),
                    toy("far", {"scratch": (0.3, 0.5, 0.8), "head-only": (0.345, 0.5, 0.6),
                                "fine-tune": (0.35, 0.6, 0.85)}, n_classes=10)])
    table = experiments.winners(df).set_index(["domain", "per_class"])
    assert table.loc[("near", 2), "winner"] == "head-only"
    assert table.loc[("near", 2), "margin"] == pytest.approx(0.2)
    assert table.loc[("near", 2), "clear"]                       # 20 points, seeds 1 point apart
    assert not table.loc[("far", 2), "clear"]                    # half a point apart: a tie
    assert table.loc[("near", 20), "gain_over_scratch"] == pytest.approx(0.4)
    guide = experiments.strategy_guide(df, "near", "far").set_index(["domain", "per_class"])
    assert guide.loc[("near", 2), "verdict"] == "agrees"       # little data: head only
    assert guide.loc[("near", 20), "verdict"] == "agrees"      # lots: fine-tune
    assert guide.loc[("far", 2), "verdict"] == "tie"           # head-only within noise of fine-tune
    assert guide.loc[("far", 5), "amount"] == "more"
    assert guide.loc[("far", 5), "verdict"] == "agrees"        # more data: fine-tune, 10 points ahead
    close = toy("near", {"scratch": (0.2, 0.2, 0.2), "head-only": (0.505, 0.5, 0.5),
                         "fine-tune": (0.5, 0.5, 0.6)})
    assert experiments.strategy_guide(close, "near", "far").verdict.tolist()[0] == "tie"
    # two seeds that agree exactly do not make a small gap real on a small validation set
    agree = toy("near", {"scratch": (0.10, 0.1, 0.1), "head-only": (0.12, 0.5, 0.5),
                         "fine-tune": (0.13, 0.5, 0.6)}, seeds=(0, 0), n_valid=200)
    first = experiments.winners(agree).iloc[0]
    assert not first.clear and first.noise == pytest.approx(math.sqrt((0.13 * 0.87 + 0.12 * 0.88) / 200))
    assert guide.loc[("far", 20), "less_help_far"] and guide.loc[("far", 20), "similarity"] == "far"
    disagree = experiments.strategy_guide(toy("near", {"scratch": (0.9, 0.9, 0.9),
                                                       "head-only": (0.2, 0.2, 0.2),
                                                       "fine-tune": (0.3, 0.3, 0.3)}), "near", "far")
    assert set(disagree.verdict) == {"disagrees"}


# --- figures --------------------------------------------------------------------------

def labelled(ax):
    """Both axes say what they show and in which unit; there is a legend."""
    return ("(" in ax.get_xlabel() and "(" in ax.get_ylabel() and ax.get_legend() is not None
            and ax.get_title())


def test_learning_curves_have_units_bands_and_legends():
    df = toy()
    fig = plots.plot_strategy_curves(df[df.per_class == 20])
    acc, loss = fig.axes
    assert labelled(acc) and labelled(loss)
    assert acc.get_ylabel() == "validation accuracy (%)" and "nats" in loss.get_ylabel()
    assert "epoch" in acc.get_xlabel()
    assert len(acc.collections) >= 3  # one min-max band per strategy
    texts = [t.get_text() for t in acc.get_legend().get_texts()]
    assert any("fine-tune" in t for t in texts) and any("chance" in t for t in texts)
    with pytest.raises(ValueError, match="select one"):
        plots.plot_strategy_curves(df)
    plt.close("all")


def test_accuracy_against_size_uses_a_log_axis():
    fig = plots.plot_accuracy_vs_size(pd.concat([toy("near"), toy("far", n_classes=10)]))
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert ax.get_xscale() == "log" and "log scale" in ax.get_xlabel()
        assert ax.get_legend() is not None and "images per class" in ax.get_xlabel()
    assert fig.axes[0].get_ylabel() == "final validation accuracy (%)"
    plt.close("all")


def test_accuracy_against_frozen_groups():
    df = toy(strategies={"fine-tune": (0.8, 0.8, 0.8), "scratch": (0.3, 0.3, 0.3)})
    sweep = []
    for k, acc in [(0, 0.8), (3, 0.78), (6, 0.7), (9, 0.6)]:
        part = toy(strategies={"freeze-first-k": (acc,) * 3})
        part["frozen_groups"] = k
        sweep.append(part)
    df = pd.concat([df[df.strategy == "scratch"]] + sweep)
    df = df[df.per_class == 20]
    fig = plots.plot_accuracy_vs_frozen(df)
    ax = fig.axes[0]
    assert labelled(ax) and "frozen" in ax.get_xlabel()
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert "fine-tune" in ticks[0] and "head only" in ticks[-1]
    assert any("scratch" in t.get_text() for t in ax.get_legend().get_texts())
    plt.close("all")


def test_strategy_guide_figure():
    df = pd.concat([toy("near"), toy("far", n_classes=10)])
    fig = plots.plot_strategy_guide(experiments.strategy_guide(df, "near", "far"))
    ax = fig.axes[0]
    assert labelled(ax) and "similarity" in ax.get_xlabel()
    assert len(ax.texts) == 6  # one cell per domain and size
    assert any("articles" in t.get_text() for t in ax.texts)
    plt.close("all")


# --- exercise checks ------------------------------------------------------------------

def test_check_final_mean(capsys):
    def right(df):
        return df[df.epoch == df.epochs].groupby(["strategy", "per_class"])["accuracy"].mean()

    def every_epoch(df):
        return df.groupby(["strategy", "per_class"])["accuracy"].mean()

    assert exercises.check_final_mean(right) is True
    assert exercises.check_final_mean(lambda df: right(df).swaplevel()) is True
    assert exercises.check_final_mean(every_epoch) is False
    assert "df.epoch == df.epochs" in capsys.readouterr().out
    assert exercises.check_final_mean(lambda df: 0.5) is False
    assert exercises.check_final_mean(...) is None


def test_check_overtakes(capsys):
    def right(sizes, a, b):
        return next((n for n, x, y in zip(sizes, a, b) if y >= x), None)

    def strict(sizes, a, b):
        return next((n for n, x, y in zip(sizes, a, b) if y > x), None)

    def position(sizes, a, b):
        return next((i for i, (x, y) in enumerate(zip(a, b)) if y >= x), None)

    assert exercises.check_overtakes(right) is True
    assert exercises.check_overtakes(strict) is False
    assert ">=" in capsys.readouterr().out
    assert exercises.check_overtakes(position) is False
    assert "position" in capsys.readouterr().out
    assert exercises.check_overtakes(...) is None


def test_check_trainable_fraction(capsys):
    body = timm.create_model(get_settings().arch, pretrained=False, num_classes=0)
    counts = [sum(p.numel() for p in g.parameters()) for g in experiments.body_groups(body)]
    right = sum(counts[3:]) / sum(counts)
    assert exercises.check_trainable_fraction(right) is True
    assert exercises.check_trainable_fraction(1 - right) is False
    assert "frozen fraction" in capsys.readouterr().out
    assert exercises.check_trainable_fraction(100 * right) is False
    assert exercises.check_trainable_fraction(...) is None
    assert math.isclose(right, 1 - sum(counts[:3]) / sum(counts))
