"""The folder audit: every bad case is reported by name, training skips it, nothing is changed."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from imaging import jpeg_bytes, picture, write
from PIL import Image

from tlcourse import exercises
from tlcourse.data import folders, images
from tlcourse.settings import get_settings

GOOD = {"cat": 12, "dog": 12, "bird": 3}


#: Every bad case: (file, kind of issue, text expected on its line of the summary).
CASES = [
    ("cat/truncated.jpg", "unreadable", "truncated"),
    ("cat/zero.jpg", "unreadable", "zero bytes"),
    ("dog/text.jpg", "unreadable", "not an image"),
    ("dog/png_named.jpg", "wrong_extension", "named .jpg but is a PNG file"),
    ("cat/gray.png", "mode", "mode L (grayscale)"),
    ("dog/rgba.png", "mode", "mode RGBA"),
    ("cat/palette.gif", "mode", "mode P"),
    ("dog/cmyk.jpg", "mode", "mode CMYK"),
    ("cat/sixteen.png", "mode", "mode I;16 (16-bit grayscale)"),
    ("dog/small.png", "small", "10x10 pixels (under 32 px)"),
    ("cat/wide.png", "large", "7000x40 pixels (over 6000 px)"),
    ("cat/cat_000.jpg", "duplicate_across", "same content as dog/also_a_cat.jpg"),
    ("dog/also_a_cat.jpg", "duplicate_across", "same content as cat/cat_000.jpg"),
    ("dog/dog_001_copy.jpg", "duplicate_within", "same content as dog/dog_001.jpg"),
    ("cat/my cat.jpg", "odd_name", "spaces"),
    ("dog/hünd.jpg", "odd_name", "non-ASCII characters (ü)"),
    (".DS_Store", "hidden", "hidden or system file"),
    ("cat/._cat_001.jpg", "hidden", "macOS resource file"),
    ("dog/Thumbs.db", "hidden", "hidden or system file"),
    (".ipynb_checkpoints/", "hidden", "hidden folder"),
    ("cat/notes.txt", "not_image", "a .txt file"),
    ("README.md", "outside_class", "not inside a class folder"),
    ("empty/", "empty_class", "no files in this folder"),
    ("bird/", "few_images", "class bird has 3 usable images (fewer than 10)"),
]
LEFT_OUT = {"cat/truncated.jpg", "cat/zero.jpg", "dog/text.jpg", "cat/cat_000.jpg",
            "dog/also_a_cat.jpg", "dog/dog_001_copy.jpg"}


def build_bad_folder(root: Path) -> Path:
    """Good images of three classes plus one file (or folder) for every case in ``CASES``."""
    rng = np.random.default_rng(0)
    for label, n in GOOD.items():
        for i in range(n):
            write(root, f"{label}/{label}_{i:03d}.jpg", picture(label, rng))
    whole = jpeg_bytes(picture("cat", rng))
    write(root, "cat/truncated.jpg", whole[: len(whole) // 2])
    write(root, "cat/zero.jpg", b"")
    write(root, "dog/text.jpg", b"this is a shopping list, not a photo\n")
    write(root, "dog/png_named.jpg", picture("dog", rng), fmt="PNG")
    write(root, "cat/gray.png", picture("cat", rng).convert("L"))
    rgba = picture("dog", rng).convert("RGBA")
    rgba.putalpha(128)
    write(root, "dog/rgba.png", rgba)
    write(root, "cat/palette.gif", picture("cat", rng).convert("P", palette=Image.ADAPTIVE))
    write(root, "dog/cmyk.jpg", picture("dog", rng).convert("CMYK"), fmt="JPEG")
    ramp = (np.linspace(0, 65535, 40 * 40).reshape(40, 40)).astype(np.uint16)
    write(root, "cat/sixteen.png", Image.fromarray(ramp))
    write(root, "dog/small.png", picture("dog", rng, size=(10, 10)))
    write(root, "cat/wide.png", picture("cat", rng, size=(7000, 40)))
    shutil.copyfile(root / "cat/cat_000.jpg", root / "dog/also_a_cat.jpg")
    shutil.copyfile(root / "dog/dog_001.jpg", root / "dog/dog_001_copy.jpg")
    write(root, "cat/my cat.jpg", picture("cat", rng))
    write(root, "dog/hünd.jpg", picture("dog", rng))
    write(root, ".DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(20))
    write(root, "cat/._cat_001.jpg", b"\x00\x05\x16\x07" + bytes(40))
    write(root, "dog/Thumbs.db", bytes(64))
    write(root, ".ipynb_checkpoints/cat_000-checkpoint.jpg", picture("cat", rng))
    write(root, "cat/notes.txt", b"cats sleep a lot\n")
    write(root, "README.md", b"# my pets\n")
    (root / "empty").mkdir()
    return root


def folder_state(root: Path) -> dict[str, str]:
    """Every name under ``root`` (folders too) with the SHA-256 of its bytes."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            state[str(Path(dirpath, d).relative_to(root)) + "/"] = "dir"
        for f in filenames:
            path = Path(dirpath, f)
            state[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    return build_bad_folder(tmp_path_factory.mktemp("bad") / "my photos")


@pytest.fixture(scope="module")
def result(bad_folder):
    return folders.audit(bad_folder, max_listed=100)


def block(summary: str, title: str) -> list[str]:
    """The lines listed under the kind ``title`` in a summary."""
    lines = summary.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {title} ("))
    out = []
    for line in lines[start + 1:]:
        if not line.startswith("    "):
            break
        out.append(line.strip())
    return out


@pytest.mark.parametrize("rel,kind,text", CASES, ids=[c[0] for c in CASES])
def test_every_bad_case_has_its_line(result, rel, kind, text):
    summary = result.summary()
    lines = block(summary, folders.KINDS[kind].title)
    assert f"{rel}: {text}" in "\n".join(lines) or any(
        line.startswith(f"{rel}: ") and text in line for line in lines), (kind, lines)


def test_summary_counts_and_left_out(result):
    assert set(result.left_out) == LEFT_OUT
    usable = set(result.items.fname)
    assert not usable & LEFT_OUT
    converted = {"cat/gray.png", "dog/rgba.png", "cat/palette.gif", "dog/cmyk.jpg", "cat/sixteen.png",
                 "dog/png_named.jpg", "dog/small.png", "cat/wide.png", "cat/my cat.jpg", "dog/hünd.jpg"}
    assert converted <= usable
    assert result.classes == {"bird": 3, "cat": 11 + 5, "dog": 12 + 5}
    assert result.ok
    first = result.summary().splitlines()[1]
    assert first.startswith(f"{len(result.items)} images will be used") and "6 left out" in first
    assert "dog/text.jpg" in set(result.issues_df().file)


def test_split_keeps_every_class_in_training(result):
    items = result.items
    assert items.is_valid.dtype == bool
    for label, group in items.groupby("label"):
        assert (~group.is_valid).sum() >= 1 and group.is_valid.sum() >= 1, label
    again = folders.audit(result.source)  # the same seed gives the same split
    pd.testing.assert_frame_equal(again.items, items)


def test_training_skips_bad_files_and_changes_nothing(bad_folder, tmp_path):
    from tlcourse import models

    before = folder_state(bad_folder)
    res = folders.audit(bad_folder)
    dls = res.dataloaders(get_settings(), size=32, bs=8, path=tmp_path / "work")
    assert len(dls.train_ds) + len(dls.valid_ds) == len(res.items)
    assert list(dls.vocab) == ["bird", "cat", "dog"]
    learn = models.learner(dls, get_settings().arch)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1)
    learn.export(tmp_path / "model.pkl")
    assert learn.path == tmp_path / "work"
    for path in (bad_folder / "cat" / "sixteen.png", str(bad_folder / "dog" / "cmyk.jpg")):
        assert learn.predict(path)[0] in ("bird", "cat", "dog")  # odd modes, through the same loader
    assert folder_state(bad_folder) == before
    assert folders.fingerprint(bad_folder) == folders.fingerprint(bad_folder)


def test_html_report(result):
    html = result._repr_html_()
    assert "cannot be opened" in html and "my cat.jpg" in html and "<ul>" in html
    assert "hünd" in html


def test_max_listed_shortens_the_text(bad_folder):
    text = folders.audit(bad_folder, max_listed=1).summary()
    assert "... and 4 more" in text  # five unusual modes, one listed


# --- loading ----------------------------------------------------------------------------------

def test_to_rgb_handles_every_mode():
    ramp = Image.fromarray(np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16))
    rgb = np.asarray(images.to_rgb(ramp))
    assert rgb.shape == (16, 16, 3) and rgb.min() == 0 and rgb.max() == 255  # stretched, not clipped
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(images.to_rgb(clear)).min() == 255  # transparent -> white, not black
    pal = Image.new("P", (4, 4), 0)
    pal.info["transparency"] = 0
    assert images.to_rgb(pal).mode == "RGB"
    for mode in ("L", "CMYK", "1", "F", "I", "LA"):
        assert images.to_rgb(Image.new(mode, (3, 3))).mode == "RGB", mode


def test_load_image_turns_phone_photos_upright(tmp_path):
    img = Image.new("RGB", (30, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees": how many phones store portrait photos
    img.save(tmp_path / "phone.jpg", exif=exif)
    before = (tmp_path / "phone.jpg").read_bytes()
    loaded = images.load_image(tmp_path / "phone.jpg")
    assert loaded.size == (10, 30) and loaded.mode == "RGB"
    assert (tmp_path / "phone.jpg").read_bytes() == before


# --- folders that cannot be trained on --------------------------------------------------------

def test_single_class_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(5):
        write(tmp_path / "pics", f"cat/cat_{i}.jpg", picture("cat", rng))
    with pytest.raises(folders.FolderError, match=r"Only one class \(cat, 5 images\)") as info:
        folders.audit(tmp_path / "pics")
    assert "Add a subfolder" in str(info.value)
    shown = info.value._render_traceback_()
    assert shown[0] == f"FolderError: {info.value}" and "The full report:" in shown  # the report follows
    result = info.value.result
    assert not result.ok and "only one class" in result.summary()
    with pytest.raises(folders.FolderError):
        result.dataloaders(get_settings())


def test_no_usable_images_is_a_clear_error(tmp_path):
    write(tmp_path, "cat/broken.jpg", b"")
    write(tmp_path, "dog/notes.jpg", b"hello")
    (tmp_path / "bird").mkdir()
    with pytest.raises(folders.FolderError, match="No usable images found") as info:
        folders.audit(tmp_path)
    assert "2 files could not be used" in str(info.value)
    result = folders.audit(tmp_path, raise_on_error=False)
    assert not result.ok and "no usable images" in result.summary()


def test_images_directly_in_the_folder(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(3):
        write(tmp_path, f"photo_{i}.jpg", picture("cat", rng))
    with pytest.raises(folders.FolderError, match="not in class subfolders"):
        folders.audit(tmp_path)


def test_unreadable_files_do_not_stop_the_check(tmp_path):
    rng = np.random.default_rng(4)
    for label in ("cat", "dog"):
        write(tmp_path, f"{label}/{label}_0.jpg", picture(label, rng))
    (tmp_path / "cat" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    locked = tmp_path / "dog" / "locked.jpg"
    write(tmp_path, "dog/locked.jpg", picture("dog", rng))
    locked.chmod(0)
    try:
        res = folders.audit(tmp_path, min_per_class=1)
    finally:
        locked.chmod(0o644)
    details = {i.path: i.detail for i in res.by_kind("unreadable")}
    assert details["cat/gone.jpg"] == "a link to a file that does not exist"
    if os.geteuid() != 0:  # root can read anything
        assert details["dog/locked.jpg"].startswith("could not be read")


def test_missing_folder(tmp_path):
    with pytest.raises(folders.FolderError, match="does not exist"):
        folders.audit(tmp_path / "nowhere")


# --- other inputs ----------------------------------------------------------------------------

def test_csv_input(bad_folder, tmp_path):
    rows = [("cat/cat_001.jpg", "cat"), ("cat/cat_002.jpg", "cat"), ("dog/dog_002.jpg", "dog"),
            ("dog/dog_003.jpg", "dog"), ("dog/dog_003.jpg", "cat"),  # one file, two labels
            ("cat/zero.jpg", "cat"), ("cat/gone.jpg", "cat"), ("dog/dog_004.jpg", ""),
            ("cat/._cat_001.jpg", "cat")]
    csv = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=["fname", "label"]).to_csv(csv, index=False)
    res = folders.audit(csv, root=bad_folder, min_per_class=2)
    assert sorted(res.items.fname) == ["cat/cat_001.jpg", "cat/cat_002.jpg", "dog/dog_002.jpg"]
    kinds = {(i.kind, i.path) for i in res.issues}
    assert {("duplicate_across", "dog/dog_003.jpg"), ("unreadable", "cat/zero.jpg"),
            ("missing", "cat/gone.jpg"), ("no_label", "dog/dog_004.jpg"),
            ("hidden", "cat/._cat_001.jpg")} <= kinds
    assert res.summary().startswith(f"Checked CSV {csv}")
    with pytest.raises(folders.FolderError, match="no column 'file'"):
        folders.audit(csv, root=bad_folder, fname_col="file")


def test_train_valid_layout(tmp_path):
    rng = np.random.default_rng(3)
    for split, label, n in [("train", "cat", 3), ("train", "dog", 3), ("valid", "cat", 2),
                            ("valid", "dog", 1), ("valid", "bird", 1), ("test", "cat", 1)]:
        for i in range(n):
            write(tmp_path, f"{split}/{label}/{label}_{i}.jpg", picture(label, rng))
    res = folders.audit(tmp_path, min_per_class=1)
    assert res.classes == {"cat": 5, "dog": 4}
    assert res.items.is_valid.sum() == 3
    assert {(i.kind, i.path) for i in res.issues} >= {("valid_only", "valid/bird/bird_0.jpg"),
                                                      ("not_a_class", "test/")}


def test_demo_folder_has_every_kind_the_lesson_shows(tmp_path):
    from tlcourse import data

    root = folders.make_demo_folder(tmp_path / "demo", per_class=12)
    before = folders.fingerprint(root)
    res = folders.audit(root, min_per_class=2)
    found = {i.kind for i in res.issues}
    assert found == {"unreadable", "needs_plugin", "bad_pixels", "duplicate_across", "duplicate_within",
                     "wrong_extension", "mode", "small", "odd_name", "imbalance", "hidden",
                     "not_a_class", "outside_class", "empty_class"}
    assert set(res.classes) == {"cat", "dog"} and folders.fingerprint(root) == before
    photos = {p.name: p.read_bytes() for p in data.pets_dir().glob("*.jpg")}
    copied = [p for p in (root / "cat").glob("*.jpg") if p.name in photos]
    assert len(copied) == 12 and all(p.read_bytes() == photos[p.name] for p in copied)  # real photos
    assert all(p.name[0].isupper() for p in copied)  # cat breeds only
    os.utime(copied[0], ns=(0, 0))  # touched, not rewritten: the fingerprint sees it too
    assert folders.fingerprint(root) != before


# --- exercises of notebook 06 ----------------------------------------------------------------

def test_check_clean_copy(bad_folder, tmp_path, capsys):
    assert exercises.check_clean_copy(...) is None
    assert exercises.check_clean_copy(bad_folder) is False
    assert "left out" in capsys.readouterr().out
    res = folders.audit(bad_folder)
    clean = tmp_path / "clean"
    for i, row in enumerate(res.items.itertuples()):
        (clean / row.label).mkdir(parents=True, exist_ok=True)
        images.load_image(bad_folder / row.fname).save(clean / row.label / f"{i:04d}.png")
    assert exercises.check_clean_copy(clean) is True
    assert exercises.check_clean_copy(str(clean)) is True
    assert exercises.check_clean_copy(res) is False
    assert "folder" in capsys.readouterr().out


def test_check_labels_csv(bad_folder, tmp_path, capsys):
    res = folders.audit(bad_folder)
    assert exercises.check_labels_csv(...) is None
    assert exercises.check_labels_csv(res) is False  # a folder check, not a CSV one
    assert "CSV" in capsys.readouterr().out
    outside = tmp_path / "labels.csv"
    res.items[["fname", "label"]].to_csv(outside, index=False)
    assert exercises.check_labels_csv(folders.audit(outside, root=bad_folder)) is True
    inside = tmp_path / "copy"
    shutil.copytree(bad_folder, inside)
    res.items[["fname", "label"]].to_csv(inside / "labels.csv", index=False)
    assert exercises.check_labels_csv(folders.audit(inside / "labels.csv")) is False
    assert "inside" in capsys.readouterr().out


def test_check_download_error(capsys):
    from tlcourse.data import download

    err = download.DownloadError("x.tgz", "no network")
    assert exercises.check_download_error(...) is None
    assert exercises.check_download_error(err) is True
    assert exercises.check_download_error(str(err)) is False
    assert "exception object" in capsys.readouterr().out
    assert exercises.check_download_error(ValueError("x")) is False
