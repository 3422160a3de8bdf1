"""Issue 14, items 6, 8 and 9: architecture names, caches under faults, `tlcourse run` and `check`.

Each test builds its own faulty cache, folder or notebook.
"""

from __future__ import annotations

import threading
from pathlib import Path

import nbformat
import pytest

from tlcourse import cli, models, settings
from tlcourse.data import download

ROOT = Path(__file__).resolve().parent.parent


# --- 6. architecture names --------------------------------------------------------------------

@pytest.mark.parametrize("arch,source", [
    ("resnet34", "torchvision"), ("resnet18", "torchvision"), ("densenet121", "torchvision"),
    ("resnet18d", "timm"), ("resnet18.a1_in1k", "timm"), ("convnext_tiny", "timm"),
    ("resnet50d.ra2_in1k", "timm"), ("tf_efficientnet_lite0", "offline")])
def test_arch_names_go_to_the_library_that_has_them(arch, source):
    assert settings.arch_source(arch) == (source, arch)


def test_unknown_arch_name_suggests_close_ones():
    with pytest.raises(ValueError, match="Did you mean resnet18") as info:
        settings.arch_source("resnt18")
    assert "timm.list_models" in str(info.value)


def test_timm_names_build_timm_learners_without_attribute_errors(tmp_path):
    from fastai.vision.all import DataBlock, ImageBlock, CategoryBlock, RandomSplitter
    import numpy as np

    items = [np.zeros((8, 8, 3), np.uint8) for _ in range(4)]
    dls = DataBlock(blocks=(ImageBlock, CategoryBlock), get_y=lambda x: "a" if x.sum() == 0 else "b",
                    splitter=RandomSplitter(0.5, seed=0)).dataloaders(items, bs=2, num_workers=0)
    for arch in ("resnet18d", "resnet18.a1_in1k"):  # these went to torchvision and failed
        learn = models.learner(dls, arch=arch, pretrained=False)
        assert type(learn.model[0]).__name__ == "TimmBody"


# --- 8. caches under faults ---------------------------------------------------------------------

def test_converting_in_a_cache_that_cannot_be_written_names_the_folder(fresh_cache, monkeypatch):
    fresh_cache.mkdir(parents=True)
    (fresh_cache / "weights").write_text("a file where the weights folder should be")
    with pytest.raises(settings.CacheError) as info:
        models.weights_path()
    text = str(info.value)
    assert str(fresh_cache / "weights") in text and "TLCOURSE_CACHE" in text
    assert info.value._render_traceback_() == [f"CacheError: {text}"]
    (fresh_cache / "weights").unlink()

    def denied(*args, **kwargs):  # what a read-only folder answers (tests may run as root)
        raise PermissionError(13, "Permission denied", str(fresh_cache / "weights"))

    monkeypatch.setattr(models, "atomic_path", denied)  # the first write into the cache
    with pytest.raises(settings.CacheError, match="Permission denied"):
        models.weights_path()


def test_read_only_cache_with_good_weights_is_used_as_it_is(fresh_cache, monkeypatch):
    path = models.weights_path()

    def no_writing(*args, **kwargs):
        raise AssertionError("nothing may be written")

    monkeypatch.setattr(models, "_convert", no_writing)
    monkeypatch.setattr(models.download, "locked", no_writing)
    assert models.weights_path() == path


def test_cache_folder_that_cannot_be_created(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setenv("TLCOURSE_CACHE", str(blocker / "cache"))
    with pytest.raises(settings.CacheError, match="TLCOURSE_CACHE"):
        settings.cache_dir()
    assert cli.main(["check"]) == 1  # reports it instead of crashing
    out = capsys.readouterr().out
    assert str(blocker / "cache") in out and "TLCOURSE_CACHE" in out and "Traceback" not in out


def test_threads_converting_at_once_all_get_good_weights(fresh_cache):
    """Two notebooks opened on a fresh machine.  The lock is an flock on a file opened by each
    call, which excludes threads of one process exactly as it excludes two processes, and each
    conversion writes its own temporary file."""
    results, errors = [], []

    def convert():
        try:
            results.append(models.weights_path())
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=convert) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert models._converted_ok(results[0])
    assert sorted(p.name for p in results[0].parent.iterdir() if not p.name.startswith(".")) == [
        "tf_efficientnet_lite0_imagenet.pth", "tf_efficientnet_lite0_imagenet.sha256"]


def test_damaged_torchvision_weights_stop_the_learner_with_the_file_to_delete(tmp_path, monkeypatch):
    from fastai.vision.all import DataBlock, ImageBlock, CategoryBlock, RandomSplitter
    import numpy as np

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    res = download.resource("resnet18")
    on_disk = tmp_path / "torch" / "hub" / "checkpoints" / res.filename
    on_disk.parent.mkdir(parents=True)
    on_disk.write_bytes(b"\x80\x02" + bytes(500))
    items = [np.zeros((8, 8, 3), np.uint8) for _ in range(4)]
    dls = DataBlock(blocks=(ImageBlock, CategoryBlock), get_y=lambda x: "a",
                    splitter=RandomSplitter(0.5, seed=0)).dataloaders(items, bs=2, num_workers=0)
    with pytest.raises(download.DownloadError, match="damaged") as info:
        models.learner(dls, arch="resnet18")
    assert f"Delete {on_disk}" in str(info.value)


# --- 9. tlcourse run under load, tlcourse check ----------------------------------------------

def _notebook(path: Path, *sources: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_run_survives_a_cell_over_the_time_limit(tmp_path, capsys):
    folder, out = tmp_path / "notebooks", tmp_path / "out"
    folder.mkdir()
    _notebook(folder / "00_slow.ipynb", "print('started')", "import time\ntime.sleep(60)")
    _notebook(folder / "01_quick.ipynb", "print('fine')")
    code = cli.main(["run", "--notebooks", str(folder), "--out", str(out), "--timeout", "3"])
    assert code == 1
    summary = (out / "summary.md").read_text()
    assert "| 00_slow.ipynb |" in summary and "longer than 3 s" in summary and "--timeout" in summary
    assert "| 01_quick.ipynb |" in summary and "| ok |" in summary  # the next notebook still ran
    slow = nbformat.read(out / "00_slow.ipynb", as_version=4)
    assert slow.cells[0].outputs  # the executed copy, as far as it got
    assert nbformat.read(out / "01_quick.ipynb", as_version=4).cells[0].outputs


def test_check_lists_the_cache_and_what_the_mode_uses(fresh_cache, capsys):
    for rel in ("features/model-abc.pt", "features/model-def.pt", "experiments/sweep/run_0.json"):
        (fresh_cache / rel).parent.mkdir(parents=True, exist_ok=True)
        (fresh_cache / rel).write_bytes(b"x" * 2000)
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    assert "What quick mode uses:" in out and "weights tf_efficientnet_lite0" in out
    assert "not yet converted" in out and "no download" in out
    assert "features/" in out and "2 files" in out and "experiments/" in out
    assert "Downloads of full mode" in out and "pets" in out
