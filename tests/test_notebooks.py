"""Every notebook follows the course's conventions; student copies hide solutions and still run."""

import ast
import builtins
from pathlib import Path

import nbformat
import pytest

from tlcourse import cli, notebooks

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = notebooks.notebook_files(ROOT / "notebooks")


def test_there_are_lesson_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "00_setup.ipynb"
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == list(range(len(numbers))), "notebooks are numbered 00, 01, ... without gaps"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_follows_the_conventions(path):
    nb = nbformat.read(path, as_version=4)
    assert notebooks.structure_problems(nb, path.name) == []


def test_colab_badges_and_setup_cells_match_the_repository_setting():
    assert cli.main(["colab", "--check", "--notebooks", str(ROOT / "notebooks")]) == 0


def test_sync_colab_rewrites_badge_and_setup_for_a_fork(monkeypatch):
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    monkeypatch.setattr(notebooks, "REPOSITORY", "someone/fork")
    assert notebooks.sync_colab(nb, NOTEBOOKS[0].name)
    assert "github/someone/fork/blob/main/notebooks/00_setup.ipynb" in nb.cells[0].source
    assert any("https://github.com/someone/fork" in c.source for c in nb.cells)
    assert notebooks.structure_problems(nb, NOTEBOOKS[0].name) == []
    assert not notebooks.sync_colab(nb, NOTEBOOKS[0].name)  # idempotent


def test_audit_names_what_is_wrong():
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    solution = next(i for i, c in enumerate(nb.cells) if "solution" in c.metadata.get("tags", []))
    del nb.cells[solution].metadata["jupyter"]
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="stale")]
    problems = notebooks.structure_problems(nb, NOTEBOOKS[0].name)
    assert any("not collapsed" in p for p in problems)
    assert any("stored with outputs" in p for p in problems)


def _solution_lines(nb) -> set[str]:
    """Lines that only solution cells contain (not elsewhere in the notebook, not comments or blanks)."""
    other_lines = {line.strip() for c in nb.cells if "solution" not in c.metadata.get("tags", [])
                   for line in c.source.splitlines()}
    return {line.strip() for c in nb.cells if "solution" in c.metadata.get("tags", [])
            for line in c.source.splitlines()
            if line.strip() and not line.strip().startswith("#") and line.strip() not in other_lines}


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    assert cli.main(["student", "--notebooks", str(ROOT / "notebooks"), "--out", str(out)]) == 0
    return out


def test_student_copies_contain_no_solution_text(student_dir):
    for path in NOTEBOOKS:
        original = nbformat.read(path, as_version=4)
        copy = nbformat.read(student_dir / path.name, as_version=4)
        student_lines = {line.strip() for c in copy.cells for line in c.source.splitlines()}
        leaked = sorted(_solution_lines(original) & student_lines)
        assert not leaked, f"{path.name}: solution lines survive: {leaked[:3]}"
        assert not [c for c in copy.cells if "solution" in c.metadata.get("tags", [])]
        kept = [c for c in original.cells if "solution" not in c.metadata.get("tags", [])]
        assert [c.source for c in kept] == [c.source for c in copy.cells]  # the rest is identical
        assert all("answer = ..." in c.source for c in copy.cells if "exercise" in c.metadata.get("tags", []))


def test_student_copies_never_overwrite_the_originals():
    with pytest.raises(ValueError, match="own folder"):
        notebooks.write_student_copies(ROOT / "notebooks", ROOT / "notebooks")


def _names(source: str) -> tuple[set[str], set[str]]:
    """Names a cell's code binds and names it reads (IPython magics and shell lines skipped)."""
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
    bound, read = set(), set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name):
            (bound if isinstance(node.ctx, (ast.Store, ast.Del)) else read).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return bound, read


def _solution_only_reads(nb) -> list[str]:
    """Cells (outside solutions) that read a name which, at that point, only a solution has bound."""
    outside: set[str] = set(dir(builtins)) | {"display", "get_ipython"}
    only_in_solutions: set[str] = set()
    problems = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        bound, read = _names(cell.source)
        if "solution" in cell.metadata.get("tags", []):
            only_in_solutions |= bound - outside
            continue
        missing = (read & only_in_solutions) - outside - bound
        if missing:
            problems.append(f"cell {index} reads {sorted(missing)}, which only a solution defines")
        outside |= bound
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_cell_reads_a_variable_that_only_a_solution_defines(path):
    """What a student copy needs: every name a non-solution cell reads is bound outside solutions."""
    assert _solution_only_reads(nbformat.read(path, as_version=4)) == []


def test_the_solution_reads_check_finds_a_leak():
    cells = [nbformat.v4.new_code_cell("import math\nx = 1"),
             nbformat.v4.new_code_cell("answer = ...", metadata={"tags": ["exercise"]}),
             nbformat.v4.new_code_cell("best = math.sqrt(x)\nanswer = best", metadata={"tags": ["solution"]}),
             nbformat.v4.new_code_cell("print(answer, best)")]
    assert _solution_only_reads(nbformat.v4.new_notebook(cells=cells)) == [
        "cell 3 reads ['best'], which only a solution defines"]


def test_a_student_copy_runs_and_tlcourse_run_summarises_it(student_dir, tmp_path):
    """`tlcourse run` executes a notebook and writes its summary; run on a student copy, it also
    shows that the placeholders leave every check at "not done yet" and every cell still runs.

    One lesson is executed here; for the others, the test above reads every cell instead
    (their student copies differ from the lessons nbval runs only by the solution cells).
    """
    code = cli.main(["run", "--only", "00", "--notebooks", str(student_dir), "--out", str(tmp_path)])
    summary = (tmp_path / "summary.md").read_text()
    assert code == 0 and "00_setup.ipynb" in summary and "cats vs dogs" in summary, summary
    executed = nbformat.read(tmp_path / "00_setup.ipynb", as_version=4)
    assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "Not done yet" in printed and "Correct" not in printed
