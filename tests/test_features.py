"""Lesson 02: feature extraction with an on-disk cache, linear probes, plots and checks."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from tlcourse import data, plots
from tlcourse.models import features, hooks
from tlcourse.settings import get_settings

SIZE = 32  # image size for the cache tests: tiny on purpose
CLASSES = ["cat", "dog"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: the tests need no parallelism and time steadier on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_table(train: int = 3, held_out: int = 1) -> pd.DataFrame:
    """A few packaged cat and dog photos: ``train`` a class for training, ``held_out`` for valid and test."""
    df = data.items("cats_dogs", get_settings())
    parts = [df[df.split == "train"].groupby("label").head(train)]
    parts += [df[df.split == split].groupby("label").head(held_out) for split in ("valid", "test")]
    out = pd.concat(parts).reset_index(drop=True)
    out.attrs = dict(df.attrs)
    return out


@pytest.fixture(scope="module")
def tiny() -> pd.DataFrame:
    return _tiny_table()


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


def test_random_backbone_leaves_the_global_seed_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    features.backbone(pretrained=False, seed=7)
    assert torch.equal(torch.rand(3), expected), "backbone() must not reseed the caller's random numbers"


def test_pretrained_identity_names_the_weight_file():
    model_id = features.model_identity(pretrained=True)
    assert "imagenet-sha256-" in model_id and len(model_id.split("-")[-1]) == 64


def test_the_layers_around_the_cut_list_stages_and_remove_their_hooks(random_body):
    model, _ = random_body
    table = hooks.layer_table(model, (3, SIZE, SIZE), max_depth=1)  # lesson 02's table
    assert list(table["name"]) == ["conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool", "classifier"]
    shapes = dict(zip(table["name"], table["output_shape"]))
    assert shapes["bn2"] == (model.num_features, 1, 1)  # 32 px / 32 = one position
    assert shapes["global_pool"] == (model.num_features,)
    assert all(not m._forward_hooks for m in model.modules())


def test_extract_returns_one_vector_per_image_with_sorted_class_indices(tiny, random_body):
    model, _ = random_body
    x, y = features.extract(model, tiny, features.default_transform(model, SIZE), progress=False)
    assert x.shape == (len(tiny), model.num_features) and x.dtype == torch.float32
    classes = features.class_names(tiny)
    assert classes == CLASSES
    assert [classes[i] for i in y] == list(tiny["label"])


# --- the cache -----------------------------------------------------------------------

def test_second_call_is_a_cache_hit_and_does_not_recompute(fresh_cache, tiny, random_body, count_extract, capsys):
    first = cached(tiny, random_body)
    assert not first.from_cache and len(count_extract) == 3  # train, valid, test
    assert first.path.parent == fresh_cache / "features" and first.path.is_file()
    assert "Cache miss" in capsys.readouterr().out
    second = cached(tiny, random_body)
    assert second.from_cache and len(count_extract) == 3, "a hit must not run the network"
    assert "Cache hit" in capsys.readouterr().out
    for part in features._PARTS:
        assert torch.equal(getattr(first, part), getattr(second, part))
    assert (len(second.train_x), len(second.valid_x), len(second.test_x)) == (6, 2, 2)
    assert not list((fresh_cache / "features").glob("*.tmp")), "temporary files must not stay behind"


def _copy_photos(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """The same table, with its photos copied into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for fname in df["fname"]:
        shutil.copy(Path(df.attrs["path"]) / fname, folder / fname)
    out = df.copy()
    out.attrs = {**df.attrs, "path": str(folder)}
    return out


def _other_transform(model):
    return T.Compose([T.Resize((SIZE, SIZE)), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])


@pytest.mark.parametrize("change", ["model", "data_pixels", "data_files", "size", "transforms"])
def test_each_key_change_recomputes(change, fresh_cache, tmp_path, tiny, random_body, count_extract):
    base = cached(tiny, random_body)
    df, body, size, extra = tiny, random_body, SIZE, {}
    if change == "model":
        body = features.backbone(pretrained=False, seed=1)
    elif change == "data_pixels":  # same file names, one photo mirrored
        df = _copy_photos(tiny, tmp_path / "photos")
        first = tmp_path / "photos" / df["fname"].iloc[0]
        Image.open(first).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(first)
        assert list(df["fname"]) == list(tiny["fname"])
    elif change == "data_files":
        df = _tiny_table(train=2)
    elif change == "size":
        size = SIZE + 8
    else:
        extra = {"transform": _other_transform(body[0])}
    calls = len(count_extract)
    changed = cached(df, body, size, **extra)
    assert not changed.from_cache and len(count_extract) == calls + 3
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
    assert not again.from_cache and len(count_extract) == 6
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
    no_test = tiny[tiny["split"] != "test"]
    no_test.attrs = dict(tiny.attrs)
    with pytest.raises(ValueError, match="test"):
        features.cached_features(model, model_id, no_test, SIZE)


def test_unwritable_cache_folder_gives_one_message_and_features_anyway(fresh_cache, tiny, random_body,
                                                                       monkeypatch, capsys):
    """A read-only TLCOURSE_CACHE (simulated: tests may run as root, where chmod does not stop writes)."""
    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(features, "atomic_path", refuse)
    monkeypatch.setattr(features, "_UNWRITABLE", set())
    first = cached(tiny, random_body)
    second = cached(tiny, random_body, transform_desc="another key, same folder")
    out = capsys.readouterr().out
    assert not first.from_cache and not second.from_cache and len(first.train_x) == 6
    assert out.count("cannot write the feature cache folder") == 1, out
    assert str(fresh_cache / "features") in out and "TLCOURSE_CACHE" in out
    assert not first.path.exists()


def test_dataset_features_uses_the_mode_settings_and_the_cache(fresh_cache, tiny, monkeypatch):
    monkeypatch.setattr(data, "items", lambda name, s: tiny)
    first = features.dataset_features(get_settings(), pretrained=False, seed=0, progress=False)
    again = features.dataset_features(get_settings(), pretrained=False, seed=0, progress=False)
    assert not first.from_cache and again.from_cache
    assert first.classes == CLASSES and first.train_x.shape == (6, 1280) and first.test_x.shape == (2, 1280)


def test_pixel_features_are_flattened_small_photos_in_the_same_form(tiny):
    px = features.pixel_features(tiny, size=8)
    assert px.train_x.shape == (6, 3 * 8 * 8) and px.test_x.shape == (2, 192) and px.classes == CLASSES
    assert 0 <= float(px.train_x.min()) and float(px.train_x.max()) <= 1
    assert [px.classes[i] for i in px.test_y] == list(tiny[tiny.split == "test"]["label"])


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
    return features.Features(x, y, x + 0.1, y, x - 0.1, y, ["a", "b", "c"], "k", Path("k.pt"), False)


def test_probe_curve_has_a_row_per_features_size_and_seed_and_scores_the_test_split(monkeypatch):
    feats = {"one": _fake_features(0), "two": _fake_features(1)}
    result = features.probe_curve(feats, per_class=(1, 2, 10), seeds=(0, 1), progress=False, epochs=10)
    assert list(result.columns) == ["features", "per_class", "seed", "accuracy"]
    assert sorted(result["per_class"].unique()) == [1, 2], "10 is more than the 6 images a class there are"
    assert len(result) == 2 * 2 * 2 and result["accuracy"].between(0, 1).all()
    with_all = features.probe_curve(feats, (1, 10), (0,), include_all=True, progress=False, epochs=10)
    assert sorted(with_all["per_class"].unique()) == [1, 6]
    scored = []
    real = features.train_linear_probe
    monkeypatch.setattr(features, "train_linear_probe",
                        lambda tx, ty, ex, ey, **kw: scored.append(ex) or real(tx, ty, ex, ey, **kw))
    features.probe_curve({"one": feats["one"]}, (2,), (0,), progress=False, epochs=5)
    assert torch.equal(scored[0], feats["one"].test_x), "probes are scored on the test split"


def test_summarise_and_clearly_ahead_read_the_seeds_conservatively():
    curve = pd.DataFrame({"features": ["a"] * 3 + ["b"] * 3, "per_class": [5] * 6, "seed": [0, 1, 2] * 2,
                          "accuracy": [0.8, 0.9, 0.85, 0.5, 0.6, 0.85]})
    stats = features.summarise(curve).loc["a"].loc[5]
    assert stats["mean"] == pytest.approx(0.85) and stats["min"] == 0.8 and stats["n"] == 3
    assert stats["std"] == pytest.approx(0.05)
    assert not features.clearly_ahead(curve, "a", "b", 5), "ranges that overlap are no clear difference"
    apart = curve.assign(accuracy=[0.8, 0.9, 0.85, 0.5, 0.6, 0.7])
    assert features.clearly_ahead(apart, "a", "b", 5) and not features.clearly_ahead(apart, "b", "a", 5)


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


# --- the claims lesson 02 makes ----------------------------------------------------------

@pytest.fixture(scope="module")
def cats_dogs_runs(tmp_path_factory):
    """Lesson 02's comparison as the notebook runs it: 10 a class, seeds 0-2, test split, 128 px."""
    s = get_settings()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLCOURSE_CACHE", str(tmp_path_factory.mktemp("cache")))
        feats = {name: features.dataset_features(get_settings(), pretrained=pretrained, seed=0, name="cats_dogs",
                                                 progress=False, verbose=False)
                 for name, pretrained in (("pretrained", True), ("random init", False))}
    feats["raw pixels"] = features.pixel_features(data.items("cats_dogs", get_settings()), size=32)
    return feats, features.probe_curve(feats, [s.per_class], s.seeds, progress=False)


def test_pretrained_probe_is_far_ahead_of_random_init_and_raw_pixels(cats_dogs_runs):
    """Issue 12's acceptance, and the lesson's "far better" claim.

    Measured (quick mode, seeds 0-2, 72 test photos): pretrained 87.5 % on every seed,
    random init 52.8 % (51.4-55.6), raw pixels 50.9 % (44.4-58.3); one test photo is
    1.4 points.  Held-out seeds 100-102 (benchmarks/probe.py) gave 88.0 +- 1.6 % against
    51.4 +- 5.0 % and 53.2 +- 1.6 %.  The 25-point bar is the issue's; the 80 % floor
    leaves 5 test photos of room under the measured mean.
    """
    _, runs = cats_dogs_runs
    assert runs.groupby("features")["seed"].count().eq(3).all()
    acc = 100 * runs.groupby("features")["accuracy"].mean()
    print(acc.round(1).to_dict())
    assert acc["pretrained"] >= 80
    assert acc["pretrained"] - acc["random init"] >= 25
    assert acc["pretrained"] - acc["raw pixels"] >= 25


def test_pca_of_pretrained_features_puts_cats_and_dogs_apart(cats_dogs_runs):
    """The lesson's PCA figure: a nearest-centre rule in the 2-D picture separates the classes.

    Measured on all 305 photos: 90 % with pretrained features, 60 % with random init.
    """
    feats, _ = cats_dogs_runs

    def centre_accuracy(f: features.Features) -> float:
        x, y = torch.cat([f.train_x, f.valid_x, f.test_x]), torch.cat([f.train_y, f.valid_y, f.test_y])
        pts = torch.as_tensor(features.project_2d(x, "pca")).float()
        centres = torch.stack([pts[y == c].mean(0) for c in (0, 1)])
        return float((torch.cdist(pts, centres).argmin(1) == y).float().mean())

    assert centre_accuracy(feats["pretrained"]) >= 0.8
    assert centre_accuracy(feats["random init"]) < 0.75


# --- the benchmark ----------------------------------------------------------------------

def _benchmark_module(name: str):
    path = Path(__file__).parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_core_shows_cached_epochs_at_least_20_times_faster(tiny):
    result = _benchmark_module("cached_features").measure(tiny, image_size=64, batch_size=2, repeats=2)
    print(result)
    assert result.n_images == 6 and result.network_s > 0 and result.cached_s > 0
    assert result.ratio >= 20


def test_probe_benchmark_assembles_task_features_and_tabulates_seeds():
    bench = _benchmark_module("probe")
    photos = data.items("pet_breeds", get_settings())
    vectors = {f: torch.full((4,), float(i)) for i, f in enumerate(photos["fname"])}
    f = bench.task_features("cats_dogs", vectors)
    table = data.items("cats_dogs", get_settings())
    assert f.classes == CLASSES and len(f.test_x) == (table.split == "test").sum() == 72
    first_test = table[table.split == "test"]["fname"].iloc[0]
    assert torch.equal(f.test_x[0], vectors[first_test])
    results = pd.DataFrame({"task": ["t"] * 3, "features": ["p"] * 3, "per_class": [1] * 3,
                            "seed": [100, 101, 102], "accuracy": [0.5, 0.6, 0.7]})
    row = bench.table(results).iloc[0]
    assert row["mean"] == 60.0 and row["std"] == 10.0 and row["seeds"] == 3
    assert not set(bench.SEEDS) & set(get_settings().seeds), "benchmark seeds are held out"


# --- plots --------------------------------------------------------------------

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


