"""The offline ImageNet backbone: converted once, checksummed, recognisably pretrained."""

import pytest
import torch
from PIL import Image
from skimage import data as skdata

from tlcourse import data, models
from tlcourse.settings import get_settings


def test_weights_are_converted_once_and_remade_when_corrupt(fresh_cache):
    path = models.weights_path()
    assert path.is_file() and path.is_relative_to(fresh_cache)
    stamp = path.stat().st_mtime_ns
    assert models.weights_path().stat().st_mtime_ns == stamp  # cached
    path.write_bytes(path.read_bytes()[:1000])  # corrupt it
    repaired = models.weights_path()
    assert repaired.stat().st_size > 1_000_000
    state = torch.load(repaired, weights_only=True)
    assert len(state) == 296 and "conv_stem.weight" in state


def test_known_photos_get_sensible_labels():
    net = models.create_model()
    assert models.top_k(net, Image.fromarray(skdata.coffee()), k=1)[0][0] == "espresso"
    cat = [label for label, _ in models.top_k(net, Image.fromarray(skdata.chelsea()), k=3)]
    assert any("cat" in label for label in cat)
    probs = [p for _, p in models.top_k(net, Image.fromarray(skdata.coffee()), k=5)]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0


def test_imagenet_labels_are_offline_and_complete():
    labels = models.imagenet_labels()
    assert len(labels) == 1000 and labels[0].startswith("tench")


def test_random_model_differs_from_pretrained():
    torch.manual_seed(0)
    a, b = models.create_model(), models.create_model(pretrained=False)
    assert not torch.equal(a.conv_stem.weight, b.conv_stem.weight)


def test_learner_freezes_all_but_head_and_batchnorm(tmp_path):
    import shutil

    from fastai.vision.all import ImageDataLoaders, Resize

    root = tmp_path / "s"
    photos = sorted(data.pets_dir().glob("*.jpg"))
    for split, label, picks in [("train", "cat", photos[:2]), ("train", "dog", photos[-2:]),
                                ("valid", "cat", photos[2:3]), ("valid", "dog", photos[-3:-2])]:
        (root / split / label).mkdir(parents=True, exist_ok=True)
        for photo in picks:
            shutil.copyfile(photo, root / split / label / photo.name)

    dls = ImageDataLoaders.from_folder(root, train="train", valid="valid",
                                       item_tfms=Resize(32), bs=4, num_workers=0)
    learn = models.learner(dls, get_settings().arch)
    body, head = learn.model[0], learn.model[1]
    assert all(p.requires_grad for p in head.parameters())
    frozen = [(n, m) for n, m in body.named_modules() if list(m.parameters(recurse=False))]
    for name, module in frozen:
        is_bn = isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
        assert all(p.requires_grad == is_bn for p in module.parameters(recurse=False)), name
    mean = dls.after_batch.fs[-1].mean.flatten().tolist()
    assert mean == pytest.approx([0.5, 0.5, 0.5])  # the backbone's own normalisation
    learn.unfreeze()
    assert all(p.requires_grad for p in learn.model.parameters())


def test_converting_the_weights_leaves_the_callers_seed_alone(fresh_cache):
    torch.manual_seed(0)
    models.weights_path()  # first call: converts
    after_conversion = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), after_conversion)
