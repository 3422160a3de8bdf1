"""Lesson 02's exercise checks: each with a right and a wrong answer, and its text in the notebook."""

from __future__ import annotations

from pathlib import Path

import nbformat
import torch

from tlcourse import exercises
from tlcourse.exercises import lesson02

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "02_feature_extraction.ipynb"


def test_check_pooled_features(capsys):
    assert exercises.check_pooled_features(lambda m, x: m.forward_features(x).mean(dim=(2, 3))) is True
    assert exercises.check_pooled_features(lambda m, x: m.forward_features(x)) is False
    assert "mean(dim=(2, 3))" in capsys.readouterr().out
    assert exercises.check_pooled_features(lambda m, x: m.forward_features(x).amax(dim=(2, 3))) is False
    assert exercises.check_pooled_features(...) is None


def test_check_nearest_mean(capsys):
    def nearest_mean(train_x, train_y, test_x):
        means = torch.stack([train_x[train_y == c].mean(0) for c in torch.unique(train_y)])
        return torch.cdist(test_x, means).argmin(1)

    assert exercises.check_nearest_mean(nearest_mean) is True
    assert exercises.check_nearest_mean(lambda tx, ty, vx: torch.zeros(len(vx), dtype=torch.long)) is False
    assert "Hint" in capsys.readouterr().out
    assert exercises.check_nearest_mean(lambda tx, ty, vx: torch.zeros(3)) is False
    assert exercises.check_nearest_mean(...) is None


def test_check_needs_recompute(capsys):
    right = {letter for letter, (_, stale) in lesson02.CHANGES.items() if stale}
    assert right == {"a", "c", "e"}, "the answer key changed: update the notebook's solution too"
    assert exercises.check_needs_recompute(right) is True
    assert exercises.check_needs_recompute({"A", "c", "e "}) is True
    assert exercises.check_needs_recompute({"a", "b"}) is False
    out = capsys.readouterr().out
    assert "b:" in out and "c, e:" in out
    assert exercises.check_needs_recompute({"z"}) is False
    assert exercises.check_needs_recompute(...) is None


def test_exercise_3_text_in_the_notebook_is_the_answer_keys_text():
    """The letters the learner reads are the letters the check scores."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    text = next(c.source for c in nb.cells if c.cell_type == "markdown" and "### Exercise 3" in c.source)
    listed = [line[2:] for line in text.splitlines() if line.startswith("- ")]
    assert listed == [f"{letter}. {change}" for letter, (change, _) in lesson02.CHANGES.items()]
    solution = next(c.source for c in nb.cells if "solution" in c.metadata.get("tags", [])
                    and "check_needs_recompute" in c.source)
    assert 'answer = {"a", "c", "e"}' in solution
