"""Key results that a notebook reports: ``key_result("head-only accuracy", 0.91)`` prints a line
and attaches the value under a MIME type of its own, which ``tlcourse run`` collects into its summary."""

from __future__ import annotations

from IPython.display import display

MIME = "application/vnd.tlcourse.result+json"


def shown(value: float | int | str) -> str:
    """A key result's value as notebooks and the ``tlcourse run`` summary print it (floats: 3 decimals)."""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def key_result(name: str, value: float | int | str, unit: str = "") -> float | int | str:
    """Show ``name: value`` and record it as one of the notebook's key results."""
    text = f"Key result | {name}: {shown(value)}{(' ' + unit) if unit else ''}"
    display({MIME: {"name": name, "value": value, "unit": unit}, "text/plain": text}, raw=True)
    return value


def collect(notebook: dict) -> list[dict]:
    """Every key result recorded in an executed notebook (as a JSON dict), in order."""
    return [output["data"][MIME] for cell in notebook.get("cells", []) for output in cell.get("outputs", [])
            if MIME in output.get("data", {})]
