"""Figures of the course: labelled, readable in a notebook and in print, returned as Figures."""

from __future__ import annotations

import matplotlib

matplotlib.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3})
