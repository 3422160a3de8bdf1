"""Audit a folder of images before training on it (lesson 06), and load what is usable.

Real folders are messy: photos that stop half-way, files that are not images at
all, a PNG saved with a ``.jpg`` name, grayscale scans next to colour photos,
``.DS_Store`` files, the same picture filed under two classes.  fastai would
either stop with a long traceback in the middle of an epoch or, worse, train
on them silently.  :func:`audit` looks at every file once, before any training,
and returns an :class:`Audit`: the usable images as a DataFrame plus one
readable report of everything it found.

Two promises:

* the user's files are only ever *read*: nothing is converted, renamed, moved
  or deleted.  Unusual colour modes are converted to RGB in memory each time
  an image is loaded (``images.load_image``, the course's one loader);
* files that cannot be used are left out of training and listed, never
  dropped silently.

Input is either a folder with one subfolder per class (``photos/cats/*.jpg``,
``photos/dogs/*.jpg``; fastai's ``train/`` + ``valid/`` layout is recognised
too, next to a ``test/`` or ``models/`` folder) or a CSV with a column of file
names and a column of labels.
"""

from __future__ import annotations

import hashlib
import html
import io
import os
import textwrap
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from fastai.vision.all import DataBlock, DataLoaders
from PIL import Image

from tlcourse.data import batch_size, datablock, pets_dir
from tlcourse.data.images import load_image, not_finite, strict_decoding, truncation_hint
from tlcourse.settings import Settings


#: Extensions of image files and the Pillow formats their content may have.
IMAGE_EXTENSIONS: dict[str, tuple[str, ...]] = {
    ".jpg": ("JPEG", "MPO"), ".jpeg": ("JPEG", "MPO"), ".jpe": ("JPEG", "MPO"),
    ".jfif": ("JPEG", "MPO"), ".png": ("PNG",), ".gif": ("GIF",), ".bmp": ("BMP",),
    ".tif": ("TIFF",), ".tiff": ("TIFF",), ".webp": ("WEBP",), ".ppm": ("PPM",),
    ".pgm": ("PPM",), ".pbm": ("PPM",), ".pnm": ("PPM",), ".ico": ("ICO",),
    ".heic": ("HEIF",), ".heif": ("HEIF",), ".avif": ("AVIF",), ".jp2": ("JPEG2000",),
}
#: Files that operating systems and tools leave in folders.
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", "icon\r", "ehthumbs.db"})
#: Folder names of fastai's ``train/valid`` layout, and which split each one is.
SPLIT_FOLDERS = {"train": False, "valid": True, "val": True, "validation": True, "test": None}
#: What each colour mode is, in words, for the report.
MODE_NAMES = {
    "1": "1-bit black and white", "L": "grayscale", "LA": "grayscale with transparency",
    "P": "palette of indexed colours", "PA": "palette with transparency",
    "RGBA": "colour with transparency", "RGBa": "colour with transparency",
    "CMYK": "print colour space", "YCbCr": "video colour space", "LAB": "Lab colour space",
    "HSV": "hue, saturation, value",
    "I": "32-bit integer", "F": "32-bit float", "I;16": "16-bit grayscale",
    "I;16L": "16-bit grayscale", "I;16B": "16-bit grayscale", "I;16N": "16-bit grayscale",
}

LEFT_OUT, WARNING, IGNORED, FATAL = "left out", "warning", "ignored", "fatal"


@dataclass(frozen=True)
class Kind:
    """One kind of problem: its line in the report and what the audit does about it."""

    title: str
    action: str
    severity: str


KINDS: dict[str, Kind] = {
    "no_images": Kind("no usable images", "nothing to train on", FATAL),
    "single_class": Kind("only one class", "a classifier needs at least two classes", FATAL),
    "unreadable": Kind("cannot be opened", "left out of training", LEFT_OUT),
    "needs_plugin": Kind("photo format Pillow cannot read without a plugin",
                         "left out until the plugin is installed or the photo exported as JPEG",
                         LEFT_OUT),
    "bad_pixels": Kind("pixels that are not numbers (NaN or infinite)",
                       "left out: loaded, the image would be black or wrong", LEFT_OUT),
    "duplicate_across": Kind("same file in more than one class",
                             "every copy left out: which label is right?", LEFT_OUT),
    "duplicate_within": Kind("same file twice in one class", "extra copies left out", LEFT_OUT),
    "missing": Kind("listed in the CSV but not found", "left out of training", LEFT_OUT),
    "no_label": Kind("listed in the CSV without a label", "left out of training", LEFT_OUT),
    "valid_only": Kind("class with validation images only",
                       "left out: the model never sees it in training", LEFT_OUT),
    "no_valid": Kind("no validation images",
                     "training works, but accuracy cannot be measured", WARNING),
    "random_valid": Kind("no validation split given",
                         "part of each class set aside at random for validation", WARNING),
    "imbalance": Kind("unbalanced classes",
                      "used; compare accuracy with always guessing the largest class", WARNING),
    "wrong_extension": Kind("wrong file extension",
                            "used: Pillow reads the content, whatever the name says", WARNING),
    "mode": Kind("unusual colour mode",
                 "converted to RGB in memory when loaded; the file is not changed", WARNING),
    "small": Kind("very small image", "used, but enlarged: it will look blurry", WARNING),
    "large": Kind("very large image", "used, but slow to load: consider a resized copy", WARNING),
    "few_images": Kind("class with few images", "used, but the model may learn it poorly", WARNING),
    "odd_name": Kind("name with spaces or non-ASCII characters",
                     "used; some other tools stumble on such names", WARNING),
    "hidden": Kind("hidden or system file", "ignored", IGNORED),
    "not_image": Kind("not an image file", "ignored", IGNORED),
    "not_a_class": Kind("folder that is not a class", "ignored: nothing in it is trained on", IGNORED),
    "outside_class": Kind("file outside any class folder", "ignored", IGNORED),
    "empty_class": Kind("empty class folder", "ignored", IGNORED),
}
SECTIONS = ((FATAL, "✗✗ Cannot train"), (LEFT_OUT, "✗ Left out of training"),
            (WARNING, "! Used, but worth a look"), (IGNORED, "- Ignored"))


class FolderError(ValueError):
    """A folder (or CSV) that cannot be trained on; the message says why and what to do.

    ``result`` holds the full :class:`Audit` when the check got that far.
    """

    def __init__(self, message: str, result: Audit | None = None):
        super().__init__(message)
        self.result = result

    def _render_traceback_(self) -> list[str]:
        # IPython calls this instead of printing a traceback: the learner sees the message
        # and, when the check got that far, the whole report it refers to.
        lines = [f"{type(self).__name__}: {self}"]
        if self.result is not None:
            lines += ["", "The full report:", *self.result.summary().splitlines()]
        return lines


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
    """What :func:`audit` found: the usable images and every issue, ready to print.

    ``items`` has one row per usable image: ``fname`` (relative to ``root``),
    ``label`` and ``is_valid``; ``items.attrs['path']`` is ``root``, as in
    :func:`tlcourse.data.items`.  ``print(result)`` (or just ``result`` as the
    last line of a notebook cell) shows the report.
    """

    source: Path
    root: Path
    items: pd.DataFrame
    issues: list[Issue]
    n_files: int
    params: dict = field(default_factory=dict)
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
        rows = [dict(kind=i.kind, problem=i.title, file=i.path, detail=i.detail,
                     action=KINDS[i.kind].action) for i in self.issues]
        return pd.DataFrame(rows, columns=["kind", "problem", "file", "detail", "action"])

    # --- the report ------------------------------------------------------------------

    def _counts_line(self) -> str:
        n_valid = int(self.items.is_valid.sum())
        n_ignored = len({i.path for i in self.issues if i.severity == IGNORED and i.path})
        return (f"{len(self.items)} images will be used ({len(self.items) - n_valid} training, "
                f"{n_valid} validation); {len(self.left_out)} left out; {n_ignored} ignored.")

    def _grouped(self) -> list[tuple[str, list[tuple[str, list[Issue]]]]]:
        """Issues grouped by section, then by kind, in the order of ``SECTIONS`` and ``KINDS``."""
        out = []
        for severity, heading in SECTIONS:
            kinds = [(k, self.by_kind(k)) for k, kind in KINDS.items() if kind.severity == severity]
            kinds = [(k, found) for k, found in kinds if found]
            if kinds:
                out.append((heading, kinds))
        return out

    def summary(self, max_listed: int | None = None) -> str:
        """The report as plain text: one block per kind of problem, up to ``max_listed`` files each."""
        limit = self.max_listed if max_listed is None else max_listed
        what = "CSV" if self.source.suffix.lower() == ".csv" else "folder"
        lines = [f"Checked {what} {self.source}: {self.n_files} files, {len(self.classes)} classes.",
                 self._counts_line()]
        if self.classes:
            counts = ", ".join(f"{k} {v}" for k, v in self.classes.items())
            lines += textwrap.wrap(f"Usable images per class: {counts}", width=100,
                                   subsequent_indent="  ")
        if not self.issues:
            lines.append("No problems found.")
        for heading, kinds in self._grouped():
            lines += ["", heading]
            for kind, found in kinds:
                lines.append(f"  {KINDS[kind].title} ({len(found)}): {KINDS[kind].action}")
                for issue in found[:limit]:
                    text = f"{issue.path}: {issue.detail}" if issue.path else issue.detail
                    lines.append(f"    {text}")
                if len(found) > limit:
                    lines.append(f"    ... and {len(found) - limit} more (see .issues_df())")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        esc = html.escape
        colours = {FATAL: "#b00020", LEFT_OUT: "#b00020", WARNING: "#9a6700", IGNORED: "#57606a"}
        what = "CSV" if self.source.suffix.lower() == ".csv" else "folder"
        parts = [f"<div><p><b>Checked {what}</b> <code>{esc(str(self.source))}</code>: "
                 f"{self.n_files} files, {len(self.classes)} classes.<br>{esc(self._counts_line())}"]
        if self.classes:
            counts = ", ".join(f"{esc(k)}&nbsp;{v}" for k, v in self.classes.items())
            parts.append(f"<br>Usable images per class: {counts}")
        parts.append("</p>")
        if not self.issues:
            parts.append("<p>No problems found.</p>")
        for heading, kinds in self._grouped():
            severity = KINDS[kinds[0][0]].severity
            style = f"margin-bottom:0;color:{colours[severity]}"
            parts.append(f"<p style='{style}'><b>{esc(heading)}</b></p><ul>")
            for kind, found in kinds:
                files = "".join(f"<li><code>{esc(i.path)}</code> {esc(i.detail)}</li>" if i.path
                                else f"<li>{esc(i.detail)}</li>" for i in found[:self.max_listed])
                extra = len(found) - self.max_listed
                more = f"<li>... and {extra} more (see <code>.issues_df()</code>)</li>" if extra > 0 else ""
                parts.append(f"<li><b>{esc(KINDS[kind].title)}</b> ({len(found)}): "
                             f"{esc(KINDS[kind].action)}<ul>{files}{more}</ul></li>")
            parts.append("</ul>")
        return "".join(parts) + "</div>"

    def baseline(self) -> tuple[str, float]:
        """The majority baseline: the largest training class, and the share of validation
        images it is (what always guessing that class would score).

        Accuracy has to beat this, not ``1 / number of classes``: with 60 cats and 12 dogs,
        always answering "cat" is right 83 % of the time.  Without validation images the
        share is taken over every usable image.
        """
        train = self.items[~self.items.is_valid]
        if train.empty:
            return "", 0.0
        counts = train.label.value_counts()
        label = sorted(counts[counts == counts.max()].index)[0]
        target = self.items[self.items.is_valid]
        target = target if len(target) else self.items
        return str(label), float((target.label == label).mean())

    # --- training ---------------------------------------------------------------------

    def raise_if_unusable(self) -> None:
        """Raise :class:`FolderError` with the reason when there is nothing to train on."""
        fatal = [i for i in self.issues if i.severity == FATAL]
        if fatal:
            raise FolderError(fatal[0].detail, result=self)

    def datablock(self, size: int, augment: bool = False) -> DataBlock:
        """The fastai ``DataBlock`` that :meth:`dataloaders` uses for ``result.items``: the
        course's one (``data.datablock``), its file names joined to ``root`` exactly as the
        audit joined them."""
        return datablock(self.root, size, augment)

    def dataloaders(self, settings: Settings, size: int | None = None, bs: int | None = None,
                    augment: bool = False, path: str | Path | None = None, **kwargs) -> DataLoaders:
        """fastai ``DataLoaders`` over the usable images only, loaded as RGB by ``images.load_image``.

        ``size`` and ``bs`` default to the mode's settings; ``bs`` shrinks to half the
        training images when there are fewer (at least two steps an epoch), never below 2.  ``path`` is where fastai will save
        models and exports (``Learner.path``); it defaults to a folder in the course
        cache so that nothing is ever written into the user's folder.
        """
        self.raise_if_unusable()
        s = settings
        size, bs = size or s.image_size, bs or s.batch_size
        n_train = int((~self.items.is_valid).sum())
        if bs < 2:
            raise ValueError(f"bs={bs} cannot train this network: its BatchNorm layers normalise "
                             "each batch with the batch's own mean and spread, which needs at least "
                             "2 images a batch. Use bs=2 or more (8 to 64 is usual).")
        if n_train < 2:
            raise FolderError(f"Only {n_train} training image{'s' * (n_train != 1)} in {self.source}: "
                              "a batch needs at least 2 (BatchNorm). Add images to each class.",
                              result=self)
        out = Path(path) if path is not None else s.cache_dir / "own_data"
        out.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("num_workers", s.num_workers)
        kwargs.setdefault("pin_memory", s.pin_memory)
        kwargs.setdefault("device", s.device)
        return self.datablock(size, augment).dataloaders(
            self.items, path=out, bs=batch_size(n_train, s, bs), **kwargs)


# --- looking at one file ------------------------------------------------------------------

@dataclass
class _Look:
    """What reading one file revealed."""

    nbytes: int = 0
    digest: str = ""
    format: str | None = None
    mode: str | None = None
    size: tuple[int, int] | None = None
    error: str | None = None
    plugin: str | None = None  # the file needs a Pillow plugin (what to do)
    bad_pixels: str | None = None  # decodes, but some pixels are NaN or infinite


#: Formats Pillow reads only with a plugin: ISO-BMFF brands, signature, and what to do.
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
#: Camera RAW files: Pillow cannot develop them.
RAW_EXTENSIONS = {".cr2", ".cr3", ".nef", ".arw", ".dng", ".raf", ".orf", ".rw2", ".srw", ".pef"}


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


def _look(path: Path) -> _Look:
    """Read one file (only read it): hash its bytes and decode it fully with Pillow.

    Decoding is strict (see :func:`strict_decoding`): a file that stops early is
    reported even when ``ImageFile.LOAD_TRUNCATED_IMAGES`` is set.
    """
    try:
        data = path.read_bytes()
    except OSError as err:  # no permission, a file that vanished, a broken disk
        return _Look(error=f"could not be read ({err.strerror or type(err).__name__})")
    look = _Look(nbytes=len(data), digest=hashlib.sha1(data).hexdigest())
    if not data:
        look.error = "zero bytes (an empty file)"
        return look
    try:
        with strict_decoding(), Image.open(io.BytesIO(data)) as im:
            look.format, look.mode, look.size = im.format, im.mode, im.size
            im.load()  # decoding everything is what finds truncated files
            if im.mode == "F" or im.mode.startswith("F;"):
                bad = not_finite(np.asarray(im))
                if bad:
                    look.bad_pixels = (f"{bad} of {im.size[0] * im.size[1]} pixels are NaN or "
                                       "infinite: loaded, the image would be black. Fix those "
                                       "pixels in the program that made it, or export it again")
    except Image.DecompressionBombError:
        look.error = f"too large to open safely ({look.size[0]}x{look.size[1]} pixels)" if look.size \
            else "too large to open safely"
    except Image.UnidentifiedImageError:
        plugin = _plugin_format(data)
        if plugin:
            look.plugin = NEEDS_PLUGIN[plugin]
            look.error = look.plugin
        else:
            kind = "text" if _looks_like_text(data) else "data Pillow does not recognise"
            look.error = f"not an image (the file holds {kind})"
    except Exception as err:  # truncated or damaged data: Pillow raises several types
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        look.error = (f"truncated: the file stops before the image ends{truncation_hint()}; "
                      "use a complete copy" if "truncated" in message.lower()
                      else f"damaged ({message})")
    return look


def _looks_like_text(data: bytes) -> bool:
    head = data[:512]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _odd_name(rel: str) -> str | None:
    """Why a relative path may trouble other tools (spaces, non-ASCII), or None."""
    reasons = []
    if any(ch.isspace() for ch in rel):
        reasons.append("spaces")
    if not rel.isascii():
        odd = "".join(sorted({ch for ch in rel if not ch.isascii()}))
        reasons.append(f"non-ASCII characters ({odd})")
    return " and ".join(reasons) if reasons else None


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in SYSTEM_FILES


# --- gathering candidates ---------------------------------------------------------------------

@dataclass
class _Candidate:
    rel: str
    label: str
    is_valid: bool | None


def _walk_class(folder: Path, root: Path, label: str, is_valid: bool | None,
                issues: list[Issue]) -> list[_Candidate]:
    """Every non-hidden file under one class folder (subfolders included), reporting hidden ones."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        for d in sorted(dirnames):
            if _is_hidden(d):
                issues.append(Issue("hidden", (here / d).relative_to(root).as_posix() + "/",
                                    "hidden folder"))
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for name in sorted(filenames):
            rel = (here / name).relative_to(root).as_posix()
            if _is_hidden(name):
                detail = "macOS resource file" if name.startswith("._") else "hidden or system file"
                issues.append(Issue("hidden", rel, detail))
            elif (here / name).is_file():
                found.append(_Candidate(rel, label, is_valid))
            elif (here / name).is_symlink():
                issues.append(Issue("unreadable", rel, "a link to a file that does not exist"))
    return found


def _subfolders(folder: Path) -> list[Path]:
    """The visible subfolders of ``folder``, sorted (none when it cannot be listed)."""
    try:
        return sorted((p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p.name)),
                      key=lambda p: p.name)
    except OSError:
        return []


def _has_images(folder: Path) -> bool:
    """True when some file under ``folder`` has an image extension (hidden ones aside)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        if any(Path(f).suffix.lower() in IMAGE_EXTENSIONS and not _is_hidden(f) for f in filenames):
            return True
    return False


def _not_a_class(folder: Path, root: Path) -> str | None:
    """Why a top-level folder is no class (fastai's models/, a folder without images), or None."""
    if _has_images(folder):
        return None
    files = [Path(f) for _, _, fs in os.walk(folder) for f in fs if not _is_hidden(f)]
    if not files:
        return None  # an empty class folder: reported as such
    kinds = ", ".join(sorted({f.suffix.lower() or "no extension" for f in files})[:4])
    if folder.name.lower() == "models":
        return (f"fastai's folder of saved models ({kinds} files; learn.save writes it), not a class")
    return f"holds no image files ({len(files)} files: {kinds}), so it is not a class"


def _from_folder(root: Path, issues: list[Issue]) -> list[_Candidate]:
    """Candidates from a folder with one subfolder per class, or fastai's ``train/`` +
    ``valid/`` layout (each holding one subfolder per class).

    Folders named like a split are never taken for classes: a ``test/`` folder, a
    ``train/`` or ``valid/`` folder holding images directly, and folders without images
    (fastai's ``models/``) are reported and ignored.
    """
    entries = sorted(root.iterdir(), key=lambda p: p.name)
    dirs = []
    for entry in entries:
        if _is_hidden(entry.name):
            issues.append(Issue("hidden", entry.name + ("/" if entry.is_dir() else ""),
                                "hidden folder" if entry.is_dir() else "hidden or system file"))
        elif entry.is_dir():
            dirs.append(entry)
        else:
            hint = ("a CSV: pass its path to audit() to use its labels"
                    if entry.suffix.lower() == ".csv" else "not inside a class folder")
            issues.append(Issue("outside_class", entry.name, hint))
    split_of = {d: SPLIT_FOLDERS.get(d.name.lower(), "class") for d in dirs}
    labelled = [d for d in dirs if split_of[d] in (False, True) and _subfolders(d)]
    split_layout = any(split_of[d] is False for d in labelled)  # a train/ with class folders
    candidates: list[_Candidate] = []
    for d in dirs:
        split, rel = split_of[d], d.name + "/"
        if split is None:
            issues.append(Issue("not_a_class", rel, "a test split (images kept aside, not labelled "
                                "by folder here): not used for training or validation"))
            continue
        if split == "class":
            why = _not_a_class(d, root)
            if why:
                issues.append(Issue("not_a_class", rel, why))
            elif split_layout:
                issues.append(Issue("not_a_class", rel, "in the train/ + valid/ layout only "
                                    "those folders hold classes; this one is not read"))
            else:
                found = _walk_class(d, root, d.name, None, issues)
                if not found:
                    issues.append(Issue("empty_class", rel, "no files in this folder"))
                candidates += found
            continue
        if d not in labelled:  # train/ or valid/ without class subfolders
            issues.append(Issue("not_a_class", rel, f"a {d.name}/ folder holding images directly: "
                                f"it is not a class. In fastai's layout {d.name}/ holds one "
                                f"subfolder per class ({d.name}/cats/, {d.name}/dogs/)"))
            continue
        if not split_layout:  # valid/<class>/ without train/: its images are kept for validation
            issues.append(Issue("not_a_class", rel, "a validation folder with no train/ folder "
                                "next to it: not read. Add train/<class>/ folders"))
            continue
        for entry in sorted(d.iterdir(), key=lambda p: p.name):
            rel = f"{d.name}/{entry.name}"
            if _is_hidden(entry.name):
                issues.append(Issue("hidden", rel, "hidden or system file"))
            elif entry.is_dir():
                found = _walk_class(entry, root, entry.name, split, issues)
                if not found:
                    issues.append(Issue("empty_class", rel + "/", "no files in this folder"))
                candidates += found
            else:
                issues.append(Issue("outside_class", rel, "not inside a class folder"))
    if split_layout and not any(split_of[d] is True for d in labelled):
        for cand in candidates:
            cand.is_valid = None  # no valid/ folder: the check sets part of train/ aside
    return candidates


FNAME_COLUMNS = ("fname", "filename", "file", "file_name", "path", "image", "name")
LABEL_COLUMNS = ("label", "class", "category", "target", "y")


def _pick_column(df: pd.DataFrame, given: str | None, names: tuple[str, ...], position: int) -> str:
    if given is not None:
        if given not in df.columns:
            raise FolderError(f"The CSV has no column {given!r}; its columns are {list(df.columns)}.")
        return given
    lower = {str(c).lower(): c for c in df.columns}
    for name in names:
        if name in lower:
            return lower[name]
    if len(df.columns) < 2:
        raise FolderError("The CSV needs two columns, file names and labels; this one has "
                          f"{list(df.columns)}. Name them 'fname' and 'label'.")
    return df.columns[position]


def _as_bool(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "valid", "validation", "val")


def _csv_name(rel: str, root: Path) -> str:
    """A CSV's file name as the check and training both use it (``root / name``).

    Absolute names (and ``~/...``) inside ``root`` become relative; others stay
    absolute, which ``root / name`` keeps as they are.  Windows separators are
    accepted on other systems when the file exists that way.
    """
    if "\\" in rel and os.sep == "/" and not (root / rel).exists():
        rel = rel.replace("\\", "/")
    path = Path(rel).expanduser()
    if not path.is_absolute():
        return path.as_posix()
    for base in (root, root.resolve()):
        try:
            return path.relative_to(base).as_posix()
        except ValueError:
            pass
    return str(path)


def _from_csv(csv: Path, root: Path, issues: list[Issue], fname_col: str | None,
              label_col: str | None) -> list[_Candidate]:
    """Candidates from a CSV of file names (relative to ``root``) and labels."""
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except Exception as err:
        raise FolderError(f"{csv} could not be read as a CSV ({err}).") from None
    fcol = _pick_column(df, fname_col, FNAME_COLUMNS, 0)
    lcol = _pick_column(df, label_col, LABEL_COLUMNS, 1)
    vcol = next((c for c in df.columns if str(c).lower() in ("is_valid", "valid", "split")), None)
    candidates = []
    for row in df.itertuples(index=False):
        values = dict(zip(df.columns, row))
        rel, label = str(values[fcol]).strip(), str(values[lcol]).strip()
        if not rel:
            continue
        if not label:
            issues.append(Issue("no_label", rel, "the label cell is empty"))
            continue
        if _is_hidden(Path(rel).name):
            issues.append(Issue("hidden", rel, "hidden or system file"))
            continue
        rel = _csv_name(rel, root)
        if not (root / rel).is_file():  # the same join as training's ImagePath
            where = "" if Path(rel).is_absolute() else f" under {root}"
            issues.append(Issue("missing", rel, f"no such file{where}"))
            continue
        is_valid = _as_bool(values[vcol]) if vcol is not None else None
        candidates.append(_Candidate(rel, label, is_valid))
    return candidates


# --- the check itself ---------------------------------------------------------------------------

def _split(df: pd.DataFrame, valid_pct: float, seed: int) -> pd.Series:
    """A per-class random split that keeps at least one training image in every class."""
    rng = np.random.default_rng(seed)
    is_valid = pd.Series(False, index=df.index)
    for _, group in df.groupby("label", sort=True):
        n = len(group)
        n_valid = min(max(round(n * valid_pct), 1), n - 1) if n >= 2 else 0
        chosen = rng.permutation(group.index.to_numpy())[:n_valid]
        is_valid[chosen] = True
    return is_valid


def _inspect(root: Path, candidates: list[_Candidate], progress: bool | None) -> list[_Look]:
    """Read every candidate once, in a few threads (Pillow releases the GIL while decoding)."""
    from tqdm.auto import tqdm

    show = len(candidates) >= 500 if progress is None else progress
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(_look, (root / c.rel for c in candidates))
        return list(tqdm(results, total=len(candidates), desc="checking images", unit="file",
                         disable=not show))


def audit(source: str | Path, root: str | Path | None = None, *, min_side: int = 32,
          max_side: int = 6000, min_per_class: int = 10, valid_pct: float = 0.2, seed: int = 0,
          fname_col: str | None = None, label_col: str | None = None, max_listed: int = 8,
          max_ratio: float = 2.0, progress: bool | None = None,
          raise_on_error: bool = True) -> Audit:
    """Check a folder of images (or a CSV of file names and labels) before training on it.

    ``source`` is a folder with one subfolder per class, or a ``.csv`` file whose
    file names are relative to ``root`` (default: the CSV's own folder).  Images
    whose shorter side is under ``min_side`` or whose longer side is over
    ``max_side`` pixels, and classes with fewer than ``min_per_class`` usable
    images, are reported, and so are classes more than ``max_ratio`` times larger
    than the smallest (with the real majority baseline).  When the files carry no
    split (or no validation image), ``valid_pct`` of each class (chosen with
    ``seed``) becomes the validation set.

    Every file is only read.  Raises :class:`FolderError` when there is nothing to
    train on (unless ``raise_on_error=False``; then ``result.ok`` is False).
    """
    source = Path(source).expanduser()
    issues: list[Issue] = []
    if source.is_file() and source.suffix.lower() == ".csv":
        base = Path(root).expanduser() if root is not None else source.parent
        if not base.is_dir():
            raise FolderError(f"{base} is not a folder: pass root= the folder the CSV's file "
                              "names are relative to.")
        candidates = _from_csv(source, base, issues, fname_col, label_col)
    elif source.is_dir():
        base = source
        candidates = _from_folder(source, issues)
    else:
        what = "does not exist" if not source.exists() else "is neither a folder nor a .csv file"
        raise FolderError(f"{source} {what}. Point the check at a folder with one subfolder per "
                          "class (photos/cats/, photos/dogs/) or at a CSV of file names and labels.")
    looks = _inspect(base, candidates, progress)

    usable: list[tuple[_Candidate, _Look]] = []
    for cand, look in zip(candidates, looks):
        ext = Path(cand.rel).suffix.lower()
        if look.plugin is not None:
            issues.append(Issue("needs_plugin", cand.rel, look.plugin))
            continue
        if look.error is not None:
            if ext in IMAGE_EXTENSIONS or not ext:
                issues.append(Issue("unreadable", cand.rel, look.error))
            elif ext in RAW_EXTENSIONS:
                issues.append(Issue("not_image", cand.rel, f"a camera RAW file ({ext}): Pillow "
                                    "cannot develop it; export it as JPEG to use it"))
            else:
                issues.append(Issue("not_image", cand.rel, f"a {ext} file"))
            continue
        if look.bad_pixels is not None:
            issues.append(Issue("bad_pixels", cand.rel, look.bad_pixels))
            continue
        usable.append((cand, look))

    # Exact copies: across classes the label is ambiguous; within a class one copy is enough.
    by_digest: dict[str, list[tuple[_Candidate, _Look]]] = defaultdict(list)
    for pair in usable:
        by_digest[pair[1].digest].append(pair)
    dropped: set[int] = set()
    for group in by_digest.values():
        if len(group) < 2:
            continue
        group.sort(key=lambda pair: (len(pair[0].rel), pair[0].rel))  # keep the shortest name
        labels = {c.label for c, _ in group}
        if len(labels) > 1:
            for c, _ in group:
                others = ", ".join(f"{o.rel} ({o.label})" for o, _ in group if o is not c)
                issues.append(Issue("duplicate_across", c.rel,
                                    f"labelled {c.label}; same content as {others}"))
                dropped.add(id(c))
        else:
            for c, _ in group[1:]:
                issues.append(Issue("duplicate_within", c.rel, f"same content as {group[0][0].rel}"))
                dropped.add(id(c))
    usable = [(c, lk) for c, lk in usable if id(c) not in dropped]

    for cand, look in usable:
        ext = Path(cand.rel).suffix.lower()
        allowed = IMAGE_EXTENSIONS.get(ext, ())
        if look.format not in allowed:
            named = f"named {ext}" if ext else "has no extension"
            issues.append(Issue("wrong_extension", cand.rel, f"{named} but is a {look.format} file"))
        if look.mode != "RGB":
            name = MODE_NAMES.get(look.mode, "unusual")
            issues.append(Issue("mode", cand.rel, f"mode {look.mode} ({name})"))
        w, h = look.size
        if min(w, h) < min_side:
            issues.append(Issue("small", cand.rel, f"{w}x{h} pixels (under {min_side} px)"))
        if max(w, h) > max_side:
            issues.append(Issue("large", cand.rel, f"{w}x{h} pixels (over {max_side} px)"))
        why = _odd_name(cand.rel)
        if why:
            issues.append(Issue("odd_name", cand.rel, why))

    items = pd.DataFrame({"fname": [c.rel for c, _ in usable], "label": [c.label for c, _ in usable],
                          "is_valid": [c.is_valid for c, _ in usable]}, dtype=object)
    items = _finish_split(items, issues, valid_pct, seed)
    for label, n in items.label.value_counts().sort_index().items():
        if n < min_per_class:
            issues.append(Issue("few_images", f"{label}/" if source.is_dir() else "",
                                f"class {label} has {n} usable image{'s' * (n != 1)} "
                                f"(fewer than {min_per_class})"))
    _check_balance(items, issues, max_ratio)
    n_files = len(candidates) + sum(1 for i in issues if i.kind in ("hidden", "outside_class"))
    result = Audit(source=source, root=base, items=items, issues=issues, n_files=n_files,
                         params=dict(min_side=min_side, max_side=max_side, min_per_class=min_per_class,
                                     valid_pct=valid_pct, seed=seed, max_ratio=max_ratio),
                         max_listed=max_listed)
    _add_fatal(result)
    if raise_on_error:
        result.raise_if_unusable()
    return result


def _finish_split(items: pd.DataFrame, issues: list[Issue], valid_pct: float, seed: int) -> pd.DataFrame:
    """Fill in ``is_valid`` (random per class unless the files carry a split); sort; drop unusable.

    A split that puts no image at all in validation is replaced by the random one (and
    reported): otherwise accuracy could not be measured.
    """
    pct = f"{valid_pct:.0%}"
    if items.empty:
        items["is_valid"] = items["is_valid"].astype(bool)
    elif items.is_valid.isna().all():
        items["is_valid"] = _split(items, valid_pct, seed)
        if items.fname.str.lower().str.startswith("train/").all():
            issues.append(Issue("random_valid", "", f"there is a train/ folder but no valid/ folder: "
                                f"{pct} of each class's images were set aside at random for "
                                "validation"))
    else:
        given = items.is_valid.fillna(False).astype(bool)
        if not given.any():
            items["is_valid"] = _split(items, valid_pct, seed)
            issues.append(Issue("random_valid", "", f"the split marks no image for validation: {pct} "
                                "of each class's images were set aside at random instead"))
        else:
            items["is_valid"] = given
            trained = set(items.label[~items.is_valid])
            orphans = items.is_valid & ~items.label.isin(trained)
            for rel, label in zip(items.fname[orphans], items.label[orphans]):
                issues.append(Issue("valid_only", rel, f"class {label} has no training images"))
            items = items[~orphans]
    items = items.astype({"fname": str, "label": str, "is_valid": bool})
    items = items.sort_values(["label", "fname"]).reset_index(drop=True)
    if len(items) and not items.is_valid.any() and items.label.nunique() >= 2:
        issues.append(Issue("no_valid", "", "no image could be set aside for validation (a class "
                            "needs at least 2 images to give one away): training works, but its "
                            "accuracy cannot be measured. Add images, or a valid/ folder"))
    return items


def _check_balance(items: pd.DataFrame, issues: list[Issue], max_ratio: float) -> None:
    """Report classes of very different sizes, with the accuracy of always guessing the largest."""
    counts = items.label.value_counts()
    if len(counts) < 2 or counts.min() * max_ratio > counts.max():
        return
    big, small = counts.idxmax(), counts.idxmin()
    share = counts.max() / counts.sum()
    issues.append(Issue("imbalance", "", f"{big} has {counts.max()} images, {small} only "
                        f"{counts.min()}: always answering {big} would already be right on "
                        f"{share:.0%} of them. Judge accuracy against that (result.baseline()), "
                        f"not against {1 / len(counts):.0%}; more images of the small classes "
                        "help most"))


def _add_fatal(result: Audit) -> None:
    """Add the one issue that makes training impossible, with what to do about it."""
    where = result.source
    n_classes = len(result.classes)
    if n_classes >= 2:
        return
    if n_classes == 0:
        loose = [i for i in result.issues if i.kind == "outside_class"
                 and Path(i.path).suffix.lower() in IMAGE_EXTENSIONS]
        flat_splits = [i.path for i in result.issues if i.kind == "not_a_class"
                       and i.path.rstrip("/").lower() in SPLIT_FOLDERS]
        if loose:
            detail = (f"{where} holds images directly, not in class subfolders. Sort them into one "
                      f"subfolder per class ({where}/cats/, {where}/dogs/, ...) or point at a CSV of "
                      "file names and labels.")
        elif flat_splits:
            detail = (f"{where} has {', '.join(flat_splits)} but no class subfolders in them. Put "
                      f"the images into one subfolder per class ({flat_splits[0]}cats/, "
                      f"{flat_splits[0]}dogs/, ...), or use one folder per class without splits.")
        else:
            bad = result.left_out
            shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
            why = f" ({len(bad)} files could not be used: {shown}; see the report)" if bad else ""
            detail = (f"No usable images found in {where}{why}. Put images in one subfolder per "
                      "class (photos/cats/*.jpg, photos/dogs/*.jpg) or give a CSV of file names and labels.")
        result.issues.insert(0, Issue("no_images", "", detail))
        return
    label, n = next(iter(result.classes.items()))
    inner = _subfolders(where / label) if where.is_dir() else []
    inner_with_images = [d for d in inner if _has_images(d)]
    if len(inner_with_images) >= 2:
        names = ", ".join(d.name + "/" for d in inner_with_images[:4])
        detail = (f"Only one class folder ({label}) in {where}, and its images sit in subfolders "
                  f"({names}): the folder was probably given one level too high. Point the check "
                  f"at {where / label} instead: folders.audit({str(where / label)!r}).")
    else:
        detail = (f"Only one class ({label}, {n} images) has usable images in {where}; a classifier "
                  "needs at least two. Add a subfolder of images for each other class "
                  f"(for example {where}/not_{label}/).")
    result.issues.insert(0, Issue("single_class", "", detail))


# --- helpers for the lesson and its tests ------------------------------------------------------

def fingerprint(folder: str | Path, times: bool = True) -> str:
    """One SHA-256 over every name, every byte and (with ``times``) every modification
    time under ``folder``, hidden files included.

    Equal before and after a step means the step changed nothing in the folder: no file
    or folder added, removed, renamed, rewritten or even touched.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        here = Path(dirpath)
        if times:
            digest.update(b"T" + str(here.stat().st_mtime_ns).encode())
        for name in sorted(dirnames):
            digest.update(b"D" + str((here / name).relative_to(folder)).encode())
        for name in sorted(filenames):
            path = here / name
            digest.update(b"F" + str(path.relative_to(folder)).encode())
            if times:
                digest.update(b"T" + str(path.lstat().st_mtime_ns).encode())
            if path.is_file():
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


# --- exporting a model trained on checked images -----------------------------------------------

#: What the loading side of an exported model needs, said where loading fails without it.
LOADING_NEEDS = ("This model was exported with the tlcourse course: it prepares images with "
                 "tlcourse's loader (images.load_image). Where you load it, run "
                 "`pip install tlcourse` (it brings fastai and timm too), then call "
                 "fastai's load_learner again.")


class _Call:
    """Pickled as the call ``func(*args)``: unpickling runs it (stdlib functions only)."""

    def __init__(self, func, args: tuple):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _guarded(obj):
    """A reduce value that imports ``obj`` from tlcourse, or raises ``KeyError(LOADING_NEEDS)``.

    fastai's ``load_learner`` turns a missing module into a bare ``UnboundLocalError``;
    a ``KeyError`` passes through it with the message intact.  Only stdlib functions run:
    ``find_spec('tlcourse')`` is None where tlcourse is not installed, so the lookup of
    the module's name falls back to the message, which is no key of the one-entry dict.
    """
    import importlib
    import importlib.util
    import operator

    name = _Call(getattr, (_Call(importlib.util.find_spec, ("tlcourse",)), "name", LOADING_NEEDS))
    module = _Call(importlib.import_module, (_Call(operator.getitem, ({"tlcourse": obj.__module__}, name)),))
    return operator.attrgetter(obj.__qualname__), (module,)


def _tlcourse_global(obj) -> bool:
    """True for a class or function of tlcourse that pickle would store by name."""
    import operator
    import sys
    import types

    if not isinstance(obj, (type, types.FunctionType)):
        return False
    module = getattr(obj, "__module__", None) or ""
    if module != "tlcourse" and not module.startswith("tlcourse."):
        return False
    try:
        return operator.attrgetter(obj.__qualname__)(sys.modules[module]) is obj
    except (KeyError, AttributeError):
        return False


class _GuardedPickle:
    """A ``pickle_module`` for ``torch.save`` whose references to tlcourse are guarded."""

    import pickle as _pickle

    class Pickler(_pickle.Pickler):
        def reducer_override(self, obj):
            return _guarded(obj) if _tlcourse_global(obj) else NotImplemented

    Unpickler = _pickle.Unpickler
    load = staticmethod(_pickle.load)


def export(learn, fname: str | Path = "export.pkl") -> Path:
    """``learn.export(fname)``, made so that loading it where tlcourse is missing says so.

    The file loads with fastai's ``load_learner`` wherever tlcourse is installed, and
    prepares images exactly as training did (``images.load_image``).  Without tlcourse,
    ``load_learner`` stops with ``KeyError`` and :data:`LOADING_NEEDS` (instead of
    fastai's ``UnboundLocalError``).  A relative ``fname`` is inside ``learn.path``, as
    with fastai; nothing is written anywhere else.
    """
    path = Path(learn.path) / fname
    path.parent.mkdir(parents=True, exist_ok=True)
    learn.export(path, pickle_module=_GuardedPickle)
    return path


# --- a demo folder for the lesson ---------------------------------------------------------------

DEMO_CLASSES = ("cat", "dog")


def make_demo_folder(root: str | Path, per_class: int = 24, seed: int = 0) -> Path:
    """A small folder of real photos salted with every kind of bad file, for lesson 06.

    Two classes of Oxford-IIIT Pet photos (the copies that ship with the course, see
    :func:`tlcourse.data.pets_dir`): ``cat/`` with ``per_class`` photos and ``dog/`` with a
    third as many (an unbalanced folder, as real ones are), an empty class folder, a
    ``test/`` folder of unlabelled photos and fastai's ``models/`` folder, and bad files:
    truncated, empty, text named ``.jpg``, an iPhone HEIC, a float TIFF with NaN pixels,
    a PNG named ``.jpg``, grayscale, transparent, palette, CMYK and 16-bit images, a tiny
    one, copies across and within classes, hidden files and awkward names.  Photos are
    copied byte for byte; the folder is rebuilt from scratch each call.
    """
    import shutil

    root = Path(root)
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    photos = sorted(pets_dir().glob("*.jpg"))
    cats = [p for p in photos if p.name[0].isupper()]  # cat breeds are capitalised
    dogs = [p for p in photos if p.name[0].islower()]
    cats = [cats[i] for i in rng.permutation(len(cats))]
    dogs = [dogs[i] for i in rng.permutation(len(dogs))]
    n_dogs = max(per_class // 3, 2)
    for label, chosen in (("cat", cats[:per_class]), ("dog", dogs[:n_dogs])):
        (root / label).mkdir(parents=True)
        for src in chosen:
            shutil.copyfile(src, root / label / src.name)
    spare_cats, spare_dogs = cats[per_class:], dogs[n_dogs:]

    def photo(src: Path) -> Image.Image:
        return load_image(src)

    (root / "hamster").mkdir()  # an empty class folder
    (root / "test").mkdir()  # unlabelled photos kept aside: not a class
    for src in (spare_cats[0], spare_dogs[0]):
        shutil.copyfile(src, root / "test" / f"unknown_{src.name}")
    (root / "models").mkdir()  # what learn.save() leaves in a data folder: not a class
    (root / "models" / "stage1.pth").write_bytes(b"PK\x03\x04" + bytes(60))

    whole = spare_cats[1].read_bytes()
    (root / "cat" / "cut_off.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "notes.jpg").write_text("remember to take more photos of the dogs\n")
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(rng.integers(0, 256, 200, dtype=np.uint8))
    (root / "cat" / "IMG_0042.HEIC").write_bytes(heic)
    grey = np.asarray(photo(spare_cats[2]).convert("L"), dtype=np.float32) / 255
    grey[5, 5] = np.nan
    Image.fromarray(grey, mode="F").save(root / "cat" / "scan_float.tif")
    photo(spare_dogs[1]).save(root / "dog" / "really_a_png.jpg", format="PNG")
    photo(spare_cats[3]).convert("L").save(root / "cat" / "grayscale.png")
    transparent = photo(spare_dogs[2]).convert("RGBA")
    transparent.putalpha(Image.new("L", transparent.size, 160))
    transparent.save(root / "dog" / "transparent.png")
    photo(spare_cats[4]).convert("P", palette=Image.ADAPTIVE, colors=32).save(root / "cat" / "palette.png")
    photo(spare_cats[5]).convert("CMYK").save(root / "cat" / "print_cmyk.jpg", quality=90)
    sixteen = np.asarray(photo(spare_dogs[3]).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(sixteen).save(root / "dog" / "scan_16bit.png")
    photo(spare_cats[6]).resize((20, 20)).save(root / "cat" / "thumbnail.jpg", quality=90)
    first_cat = sorted((root / "cat").glob("[A-Z]*.jpg"))[0]
    shutil.copyfile(first_cat, root / "dog" / first_cat.name)  # the same photo in both classes
    first_dog = sorted((root / "dog").glob("[a-z]*_*.jpg"))[0]
    shutil.copyfile(first_dog, root / "dog" / f"{first_dog.stem} copy.jpg")
    photo(spare_cats[7]).save(root / "cat" / "chat été 7.jpg", quality=90)
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(32))
    (root / "cat" / f"._{first_cat.name}").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    (root / "README.txt").write_text("my pets, sorted into cat/ and dog/\n")
    return root
