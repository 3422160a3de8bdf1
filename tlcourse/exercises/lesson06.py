"""Checks of the exercises in notebook 06_your_own_data."""

from __future__ import annotations

from tlcourse.data import download, folders
from tlcourse.exercises import exercise


#: Problems a clean copy must not have any more (it may still hold small images or small classes).
_UNCLEAN = ("unreadable", "needs_plugin", "bad_pixels", "duplicate_across", "duplicate_within",
            "wrong_extension", "mode", "hidden", "odd_name", "not_image", "not_a_class",
            "outside_class", "empty_class")


@exercise
def check_clean_copy(answer) -> tuple[bool, str]:
    """06: the path of a cleaned copy of the folder (RGB images, plain names, no bad files)."""
    from pathlib import Path

    if isinstance(answer, folders.Audit):
        return False, ("that is a check result; set `answer` to the *folder* of your clean copy "
                       "(a path), and the check will audit it.")
    folder = Path(answer)
    if not folder.is_dir():
        return False, f"{folder} is not a folder. Hint: create it with `clean.mkdir(parents=True)`."
    try:
        result = folders.audit(folder, raise_on_error=False, progress=False)
    except folders.FolderError as err:
        return False, f"the audit could not read it: {err}"
    if not result.ok:
        return False, f"{result.issues[0].detail}"
    left = [i for i in result.issues if i.kind in _UNCLEAN]
    if left:
        first = left[0]
        return False, (f"the copy still has {len(left)} problem(s), e.g. {first.title} in "
                       f"{first.path}; these files are left out or converted every time. Hint: copy "
                       "only the rows of `result.items`, open each with `images.load_image` (RGB) "
                       "and save it under a plain name like `0007.png` in a folder per label.")
    return True, (f"the copy has {len(result.items)} clean images in {len(result.classes)} classes, "
                  "and the original folder was only read.")


@exercise
def check_labels_csv(answer) -> tuple[bool, str]:
    """06: a Audit of a CSV of file names and labels, written outside the image folder."""
    if not isinstance(answer, folders.Audit):
        return False, ("set `answer` to what `folders.audit(csv_path, root=...)` returns. "
                       f"You gave a {type(answer).__name__}.")
    if answer.source.suffix.lower() != ".csv":
        return False, ("this result comes from checking a folder, not a CSV. Write the CSV with "
                       "`result.items[['fname', 'label']].to_csv(path, index=False)` and check the CSV.")
    if answer.root.resolve() in answer.source.resolve().parents:
        return False, ("the CSV is inside the image folder: the course never writes there. Save it "
                       "in `S.cache_dir` and pass `root=` the image folder.")
    missing = answer.by_kind("missing")
    if missing:
        return False, (f"{len(missing)} file names in the CSV were not found, e.g. {missing[0].path}. "
                       "Hint: names must be relative to `root`, as in `result.items.fname`.")
    if not answer.ok:
        return False, answer.issues[0].detail
    return True, (f"{len(answer.items)} images in {len(answer.classes)} classes, labelled by a CSV "
                  "that lives outside your image folder.")


@exercise
def check_download_error(answer) -> tuple[bool, str]:
    """06: the DownloadError caught from a download that cannot work."""
    if isinstance(answer, download.DownloadError):
        lines = str(answer).splitlines()
        return True, (f"caught it. The learner sees {len(lines)} short lines instead of a traceback, "
                      "and your code can fall back to quick mode in the `except` branch.")
    if isinstance(answer, str):
        return False, ("that is the message; set `answer` to the exception object itself: "
                       "`except download.DownloadError as err: answer = err`.")
    if isinstance(answer, BaseException):
        return False, (f"that is a {type(answer).__name__}; catch `download.DownloadError`, the one "
                       "error every failed course download ends in.")
    return False, "wrap the `download.fetch(...)` call in `try:` / `except download.DownloadError as err:`."


