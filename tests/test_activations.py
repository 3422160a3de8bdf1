"""tlcourse.activations, the lesson-01 figures in tlcourse.plots and the 01_imagenet checks."""

from __future__ import annotations

import re

import ipywidgets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from matplotlib.figure import Figure
from PIL import Image

from tlcourse import activations, exercises, models, plots
from tlcourse.models import hooks

SIZE = 64  # tiny inputs keep every forward pass fast


@pytest.fixture(scope="module")
def effnet():
    """The offline backbone's architecture (random weights: shapes do not depend on them)."""
    torch.manual_seed(0)
    return models.create_model(pretrained=False)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def image(seed: int = 0) -> torch.Tensor:
    return torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def n_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


# --- capture -----------------------------------------------------------------------

@pytest.mark.parametrize("name, layers, expected", [
    ("effnet", ["conv_stem", "blocks.1", "blocks.3"], [(1, 32, 32, 32), (1, 24, 16, 16), (1, 80, 4, 4)]),
    ("resnet", ["layer1", "layer2", "layer4"], [(1, 64, 16, 16), (1, 128, 8, 8), (1, 512, 2, 2)]),
])
def test_capture_records_detached_cpu_outputs_of_the_right_shape(request, name, layers, expected):
    model = request.getfixturevalue(name)
    with hooks.capture(model, layers) as acts:
        with torch.no_grad():
            model(image()[None])
    assert list(acts) == layers
    assert [tuple(acts[n].shape) for n in layers] == expected
    assert all(not t.requires_grad and t.device.type == "cpu" for t in acts.values())
    assert n_hooks(model) == 0


def test_capture_detaches_even_when_gradients_are_on(resnet):
    with hooks.capture(resnet, "layer1") as acts:
        resnet(image()[None])
    assert acts["layer1"].grad_fn is None


def test_hooks_are_removed_when_the_block_raises(effnet):
    with pytest.raises(ZeroDivisionError):
        with hooks.capture(effnet, ["blocks.1", "blocks.2"]):
            assert n_hooks(effnet) == 2
            1 / 0
    assert n_hooks(effnet) == 0
    assert all(not m._forward_hooks for m in effnet.modules())


def test_hooks_are_removed_when_the_forward_pass_fails(resnet):
    with pytest.raises(RuntimeError):
        with hooks.capture(resnet, ["layer1"]):
            resnet(torch.zeros(1, 5, SIZE, SIZE))  # 5 channels: conv1 refuses
    assert n_hooks(resnet) == 0


def test_an_unknown_layer_is_a_clear_error_and_leaves_no_hooks(effnet, resnet):
    with pytest.raises(ValueError, match=r"no layer named 'block\.3'.*'blocks\.3'.*layer_names"):
        with hooks.capture(effnet, ["blocks.1", "block.3"]):
            pass
    assert n_hooks(effnet) == 0
    with pytest.raises(ValueError, match=r"'conv1'"):  # lists valid names even without a close match
        activations.activations(resnet, image(), "nonsense")


def test_activations_runs_in_eval_mode_and_restores_the_mode(resnet):
    resnet.train()
    try:
        acts = activations.activations(resnet, image(), ["layer3", "layer2"])
        assert resnet.training
        assert list(acts) == ["layer3", "layer2"]
        again = activations.activations(resnet, image(), ["layer3"])  # eval: batch norm is deterministic
        assert torch.equal(acts["layer3"], again["layer3"])
    finally:
        resnet.eval()


def test_activations_preprocesses_a_pil_image_like_the_model_was_trained(resnet):
    photo = Image.fromarray(np.zeros((50, 80, 3), dtype=np.uint8))
    acts = activations.activations(resnet, photo, "conv1")
    assert acts["conv1"].shape == (1, 64, 112, 112)  # 224-px crop, stride 2
    with pytest.raises(TypeError, match="PIL image or a tensor"):
        activations.activations(resnet, np.zeros((3, 8, 8)), "conv1")


# --- listing -----------------------------------------------------------------------

def test_layer_table_lists_names_types_shapes_and_parameters(resnet):
    table = hooks.layer_table(resnet, (3, SIZE, SIZE), max_depth=1)
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == ["name", "type", "output_shape", "params"]
    assert table["name"].tolist() == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2",
                                      "layer3", "layer4", "avgpool", "fc"]
    row = table.set_index("name").loc["layer2"]
    assert row["type"] == "Sequential" and row["output_shape"] == (128, 8, 8)
    assert row["params"] == sum(p.numel() for p in resnet.layer2.parameters())
    assert table.set_index("name").loc["fc", "output_shape"] == (1000,)
    assert n_hooks(resnet) == 0


def test_layer_table_of_the_offline_backbone(effnet):
    table = hooks.layer_table(effnet, (3, SIZE, SIZE)).set_index("name")
    assert table.loc["blocks.4", "output_shape"] == (112, 4, 4)
    assert table.loc["classifier", "params"] == 1280 * 1000 + 1000
    assert all("." not in n or n.count(".") == 1 for n in table.index)  # max_depth=2
    assert n_hooks(effnet) == 0


def test_first_conv_finds_the_layer_that_sees_the_image(effnet, resnet):
    assert activations.first_conv(effnet)[0] == "conv_stem"
    assert activations.first_conv(resnet)[0] == "conv1"
    with pytest.raises(ValueError, match="no Conv2d"):
        activations.first_conv(torch.nn.Linear(2, 2))


# --- figures -----------------------------------------------------------------------

def test_plot_filters_normalises_each_filter(resnet):
    weight = resnet.conv1.weight
    fig = plots.plot_filters(weight, max_filters=10, ncols=5)
    assert isinstance(fig, Figure)
    assert "10 of 64" in fig._suptitle.get_text() and "7×7" in fig._suptitle.get_text()
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 10
    assert [ax.get_title() for ax in shown[:2]] == ["filter 0", "filter 1"]
    for ax in shown:
        values = np.asarray(ax.images[0].get_array())
        assert values.shape == (7, 7, 3)
        assert values.min() == pytest.approx(0) and values.max() == pytest.approx(1)
    with pytest.raises(ValueError, match="out, in, kh, kw"):
        plots.plot_filters(torch.zeros(3, 3))


def test_plot_feature_maps_labels_channels(effnet):
    maps = activations.activations(effnet, image(), "blocks.1")["blocks.1"]
    fig = plots.plot_feature_maps(maps, n=5, ncols=3)
    assert fig._suptitle.get_text().startswith("Feature maps: 5 of 24 channels")
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    most_varied = maps[0].flatten(1).std(1).argmax().item()
    assert len(titles) == 5 and titles[0] == f"channel {most_varied}"
    assert plots.top_channels(maps, 3)[0] == most_varied
    fig = plots.plot_feature_maps(maps[0], channels=[3, 1], title="two maps")
    assert [ax.get_title() for ax in fig.axes if ax.images] == ["channel 3", "channel 1"]
    assert fig._suptitle.get_text() == "two maps"
    with pytest.raises(ValueError, match="24"):
        plots.plot_feature_maps(maps, channels=[24])


def test_plot_feature_comparison_puts_models_side_by_side(effnet, resnet):
    layers = ["blocks.1", "blocks.3"]
    a = activations.activations(effnet, image(0), layers)
    b = activations.activations(effnet, image(1), layers)
    fig = plots.plot_feature_comparison({"pretrained": a, "random": b}, n_channels=3)
    assert [sub._suptitle.get_text() for sub in fig.subfigs] == ["pretrained", "random"]
    assert fig._suptitle.get_text()
    labelled = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labelled[0].startswith("blocks.1") and len(labelled) == 4
    with pytest.raises(ValueError, match="layers"):
        plots.plot_feature_comparison({"a": a, "b": {"blocks.1": a["blocks.1"]}})


def test_ilsvrc_table_is_complete_and_cited():
    table = plots.ilsvrc_table()
    winners = table[table["kind"] == "winner"].sort_values("year")
    assert winners["year"].tolist() == list(range(2010, 2018))
    assert winners["top5_error_pct"].is_monotonic_decreasing
    assert set(winners["era"]) == {"SVM", "CNN"}
    assert winners.loc[winners["era"] == "SVM", "year"].max() < winners.loc[winners["era"] == "CNN", "year"].min()
    human = table[table["kind"] == "human"]
    assert len(human) == 1 and 4 < human["top5_error_pct"].iloc[0] < 6
    assert (table["source"].str.len() > 10).all()


def test_plot_ilsvrc_draws_one_bar_per_year_and_the_human_estimate():
    fig = plots.plot_ilsvrc()
    ax = fig.axes[0]
    table = plots.ilsvrc_table()
    assert len(ax.patches) == (table["kind"] == "winner").sum()
    assert ax.get_title() and "error (%)" in ax.get_ylabel() and ax.get_xlabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("SVM") for t in legend) and any(t.startswith("CNN") for t in legend)
    human = table.loc[table["kind"] == "human", "top5_error_pct"].iloc[0]
    assert any(f"{human:g}%" in t for t in legend)


# --- explorer ----------------------------------------------------------------------

def test_explore_builds_a_widget_and_a_static_figure_without_a_browser(effnet):
    images = {"noise a": image(0), "noise b": image(1)}
    explorer = activations.explore(effnet, images, ["blocks.1", "blocks.3"], n_channels=4)
    assert isinstance(explorer.widget, ipywidgets.interactive)
    controls = {c.description: c for c in explorer.widget.children if hasattr(c, "description")}
    assert {"image", "layer", "order", "first", "how many"} <= set(controls)
    assert list(controls["image"].options) == list(images)
    assert controls["first"].max == 80 - 1  # the widest layer, blocks.3
    assert "static view" in explorer.figure._suptitle.get_text()
    assert len([ax for ax in explorer.figure.axes if ax.images]) == 4
    controls["layer"].value = "blocks.3"  # redraws through the widget: must not fail
    controls["image"].value = "noise b"
    controls["order"].value = "channel index"
    assert n_hooks(effnet) == 0
    with pytest.raises(ValueError, match="no layer named"):
        activations.explore(effnet, images, ["nope"])
    with pytest.raises(ValueError, match="at least one image"):
        activations.explore(effnet, {}, ["blocks.1"])


# --- 01_imagenet checks ------------------------------------------------------------

def test_check_first_cnn_year(capsys):
    assert exercises.check_first_cnn_year(2012) is True
    assert exercises.check_first_cnn_year(2011) is False
    assert "SVM" in capsys.readouterr().out
    assert exercises.check_first_cnn_year(2015) is False
    assert "Hint" in capsys.readouterr().out
    assert exercises.check_first_cnn_year(...) is None


def test_check_layer_output_shape(capsys):
    assert exercises.check_layer_output_shape((112, 14, 14)) is True
    assert exercises.check_layer_output_shape((1, 112, 14, 14)) is False
    assert "batch" in capsys.readouterr().out
    assert exercises.check_layer_output_shape((112, 28, 28)) is False
    assert exercises.check_layer_output_shape((80, 14, 14)) is False
    assert "layer_table" in capsys.readouterr().out
    assert exercises.check_layer_output_shape(...) is None


def test_check_cat_classes(capsys):
    right = [i for i, n in enumerate(models.imagenet_labels()) if re.search(r"\bcat\b", n.lower())]
    assert 281 in right and 484 not in right  # tabby in, catamaran out
    assert exercises.check_cat_classes(right) is True
    assert "lesser panda" in capsys.readouterr().out
    assert exercises.check_cat_classes(list(range(281, 286))) is False
    assert "missing" in capsys.readouterr().out
    assert exercises.check_cat_classes(right + [484]) is False
    assert "catamaran" in capsys.readouterr().out
    assert exercises.check_cat_classes(["tabby, tabby cat"]) is False
    assert exercises.check_cat_classes(...) is None


def test_similarity_is_a_labelled_cosine_matrix(resnet):
    images = {"a": image(0), "b": image(1), "a again": image(0)}
    sim = activations.similarity(resnet, images, "avgpool")
    assert list(sim.index) == list(sim.columns) == list(images)
    assert np.allclose(np.diag(sim.to_numpy()), 1, atol=1e-5)
    assert sim.loc["a", "a again"] == pytest.approx(1, abs=1e-5)
    assert np.allclose(sim.to_numpy(), sim.to_numpy().T, atol=1e-6)
    with pytest.raises(ValueError, match="at least two"):
        activations.similarity(resnet, {"a": image(0)}, "avgpool")


def test_similarity_handles_images_of_different_sizes(resnet):
    images = {"small": image(0), "large": torch.randn(3, 2 * SIZE, 2 * SIZE)}
    sim = activations.similarity(resnet, images, "avgpool")
    assert sim.shape == (2, 2) and sim.loc["small", "small"] == pytest.approx(1, abs=1e-5)


def test_plot_predictions_shows_each_photo_with_its_top_classes():
    photos = {"a": np.zeros((20, 30, 3), dtype=np.uint8), "b": np.ones((20, 20, 3), dtype=np.uint8)}
    preds = {"a": [("tiger cat, big cat", 0.6), ("lynx", 0.3)], "b": [("espresso", 0.9), ("cup", 0.05)]}
    fig = plots.plot_predictions(photos, preds)
    assert fig._suptitle.get_text() == "Top-2 ImageNet classes for each photo"
    assert [ax.get_title() for ax in fig.axes[:2]] == ["a", "b"]
    bars = fig.axes[2]
    assert bars.get_xlabel() == "probability (%)"
    assert [t.get_text() for t in bars.get_yticklabels()] == ["lynx", "tiger cat"]  # first synonym
    assert [p.get_width() for p in bars.patches] == pytest.approx([30, 60])


# --- top-activating patches --------------------------------------------------------

def test_batch_activations_stops_at_the_layer_and_matches_a_full_pass(effnet):
    batch = torch.stack([image(0), image(1), image(2)])
    effnet.train()
    try:
        maps = activations.batch_activations(effnet, batch, "blocks.2", chunk=2)
        assert effnet.training  # mode restored
    finally:
        effnet.eval()
    full = activations.activations(effnet, batch, "blocks.2")["blocks.2"]
    assert maps.shape == full.shape == (3, 40, 8, 8)
    assert torch.allclose(maps, full, atol=1e-4, rtol=1e-4)
    assert n_hooks(effnet) == 0
    with pytest.raises(ValueError, match="no layer named"):
        activations.batch_activations(effnet, batch, "blocks.99")
    assert n_hooks(effnet) == 0


def test_strongest_takes_each_image_once_at_its_peak():
    maps = torch.zeros(3, 2, 4, 5)
    maps[0, 1, 2, 3] = 5.0
    maps[0, 1, 0, 0] = 4.0  # the same image's second peak is not listed
    maps[2, 1, 1, 4] = 3.0
    maps[1, 0, 3, 3] = 9.0  # another channel
    assert activations.strongest(maps, 1, 2) == [(0, 2, 3), (2, 1, 4)]
    assert len(activations.strongest(maps, 1, 10)) == 3
    with pytest.raises(ValueError, match="channel"):
        activations.strongest(maps, 2, 1)


def test_patch_box_is_centred_on_the_cell_and_stays_inside():
    assert activations.patch_box(7, 7, (14, 14), (224, 224), 48) == (96, 96, 144, 144)
    assert activations.patch_box(0, 13, (14, 14), (224, 224), 48) == (0, 176, 48, 224)
    top, left, bottom, right = activations.patch_box(3, 0, (7, 7), (112, 224), 64)
    assert bottom - top == 64 and right - left == 64 and left == 0


def test_selective_channels_prefers_channels_that_fire_on_some_images_only():
    maps = torch.ones(4, 3, 2, 2)
    maps[0, 2] = 10.0  # channel 2 fires on one image only
    maps[:, 1] = 5.0  # channel 1 is strong everywhere: no spread
    assert activations.selective_channels(maps, 1) == [2]
    assert len(activations.selective_channels(maps, 10)) == 3


def test_top_patches_cut_pixels_from_the_unnormalised_input(effnet):
    batch = torch.stack([image(0), image(1), image(2)]).clamp(-1, 1)
    found = activations.top_patches(effnet, batch, "blocks.2", [0, 5], k=2)
    assert list(found) == [0, 5]
    assert all(len(p) == 2 and p[0].shape == (3, 24, 24) for p in found.values())  # 3 cells of 8 px
    assert all(0 <= float(t.min()) and float(t.max()) <= 1 for p in found.values() for t in p)
    assert torch.allclose(activations.unnormalise(effnet, batch), batch * 0.5 + 0.5)
    again = activations.top_patches(effnet, batch, "blocks.2", [5], k=1, patch=10,
                                    maps=activations.batch_activations(effnet, batch, "blocks.2"))
    assert again[5][0].shape == (3, 10, 10)
    assert n_hooks(effnet) == 0


def test_plot_top_patches_draws_one_row_per_channel_and_panel():
    patch = torch.rand(3, 8, 8)
    panels = {"pretrained": {4: [patch] * 3, 9: [patch] * 3}, "random": {1: [patch] * 3, 2: [patch] * 2}}
    fig = plots.plot_top_patches(panels, title="patches")
    assert fig._suptitle.get_text() == "patches"
    assert [sub._suptitle.get_text() for sub in fig.subfigs] == ["pretrained", "random"]
    assert len([ax for ax in fig.axes if ax.images]) == 11
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels == ["channel 4", "channel 9", "channel 1", "channel 2"]
    with pytest.raises(ValueError, match="same"):
        plots.plot_top_patches({"a": {1: [patch]}, "b": {1: [patch], 2: [patch]}})
    with pytest.raises(ValueError, match="nothing"):
        plots.plot_top_patches({})
