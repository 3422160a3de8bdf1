"""The packaged data sets: counts, checksums, a fixed test split, loaders, and a wheel that carries them."""

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlcourse import data
from tlcourse.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent


def test_pets_sample_counts_split_and_licence():
    df = data.items("pet_breeds", get_settings())
    assert len(df) == 370 and df.label.nunique() == 37
    counts = df.groupby(["label", "split"]).size().unstack()
    assert (counts["train"] == 5).all() and (counts["valid"] == 2).all() and (counts["test"] == 3).all()
    assert {n for n in df.label if n[0].isupper()} and len({n for n in df.label if n[0].isupper()}) == 12
    first = Image.open(Path(df.attrs["path"]) / df.fname[0])
    assert min(first.size) == 160 and first.mode == "RGB"
    licence = (data.pets_dir().parent / "LICENSE.txt").read_text()
    assert "CC BY-SA 4.0" in licence and "Parkhi" in licence


def test_cats_dogs_has_balanced_valid_and_test_covering_every_breed():
    df = data.items("cats_dogs", get_settings())
    counts = df.groupby(["split", "label"]).size().unstack()
    assert counts.loc["test", "cat"] == counts.loc["test", "dog"] == 36
    assert counts.loc["valid", "cat"] == counts.loc["valid", "dog"] == 24
    assert counts.loc["train", "cat"] == 60 and counts.loc["train", "dog"] == 125
    assert df[df.split == "test"].breed.nunique() == 37
    assert df.is_valid.equals(df.split == "valid")


def test_fashion_subset_is_balanced_and_written_once(fresh_cache):
    arrays = data.fashion_arrays()
    assert arrays["train_x"].shape == (6000, 28, 28) and arrays["train_x"].dtype == np.uint8
    for split, n in (("train", 600), ("valid", 100), ("test", 100)):
        assert (np.bincount(arrays[f"{split}_y"]) == n).all()
    assert list(arrays["classes"])[:2] == ["T-shirt/top", "Trouser"]
    df = data.items("fashion", get_settings())
    assert len(df) == 8000 and df.label.nunique() == 10
    assert np.array_equal(np.array(Image.open(Path(df.attrs["path"]) / df.fname[0])), arrays["train_x"][0])
    stamp = (Path(df.attrs["path"]) / "manifest.json").stat().st_mtime_ns
    data.items("fashion", get_settings())
    assert (Path(df.attrs["path"]) / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rewritten


def test_packaged_files_match_their_checksums():
    sums = data.verify_packaged()
    assert len(sums) == 370 + 2  # the photos, labels.csv and the Fashion-MNIST archive
    rel, digest = next(iter(sums.items()))
    assert hashlib.sha256((data.packaged_dir() / rel).read_bytes()).hexdigest() == digest


def test_packaged_files_are_hashed_once_and_a_damaged_copy_is_still_caught(tmp_path, monkeypatch):
    """verify_packaged hashes each file once per process: a file changed since is hashed again."""
    root = tmp_path / "datasets"
    shutil.copytree(data.packaged_dir(), root)
    monkeypatch.setattr(data, "packaged_dir", lambda: root)
    data.verify_packaged()
    hashed = []
    real = data.download.sha256_file
    monkeypatch.setattr(data.download, "sha256_file", lambda path: hashed.append(path) or real(path))
    data.verify_packaged()
    assert hashed == []  # checked already in this process: nothing read again
    photo = sorted((root / "pets" / "images").glob("*.jpg"))[5]
    damaged = bytearray(photo.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    photo.write_bytes(bytes(damaged))  # same size, other bytes
    with pytest.raises(RuntimeError, match=rf"damaged \(e.g. pets/images/{photo.name}\).*reinstall"):
        data.verify_packaged()
    assert hashed == [photo]
    photo.unlink()
    with pytest.raises(RuntimeError, match="missing or damaged"):
        data.verify_packaged()


def test_subsample_never_includes_test_rows_and_repeats_with_a_seed():
    df = data.items("cats_dogs", get_settings())
    small = data.subsample(df, 3, seed=0)
    assert (small.split != "test").all()
    assert small[small.split == "train"].groupby("label").size().tolist() == [3, 3]
    assert small.equals(data.subsample(df, 3, seed=0))
    assert not small.equals(data.subsample(df, 3, seed=1))
    assert len(data.subsample(df, None)) == 185 + 48
    with pytest.raises(ValueError, match="at least 1"):
        data.subsample(df, 0)
    with pytest.raises(ValueError, match="per_class <= 60"):
        data.subsample(df, 61)


def test_get_dls_reads_the_mode_and_keeps_the_test_split_out(fresh_cache):
    s = get_settings()
    dls = data.get_dls("cats_dogs", get_settings(), per_class=4, seed=0)
    assert len(dls.train_ds) == 8 and len(dls.valid_ds) == 48
    assert list(dls.vocab) == ["cat", "dog"] and dls.bs == data.batch_size(8, s) == 4
    xb, yb = dls.one_batch()
    assert tuple(xb.shape) == (4, 3, s.image_size, s.image_size)
    assert Path(dls.path) == s.cache_dir  # learners write to the cache, never into the package
    assert set(data.test_rows("cats_dogs", get_settings()).split) == {"test"}


def test_unknown_data_set_names_the_choices():
    with pytest.raises(ValueError, match="cats_dogs, pet_breeds, fashion, pets"):
        data.items("imagenet", get_settings())


def test_a_built_wheel_carries_the_data_and_loads_it_offline(tmp_path):
    """Build a wheel, install it into a folder of its own, and load both sets from there."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheel"), str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "wheel").glob("tlcourse-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert sum(n.startswith("tlcourse/datasets/pets/images/") for n in names) == 370
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    probe = ("import json, tlcourse; from tlcourse import data, settings; "
             "print(json.dumps([tlcourse.__file__, len(data.items('pet_breeds', settings.get_settings())), "
             "len(data.fashion_arrays()['test_y']), len(data.verify_packaged())]))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(target), "TLCOURSE_CACHE": str(tmp_path / "cache"),
                               "TLCOURSE_MODE": "quick", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                               "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"})
    assert done.returncode == 0, done.stderr[-2000:]
    where, n_pets, n_fashion_test, n_files = json.loads(done.stdout.strip().splitlines()[-1])
    assert where.startswith(str(target)) and (n_pets, n_fashion_test, n_files) == (370, 1000, 372)
