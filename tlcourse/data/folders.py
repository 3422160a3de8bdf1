"""Audit a folder of images (or a CSV of names and labels) before training on it (lesson 06).

Real folders hold broken photos, non-images, wrong extensions, odd colour modes, system files and
duplicates, on which fastai stops mid-epoch or, worse, trains silently.  :func:`audit` reads every
file once (never changes one) and returns the usable images plus one report of all it left out.
"""

from __future__ import annotations

import hashlib
import html
import importlib.util
import io
import operator
import os
import pickle
import shutil
import sys
import textwrap
import types
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from fastai.vision.all import DataLoaders
from PIL import Image

from tlcourse.data import batch_size, datablock, pets_dir
from tlcourse.data.images import load_image, not_finite, strict_decoding, truncation_hint
from tlcourse.settings import QuietError, Settings


#: Extensions of image files and the Pillow formats their content may have.
IMAGE_EXTENSIONS: dict[str, tuple[str, ...]] = {
    ext: formats for exts, formats in (
        (".jpg .jpeg .jpe .jfif", ("JPEG", "MPO")), (".tif .tiff", ("TIFF",)),
        (".ppm .pgm .pbm .pnm", ("PPM",)), (".heic .heif", ("HEIF",)), (".png", ("PNG",)),
        (".gif", ("GIF",)), (".bmp", ("BMP",)), (".webp", ("WEBP",)), (".ico", ("ICO",)),
        (".avif", ("AVIF",)), (".jp2", ("JPEG2000",))) for ext in exts.split()}
#: Camera RAW files: Pillow cannot develop them.
RAW_EXTENSIONS = {".cr2", ".cr3", ".nef", ".arw", ".dng", ".raf", ".orf", ".rw2", ".srw", ".pef"}
#: Files that operating systems and tools leave in folders.
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", "icon\r", "ehthumbs.db"})
#: Folder names of fastai's ``train/valid`` layout, and which split each one is.
SPLIT_FOLDERS = {"train": False, "valid": True, "val": True, "validation": True, "test": None}
#: What each colour mode is, in words, for the report.
MODE_NAMES = {
    "1": "1-bit black and white", "L": "grayscale", "LA": "grayscale with transparency",
    "P": "palette of indexed colours", "PA": "palette with transparency", "RGBA": "colour with transparency",
    "RGBa": "colour with transparency", "CMYK": "print colour space", "YCbCr": "video colour space",
    "LAB": "Lab colour space", "HSV": "hue, saturation, value", "I": "32-bit integer", "F": "32-bit float",
    **dict.fromkeys(("I;16", "I;16L", "I;16B", "I;16N"), "16-bit grayscale"),
}
#: Formats Pillow reads only with a plugin: ISO-BMFF brands, and what to do.
HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
NEEDS_PLUGIN = {
    "heif": ("an HEIC/HEIF photo (the iPhone camera's format): Pillow reads it only with the "
             "plugin pillow-heif. Run `pip install pillow-heif`, then `import pillow_heif; "
             "pillow_heif.register_heif_opener()` before checking, or export the photos as JPEG "
             "(on an iPhone: Settings > Camera > Formats > Most Compatible)"),
    "jxl": ("a JPEG XL photo: Pillow reads it only with the plugin pillow-jxl-plugin "
            "(`pip install pillow-jxl-plugin`, then `import pillow_jxl`), or export it as JPEG"),
    "avif": ("an AVIF photo this Pillow cannot read: upgrade Pillow (11.3 or newer reads AVIF) "
             "or export it as JPEG"),
}

LEFT_OUT, WARNING, IGNORED, FATAL = "left out", "warning", "ignored", "fatal"


@dataclass(frozen=True)
class Kind:
    """One kind of problem: its line in the report and what the audit does about it."""

    title: str
    action: str
    severity: str


#: Every kind of problem, by severity: its title in the report and what the audit does about it.
KINDS: dict[str, Kind] = {key: Kind(title, action, severity) for severity, kinds in {
    FATAL: {"no_images": ("no usable images", "nothing to train on"),
            "single_class": ("only one class", "a classifier needs at least two classes")},
    LEFT_OUT: {
        "unreadable": ("cannot be opened", "left out of training"),
        "needs_plugin": ("photo format Pillow cannot read without a plugin",
                         "left out until the plugin is installed or the photo exported as JPEG"),
        "bad_pixels": ("pixels that are not numbers (NaN or infinite)",
                       "left out: loaded, the image would be black or wrong"),
        "duplicate_across": ("same file in more than one class",
                             "every copy left out: which label is right?"),
        "duplicate_within": ("same file twice in one class", "extra copies left out"),
        "missing": ("listed in the CSV but not found", "left out of training"),
        "no_label": ("listed in the CSV without a label", "left out of training"),
        "valid_only": ("class with validation images only", "left out: the model never sees it in training")},
    WARNING: {
        "no_valid": ("no validation images", "training works, but accuracy cannot be measured"),
        "random_valid": ("no validation split given",
                         "part of each class set aside at random for validation"),
        "imbalance": ("unbalanced classes", "used; compare accuracy with always guessing the largest class"),
        "wrong_extension": ("wrong file extension", "used: Pillow reads the content, whatever the name says"),
        "mode": ("unusual colour mode", "converted to RGB in memory when loaded; the file is not changed"),
        "small": ("very small image", "used, but enlarged: it will look blurry"),
        "large": ("very large image", "used, but slow to load: consider a resized copy"),
        "few_images": ("class with few images", "used, but the model may learn it poorly"),
        "odd_name": ("name with spaces or non-ASCII characters",
                     "used; some other tools stumble on such names")},
    IGNORED: {
        "hidden": ("hidden or system file", "ignored"),
        "not_image": ("not an image file", "ignored"),
        "not_a_class": ("folder that is not a class", "ignored: nothing in it is trained on"),
        "outside_class": ("file outside any class folder", "ignored"),
        "empty_class": ("empty class folder", "ignored")},
}.items() for key, (title, action) in kinds.items()}
#: The report's sections: which issues, under which heading, in which colour (HTML).
SECTIONS = ((FATAL, "✗✗ Cannot train", "#b00020"), (LEFT_OUT, "✗ Left out of training", "#b00020"),
            (WARNING, "! Used, but worth a look", "#9a6700"), (IGNORED, "- Ignored", "#57606a"))


class FolderError(QuietError, ValueError):
    """A folder (or CSV) that cannot be trained on; the message says why and what to do.
    ``result`` holds the full :class:`Audit` when the check got that far."""

    def __init__(self, message: str, result: Audit | None = None):
        super().__init__(message)
        self.result = result

    def _render_traceback_(self) -> list[str]:
        report = [] if self.result is None else ["", "The full report:", *self.result.summary().splitlines()]
        return super()._render_traceback_() + report  # the message, then the report it refers to


@dataclass(frozen=True)
class Issue:
    """One finding: its kind, the file (relative to the root) and a detail in words."""

    kind: str
    path: str
    detail: str = ""

    @property
    def title(self) -> str:
        return KINDS[self.kind].title

    @property
    def severity(self) -> str:
        return KINDS[self.kind].severity


@dataclass
class Audit:
    """What :func:`audit` found: ``items``, one row per usable image (``fname`` relative to
    ``root``, ``label``, ``is_valid``), and every issue; ``print(result)`` shows the report."""

    source: Path
    root: Path
    items: pd.DataFrame
    issues: list[Issue]
    n_files: int
    max_listed: int = 8

    @property
    def classes(self) -> dict[str, int]:
        """Usable images per class, in sorted class order."""
        return {k: int(v) for k, v in self.items.label.value_counts().sort_index().items()}

    @property
    def ok(self) -> bool:
        """True when there is something to train on (two classes with usable images)."""
        return not any(i.severity == FATAL for i in self.issues)

    @property
    def left_out(self) -> list[str]:
        """Files that looked like training images but are not used, sorted."""
        return sorted({i.path for i in self.issues if i.severity == LEFT_OUT and i.path})

    def by_kind(self, kind: str) -> list[Issue]:
        """The issues of one kind (a key of ``KINDS``)."""
        if kind not in KINDS:
            raise ValueError(f"Unknown kind {kind!r}; choose one of {', '.join(KINDS)}.")
        return [i for i in self.issues if i.kind == kind]

    def issues_df(self) -> pd.DataFrame:
        """Every issue as a table: kind, problem, file, detail, what the audit did."""
        rows = [(i.kind, i.title, i.path, i.detail, KINDS[i.kind].action) for i in self.issues]
        return pd.DataFrame(rows, columns=["kind", "problem", "file", "detail", "action"])

    def summary(self, max_listed: int | None = None) -> str:
        """The report as plain text: one block per kind of problem, up to ``max_listed`` files each."""
        return self._render(self.max_listed if max_listed is None else max_listed, as_html=False)

    __str__ = summary

    def _repr_html_(self) -> str:
        return self._render(self.max_listed, as_html=True)

    def _render(self, limit: int, as_html: bool) -> str:
        """The report as text or HTML, one structure with each piece in both forms (``m``): the
        counts, then per section of ``SECTIONS`` each kind found, with up to ``limit`` files."""
        def m(text: str, markup: str) -> str:
            return markup if as_html else text

        esc = html.escape if as_html else str
        what = "CSV" if self.source.suffix.lower() == ".csv" else "folder"
        n_valid = int(self.items.is_valid.sum())
        n_ignored = len({i.path for i in self.issues if i.severity == IGNORED and i.path})
        head = m(f"Checked {what} {self.source}",
                 f"<div><p><b>Checked {what}</b> <code>{esc(str(self.source))}</code>")
        out = [f"{head}: {self.n_files} files, {len(self.classes)} classes.", m("\n", "<br>"),
               f"{len(self.items)} images will be used ({len(self.items) - n_valid} training, "
               f"{n_valid} validation); {len(self.left_out)} left out; {n_ignored} ignored."]
        if self.classes:
            line = "Usable images per class: " + ", ".join(
                f"{esc(k)}{m(' ', '&nbsp;')}{v}" for k, v in self.classes.items())
            out.append(m("\n" + textwrap.fill(line, width=100, subsequent_indent="  "), f"<br>{line}"))
        if not self.issues:
            out.append(m("\nNo problems found.", "</p><p>No problems found."))
        out.append(m("", "</p>"))
        for severity, heading, colour in SECTIONS:
            kinds = [(kind, self.by_kind(k)) for k, kind in KINDS.items() if kind.severity == severity]
            kinds = [(kind, found) for kind, found in kinds if found]
            if kinds:
                style = f"margin-bottom:0;color:{colour}"
                out.append(m(f"\n\n{heading}", f"<p style='{style}'><b>{heading}</b></p><ul>"))
            for kind, found in kinds:
                title = m(f"\n  {kind.title}", f"<li><b>{esc(kind.title)}</b>")
                out.append(f"{title} ({len(found)}): {esc(kind.action)}" + m("", "<ul>"))
                rows = [(m(f"{i.path}: ", f"<code>{esc(i.path)}</code> ") if i.path else "") + esc(i.detail)
                        for i in found[:limit]]
                if len(found) > limit:
                    see = m(".issues_df()", "<code>.issues_df()</code>")
                    rows.append(f"... and {len(found) - limit} more (see {see})")
                out += [m(f"\n    {row}", f"<li>{row}</li>") for row in rows]
                out.append(m("", "</ul></li>"))
            out.append(m("", "</ul>") if kinds else "")
        return "".join(out) + m("", "</div>")

    def baseline(self) -> tuple[str, float]:
        """The largest training class and its share of the validation images (of all usable
        ones when there are none): the accuracy of always guessing it, which a model has to
        beat (with 60 cats and 12 dogs that is 83 %, not ``1 / number of classes``)."""
        counts = self.items.label[~self.items.is_valid].value_counts()
        if counts.empty:
            return "", 0.0
        label = sorted(counts[counts == counts.max()].index)[0]
        valid = self.items[self.items.is_valid]
        return str(label), float(((valid if len(valid) else self.items).label == label).mean())

    def raise_if_unusable(self) -> None:
        """Raise :class:`FolderError` with the reason when there is nothing to train on."""
        if fatal := [i for i in self.issues if i.severity == FATAL]:
            raise FolderError(fatal[0].detail, result=self)

    def dataloaders(self, settings: Settings, size: int | None = None, bs: int | None = None,
                    augment: bool = False, path: str | Path | None = None, **kwargs) -> DataLoaders:
        """fastai ``DataLoaders`` over the usable images only (``data.datablock``: read as the audit
        read them, as RGB); ``bs`` never below 2.  ``path`` (``Learner.path``, where fastai saves)
        defaults to the course cache, so nothing is written into the user's folder."""
        self.raise_if_unusable()
        n_train, bs = int((~self.items.is_valid).sum()), bs or settings.batch_size
        if bs < 2:
            raise ValueError(f"bs={bs} cannot train this network: its BatchNorm layers normalise "
                             "each batch with the batch's own mean and spread, which needs at least "
                             "2 images a batch. Use bs=2 or more (8 to 64 is usual).")
        if n_train < 2:
            raise FolderError(f"Only {n_train} training image{'s' * (n_train != 1)} in {self.source}: "
                              "a batch needs at least 2 (BatchNorm). Add images to each class.",
                              result=self)
        out = Path(path) if path is not None else settings.cache_dir / "own_data"
        out.mkdir(parents=True, exist_ok=True)
        kwargs = dict(num_workers=settings.num_workers, pin_memory=settings.pin_memory,
                      device=settings.device) | kwargs
        return datablock(self.root, size or settings.image_size, augment).dataloaders(
            self.items, path=out, bs=batch_size(n_train, settings, bs), **kwargs)


@dataclass
class _Look:
    """What reading one file revealed: a hash of its bytes, its header, or why it is unusable."""

    digest: str = ""
    format: str | None = None
    mode: str | None = None
    size: tuple[int, int] | None = None
    problem: tuple[str, str] | None = None  # (kind, detail) of a file that cannot be used


def _look(path: Path) -> _Look:
    """Read one file (only read it): hash its bytes and decode it fully, strictly (a file
    that stops early is caught even with ``ImageFile.LOAD_TRUNCATED_IMAGES`` set)."""
    try:
        data = path.read_bytes()
    except OSError as err:  # no permission, a file that vanished, a broken disk
        return _Look(problem=_unusable(path, f"could not be read ({err.strerror or type(err).__name__})"))
    if not data:
        return _Look(problem=_unusable(path, "zero bytes (an empty file)"))
    look, error = _Look(digest=hashlib.sha1(data).hexdigest()), None
    try:
        with strict_decoding(), Image.open(io.BytesIO(data)) as im:
            look.format, look.mode, look.size = im.format, im.mode, im.size
            im.load()  # decoding everything is what finds truncated files
            if im.mode.startswith("F") and (bad := not_finite(np.asarray(im))):  # only floats can be NaN
                look.problem = ("bad_pixels", f"{bad} of {im.width * im.height} pixels are NaN or infinite: "
                                "loaded, the image would be black. Fix those pixels in the program that "
                                "made it, or export it again")
    except Image.DecompressionBombError:
        error = "too large to open safely" + (" ({}x{} pixels)".format(*look.size) if look.size else "")
    except Image.UnidentifiedImageError:
        if plugin := _plugin_format(data):
            look.problem = ("needs_plugin", NEEDS_PLUGIN[plugin])
        else:
            text = data[:512].decode("utf-8", "ignore").encode() == data[:512]  # valid UTF-8
            error = f"not an image (the file holds {'text' if text else 'data Pillow does not recognise'})"
    except Exception as err:  # truncated or damaged data: Pillow raises several types
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        error = (f"truncated: the file stops before the image ends{truncation_hint()}; use a "
                 "complete copy" if "truncated" in message.lower() else f"damaged ({message})")
    if error:
        look.problem = _unusable(path, error)
    return look


def _unusable(path: Path, error: str) -> tuple[str, str]:
    """The kind and detail of a file Pillow cannot read: a broken image, or no image at all."""
    ext = path.suffix.lower()
    if ext in IMAGE_EXTENSIONS or not ext:
        return "unreadable", error
    if ext in RAW_EXTENSIONS:
        return "not_image", (f"a camera RAW file ({ext}): Pillow cannot develop it; export it as "
                             "JPEG to use it")
    return "not_image", f"a {ext} file"


def _plugin_format(data: bytes) -> str | None:
    """The key of ``NEEDS_PLUGIN`` when ``data`` starts like such a file, else None."""
    if data[4:8] == b"ftyp":
        brands = {data[8:12]} | {data[i:i + 4] for i in range(16, min(len(data), 64), 4)}
        if brands & HEIF_BRANDS:
            return "heif"
        if brands & {b"avif", b"avis"}:
            return "avif"
    if data[:2] == b"\xff\x0a" or data[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        return "jxl"
    return None


def _odd_name(rel: str) -> str | None:
    """Why a relative path may trouble other tools (spaces, non-ASCII), or None."""
    odd = "".join(sorted({ch for ch in rel if not ch.isascii()}))
    reasons = (("spaces", any(ch.isspace() for ch in rel)), (f"non-ASCII characters ({odd})", odd))
    return " and ".join(why for why, found in reasons if found) or None


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in SYSTEM_FILES


@dataclass
class _Candidate:
    rel: str
    label: str
    is_valid: bool | None


def _hidden(path: Path, root: Path) -> Issue:
    """The issue of a hidden file or folder (a folder's path ends in ``/``)."""
    rel = path.relative_to(root).as_posix()
    if path.is_dir():
        return Issue("hidden", rel + "/", "hidden folder")
    resource = path.name.startswith("._")
    return Issue("hidden", rel, "macOS resource file" if resource else "hidden or system file")


def _entries(folder: Path, root: Path, issues: list[Issue]) -> list[Path]:
    """The visible subfolders of ``folder``, sorted; hidden entries and loose files are reported."""
    dirs = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if _is_hidden(entry.name):
            issues.append(_hidden(entry, root))
        elif entry.is_dir():
            dirs.append(entry)
        else:
            csv = entry.suffix.lower() == ".csv"
            issues.append(Issue("outside_class", entry.relative_to(root).as_posix(),
                                "a CSV: pass its path to audit() to use its labels" if csv
                                else "not inside a class folder"))
    return dirs


def _read_class(folder: Path, root: Path, is_valid: bool | None, issues: list[Issue]
                ) -> list[_Candidate]:
    """Every visible file under one class folder (subfolders included); hidden ones are reported."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        issues.extend(_hidden(here / d, root) for d in sorted(dirnames) if _is_hidden(d))
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for path in (here / name for name in sorted(filenames)):
            rel = path.relative_to(root).as_posix()
            if _is_hidden(path.name):
                issues.append(_hidden(path, root))
            elif path.is_file():
                found.append(_Candidate(rel, folder.name, is_valid))
            elif path.is_symlink():
                issues.append(Issue("unreadable", rel, "a link to a file that does not exist"))
    if not found:
        rel = folder.relative_to(root).as_posix()
        issues.append(Issue("empty_class", f"{rel}/", "no files in this folder"))
    return found


def _subfolders(folder: Path) -> list[Path]:
    """The visible subfolders of ``folder``, sorted (none when it cannot be listed)."""
    try:
        return _entries(folder, folder, [])
    except OSError:
        return []


def _has_images(folder: Path) -> bool:
    """True when some file under ``folder`` has an image extension (hidden ones aside)."""
    for _, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        if any(Path(f).suffix.lower() in IMAGE_EXTENSIONS and not _is_hidden(f) for f in filenames):
            return True
    return False


def _not_a_class(folder: Path) -> str | None:
    """Why a top-level folder is no class (fastai's models/, a folder without images), or None."""
    files = [Path(f) for _, _, fs in os.walk(folder) for f in fs if not _is_hidden(f)]
    if not files or _has_images(folder):
        return None  # a class, or an empty class folder (reported as such)
    kinds = ", ".join(sorted({f.suffix.lower() or "no extension" for f in files})[:4])
    if folder.name.lower() == "models":
        return f"fastai's folder of saved models ({kinds} files; learn.save writes it), not a class"
    return f"holds no image files ({len(files)} files: {kinds}), so it is not a class"


def _from_folder(root: Path, issues: list[Issue]) -> list[_Candidate]:
    """Candidates from a folder of class subfolders, or of fastai's ``train/`` + ``valid/`` (each
    of class subfolders).  A ``test/`` folder, a split folder holding images directly and a folder
    without images (fastai's ``models/``) are never taken for classes: reported and ignored."""
    dirs = _entries(root, root, issues)
    split_of = {d: SPLIT_FOLDERS.get(d.name.lower(), "class") for d in dirs}
    labelled = [d for d in dirs if split_of[d] in (False, True) and _subfolders(d)]
    split_layout = any(split_of[d] is False for d in labelled)  # a train/ with class folders
    valid_too = any(split_of[d] is True for d in labelled)  # else the check sets part of train/ aside
    candidates: list[_Candidate] = []
    for d in dirs:
        split = split_of[d]
        if split is None:
            why = ("a test split (images kept aside, not labelled by folder here): not used for "
                   "training or validation")
        elif split == "class":
            why = _not_a_class(d) or ("in the train/ + valid/ layout only those folders hold "
                                      "classes; this one is not read" if split_layout else None)
        elif d not in labelled:
            why = (f"a {d.name}/ folder holding images directly: it is not a class. In fastai's "
                   f"layout {d.name}/ holds one subfolder per class ({d.name}/cats/, {d.name}/dogs/)")
        else:  # valid/<class>/ without train/ is not read: its images are kept for validation
            why = None if split_layout else ("a validation folder with no train/ folder next to "
                                             "it: not read. Add train/<class>/ folders")
        if why:
            issues.append(Issue("not_a_class", d.name + "/", why))
        elif split == "class":
            candidates += _read_class(d, root, None, issues)
        else:
            for folder in _entries(d, root, issues):
                candidates += _read_class(folder, root, split if valid_too else None, issues)
    return candidates


def _pick_column(df: pd.DataFrame, given: str | None, names: tuple[str, ...], position: int) -> str:
    """The column ``given``, else the first one named like ``names``, else the one at ``position``."""
    if given is not None:
        if given not in df.columns:
            raise FolderError(f"The CSV has no column {given!r}; its columns are {list(df.columns)}.")
        return given
    lower = {str(c).lower(): c for c in df.columns}
    named = next((lower[name] for name in names if name in lower), None)
    if named is None and len(df.columns) < 2:
        raise FolderError("The CSV needs two columns, file names and labels; this one has "
                          f"{list(df.columns)}. Name them 'fname' and 'label'.")
    return df.columns[position] if named is None else named


def _csv_name(rel: str, root: Path) -> str:
    """A CSV's file name as the check and training both join it (``root / name``): absolute
    names (and ``~/...``) inside ``root`` become relative, others stay absolute; Windows
    separators are accepted on other systems when the file exists that way."""
    if "\\" in rel and os.sep == "/" and not (root / rel).exists():
        rel = rel.replace("\\", "/")
    path = Path(rel).expanduser()
    if not path.is_absolute():
        return path.as_posix()
    for base in (root, root.resolve()):
        if path.is_relative_to(base):
            return path.relative_to(base).as_posix()
    return str(path)


def _from_csv(csv: Path, root: Path, issues: list[Issue], fname_col: str | None,
              label_col: str | None) -> list[_Candidate]:
    """Candidates from a CSV of file names (relative to ``root``) and labels."""
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except Exception as err:
        raise FolderError(f"{csv} could not be read as a CSV ({err}).") from None
    fcol = _pick_column(df, fname_col, ("fname", "filename", "file", "file_name", "path", "image", "name"), 0)
    lcol = _pick_column(df, label_col, ("label", "class", "category", "target", "y"), 1)
    vcol = next((c for c in df.columns if str(c).lower() in ("is_valid", "valid", "split")), None)
    candidates = []
    for row in df.to_dict("records"):
        rel, label = str(row[fcol]).strip(), str(row[lcol]).strip()
        if not rel:
            continue
        if not label:
            issues.append(Issue("no_label", rel, "the label cell is empty"))
        elif _is_hidden(Path(rel).name):
            issues.append(Issue("hidden", rel, "hidden or system file"))
        elif not (root / (rel := _csv_name(rel, root))).is_file():  # the same join as training's ImagePath
            where = "" if Path(rel).is_absolute() else f" under {root}"
            issues.append(Issue("missing", rel, f"no such file{where}"))
        else:
            is_valid = None if vcol is None else str(row[vcol]).strip().lower() in (
                "1", "true", "yes", "valid", "validation", "val")
            candidates.append(_Candidate(rel, label, is_valid))
    return candidates


def audit(source: str | Path, root: str | Path | None = None, *, min_side: int = 32,
          max_side: int = 6000, min_per_class: int = 10, valid_pct: float = 0.2, seed: int = 0,
          fname_col: str | None = None, label_col: str | None = None, max_listed: int = 8,
          max_ratio: float = 2.0, progress: bool | None = None,
          raise_on_error: bool = True) -> Audit:
    """Check a folder of class subfolders (fastai's ``train/`` + ``valid/`` too), or a ``.csv`` of
    file names relative to ``root`` and labels, before training on it; files are only read.

    Reported besides broken files: images with a side under ``min_side`` or over ``max_side``
    pixels, classes under ``min_per_class`` images or ``max_ratio`` times smaller than the
    largest.  Without a split, ``valid_pct`` of each class (by ``seed``) is set aside.  Raises
    :class:`FolderError` when there is nothing to train on, unless ``raise_on_error=False``.
    """
    from tqdm.auto import tqdm  # the progress bar, needed only while checking

    source = Path(source).expanduser()
    issues: list[Issue] = []
    if source.is_file() and source.suffix.lower() == ".csv":
        base = Path(root).expanduser() if root is not None else source.parent
        if not base.is_dir():
            raise FolderError(f"{base} is not a folder: pass root= the folder the CSV's file "
                              "names are relative to.")
        candidates = _from_csv(source, base, issues, fname_col, label_col)
    elif source.is_dir():
        base, candidates = source, _from_folder(source, issues)
    else:
        what = "does not exist" if not source.exists() else "is neither a folder nor a .csv file"
        raise FolderError(f"{source} {what}. Point the check at a folder with one subfolder per "
                          "class (photos/cats/, photos/dogs/) or at a CSV of file names and labels.")
    show = len(candidates) >= 500 if progress is None else progress
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:  # Pillow decodes without the GIL
        looks = list(tqdm(pool.map(_look, (base / c.rel for c in candidates)), total=len(candidates),
                          desc="checking images", unit="file", disable=not show))
    issues += [Issue(look.problem[0], c.rel, look.problem[1]) for c, look in zip(candidates, looks)
               if look.problem]
    usable = [(c, look) for c, look in zip(candidates, looks) if not look.problem]

    # Exact copies: across classes the label is ambiguous; within a class one copy is enough.
    copies: dict[str, list[_Candidate]] = {}
    for cand, look in usable:
        copies.setdefault(look.digest, []).append(cand)
    dropped: set[int] = set()
    for group in copies.values():
        group.sort(key=lambda c: (len(c.rel), c.rel))  # keep the shortest name
        across = len({c.label for c in group}) > 1
        for c in group if across else group[1:]:
            others = ", ".join(f"{o.rel} ({o.label})" for o in group if o is not c)
            issues.append(Issue("duplicate_across", c.rel, f"labelled {c.label}; same content as {others}")
                          if across else Issue("duplicate_within", c.rel, f"same content as {group[0].rel}"))
            dropped.add(id(c))
    usable = [(c, look) for c, look in usable if id(c) not in dropped]

    for cand, look in usable:
        ext, (w, h), odd = Path(cand.rel).suffix.lower(), look.size, _odd_name(cand.rel)
        named = f"named {ext}" if ext else "has no extension"
        checks = (("wrong_extension", look.format not in IMAGE_EXTENSIONS.get(ext, ()),
                   f"{named} but is a {look.format} file"),
                  ("mode", look.mode != "RGB", f"mode {look.mode} ({MODE_NAMES.get(look.mode, 'unusual')})"),
                  ("small", min(w, h) < min_side, f"{w}x{h} pixels (under {min_side} px)"),
                  ("large", max(w, h) > max_side, f"{w}x{h} pixels (over {max_side} px)"),
                  ("odd_name", odd, odd))
        issues += [Issue(kind, cand.rel, detail) for kind, found, detail in checks if found]

    items = pd.DataFrame({"fname": [c.rel for c, _ in usable], "label": [c.label for c, _ in usable],
                          "is_valid": [c.is_valid for c, _ in usable]}, dtype=object)
    items = _finish_split(items, issues, valid_pct, seed)
    counts = items.label.value_counts()
    for label, n in counts.sort_index().items():
        if n < min_per_class:
            issues.append(Issue("few_images", f"{label}/" if source.is_dir() else "",
                                f"class {label} has {n} usable image{'s' * (n != 1)} "
                                f"(fewer than {min_per_class})"))
    if len(counts) >= 2 and counts.min() * max_ratio <= counts.max():  # unbalanced: say the baseline
        big, small = counts.idxmax(), counts.idxmin()
        issues.append(Issue("imbalance", "", f"{big} has {counts.max()} images, {small} only "
                            f"{counts.min()}: always answering {big} would already be right on "
                            f"{counts.max() / counts.sum():.0%} of them. Judge accuracy against that "
                            f"(result.baseline()), not against {1 / len(counts):.0%}; more images of "
                            "the small classes help most"))
    n_files = len(candidates) + sum(1 for i in issues if i.kind in ("hidden", "outside_class"))
    result = Audit(source, base, items, issues, n_files, max_listed)
    _add_fatal(result)
    if raise_on_error:
        result.raise_if_unusable()
    return result


def _finish_split(items: pd.DataFrame, issues: list[Issue], valid_pct: float, seed: int
                  ) -> pd.DataFrame:
    """Fill in ``is_valid`` (random per class unless the files carry a split); sort; drop unusable.
    A split with no validation image is replaced by the random one (reported): accuracy needs one."""
    pct = f"{valid_pct:.0%}"
    given = items.is_valid.fillna(False).astype(bool)
    if len(items) and not given.any():
        marked, rng = items.is_valid.notna().any(), np.random.default_rng(seed)
        items["is_valid"] = False
        for _, group in items.groupby("label", sort=True):  # at least one training image a class
            n = len(group)
            n_valid = min(max(round(n * valid_pct), 1), n - 1) if n >= 2 else 0
            items.loc[rng.permutation(group.index.to_numpy())[:n_valid], "is_valid"] = True
        if marked:
            issues.append(Issue("random_valid", "", f"the split marks no image for validation: {pct} "
                                "of each class's images were set aside at random instead"))
        elif items.fname.str.lower().str.startswith("train/").all():
            issues.append(Issue("random_valid", "", f"there is a train/ folder but no valid/ folder: "
                                f"{pct} of each class's images were set aside at random for validation"))
    elif len(items):
        items["is_valid"] = given
        orphans = given & ~items.label.isin(set(items.label[~given]))
        issues.extend(Issue("valid_only", rel, f"class {label} has no training images")
                      for rel, label in zip(items.fname[orphans], items.label[orphans]))
        items = items[~orphans]
    items = items.astype({"fname": str, "label": str, "is_valid": bool})
    items = items.sort_values(["label", "fname"]).reset_index(drop=True)
    if len(items) and not items.is_valid.any() and items.label.nunique() >= 2:
        issues.append(Issue("no_valid", "", "no image could be set aside for validation (a class "
                            "needs at least 2 images to give one away): training works, but its "
                            "accuracy cannot be measured. Add images, or a valid/ folder"))
    return items


def _add_fatal(result: Audit) -> None:
    """Add the one issue that makes training impossible, with what to do about it."""
    where, classes = result.source, result.classes
    if len(classes) == 1:
        label, n = next(iter(classes.items()))
        inner = [d for d in _subfolders(where / label) if _has_images(d)] if where.is_dir() else []
        if len(inner) >= 2:
            names = ", ".join(d.name + "/" for d in inner[:4])
            detail = (f"Only one class folder ({label}) in {where}, and its images sit in subfolders "
                      f"({names}): the folder was probably given one level too high. Point the check "
                      f"at {where / label} instead: folders.audit({str(where / label)!r}).")
        else:
            detail = (f"Only one class ({label}, {n} images) has usable images in {where}; a classifier "
                      "needs at least two. Add a subfolder of images for each other class "
                      f"(for example {where}/not_{label}/).")
        result.issues.insert(0, Issue("single_class", "", detail))
    elif not classes:
        loose = [i for i in result.issues if i.kind == "outside_class"
                 and Path(i.path).suffix.lower() in IMAGE_EXTENSIONS]
        splits = [i.path for i in result.issues if i.kind == "not_a_class"
                  and i.path.rstrip("/").lower() in SPLIT_FOLDERS]
        if loose:
            detail = (f"{where} holds images directly, not in class subfolders. Sort them into one "
                      f"subfolder per class ({where}/cats/, {where}/dogs/, ...) or point at a CSV of "
                      "file names and labels.")
        elif splits:
            detail = (f"{where} has {', '.join(splits)} but no class subfolders in them. Put the "
                      f"images into one subfolder per class ({splits[0]}cats/, {splits[0]}dogs/, "
                      "...), or use one folder per class without splits.")
        else:
            bad = result.left_out
            shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
            why = f" ({len(bad)} files could not be used: {shown}; see the report)" if bad else ""
            detail = (f"No usable images found in {where}{why}. Put images in one subfolder per class "
                      "(photos/cats/*.jpg, photos/dogs/*.jpg) or give a CSV of file names and labels.")
        result.issues.insert(0, Issue("no_images", "", detail))


def fingerprint(folder: str | Path, times: bool = True) -> str:
    """One SHA-256 over every name, byte and (with ``times``) modification time under ``folder``,
    hidden files included: equal before and after a step means the step changed nothing."""
    folder, digest = Path(folder), hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        here = Path(dirpath)
        if times:
            digest.update(b"T" + str(here.stat().st_mtime_ns).encode())
        for name in dirnames:
            digest.update(b"D" + str((here / name).relative_to(folder)).encode())
        for name in sorted(filenames):
            path = here / name
            digest.update(b"F" + str(path.relative_to(folder)).encode())
            if times:
                digest.update(b"T" + str(path.lstat().st_mtime_ns).encode())
            if path.is_file():
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


#: What the loading side of an exported model needs, said where loading fails without it.
LOADING_NEEDS = ("This model was exported with the tlcourse course: it prepares images with tlcourse's "
                 "loader (images.load_image). Where you load it, run `pip install tlcourse` (it brings "
                 "fastai and timm too), then call fastai's load_learner again.")


class _Call:
    """Pickled as the call ``func(*args)``: unpickling runs it (stdlib functions only)."""

    def __init__(self, func, args: tuple):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _GuardedPickle:
    """A ``pickle_module`` for ``torch.save`` that stores each class and function of tlcourse
    as an import that, where tlcourse is missing, raises ``KeyError(LOADING_NEEDS)``."""

    class Pickler(pickle.Pickler):
        def reducer_override(self, obj):
            # fastai's load_learner turns a missing module into a bare UnboundLocalError; a
            # KeyError passes through with its message.  Only stdlib functions run: without
            # tlcourse, find_spec is None, so the module's name falls back to the message,
            # which is no key of the one-entry dict.
            module = getattr(obj, "__module__", None) or ""
            if not isinstance(obj, (type, types.FunctionType)) or module.split(".")[0] != "tlcourse":
                return NotImplemented
            try:  # only what pickle would store by name
                if operator.attrgetter(obj.__qualname__)(sys.modules[module]) is not obj:
                    return NotImplemented
            except (KeyError, AttributeError):
                return NotImplemented
            name = _Call(getattr, (_Call(importlib.util.find_spec, ("tlcourse",)), "name", LOADING_NEEDS))
            module_name = _Call(operator.getitem, ({"tlcourse": module}, name))
            imported = _Call(importlib.import_module, (module_name,))
            return operator.attrgetter(obj.__qualname__), (imported,)

    Unpickler, load = pickle.Unpickler, staticmethod(pickle.load)


def export(learn, fname: str | Path = "export.pkl") -> Path:
    """``learn.export(fname)`` (relative to ``learn.path``, as in fastai) that ``load_learner`` loads
    wherever tlcourse is installed and elsewhere stops with ``KeyError(LOADING_NEEDS)``, which
    says what to install, instead of fastai's bare ``UnboundLocalError``."""
    path = Path(learn.path) / fname
    path.parent.mkdir(parents=True, exist_ok=True)
    learn.export(path, pickle_module=_GuardedPickle)
    return path


def make_demo_folder(root: str | Path, per_class: int = 24, seed: int = 0) -> Path:
    """A folder of the course's pet photos (``cat/``: ``per_class``, ``dog/`` a third as many),
    salted with every kind of bad file and folder the audit reports, for lesson 06; rebuilt
    from scratch each call."""
    root = Path(root)
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    photos = sorted(pets_dir().glob("*.jpg"))
    cats = [p for p in photos if p.name[0].isupper()]  # cat breeds are capitalised
    dogs = [p for p in photos if p.name[0].islower()]
    cats, dogs = ([ps[i] for i in rng.permutation(len(ps))] for ps in (cats, dogs))
    n_dogs = max(per_class // 3, 2)
    for name in ("cat", "dog", "hamster", "test", "models"):  # hamster/ is an empty class folder
        (root / name).mkdir(parents=True)
    for label, chosen in (("cat", cats[:per_class]), ("dog", dogs[:n_dogs])):
        for src in chosen:
            shutil.copyfile(src, root / label / src.name)
    cats, dogs = cats[per_class:], dogs[n_dogs:]  # the spare photos

    for src in (cats[0], dogs[0]):  # unlabelled photos kept aside: not a class
        shutil.copyfile(src, root / "test" / f"unknown_{src.name}")
    (root / "models" / "stage1.pth").write_bytes(b"PK\x03\x04" + bytes(60))  # learn.save()'s: not a class

    whole = cats[1].read_bytes()
    (root / "cat" / "cut_off.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "notes.jpg").write_text("remember to take more photos of the dogs\n")
    heic = bytes(rng.integers(0, 256, 200, dtype=np.uint8))  # an iPhone photo's header, random pixels
    (root / "cat" / "IMG_0042.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + heic)
    grey = np.asarray(load_image(cats[2]).convert("L"), dtype=np.float32) / 255
    grey[5, 5] = np.nan
    Image.fromarray(grey, mode="F").save(root / "cat" / "scan_float.tif")
    load_image(dogs[1]).save(root / "dog" / "really_a_png.jpg", format="PNG")
    load_image(cats[3]).convert("L").save(root / "cat" / "grayscale.png")
    transparent = load_image(dogs[2]).convert("RGBA")
    transparent.putalpha(Image.new("L", transparent.size, 160))
    transparent.save(root / "dog" / "transparent.png")
    load_image(cats[4]).convert("P", palette=Image.ADAPTIVE, colors=32).save(root / "cat" / "palette.png")
    load_image(cats[5]).convert("CMYK").save(root / "cat" / "print_cmyk.jpg", quality=90)
    sixteen = np.asarray(load_image(dogs[3]).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(sixteen).save(root / "dog" / "scan_16bit.png")
    load_image(cats[6]).resize((20, 20)).save(root / "cat" / "thumbnail.jpg", quality=90)
    first_cat = sorted((root / "cat").glob("[A-Z]*.jpg"))[0]
    shutil.copyfile(first_cat, root / "dog" / first_cat.name)  # the same photo in both classes
    first_dog = sorted((root / "dog").glob("[a-z]*_*.jpg"))[0]
    shutil.copyfile(first_dog, root / "dog" / f"{first_dog.stem} copy.jpg")
    load_image(cats[7]).save(root / "cat" / "chat été 7.jpg", quality=90)
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(32))
    (root / "cat" / f"._{first_cat.name}").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    (root / "README.txt").write_text("my pets, sorted into cat/ and dog/\n")
    return root
