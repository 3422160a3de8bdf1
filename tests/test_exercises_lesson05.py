"""Lesson 05's checks answer right, wrong and not-yet-done (their experiments run once, from the cache)."""

import pytest

from tlcourse import exercises, experiments, models
from tlcourse.exercises import lesson05
from tlcourse.settings import get_settings


@pytest.fixture(scope="module")
def gap():
    df = experiments.run_grid(lesson05.size_gap_runs(get_settings()), get_settings(), progress=False)
    means = df.groupby("strategy")["accuracy"].mean()
    return float(means["head-only"] - means["scratch"])


def test_new_size_gap(gap, capsys):
    assert exercises.check_new_size_gap({"predicted": 0.1, "measured": gap}) is True
    assert "prediction was" in capsys.readouterr().out
    assert exercises.check_new_size_gap({"predicted": 0.1, "measured": -gap if gap else 0.5}) is False
    assert exercises.check_new_size_gap({"predicted": 0.1, "measured": 100 * gap + 7}) is False
    assert exercises.check_new_size_gap(0.05) is False  # not a dict: feedback, not a crash
    assert exercises.check_new_size_gap(...) is None


def test_freeze_depth(capsys):
    df = experiments.run_grid(lesson05.freeze_runs(get_settings()), get_settings(), progress=False)
    mean = float(df["accuracy"].mean())
    assert exercises.check_freeze_depth({"predicted": 0.8, "measured": mean}) is True
    assert "groups frozen" in capsys.readouterr().out
    assert exercises.check_freeze_depth({"predicted": 0.8, "measured": 100 * mean}) is False
    assert "fraction" in capsys.readouterr().out
    assert exercises.check_freeze_depth({"predicted": 0.8, "measured": mean + 0.2}) is False


def test_trainable_fraction():
    import timm

    from tlcourse.settings import get_settings

    body = timm.create_model(get_settings().arch, pretrained=False, num_classes=0)
    counts = [sum(p.numel() for p in g.parameters()) for g in models.body_groups(body)]
    right = sum(counts[3:]) / sum(counts)
    assert exercises.check_trainable_fraction(right) is True
    assert exercises.check_trainable_fraction(1 - right) is False
    assert exercises.check_trainable_fraction(100 * right) is False
