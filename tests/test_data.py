"""Offline data sets: deterministic, in fastai's folder layout, the right sizes."""

import hashlib

import pytest
from PIL import Image

from tlcourse import data


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_shapes_layout_sizes_and_determinism(tmp_path):
    a = data.make_shapes(tmp_path / "a", train_per_class=3, valid_per_class=2, size=40, seed=7)
    b = data.make_shapes(tmp_path / "b", train_per_class=3, valid_per_class=2, size=40, seed=7)
    assert sorted(p.name for p in (a / "train").iterdir()) == sorted(data.SHAPES)
    assert len(list(a.glob("train/*/*.png"))) == 3 * len(data.SHAPES)
    assert len(list(a.glob("valid/*/*.png"))) == 2 * len(data.SHAPES)
    img = Image.open(next(a.glob("train/star/*.png")))
    assert img.size == (40, 40) and img.mode == "RGB"
    assert _digest(a) == _digest(b)
    c = data.make_shapes(tmp_path / "c", train_per_class=3, valid_per_class=2, size=40, seed=8)
    assert _digest(a) != _digest(c)


def test_generated_set_is_reused_and_remade_when_incomplete(tmp_path):
    root = data.make_shapes(tmp_path / "s", train_per_class=2, valid_per_class=1, size=32)
    first = next(root.glob("train/circle/*.png"))
    stamp = first.stat().st_mtime_ns
    data.make_shapes(tmp_path / "s", train_per_class=2, valid_per_class=1, size=32)
    assert first.stat().st_mtime_ns == stamp  # reused, not rewritten
    first.unlink()
    data.make_shapes(tmp_path / "s", train_per_class=2, valid_per_class=1, size=32)
    assert first.is_file()  # remade because the manifest no longer matched


def test_digits_are_real_sklearn_digits(tmp_path):
    root = data.make_digits(tmp_path / "d", train_per_class=2, valid_per_class=1, size=24)
    assert sorted(p.name for p in (root / "train").iterdir()) == [str(d) for d in range(10)]
    assert Image.open(next(root.glob("valid/7/*.png"))).size == (24, 24)
    with pytest.raises(ValueError, match="only"):
        data.make_digits(tmp_path / "big", train_per_class=500, valid_per_class=1)


def test_subsample_keeps_validation_and_limits_training():
    df = data.items("shapes")
    small = data.subsample(df, 3, seed=0)
    counts = small[~small.is_valid].label.value_counts()
    assert set(counts) == {3} and len(counts) == len(data.SHAPES)
    assert small.is_valid.sum() == df.is_valid.sum()
    assert small.attrs["path"] == df.attrs["path"]
    with pytest.raises(ValueError, match="at least 1"):
        data.subsample(df, 0)


def test_dataloaders_use_the_mode_sizes():
    from tlcourse.settings import get_settings

    s = get_settings()
    dls = data.get_dls(per_class=4, seed=0)
    xb, yb = dls.one_batch()
    assert tuple(xb.shape[1:]) == (3, s.image_size, s.image_size)
    assert len(dls.train_ds) == 4 * len(data.SHAPES)
    assert list(dls.vocab) == sorted(data.SHAPES)


def test_unknown_data_set_is_a_clear_error():
    with pytest.raises(ValueError, match="shapes, digits, pets"):
        data.dataset_path("imagenet")


def test_full_mode_digits_fit_every_class(tmp_path, monkeypatch):
    monkeypatch.setenv("TLCOURSE_MODE", "full")
    monkeypatch.setenv("TLCOURSE_CACHE", str(tmp_path))
    root = data.dataset_path("digits")
    assert len(list(root.glob("train/8/*.png"))) == 145


def test_a_tiny_training_set_still_gets_a_batch():
    dls = data.get_dls(per_class=1, seed=0)
    assert len(dls.train) >= 1  # five images, batch size capped at five
