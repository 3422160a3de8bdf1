"""Check functions for the exercises, one convention for the whole course.

In a notebook every exercise is two code cells:

1. the *exercise* cell (tag ``exercise``): ``answer = ...`` and a call to its check
   function.  Left as it is, the check says "not done yet" and the notebook runs on;
2. the *solution* cell right after it (tag ``solution``, collapsed in JupyterLab),
   which sets the same variable and calls the same check.

A check never raises for a wrong answer: it prints what is wrong and a hint, and
returns ``False``; ``True`` for a right answer, ``None`` for "not done yet".
Student copies (``tlcourse student``) drop the solution cells.

Each lesson's checks live in their own module (``lesson00`` ... ``lesson06``);
``exercises.check_xxx`` finds any of them.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

PLACEHOLDERS = (Ellipsis, None)
_CHECKS: dict[str, Callable[[Any], bool | None]] = {}


def _say(ok: bool | None, name: str, message: str) -> bool | None:
    """Print one line of feedback with a recognisable marker and return ``ok``."""
    mark = {True: "✅ Correct", False: "❌ Not yet", None: "⏳ Not done yet"}[ok]
    print(f"{mark} ({name}): {message}")
    return ok


def exercise(func: Callable[[Any], tuple[bool, str]]) -> Callable[[Any], bool | None]:
    """Turn ``func(answer) -> (ok, message)`` into a check with the course's behaviour.

    The wrapper handles the placeholder, catches mistakes that would otherwise be
    a traceback (wrong type, missing attribute) and prints the feedback.
    """
    name = func.__name__.removeprefix("check_").replace("_", " ")

    def check(answer: Any) -> bool | None:
        if any(answer is p for p in PLACEHOLDERS):
            return _say(None, name, "replace the `...` with your answer and run the cell again.")
        try:
            ok, message = func(answer)
        except Exception as err:  # a wrong kind of answer must not stop the notebook
            return _say(False, name, f"your answer could not be checked ({type(err).__name__}: "
                                     f"{err}). Check its type against the exercise text.")
        return _say(ok, name, message)

    check.__name__ = func.__name__
    check.__doc__ = func.__doc__
    _CHECKS[func.__name__] = check
    return check


def all_checks() -> dict[str, Callable[[Any], bool | None]]:
    """Every registered check by function name (used by the tests)."""
    _load_all()
    return dict(_CHECKS)


def _load_all() -> None:
    """Import every lesson's module (a new ``lessonNN.py`` included): its checks register themselves."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def __getattr__(name: str) -> Callable[[Any], bool | None]:
    """``exercises.check_xxx`` finds a check in whichever lesson's module defines it."""
    if name.startswith("check_"):
        _load_all()
        if name in _CHECKS:
            return _CHECKS[name]
    raise AttributeError(f"module 'tlcourse.exercises' has no attribute {name!r}")
