"""Every check function answers right, wrong and not-yet-done without raising."""

import pytest

from tlcourse import data, exercises
from tlcourse.settings import get_settings


def test_placeholder_means_not_done(capsys):
    for name, check in exercises.all_checks().items():
        assert check(...) is None, name
        assert "Not done yet" in capsys.readouterr().out


def test_batch_shape(capsys):
    s = get_settings()
    bs = data.get_dls(get_settings().dataset, get_settings(), seed=0).one_batch()[0].shape[0]
    assert exercises.check_batch_shape((bs, 3, s.image_size, s.image_size)) is True
    assert "Correct" in capsys.readouterr().out
    assert exercises.check_batch_shape((bs, s.image_size, s.image_size)) is False
    assert "Hint" in capsys.readouterr().out
    assert exercises.check_batch_shape((bs, 1, s.image_size, s.image_size)) is False


def test_a_wrong_kind_of_answer_is_feedback_not_a_crash(capsys):
    assert exercises.check_batch_shape("a string") is False
    out = capsys.readouterr().out
    assert "could not be checked" in out


@pytest.mark.parametrize("name", sorted(exercises.all_checks()))
def test_every_check_has_a_docstring(name):
    assert exercises.all_checks()[name].__doc__, f"{name} needs a docstring saying which notebook uses it"
