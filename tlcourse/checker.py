"""Check a folder of images before training on it, and load what is usable.

Real folders are messy: photos that stop half-way, files that are not images at
all, a PNG saved with a ``.jpg`` name, grayscale scans next to colour photos,
``.DS_Store`` files, the same picture filed under two classes.  fastai would
either stop with a long traceback in the middle of an epoch or, worse, train
on them silently.  :func:`check` looks at every file once, before any training,
and returns a :class:`CheckResult`: the usable images as a DataFrame plus one
readable report of everything it found.

Two promises:

* the user's files are only ever *read*: nothing is converted, renamed, moved
  or deleted.  Unusual colour modes are converted to RGB in memory each time
  an image is loaded (:func:`load_image`);
* files that cannot be used are left out of training and listed, never
  dropped silently.

Input is either a folder with one subfolder per class (``photos/cats/*.jpg``,
``photos/dogs/*.jpg``; fastai's ``train/`` + ``valid/`` layout is recognised
too) or a CSV with a column of file names and a column of labels.
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
from fastai.vision.all import (
    CategoryBlock,
    ColReader,
    ColSplitter,
    DataBlock,
    DataLoaders,
    ImageBlock,
    PILImage,
    Resize,
    aug_transforms,
)
from PIL import Image, ImageOps

from tlcourse.settings import Settings, get_settings

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
    """One kind of problem: its line in the report and what the checker does about it."""

    title: str
    action: str
    severity: str


KINDS: dict[str, Kind] = {
    "no_images": Kind("no usable images", "nothing to train on", FATAL),
    "single_class": Kind("only one class", "a classifier needs at least two classes", FATAL),
    "unreadable": Kind("cannot be opened", "left out of training", LEFT_OUT),
    "duplicate_across": Kind("same file in more than one class",
                             "every copy left out: which label is right?", LEFT_OUT),
    "duplicate_within": Kind("same file twice in one class", "extra copies left out", LEFT_OUT),
    "missing": Kind("listed in the CSV but not found", "left out of training", LEFT_OUT),
    "no_label": Kind("listed in the CSV without a label", "left out of training", LEFT_OUT),
    "valid_only": Kind("class with validation images only",
                       "left out: the model never sees it in training", LEFT_OUT),
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
    "outside_class": Kind("file outside any class folder", "ignored", IGNORED),
    "empty_class": Kind("empty class folder", "ignored", IGNORED),
}
SECTIONS = ((FATAL, "✗✗ Cannot train"), (LEFT_OUT, "✗ Left out of training"),
            (WARNING, "! Used, but worth a look"), (IGNORED, "- Ignored"))


class FolderError(ValueError):
    """A folder (or CSV) that cannot be trained on; the message says why and what to do.

    ``result`` holds the full :class:`CheckResult` when the check got that far.
    """

    def __init__(self, message: str, result: CheckResult | None = None):
        super().__init__(message)
        self.result = result

    def _render_traceback_(self) -> list[str]:
        # IPython calls this instead of printing a traceback: the learner sees one message.
        return [f"{type(self).__name__}: {self}"]


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
class CheckResult:
    """What :func:`check` found: the usable images and every issue, ready to print.

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
        """Every issue as a table: kind, problem, file, detail, what the checker did."""
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

    # --- training ---------------------------------------------------------------------

    def raise_if_unusable(self) -> None:
        """Raise :class:`FolderError` with the reason when there is nothing to train on."""
        fatal = [i for i in self.issues if i.severity == FATAL]
        if fatal:
            raise FolderError(fatal[0].detail, result=self)

    def dataloaders(self, size: int | None = None, bs: int | None = None, augment: bool = False,
                    path: str | Path | None = None, settings: Settings | None = None,
                    **kwargs) -> DataLoaders:
        """fastai ``DataLoaders`` over the usable images only, loaded as RGB by :func:`load_image`.

        ``size`` and ``bs`` default to the mode's settings.  ``path`` is where fastai
        will save models and exports (``Learner.path``); it defaults to a folder in the
        course cache so that nothing is ever written into the user's folder.
        """
        self.raise_if_unusable()
        s = settings or get_settings()
        size, bs = size or s.image_size, bs or s.batch_size
        out = Path(path) if path is not None else s.cache_dir / "own_data"
        out.mkdir(parents=True, exist_ok=True)
        block = DataBlock(
            blocks=(ImageBlock(cls=RGBImage), CategoryBlock),
            get_x=ColReader("fname", pref=f"{self.root}{os.sep}"), get_y=ColReader("label"),
            splitter=ColSplitter("is_valid"), item_tfms=Resize(size),
            batch_tfms=aug_transforms(size=size, min_scale=0.75) if augment else None)
        n_train = int((~self.items.is_valid).sum())
        kwargs.setdefault("num_workers", 0)
        kwargs.setdefault("device", s.device)
        return block.dataloaders(self.items, path=out, bs=max(1, min(bs, n_train)), **kwargs)


# --- loading images ---------------------------------------------------------------------

def to_rgb(im: Image.Image) -> Image.Image:
    """An RGB copy of ``im``, whatever its mode.

    Transparent pixels are put on white (not black), 16-bit and float images are
    stretched to 0-255 instead of being clipped to white, palettes are expanded.
    """
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr8 = ((arr - lo) / max(hi - lo, 1e-12) * 255).round().clip(0, 255).astype(np.uint8)
        return Image.fromarray(arr8).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im, mask=im.getchannel("A"))
        return background
    return im.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open an image file read-only, turn it upright (EXIF) and return it as RGB in memory."""
    with Image.open(path) as im:
        im.load()
        upright = ImageOps.exif_transpose(im)
        return to_rgb(upright if upright is not None else im)


class RGBImage(PILImage):
    """fastai's ``PILImage``, opened with :func:`load_image` so every mode becomes proper RGB."""

    @classmethod
    def create(cls, fn: Path | str | np.ndarray | bytes | Image.Image, **kwargs):
        # The annotation matters: fastai's predict() uses it to accept a file path directly.
        if isinstance(fn, (str, Path)):
            return cls(load_image(fn))
        return super().create(fn, **kwargs)


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


def _look(path: Path) -> _Look:
    """Read one file (only read it): hash its bytes and decode it fully with Pillow."""
    try:
        data = path.read_bytes()
    except OSError as err:  # no permission, a file that vanished, a broken disk
        return _Look(error=f"could not be read ({err.strerror or type(err).__name__})")
    look = _Look(nbytes=len(data), digest=hashlib.sha1(data).hexdigest())
    if not data:
        look.error = "zero bytes (an empty file)"
        return look
    try:
        with Image.open(io.BytesIO(data)) as im:
            look.format, look.mode, look.size = im.format, im.mode, im.size
            im.load()  # decoding everything is what finds truncated files
    except Image.DecompressionBombError:
        look.error = f"too large to open safely ({look.size[0]}x{look.size[1]} pixels)" if look.size \
            else "too large to open safely"
    except Image.UnidentifiedImageError:
        kind = "text" if _looks_like_text(data) else "data Pillow does not recognise"
        look.error = f"not an image (the file holds {kind})"
    except Exception as err:  # truncated or damaged data: Pillow raises several types
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        look.error = ("truncated: the file stops before the image ends"
                      if "truncated" in message.lower() else f"damaged ({message})")
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


def _from_folder(root: Path, issues: list[Issue]) -> list[_Candidate]:
    """Candidates from a folder with one subfolder per class (or train/valid/<class>)."""
    entries = sorted(root.iterdir(), key=lambda p: p.name)
    dirs = []
    for entry in entries:
        if _is_hidden(entry.name):
            issues.append(Issue("hidden", entry.name + ("/" if entry.is_dir() else ""),
                                "hidden folder" if entry.is_dir() else "hidden or system file"))
        elif entry.is_dir():
            dirs.append(entry)
        else:
            hint = ("a CSV: pass its path to check() to use its labels"
                    if entry.suffix.lower() == ".csv" else "not inside a class folder")
            issues.append(Issue("outside_class", entry.name, hint))
    names = {d.name.lower() for d in dirs}
    split_layout = bool(dirs) and "train" in names and names <= set(SPLIT_FOLDERS) and all(
        any(p.is_dir() and not _is_hidden(p.name) for p in d.iterdir()) for d in dirs)
    candidates: list[_Candidate] = []
    if split_layout:
        for split in dirs:
            is_valid = SPLIT_FOLDERS[split.name.lower()]
            if is_valid is None:
                issues.append(Issue("outside_class", split.name + "/", "test split: not used for training"))
                continue
            for entry in sorted(split.iterdir(), key=lambda p: p.name):
                rel = f"{split.name}/{entry.name}"
                if _is_hidden(entry.name):
                    issues.append(Issue("hidden", rel, "hidden or system file"))
                elif entry.is_dir():
                    found = _walk_class(entry, root, entry.name, is_valid, issues)
                    if not found:
                        issues.append(Issue("empty_class", rel + "/", "no files in this folder"))
                    candidates += found
                else:
                    issues.append(Issue("outside_class", rel, "not inside a class folder"))
        return candidates
    for d in dirs:
        found = _walk_class(d, root, d.name, None, issues)
        if not found:
            issues.append(Issue("empty_class", d.name + "/", "no files in this folder"))
        candidates += found
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
        if not (root / rel).is_file():
            issues.append(Issue("missing", rel, f"no such file under {root}"))
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


def check(source: str | Path, root: str | Path | None = None, *, min_side: int = 32,
          max_side: int = 6000, min_per_class: int = 10, valid_pct: float = 0.2, seed: int = 0,
          fname_col: str | None = None, label_col: str | None = None, max_listed: int = 8,
          progress: bool | None = None, raise_on_error: bool = True) -> CheckResult:
    """Check a folder of images (or a CSV of file names and labels) before training on it.

    ``source`` is a folder with one subfolder per class, or a ``.csv`` file whose
    file names are relative to ``root`` (default: the CSV's own folder).  Images
    whose shorter side is under ``min_side`` or whose longer side is over
    ``max_side`` pixels, and classes with fewer than ``min_per_class`` usable
    images, are reported.  When the files carry no split, ``valid_pct`` of each
    class (chosen with ``seed``) becomes the validation set.

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
        if look.error is not None:
            if ext in IMAGE_EXTENSIONS or not ext:
                issues.append(Issue("unreadable", cand.rel, look.error))
            else:
                issues.append(Issue("not_image", cand.rel, f"a {ext} file"))
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
    n_files = len(candidates) + sum(1 for i in issues if i.kind in ("hidden", "outside_class"))
    result = CheckResult(source=source, root=base, items=items, issues=issues, n_files=n_files,
                         params=dict(min_side=min_side, max_side=max_side, min_per_class=min_per_class,
                                     valid_pct=valid_pct, seed=seed), max_listed=max_listed)
    _add_fatal(result)
    if raise_on_error:
        result.raise_if_unusable()
    return result


def _finish_split(items: pd.DataFrame, issues: list[Issue], valid_pct: float, seed: int) -> pd.DataFrame:
    """Fill in ``is_valid`` (random per class unless the files carry a split); sort; drop unusable."""
    if items.empty:
        items["is_valid"] = items["is_valid"].astype(bool)
    elif items.is_valid.isna().all():
        items["is_valid"] = _split(items, valid_pct, seed)
    else:
        items["is_valid"] = items.is_valid.fillna(False).astype(bool)
        trained = set(items.label[~items.is_valid])
        orphans = items.is_valid & ~items.label.isin(trained)
        for rel, label in zip(items.fname[orphans], items.label[orphans]):
            issues.append(Issue("valid_only", rel, f"class {label} has no training images"))
        items = items[~orphans]
    items = items.astype({"fname": str, "label": str, "is_valid": bool})
    items = items.sort_values(["label", "fname"]).reset_index(drop=True)
    return items


def _add_fatal(result: CheckResult) -> None:
    """Add the one issue that makes training impossible, with what to do about it."""
    where = result.source
    n_classes = len(result.classes)
    if n_classes >= 2:
        return
    if n_classes == 0:
        loose = [i for i in result.issues if i.kind == "outside_class"
                 and Path(i.path).suffix.lower() in IMAGE_EXTENSIONS]
        if loose:
            detail = (f"{where} holds images directly, not in class subfolders. Sort them into one "
                      f"subfolder per class ({where}/cats/, {where}/dogs/, ...) or point at a CSV of "
                      "file names and labels.")
        else:
            bad = len(result.left_out)
            why = f" ({bad} files could not be used, listed below)" if bad else ""
            detail = (f"No usable images found in {where}{why}. Put images in one subfolder per "
                      "class (photos/cats/*.jpg, photos/dogs/*.jpg) or give a CSV of file names and labels.")
        result.issues.insert(0, Issue("no_images", "", detail))
        return
    label, n = next(iter(result.classes.items()))
    detail = (f"Only one class ({label}, {n} images) has usable images in {where}; a classifier "
              "needs at least two. Add a subfolder of images for each other class "
              f"(for example {where}/not_{label}/).")
    result.issues.insert(0, Issue("single_class", "", detail))


# --- helpers for the lesson and its tests ------------------------------------------------------

def fingerprint(folder: str | Path) -> str:
    """One SHA-256 over every name and every byte under ``folder`` (hidden files included).

    Equal before and after a step means the step changed nothing in the folder.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(dirnames):
            digest.update(b"D" + str((Path(dirpath) / name).relative_to(folder)).encode())
        for name in sorted(filenames):
            path = Path(dirpath) / name
            digest.update(b"F" + str(path.relative_to(folder)).encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


DEMO_CLASSES = ("circle", "square", "star")


def make_demo_folder(root: str | Path | None = None, per_class: int = 24, size: int = 96,
                     seed: int = 0) -> Path:
    """A small folder of shape images with one of each common problem, for lesson 06.

    Three classes of ``per_class`` generated images (see :func:`tlcourse.data.draw_shape`),
    a fourth class with too few images, an empty class folder, and deliberately
    bad files: truncated, empty, text named ``.jpg``, a PNG named ``.jpg``, grayscale,
    transparent, palette, CMYK and 16-bit images, a tiny one, copies across and
    within classes, hidden files and awkward names.  Rebuilt from scratch each call.
    """
    import shutil

    from tlcourse.data import PHOTOS, _photo, draw_shape

    root = Path(root) if root is not None else get_settings().cache_dir / "data" / "demo_folder"
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    photos = [_photo(p) for p in PHOTOS]

    def shape(kind: str) -> Image.Image:
        return draw_shape(kind, rng, photos, size)

    for kind in DEMO_CLASSES:
        (root / kind).mkdir(parents=True)
        for i in range(per_class):
            shape(kind).save(root / kind / f"{kind}_{i:03d}.jpg", quality=90)
    (root / "triangle").mkdir()
    for i in range(3):
        shape("triangle").save(root / "triangle" / f"triangle_{i:03d}.jpg", quality=90)
    (root / "hexagon").mkdir()  # an empty class folder

    jpeg = io.BytesIO()
    shape("circle").save(jpeg, "JPEG", quality=90)
    (root / "circle" / "cut_off.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (root / "circle" / "empty.jpg").write_bytes(b"")
    (root / "square" / "notes.jpg").write_text("remember to take more photos of squares\n")
    shape("star").save(root / "star" / "really_a_png.jpg", format="PNG")
    shape("circle").convert("L").save(root / "circle" / "grayscale.png")
    transparent = shape("square").convert("RGBA")
    transparent.putalpha(Image.new("L", transparent.size, 160))
    transparent.save(root / "square" / "transparent.png")
    shape("star").convert("P", palette=Image.ADAPTIVE, colors=32).save(root / "star" / "palette.png")
    shape("circle").convert("CMYK").save(root / "circle" / "print_cmyk.jpg", quality=90)
    sixteen = (np.asarray(shape("square").convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(sixteen).save(root / "square" / "scan_16bit.png")
    shape("star").resize((20, 20)).save(root / "star" / "thumbnail.jpg", quality=90)
    shutil.copyfile(root / "circle" / "circle_000.jpg", root / "square" / "circle_000.jpg")
    shutil.copyfile(root / "star" / "star_001.jpg", root / "star" / "star_001 copy.jpg")
    shape("square").save(root / "square" / "carré 7.jpg", quality=90)
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(32))
    (root / "circle" / "._circle_000.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    (root / "README.txt").write_text("my shapes, sorted by kind\n")
    return root
