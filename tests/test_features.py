"""Lesson 02: feature extraction with an on-disk cache, linear probes, plots and checks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from torchvision import transforms as T

from tlcourse import data, exercises, features, plots

SIZE = 32  # image size for the cache tests: tiny on purpose


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: the tests need no parallelism and time steadier on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("tiny") / "shapes"
    return data.folder_items(data.make_shapes(root=root, train_per_class=3, valid_per_class=2, size=32))


@pytest.fixture(scope="module")
def random_body():
    return features.backbone(pretrained=False, seed=0)


@pytest.fixture
def count_extract(monkeypatch):
    """Count calls of features.extract (each miss calls it once per split)."""
    calls = []
    real = features.extract

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "extract", counting)
    return calls


def cached(df, body, size=SIZE, **kwargs) -> features.Features:
    model, model_id = body
    return features.cached_features(model, model_id, df, size, progress=False, **kwargs)


# --- the cut and the extraction ----------------------------------------------------

def test_backbone_outputs_pooled_vectors_and_random_weights_are_reproducible(random_body):
    model, model_id = random_body
    assert model_id.endswith("random-seed0")
    again, _ = features.backbone(pretrained=False, seed=0)
    other, other_id = features.backbone(pretrained=False, seed=1)
    w, w_again, w_other = (m.conv_stem.weight for m in (model, again, other))
    assert torch.equal(w, w_again) and not torch.equal(w, w_other)
    assert other_id != model_id
    with torch.no_grad():
        assert model(torch.zeros(2, 3, SIZE, SIZE)).shape == (2, model.num_features)


def test_pretrained_identity_names_the_weight_file():
    model_id = features.model_identity(pretrained=True)
    assert "imagenet-sha256-" in model_id and len(model_id.split("-")[-1]) == 64


def test_layers_around_cut_lists_stages_and_removes_its_hooks(random_body):
    model, _ = random_body
    table = features.layers_around_cut(model, SIZE)
    assert list(table["layer"]) == ["conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool", "classifier"]
    shapes = dict(zip(table["layer"], table["output shape"]))
    assert shapes["bn2"] == (1, model.num_features, 1, 1)  # 32 px / 32 = one position
    assert shapes["global_pool"] == (1, model.num_features)
    assert all(not m._forward_hooks for m in model.modules())


def test_extract_returns_one_vector_per_image_with_sorted_class_indices(tiny, random_body):
    model, _ = random_body
    x, y = features.extract(model, tiny, features.default_transform(model, SIZE), progress=False)
    assert x.shape == (len(tiny), model.num_features) and x.dtype == torch.float32
    classes = features.class_names(tiny)
    assert classes == sorted(data.SHAPES)
    assert [classes[i] for i in y] == list(tiny["label"])


# --- the cache -----------------------------------------------------------------------

def test_second_call_is_a_cache_hit_and_does_not_recompute(fresh_cache, tiny, random_body, count_extract, capsys):
    first = cached(tiny, random_body)
    assert not first.from_cache and len(count_extract) == 2
    assert first.path.parent == fresh_cache / "features" and first.path.is_file()
    assert "Cache miss" in capsys.readouterr().out
    second = cached(tiny, random_body)
    assert second.from_cache and len(count_extract) == 2, "a hit must not run the network"
    assert "Cache hit" in capsys.readouterr().out
    for part in ("train_x", "train_y", "valid_x", "valid_y"):
        assert torch.equal(getattr(first, part), getattr(second, part))
    assert len(second.train_x) == 15 and len(second.valid_x) == 10
    assert not list((fresh_cache / "features").glob("*.tmp")), "temporary files must not stay behind"


def _other_transform(model):
    return T.Compose([T.Resize((SIZE, SIZE)), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])


@pytest.mark.parametrize("change", ["model", "data_pixels", "data_files", "size", "transforms"])
def test_each_key_change_recomputes(change, fresh_cache, tmp_path, tiny, random_body, count_extract):
    base = cached(tiny, random_body)
    df, body, size, extra = tiny, random_body, SIZE, {}
    if change == "model":
        body = features.backbone(pretrained=False, seed=1)
    elif change == "data_pixels":  # same file names, other generator seed
        root = data.make_shapes(root=tmp_path / "shapes", train_per_class=3, valid_per_class=2, size=32, seed=1)
        df = data.folder_items(root)
        assert list(df["fname"]) == list(tiny["fname"])
    elif change == "data_files":
        df = data.subsample(tiny, per_class=2, seed=0)
    elif change == "size":
        size = SIZE + 8
    else:
        extra = {"transform": _other_transform(body[0])}
    calls = len(count_extract)
    changed = cached(df, body, size, **extra)
    assert not changed.from_cache and len(count_extract) == calls + 2
    assert changed.key != base.key and changed.path != base.path
    assert cached(tiny, random_body).from_cache, "the original entry must still be valid"


def test_transform_description_is_part_of_the_key(fresh_cache, tiny, random_body):
    a = cached(tiny, random_body, transform_desc="resize only")
    b = cached(tiny, random_body, transform_desc="resize + flip")
    assert not b.from_cache and a.key != b.key


def test_truncated_cache_file_is_recomputed_not_a_crash(fresh_cache, tiny, random_body, count_extract, capsys):
    first = cached(tiny, random_body)
    raw = first.path.read_bytes()
    first.path.write_bytes(raw[: len(raw) // 2])
    capsys.readouterr()
    again = cached(tiny, random_body)
    assert not again.from_cache and len(count_extract) == 4
    assert "could not be read" in capsys.readouterr().out
    assert torch.equal(again.train_x, first.train_x)
    assert cached(tiny, random_body).from_cache, "the recomputed file must be a good one"


def test_cache_file_with_wrong_numbers_fails_its_checksum(fresh_cache, tiny, random_body, count_extract, capsys):
    first = cached(tiny, random_body)
    payload = torch.load(first.path, weights_only=True)
    payload["train_x"][0, 0] += 1.0
    torch.save(payload, first.path)
    capsys.readouterr()
    again = cached(tiny, random_body)
    assert not again.from_cache and "checksum" in capsys.readouterr().out
    assert torch.equal(again.train_x, first.train_x)


def test_garbage_file_is_recomputed(fresh_cache, tiny, random_body):
    first = cached(tiny, random_body)
    first.path.write_bytes(b"not a torch file")
    assert not cached(tiny, random_body).from_cache


def test_cached_features_rejects_a_table_without_a_path_or_a_split(random_body, tiny):
    model, model_id = random_body
    with pytest.raises(ValueError, match="items"):
        features.cached_features(model, model_id, pd.DataFrame({"fname": ["a.png"]}), SIZE)
    only_train = tiny[~tiny["is_valid"]]
    only_train.attrs = dict(tiny.attrs)
    with pytest.raises(ValueError, match="validation"):
        features.cached_features(model, model_id, only_train, SIZE)


def test_dataset_features_uses_the_mode_settings_and_the_cache(fresh_cache, tiny, monkeypatch):
    monkeypatch.setattr(data, "items", lambda name, s: tiny)
    first = features.dataset_features(pretrained=False, seed=0, progress=False)
    again = features.dataset_features(pretrained=False, seed=0, progress=False)
    assert not first.from_cache and again.from_cache
    assert first.classes == sorted(data.SHAPES) and first.train_x.shape == (15, 1280)


# --- probes ---------------------------------------------------------------------------

def _blobs(n_per_class=10, n_classes=3, dim=8, seed=0, spread=0.3):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=gen) * 3
    y = torch.arange(n_per_class * n_classes) % n_classes
    return centres[y] + spread * torch.randn(len(y), dim, generator=gen), y


def test_linear_probe_separates_blobs_is_seeded_and_agrees_with_sklearn():
    x, y = _blobs()
    vx, vy = x + 0.1, y  # validation: the same blobs, slightly shifted
    a = features.train_linear_probe(x, y, vx, vy, epochs=50, seed=0)
    b = features.train_linear_probe(x, y, vx, vy, epochs=50, seed=0)
    assert a.accuracy == 1.0 and a.losses == b.losses
    assert a.losses[-1] < a.losses[0]
    assert features.sklearn_probe(x, y, vx, vy) == 1.0
    mini = features.train_linear_probe(x, y, vx, vy, epochs=20, batch_size=8, seed=0)
    assert mini.accuracy == 1.0
    assert torch.equal(a.predict(vx), vy), "predict() must scale raw features as in training"


def test_single_thread_restores_the_thread_count():
    torch.set_num_threads(2)  # the module fixture restores the original count afterwards
    with features.single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)


def test_linear_probe_rejects_mismatched_lengths():
    x, y = _blobs()
    with pytest.raises(ValueError, match="length"):
        features.train_linear_probe(x, y[:-1], x, y)


def test_pick_per_class_takes_k_of_each_class_and_depends_on_seed():
    y = torch.tensor([0] * 5 + [1] * 5 + [2] * 2)
    idx = features.pick_per_class(y, 3, seed=0)
    assert torch.bincount(y[idx]).tolist() == [3, 3, 2]
    assert len(set(idx.tolist())) == len(idx)
    assert not torch.equal(idx, features.pick_per_class(y, 3, seed=1)) or not torch.equal(
        idx, features.pick_per_class(y, 3, seed=2))
    with pytest.raises(ValueError):
        features.pick_per_class(y, 0)


def _fake_features(seed=0) -> features.Features:
    x, y = _blobs(n_per_class=6, seed=seed)
    return features.Features(x, y, x + 0.1, y, ["a", "b", "c"], "k", Path("k.pt"), False)


def test_shots_curve_has_a_row_per_weights_shot_and_seed():
    result = features.shots_curve({"one": _fake_features(0), "two": _fake_features(1)}, shots=(1, 2, 10),
                                  seeds=(0, 1), progress=False, epochs=10)
    assert set(result.columns) == {"weights", "shots", "seed", "accuracy"}
    # 10 is more than the 6 images a class there are, so "all" (6) replaces it.
    assert sorted(result["shots"].unique()) == [1, 2, 6]
    assert len(result) == 2 * 3 * 2
    assert result["accuracy"].between(0, 1).all()


def test_project_2d_gives_two_coordinates_per_vector():
    x, _ = _blobs(n_per_class=10)
    assert features.project_2d(x, "pca").shape == (30, 2)
    assert features.project_2d(x, "tsne").shape == (30, 2)
    with pytest.raises(ValueError, match="pca"):
        features.project_2d(x, "umap")


def test_neighbour_agreement_is_high_for_clusters_and_near_chance_for_noise():
    x, y = _blobs(n_per_class=10)
    share, chance = features.neighbour_agreement(x, y, k=5)
    assert share == 1.0 and chance == pytest.approx(9 / 29)
    noise = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(300) % 3
    share, chance = features.neighbour_agreement(noise, labels, k=5)
    assert abs(share - chance) < 0.1
    with pytest.raises(ValueError):
        features.neighbour_agreement(x[:3], y[:3], k=5)


def test_pretrained_probe_beats_random_init_probe_by_a_wide_margin():
    """With 20 images a class at the mode's size, ImageNet features leave random ones far behind.

    Measured on the quick data (96 px, 20 valid images a class, 5 classes): the
    probe reaches about 0.76 on pretrained features and about 0.24 on random ones
    (chance is 0.20), a gap near 50 points; 30 points leaves room for other
    platforms' numerics while still meaning "a wide margin".
    """
    s = features.get_settings()
    df = data.items("shapes", s)
    accs = {}
    for pretrained in (True, False):
        model, _ = features.backbone(pretrained=pretrained, seed=0)
        tfm = features.default_transform(model, s.image_size)
        train, valid = df[~df.is_valid], df[df.is_valid]
        tx, ty = features.extract(model, train, tfm, progress=False)
        vx, vy = features.extract(model, valid, tfm, progress=False)
        idx = features.pick_per_class(ty, 20, seed=0)
        assert torch.bincount(ty[idx]).min() == 20
        accs[pretrained] = features.train_linear_probe(tx[idx], ty[idx], vx, vy, seed=0).accuracy
    margin = 100 * (accs[True] - accs[False])
    print(f"pretrained {accs[True]:.2f}, random {accs[False]:.2f}, margin {margin:.0f} points")
    assert margin >= 30


# --- the benchmark ----------------------------------------------------------------------

def _benchmark_module():
    path = Path(__file__).parent.parent / "benchmarks" / "cached_features.py"
    spec = importlib.util.spec_from_file_location("cached_features_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_core_shows_cached_epochs_at_least_20_times_faster(tiny):
    result = _benchmark_module().measure(tiny, image_size=64, batch_size=8, repeats=2)
    print(result)
    assert result.n_images == 15 and result.network_s > 0 and result.cached_s > 0
    assert result.ratio >= 20


# --- plots and checks --------------------------------------------------------------------

def test_plot_projections_side_by_side_with_labels():
    x, y = _blobs()
    pts = features.project_2d(x, "pca")
    fig = plots.plot_projections({"pretrained": (pts, y), "random": (pts * 2, y)}, ["a", "b", "c"])
    axes = fig.axes
    assert len(axes) == 2 and [a.get_title() for a in axes] == ["pretrained", "random"]
    assert all("PCA" in a.get_xlabel() and "units" in a.get_xlabel() for a in axes)
    assert fig.legends and fig._suptitle.get_text()
    with pytest.raises(ValueError):
        plots.plot_projections({"bad": (x, y)}, ["a", "b", "c"])
    plt.close("all")


def test_plot_shots_curve_has_mean_band_chance_and_labels():
    result = pd.DataFrame({"weights": ["pre"] * 4 + ["rand"] * 4, "shots": [1, 1, 5, 5] * 2,
                           "seed": [0, 1] * 4, "accuracy": [0.5, 0.6, 0.8, 0.9, 0.2, 0.25, 0.2, 0.3]})
    fig = plots.plot_shots_curve(result, chance=0.2)
    ax = fig.axes[0]
    assert "%" in ax.get_ylabel() and "per class" in ax.get_xlabel() and ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("mean of 2 seeds" in t for t in labels) and any("chance" in t for t in labels)
    assert ax.lines[0].get_ydata().tolist() == pytest.approx([55, 85])
    with pytest.raises(ValueError):
        plots.plot_shots_curve(pd.DataFrame({"x": [1]}))
    plt.close("all")


def test_check_pooled_features(capsys):
    assert exercises.check_pooled_features(lambda m, x: m.forward_features(x).mean(dim=(2, 3))) is True
    assert exercises.check_pooled_features(lambda m, x: m.forward_features(x)) is False
    assert "mean(dim=(2, 3))" in capsys.readouterr().out
    assert exercises.check_pooled_features(lambda m, x: m.forward_features(x).amax(dim=(2, 3))) is False
    assert exercises.check_pooled_features(...) is None


def test_check_nearest_mean(capsys):
    def nearest_mean(train_x, train_y, valid_x):
        means = torch.stack([train_x[train_y == c].mean(0) for c in torch.unique(train_y)])
        return torch.cdist(valid_x, means).argmin(1)

    assert exercises.check_nearest_mean(nearest_mean) is True
    assert exercises.check_nearest_mean(lambda tx, ty, vx: torch.zeros(len(vx), dtype=torch.long)) is False
    assert "Hint" in capsys.readouterr().out
    assert exercises.check_nearest_mean(lambda tx, ty, vx: torch.zeros(3)) is False
    assert exercises.check_nearest_mean(...) is None


def test_check_needs_recompute(capsys):
    assert exercises.check_needs_recompute({"a", "c", "e"}) is True
    assert exercises.check_needs_recompute({"A", "c", "e "}) is True
    assert exercises.check_needs_recompute({"a", "b"}) is False
    out = capsys.readouterr().out
    assert "b:" in out and "c, e:" in out
    assert exercises.check_needs_recompute({"z"}) is False
    assert exercises.check_needs_recompute(...) is None
