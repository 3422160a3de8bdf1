"""The mode switch: one variable sizes everything, bad values get a clear error."""

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
