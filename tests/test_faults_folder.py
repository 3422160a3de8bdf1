"""Issue 14, items 1-5 and 7: what real folders do to lesson 6, each case built here.

Layouts that silently gave wrong labels, pixels that were silently wrong, a check that
accepted what loading could not read, prediction that prepared images differently from
training, an export that failed obscurely without tlcourse, and misleading messages.
The last test puts every case in one folder: one report, training works, nothing changed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import imaging
import pytest
import torch
from PIL import Image, ImageFile

from tlcourse.data import folders, images
from tlcourse.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent


def picture(label: str, seed: int, size: int = 40) -> Image.Image:
    return imaging.picture(label, seed, size, noise=30)


jpeg, put = imaging.jpeg_bytes, imaging.write


def classes(root: Path, layout: dict[str, int], start: int = 0) -> None:
    """``layout``: {"train/cat": 3, ...} -> that many JPEGs of the class named last."""
    for folder, n in layout.items():
        label = Path(folder).name
        for i in range(n):
            put(root, f"{folder}/{label}_{i}.jpg", picture(label, start + i))


def float_tiff(value: float) -> Image.Image:
    arr = np.linspace(0, 1, 40 * 40, dtype=np.float32).reshape(40, 40)
    arr[3, 4] = value
    return Image.fromarray(arr, mode="F")


HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(300)


def state(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root``: its SHA-256 (files) and modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            out[str(path.relative_to(root))] = (digest, path.stat().st_mtime_ns)
    out["."] = ("dir", root.stat().st_mtime_ns)
    return out


def kinds(result: folders.Audit) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for issue in result.issues:
        found.setdefault(issue.kind, []).append(issue.path)
    return found


# --- 1. silent wrong labels from the layout ----------------------------------------------------

def test_train_folder_next_to_an_unlabelled_test_folder(tmp_path):
    classes(tmp_path, {"train/cat": 5, "train/dog": 5})
    for i in range(3):
        put(tmp_path, f"test/photo_{i}.jpg", picture("cat", 50 + i))
    res = folders.audit(tmp_path, min_per_class=1)
    assert set(res.classes) == {"cat", "dog"}  # not train/test
    found = kinds(res)
    assert "test/" in found["not_a_class"] and found["random_valid"] == [""]
    assert res.items.is_valid.sum() == 2 and not res.items.fname.str.startswith("test/").any()
    assert "no valid/ folder" in res.summary()


def test_train_and_valid_next_to_fastais_models_folder(tmp_path):
    classes(tmp_path, {"train/cat": 3, "train/dog": 3})
    classes(tmp_path, {"valid/cat": 1, "valid/dog": 1}, start=100)
    put(tmp_path, "models/stage-1.pth", b"PK\x03\x04" + bytes(100))
    res = folders.audit(tmp_path, min_per_class=1)
    assert res.classes == {"cat": 4, "dog": 4}
    assert sorted(res.items.fname[res.items.is_valid]) == ["valid/cat/cat_0.jpg", "valid/dog/dog_0.jpg"]
    (detail,) = [i.detail for i in res.by_kind("not_a_class")]
    assert "fastai's folder of saved models" in detail
    # a models/ folder next to plain class folders is no class either
    classes(tmp_path / "plain", {"cat": 2, "dog": 2})
    put(tmp_path / "plain", "models/stage-1.pth", b"x")
    assert set(folders.audit(tmp_path / "plain", min_per_class=1).classes) == {"cat", "dog"}


def test_no_validation_images_is_reported_and_the_lesson_line_copes(tmp_path):
    classes(tmp_path, {"cat": 1, "dog": 1})
    res = folders.audit(tmp_path, min_per_class=1)
    assert res.by_kind("no_valid") and "accuracy cannot be measured" in res.summary()
    dls = res.dataloaders(get_settings(), size=32, bs=2, path=tmp_path / "work", device="cpu")
    assert len(dls.valid_ds) == 0
    nb = json.loads((ROOT / "notebooks" / "06_your_own_data.ipynb").read_text())
    cell = next("".join(c["source"]) for c in nb["cells"]
                if "".join(c["source"]).startswith("n_valid = len(dls.valid_ds)"))
    printed = []
    namespace = {"dls": dls, "result": res, "learn": None, "print": printed.append}
    exec(cell, namespace)  # the accuracy cell of lesson 6: no validate(), no TypeError
    assert "accuracy cannot be measured" in printed[0]


def test_folder_given_one_level_too_high(tmp_path):
    classes(tmp_path / "birds" / "birds", {"robin": 2, "wren": 2})
    with pytest.raises(folders.FolderError, match="one level too high") as info:
        folders.audit(tmp_path / "birds")
    message = str(info.value)
    assert str(tmp_path / "birds" / "birds") in message and "robin/, wren/" in message
    assert "Add a subfolder" not in message


def test_train_and_valid_without_class_folders(tmp_path):
    for split in ("train", "valid"):
        for i in range(2):
            put(tmp_path, f"{split}/img_{i}.jpg", picture("cat", i))
    with pytest.raises(folders.FolderError, match="no class subfolders") as info:
        folders.audit(tmp_path)
    assert "train/cats/" in str(info.value)


# --- 2. silent wrong pixels ---------------------------------------------------------------------

@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_float_tiff_with_a_pixel_that_is_not_a_number(tmp_path, value):
    classes(tmp_path, {"cat": 2, "dog": 2})
    path = put(tmp_path, "cat/scan.tif", float_tiff(value))
    res = folders.audit(tmp_path, min_per_class=1)
    assert res.left_out == ["cat/scan.tif"] and "cat/scan.tif" not in set(res.items.fname)
    assert "1 of 1600 pixels are NaN or infinite" in res.by_kind("bad_pixels")[0].detail
    with pytest.raises(images.ImageError, match="not numbers"):
        images.load_image(path)
    fine = put(tmp_path, "cat/fine.tif", float_tiff(0.5))
    assert np.asarray(images.load_image(fine)).max() == 255  # stretched, as before


def test_half_a_jpeg_is_caught_even_with_load_truncated_images(tmp_path, monkeypatch):
    classes(tmp_path, {"cat": 2, "dog": 2})
    whole = jpeg(picture("cat", 9, size=64))
    half = put(tmp_path, "cat/half.jpg", whole[: len(whole) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # the forum "fix"
    res = folders.audit(tmp_path, min_per_class=1)
    (issue,) = res.by_kind("unreadable")
    assert issue.path == "cat/half.jpg" and "truncated" in issue.detail
    assert "LOAD_TRUNCATED_IMAGES" in issue.detail
    with pytest.raises(images.ImageError, match="truncated"):
        images.load_image(half)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the user's setting is given back


# --- 3. the check accepts only what loading can read -------------------------------------------

def test_csv_with_absolute_paths_loads_what_the_check_accepted(tmp_path):
    photos = tmp_path / "images"
    classes(photos, {"cat": 2, "dog": 2})
    elsewhere = put(tmp_path, "other/extra_cat.jpg", picture("cat", 77))
    rows = [(str(photos / "cat" / "cat_0.jpg"), "cat"), ("cat/cat_1.jpg", "cat"),
            (str(photos / "dog" / "dog_0.jpg"), "dog"), (str(photos / "dog" / "dog_1.jpg"), "dog"),
            (str(elsewhere), "cat"), (str(tmp_path / "gone.jpg"), "dog")]
    csv = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=["fname", "label"]).to_csv(csv, index=False)
    res = folders.audit(csv, root=photos, min_per_class=1)
    assert sorted(res.items.fname) == sorted(["cat/cat_0.jpg", "cat/cat_1.jpg", "dog/dog_0.jpg",
                                              "dog/dog_1.jpg", str(elsewhere)])
    assert [i.path for i in res.by_kind("missing")] == [str(tmp_path / "gone.jpg")]
    dls = res.dataloaders(get_settings(), size=32, bs=2, path=tmp_path / "work", device="cpu")
    for ds in (dls.train_ds, dls.valid_ds):
        for i in range(len(ds)):
            assert ds[i][0].shape[:2] == (40, 40)  # every accepted file is read


# --- 4. one loader for every input --------------------------------------------------------------

@pytest.fixture(scope="module")
def learner(tmp_path_factory):
    from tlcourse import models

    root = tmp_path_factory.mktemp("predict") / "photos"
    classes(root, {"cat": 2, "dog": 2})
    res = folders.audit(root, min_per_class=1)
    dls = res.dataloaders(get_settings(), size=32, bs=2, path=root.parent / "work", device="cpu")
    torch.manual_seed(0)
    return models.learner(dls, get_settings().arch)


def odd_images(folder: Path) -> dict[str, Path]:
    """Files that plain Pillow loading gets wrong, each its own way."""
    base = picture("cat", 3, size=48)
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = picture("dog", 4, size=48).resize((64, 32))
    rgba = base.convert("RGBA")
    alpha = np.zeros((48, 48), np.uint8)
    alpha[:, :24] = 255
    rgba.putalpha(Image.fromarray(alpha))
    ramp = Image.fromarray((np.linspace(0, 4000, 48 * 48).reshape(48, 48)).astype(np.uint16))
    palette = base.convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    files = {"exif": ("phone.jpg", turned, dict(exif=exif)), "rgba": ("alpha.png", rgba, {}),
             "16bit": ("scan16.png", ramp, {}), "palette": ("pal.png", palette, {}),
             "cmyk": ("print.jpg", base.convert("CMYK"), {})}
    out = {}
    for key, (name, img, kwargs) in files.items():
        img.save(folder / name, **kwargs)
        out[key] = folder / name
    return out


def test_load_image_is_the_same_for_every_input_type(tmp_path):
    for key, path in odd_images(tmp_path).items():
        expected = np.asarray(images.load_image(path))
        inputs = {"str": str(path), "bytes": path.read_bytes(), "memoryview": memoryview(path.read_bytes()),
                  "file": io.BytesIO(path.read_bytes()), "Image.open": Image.open(path)}
        if key in ("rgba", "16bit"):  # arrays carry no EXIF, palette or colour space
            inputs["numpy"] = np.asarray(Image.open(path))
        for kind, given in inputs.items():
            got = np.asarray(images.load_image(given))
            assert got.shape == expected.shape and (got == expected).all(), (key, kind)
    assert images.load_image(tmp_path / "phone.jpg").size == (32, 64)  # upright
    assert np.asarray(images.load_image(tmp_path / "alpha.png"))[:, 30:].min() == 255  # on white
    tensor = torch.rand(3, 20, 30)
    assert images.load_image(tensor).size == (30, 20)
    with pytest.raises(images.ImageError, match="not numbers"):
        images.load_image(np.full((4, 4, 3), np.nan, dtype=np.float32))
    with pytest.raises(TypeError, match="file path, bytes"):
        images.load_image(42)


def test_predict_gives_the_same_answer_for_every_input_type(learner, tmp_path):
    from fastai.vision.all import PILImage

    def inputs(key: str, path: Path) -> dict:
        given = {"str": str(path), "bytes": path.read_bytes(), "memoryview": memoryview(path.read_bytes()),
                 "Image.open": Image.open(path), "PILImage": PILImage.create(Image.open(path))}
        if key in ("rgba", "16bit"):  # arrays carry no EXIF, palette or colour space
            given["numpy"] = np.asarray(Image.open(path))
        return given

    files = odd_images(tmp_path)
    with learner.no_bar():
        expected = learner.predict(files["exif"])[2]
        for kind, given in inputs("exif", files["exif"]).items():  # predict() itself, each type
            assert torch.allclose(learner.predict(given)[2], expected, atol=1e-5), kind
        # every other file and type in one batch: the same type dispatch predict() goes through
        items = [(key, kind, x) for key, path in files.items() for kind, x in inputs(key, path).items()]
        paths = list(files.values())
        by_path = learner.get_preds(dl=learner.dls.test_dl(paths, bs=64))[0]
        got = learner.get_preds(dl=learner.dls.test_dl([x for _, _, x in items], bs=64))[0]
    keys = list(files)
    for (key, kind, _), probs in zip(items, got):
        assert torch.allclose(probs, by_path[keys.index(key)], atol=1e-5), (key, kind)
    opened = Image.open(tmp_path / "alpha.png")
    with learner.no_bar():
        learner.predict(opened)
    assert type(opened).__name__ == "PngImageFile" and opened.mode == "RGBA"  # the caller's image is untouched


# --- 5. the exported model ------------------------------------------------------------------

def test_export_loads_and_says_what_it_needs_where_tlcourse_is_missing(learner, tmp_path, monkeypatch):
    from fastai.learner import load_learner

    path = folders.export(learner, tmp_path / "model.pkl")
    photo = put(tmp_path, "photo.png", picture("dog", 5))
    loaded = load_learner(path)
    with learner.no_bar(), loaded.no_bar():
        assert torch.allclose(loaded.predict(photo)[2], learner.predict(photo)[2], atol=1e-5)
    for name in [m for m in sys.modules if m == "tlcourse" or m.startswith("tlcourse.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as on a machine without tlcourse
    with pytest.raises(KeyError) as info:
        load_learner(path)
    assert "pip install tlcourse" in str(info.value) and info.value.args[0] == folders.LOADING_NEEDS


# --- 7. messages that said the wrong thing ------------------------------------------------------

def test_unbalanced_classes_name_the_real_majority_baseline(tmp_path):
    classes(tmp_path, {"cat": 60, "dog": 12})
    res = folders.audit(tmp_path)
    assert "No problems found" not in res.summary()
    (issue,) = res.by_kind("imbalance")
    assert "cat has 60 images, dog only 12" in issue.detail and "83%" in issue.detail
    guess, share = res.baseline()
    assert guess == "cat" and share == pytest.approx(12 / 14.4, abs=0.1)
    assert share == pytest.approx((res.items[res.items.is_valid].label == "cat").mean())


def test_heic_photo_says_which_plugin_reads_it(tmp_path):
    classes(tmp_path, {"cat": 2, "dog": 2})
    put(tmp_path, "cat/IMG_0001.HEIC", HEIC)
    put(tmp_path, "dog/IMG_0002.jpg", HEIC)  # an iPhone photo renamed .jpg
    res = folders.audit(tmp_path, min_per_class=1)
    found = {i.path: i.detail for i in res.by_kind("needs_plugin")}
    assert set(found) == {"cat/IMG_0001.HEIC", "dog/IMG_0002.jpg"}
    assert all("pillow-heif" in d and "JPEG" in d for d in found.values())
    assert not res.by_kind("unreadable") and "not an image" not in res.summary()


def test_folder_error_in_jupyter_lists_what_it_refers_to(tmp_path):
    put(tmp_path, "cat/broken.jpg", b"")
    put(tmp_path, "dog/notes.jpg", b"hello")
    with pytest.raises(folders.FolderError) as info:
        folders.audit(tmp_path)
    assert "listed below" not in str(info.value)
    assert "cat/broken.jpg" in str(info.value) and "dog/notes.jpg" in str(info.value)
    shown = "\n".join(info.value._render_traceback_())
    assert "cat/broken.jpg: zero bytes" in shown and "dog/notes.jpg: not an image" in shown


def test_batch_size_one_is_refused_with_the_reason(tmp_path):
    classes(tmp_path, {"cat": 3, "dog": 3})
    res = folders.audit(tmp_path, min_per_class=1)
    with pytest.raises(ValueError, match="BatchNorm"):
        res.dataloaders(get_settings(), size=32, bs=1, path=tmp_path / "work")
    dls = res.dataloaders(get_settings(), size=32, bs=64, path=tmp_path / "work", device="cpu")
    assert dls.train.bs == max(2, int((~res.items.is_valid).sum()) // 2)  # two steps an epoch, never 1


# --- every case at once ---------------------------------------------------------------------------

def test_one_folder_with_every_fault_one_report_training_works_nothing_changed(tmp_path, monkeypatch):
    from fastai.learner import load_learner

    from tlcourse import models

    root = tmp_path / "my photos"
    classes(root, {"train/cat": 6, "train/dog": 2})  # unbalanced, and no valid/ folder
    for i in range(2):
        put(root, f"test/unlabelled_{i}.jpg", picture("dog", 40 + i))
    put(root, "models/stage-1.pth", b"PK\x03\x04" + bytes(50))
    whole = jpeg(picture("cat", 30, size=64))
    put(root, "train/cat/half.jpg", whole[: len(whole) // 2])
    put(root, "train/cat/scan_nan.tif", float_tiff(np.nan))
    put(root, "train/dog/scan_inf.tif", float_tiff(np.inf))
    put(root, "train/dog/IMG_0042.HEIC", HEIC)
    rows = [(str(p), p.parent.name) for p in sorted((root / "train").glob("*/*_*.jpg"))]
    pd.DataFrame(rows, columns=["fname", "label"]).to_csv(tmp_path / "absolute.csv", index=False)
    before = state(root)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)

    res = folders.audit(root, min_per_class=1)
    report = res.summary()
    expected = {  # every problem, with what to do
        "not_a_class": ["models/", "test/"], "random_valid": [""], "imbalance": [""],
        "unreadable": ["train/cat/half.jpg"], "bad_pixels": ["train/cat/scan_nan.tif", "train/dog/scan_inf.tif"],
        "needs_plugin": ["train/dog/IMG_0042.HEIC"]}
    assert {k: sorted(v) for k, v in kinds(res).items()} == expected
    for words in ("learn.save writes it", "test split", "set aside at random", "always answering cat",
                  "LOAD_TRUNCATED_IMAGES", "use a complete copy", "NaN or infinite", "export it again",
                  "pillow-heif"):
        assert words in report, words
    assert res.classes == {"cat": 6, "dog": 2} and res.baseline()[0] == "cat"

    with pytest.raises(ValueError, match="BatchNorm"):
        res.dataloaders(get_settings(), bs=1)
    dls = res.dataloaders(get_settings(), size=32, bs=2, path=tmp_path / "work", device="cpu")
    learn = models.learner(dls, get_settings().arch)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1)
    assert learn.validate()[1] is not None
    exported = folders.export(learn, tmp_path / "model.pkl")
    with learn.no_bar():
        label = load_learner(exported).predict(root / "train" / "cat" / "cat_0.jpg")[0]
    assert label in ("cat", "dog")

    from_csv = folders.audit(tmp_path / "absolute.csv", root=root, min_per_class=1)
    assert len(from_csv.items) == 8
    csv_dls = from_csv.dataloaders(get_settings(), size=32, bs=2, path=tmp_path / "work", device="cpu")
    assert all(csv_dls.train_ds[i][0].size == (40, 40) for i in range(len(csv_dls.train_ds)))
    assert state(root) == before  # byte for byte, modification times included
