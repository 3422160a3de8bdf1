"""The package's layout, checked: layers, lessons that do not import one another, settings
passed down, and an import that changes nothing (docs/architecture.md describes the rules).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tlcourse"

#: Each module's layer: a module imports only from its own layer or the ones below.
LAYERS = {
    "settings": 0, "stats": 0,
    "images": 1, "download": 1, "data": 1, "folders": 1,
    "models": 2, "hooks": 2, "features": 2, "records": 2, "plots": 2,
    "activations": 3, "training": 3, "experiments": 3, "curves": 3,
    "exercises": 4, "notebooks": 4, "report": 4, "cli": 4,
}
#: The lesson modules (layer 3) and the lessons they belong to.
LESSONS = {"activations": "01", "training": "03-04", "experiments": "05", "curves": "05"}
#: Course tooling, which may read the settings itself (the notebooks do too).
TOOLING = {"exercises", "notebooks", "report", "cli"}


#: The sub-packages: a module inside one is named by its file (``data/images.py``: ``images``),
#: the package's own ``__init__.py`` by the package (``data``).
PACKAGES = ("data", "models")


def _module(path: Path) -> str:
    """``tlcourse/data/images.py`` -> ``images``; ``tlcourse/data/__init__.py`` -> ``data``;
    ``tlcourse/exercises/lesson05.py`` -> ``exercises``; ``tlcourse/stats.py`` -> ``stats``."""
    parts = path.relative_to(PACKAGE).parts
    if parts[0] in PACKAGES and len(parts) > 1:
        return parts[0] if parts[-1] == "__init__.py" else parts[-1].removesuffix(".py")
    return parts[0].removesuffix(".py")


def _targets(module: str, names: list[str]) -> list[str]:
    """The tlcourse modules that ``from <module> import <names>`` reads."""
    parts = module.split(".")
    if len(parts) == 1:  # from tlcourse import data, stats
        return names
    if len(parts) >= 3:  # from tlcourse.data.images import load_image
        return [parts[2]]
    if parts[1] in PACKAGES:  # from tlcourse.data import images, batch_size
        return [n if n in LAYERS else parts[1] for n in names]
    return [parts[1]]


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported tlcourse module, line, inside a function?) for every internal import of ``path``."""
    tree = ast.parse(path.read_text())
    inside = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tlcourse":
            targets = _targets(node.module, [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            targets = [_targets(a.name, [])[0] for a in node.names if a.name.startswith("tlcourse.")]
        found += [(t, node.lineno, id(node) in inside) for t in targets if t != "__version__"]
    return found


FILES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_module_has_a_layer():
    assert sorted({_module(p) for p in FILES} - set(LAYERS)) == [], \
        "a new module needs a layer here and a line in docs/architecture.md"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers_and_never_across_lessons(path):
    me = _module(path)
    for other, line, _ in _imports(path):
        if other == me:
            continue
        assert LAYERS[other] <= LAYERS[me], f"{path.name}:{line}: {me} (layer {LAYERS[me]}) imports " \
                                            f"{other} (layer {LAYERS[other]})"
        if me in LESSONS and other in LESSONS:
            assert LESSONS[me] == LESSONS[other], f"{path.name}:{line}: lesson {LESSONS[me]}'s {me} " \
                                                  f"imports lesson {LESSONS[other]}'s {other}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_internal_imports_inside_functions_say_why(path):
    lines = path.read_text().splitlines()
    for other, line, inside in _imports(path):
        if inside:
            said = lines[line - 1] + lines[line - 2]
            assert "#" in said, f"{path.name}:{line}: import of {other} inside a function without " \
                                "a comment saying why (a cycle, or a heavy import kept off the start)"


def test_library_modules_are_passed_their_settings():
    calls = {str(p.relative_to(PACKAGE)): p.read_text().count("get_settings(") for p in FILES
             if _module(p) not in TOOLING and _module(p) != "settings"}
    assert sum(calls.values()) <= 2, {k: v for k, v in calls.items() if v}


STATE = """
import json, random, warnings
import numpy as np, torch, matplotlib, pandas, PIL.ImageFile
import fastai.vision.all, timm, torchvision, nbconvert.preprocessors, nbclient, IPython.display  # third-party
# imports first: only tlcourse's own effect counts (nbconvert, for one, adds a warnings filter)

def state():
    return {
        "random": repr(random.getstate()), "numpy": repr(np.random.get_state()[1][:8].tolist()),
        "numpy_pos": int(np.random.get_state()[2]), "torch": torch.get_rng_state().sum().item(),
        "threads": torch.get_num_threads(), "dtype": str(torch.get_default_dtype()),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "grad": torch.is_grad_enabled(), "truncated": PIL.ImageFile.LOAD_TRUNCATED_IMAGES,
        "backend": matplotlib.get_backend(), "rc": repr(sorted(matplotlib.rcParams.items()))[:100000],
        "pandas": repr(pandas.get_option("display.max_rows")), "warnings": len(warnings.filters),
    }

before = state()
import importlib, pkgutil, tlcourse, tlcourse.exercises
for m in pkgutil.walk_packages(tlcourse.__path__, "tlcourse."):
    importlib.import_module(m.name)
tlcourse.exercises.lesson05  # the lazily found exercise modules too
after = state()
print(json.dumps({k: [before[k], after[k]] for k in before if before[k] != after[k]}))
"""


def test_importing_tlcourse_changes_no_global_state():
    done = subprocess.run([sys.executable, "-c", STATE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    changed = json.loads(done.stdout.strip().splitlines()[-1])
    assert changed == {}, f"importing tlcourse changed: {sorted(changed)}"


def test_library_calls_leave_the_callers_random_state_alone():
    import random

    import numpy as np
    import torch

    from tlcourse import models
    from tlcourse.models import features

    x, y = torch.randn(40, 8), torch.arange(40) % 2
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    features.train_linear_probe(x, y, x, y, epochs=2, seed=0)
    features.pick_per_class(y, 3, seed=0)
    with models.seeded(5):
        inside = torch.rand(3)
    with models.seeded(5):
        assert torch.equal(torch.rand(3), inside), "a seeded block repeats"
    assert torch.equal(torch.get_rng_state(), before[0])
    assert (np.random.get_state()[1] == before[1]).all() and random.getstate() == before[2]
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == flags
