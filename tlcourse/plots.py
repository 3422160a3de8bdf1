"""Figures of the course: labelled (title, axes with units, legend), readable in a
notebook and in print, and returned as matplotlib Figures so tests and notebooks
can inspect or save them.  Importing this module changes no global state.
"""

from __future__ import annotations
