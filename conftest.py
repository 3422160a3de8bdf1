"""Shared test set-up: unit tests and the notebooks nbval runs are all in quick mode."""

from __future__ import annotations

import os

os.environ.setdefault("TLCOURSE_MODE", "quick")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

from tlcourse import settings  # noqa: E402

# The tests run in quick mode on a CPU: the same thread count as the notebooks (settings.set_threads).
settings.set_threads(settings.get_settings())


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """Point the course's cache at an empty folder for this test only."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TLCOURSE_CACHE", str(cache))
    return cache
