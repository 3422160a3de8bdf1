"""The mode switch: one variable sizes everything, bad values get a clear error."""

from dataclasses import replace

import pytest

from tlcourse import settings


def test_quick_mode_is_small_and_offline(monkeypatch):
    monkeypatch.setenv("TLCOURSE_MODE", "quick")
    s = settings.get_settings()
    assert s.mode == "quick"
    assert (s.dataset, s.few_shot_dataset, s.far_dataset) == ("cats_dogs", "pet_breeds", "fashion")
    assert s.arch == settings.OFFLINE_ARCH
    assert s.image_size <= 128 and s.per_class <= 20 and len(s.seeds) >= 3
    assert "QUICK" in str(s) and "TLCOURSE_MODE" in str(s)
    assert "restart the kernel" in str(s) and "before importing" not in str(s)


def test_full_mode_is_the_real_course(monkeypatch):
    monkeypatch.setenv("TLCOURSE_MODE", "full")
    s = settings.get_settings()
    assert (s.mode, s.dataset, s.image_size) == ("full", "pets", 224)
    assert s.per_class is None  # every image


def test_full_mode_may_choose_a_resnet(monkeypatch):
    monkeypatch.setenv("TLCOURSE_MODE", "full")
    monkeypatch.setenv("TLCOURSE_ARCH", "resnet34")
    assert settings.get_settings().arch == "resnet34"


def test_default_mode_follows_cuda(monkeypatch):
    monkeypatch.delenv("TLCOURSE_MODE", raising=False)
    monkeypatch.setattr(settings.torch.cuda, "is_available", lambda: False)
    s = settings.get_settings()
    assert s.mode == "quick" and "no CUDA GPU" in s.reason
    monkeypatch.setattr(settings.torch.cuda, "is_available", lambda: True)
    assert settings.get_settings().mode == "full"


def test_unknown_mode_says_what_to_do(monkeypatch):
    monkeypatch.setenv("TLCOURSE_MODE", "fast")
    with pytest.raises(ValueError, match="quick, full"):
        settings.get_settings()


def test_cache_dir_follows_the_environment(fresh_cache):
    assert settings.cache_dir() == fresh_cache
    assert fresh_cache.is_dir()


def test_versions_are_checked(monkeypatch, capsys):
    found = settings.check_versions()
    assert {"python", "torch", "fastai", "timm"} <= set(found)
    monkeypatch.setitem(settings.MIN_VERSIONS, "timm", "999.0")
    with pytest.raises(RuntimeError, match="pip install -U"):
        settings.check_versions()


def test_full_mode_loads_data_in_worker_processes(monkeypatch):
    """Issue 15: on a machine with more than one core, full mode never decodes in the main process."""
    monkeypatch.setenv("TLCOURSE_MODE", "full")
    s = settings.get_settings()
    cpus = len(settings.os.sched_getaffinity(0)) if hasattr(settings.os, "sched_getaffinity") else 1
    if cpus > 1 and settings.os.name != "nt":
        assert s.num_workers > 0 and "core" in s.workers_reason
    assert s.workers_reason  # whatever the value, the settings say why
    for cpus in (2, 4, 16):
        workers, pin, why = settings.loader_plan("full", "cuda", cpus=cpus)
        assert workers == min(cpus, 8) and pin and why
    workers, _, why = settings.loader_plan("full", "cuda", cpus=1)
    assert workers == 0 and "one CPU core" in why
    workers, pin, why = settings.loader_plan("quick", "cpu", cpus=2)
    assert (workers, pin) == (0, False) and "quick mode" in why


def test_full_mode_trains_in_mixed_precision_on_a_gpu(monkeypatch):
    assert settings.mixed_precision("cpu") is None
    monkeypatch.setattr(settings.torch.cuda, "is_bf16_supported", lambda: False)
    assert settings.mixed_precision("cuda") == "fp16"  # a Colab T4
    monkeypatch.setattr(settings.torch.cuda, "is_bf16_supported", lambda: True)
    assert settings.mixed_precision("cuda") == "bf16"

    class Learn:
        def to_fp16(self):
            return "fp16"

        def to_bf16(self):
            return "bf16"

    monkeypatch.setenv("TLCOURSE_MODE", "full")
    s = settings.get_settings()
    assert settings.to_mixed_precision(Learn(), replace(s, precision="fp16")) == "fp16"
    assert settings.to_mixed_precision(Learn(), replace(s, precision="bf16")) == "bf16"
    learn = Learn()
    assert settings.to_mixed_precision(learn, replace(s, precision=None)) is learn


def test_full_mode_defaults_to_a_downloadable_timm_convnext(monkeypatch):
    import timm

    monkeypatch.setenv("TLCOURSE_MODE", "full")
    monkeypatch.delenv("TLCOURSE_ARCH", raising=False)
    s = settings.get_settings()
    assert s.arch == settings.FULL_ARCH and timm.is_model(s.arch)
    assert s.resized_short_side == settings.RESIZED_SHORT_SIDE and s.scale == "full"
    monkeypatch.setenv("TLCOURSE_MODE", "quick")
    q = settings.get_settings()
    assert q.arch == settings.OFFLINE_ARCH and q.num_workers == 0 and q.precision is None
    assert q.resized_short_side is None  # quick mode reads the packaged photos as they are


def test_smoke_scale_is_full_mode_shrunk(monkeypatch):
    monkeypatch.setenv("TLCOURSE_MODE", "full")
    monkeypatch.setenv("TLCOURSE_SCALE", "smoke")
    s = settings.get_settings()
    full = replace(s, scale="full")
    assert (s.mode, s.scale, s.dataset, s.arch) == ("full", "smoke", "pets", settings.FULL_ARCH)
    assert s.image_size <= 64 and s.per_class <= 2 and full.num_workers == s.num_workers
    # one seed and a few images a class: the rehearsal tests full mode's code path, quick mode the
    # comparisons over seeds
    assert s.seeds == (0,) and s.max_per_class is not None
    assert "SMOKE" in str(s)
    monkeypatch.setenv("TLCOURSE_SCALE", "tiny")
    with pytest.raises(ValueError, match="full, smoke"):
        settings.get_settings()
    monkeypatch.setenv("TLCOURSE_MODE", "quick")
    monkeypatch.setenv("TLCOURSE_SCALE", "smoke")
    with pytest.raises(ValueError, match="TLCOURSE_MODE=full"):
        settings.get_settings()
