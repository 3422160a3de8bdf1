"""The course's notebooks as files: their fixed opening, student copies, and an audit.  ``REPOSITORY``
is the one place that names the repository: ``sync_colab`` (``tlcourse colab``) writes every notebook's
Colab badge and setup cell from it; a test fails while one disagrees."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
from nbconvert.preprocessors import ClearOutputPreprocessor, TagRemovePreprocessor

#: GitHub ``owner/name`` of the course; a fork changes this line and runs ``tlcourse colab``.
REPOSITORY = "tlcourse/tlcourse"
BRANCH = "main"
SETUP_TAG, EXERCISE_TAG, SOLUTION_TAG = "setup", "exercise", "solution"
PLACEHOLDER = "answer = ..."
_BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")


def badge(name: str) -> str:
    """The markdown "Open in Colab" badge for notebook file ``name``."""
    url = f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/notebooks/{name}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def setup_source() -> str:
    """The setup cell: installs the course on Colab, does nothing anywhere else."""
    return f"""# Setup: on Colab this installs the course; anywhere else it does nothing.
import sys

REPO = "https://github.com/{REPOSITORY}"
if "google.colab" in sys.modules:
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"tlcourse @ git+{{REPO}}"], check=True)"""


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def notebook_files(folder: Path) -> list[Path]:
    """The lesson notebooks ``NN_topic.ipynb`` of ``folder``, in teaching order."""
    return sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))


def sync_colab(nb, name: str) -> bool:
    """Make ``nb``'s badge and setup cell match ``REPOSITORY``; True if anything changed."""
    first = nb.cells[0]
    lines = first.source.split("\n")
    wanted = (_BADGE.sub(badge(name), first.source) if _BADGE.search(first.source)
              else "\n".join(lines[:1] + ["", badge(name)] + lines[1:]))
    changed, first.source = wanted != first.source, wanted
    for cell in nb.cells:
        if SETUP_TAG in _tags(cell) and cell.source != setup_source():
            cell.source, changed = setup_source(), True
    return changed


def structure_problems(nb, name: str) -> list[str]:
    """Everything about ``nb`` that breaks the course's conventions (empty list: none)."""
    problems, cells = [], nb.cells
    code = [c for c in cells if c.cell_type == "code"]
    if not cells or cells[0].cell_type != "markdown" or not cells[0].source.startswith("# "):
        problems.append("the first cell must be a markdown title '# N. Title'")
    elif badge(name) not in cells[0].source:
        problems.append("the first cell lacks the Colab badge for this repository (run `tlcourse colab`)")
    if [c.source for c in cells if SETUP_TAG in _tags(c)] != [setup_source()]:
        problems.append("there must be exactly one setup cell (tag 'setup') with the standard source")
    if not any("check_versions()" in c.source for c in code):
        problems.append("no cell calls settings.check_versions()")
    for title in ("## Exercises", "## Summary"):
        if not any(c.cell_type == "markdown" and title in c.source for c in cells):
            problems.append(f"missing a '{title}' section")
    # each exercise cell holds the placeholder and a check, and is followed by its collapsed solution
    exercises = [i for i, c in enumerate(cells) if EXERCISE_TAG in _tags(c)]
    if not exercises:
        problems.append("no exercise cells (tag 'exercise')")
    for i in exercises:
        if PLACEHOLDER not in cells[i].source or "exercises.check_" not in cells[i].source:
            problems.append(f"exercise cell {i} needs '{PLACEHOLDER}' and an exercises.check_... call")
        nxt = cells[i + 1] if i + 1 < len(cells) else None
        if nxt is None or SOLUTION_TAG not in _tags(nxt):
            problems.append(f"exercise cell {i} is not followed by a solution cell (tag 'solution')")
        elif not nxt.get("metadata", {}).get("jupyter", {}).get("source_hidden"):
            problems.append(f"solution cell {i + 1} is not collapsed (metadata jupyter.source_hidden)")
    for i, c in enumerate(cells):
        if SOLUTION_TAG in _tags(c) and (i == 0 or EXERCISE_TAG not in _tags(cells[i - 1])):
            problems.append(f"solution cell {i} does not follow an exercise cell")
    if any(c.get("outputs") or c.get("execution_count") for c in code):
        problems.append("the notebook is stored with outputs: clear them")
    if any("import *" in c.source and "tlcourse" in c.source for c in code):
        problems.append("star import from tlcourse: import the modules explicitly")
    return problems


def write_student_copies(source: Path, target: Path) -> list[Path]:
    """Write a student copy (no solution cells, no outputs, all else identical) of every lesson
    notebook in ``source`` into ``target``, which must differ: the originals are never overwritten."""
    source, target = Path(source).resolve(), Path(target).resolve()
    if source == target:
        raise ValueError("Student copies need their own folder: pass an --out different from the "
                         "notebooks folder.")
    paths = notebook_files(source)
    if not paths:
        raise ValueError(f"No lesson notebooks (NN_topic.ipynb) in {source}.")
    target.mkdir(parents=True, exist_ok=True)
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        nb, resources = TagRemovePreprocessor(remove_cell_tags={SOLUTION_TAG}).preprocess(nb, {})
        nbformat.write(ClearOutputPreprocessor().preprocess(nb, resources)[0], target / path.name)
    return [target / path.name for path in paths]
