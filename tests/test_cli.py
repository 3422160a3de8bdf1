"""The command line: check reports the environment, prefetch fails with one short message."""

import socket

from tlcourse import cli


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_reports_versions_mode_and_cache(capsys):
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    for word in ("torch", "fastai", "timm", "GPU:", "mode: quick", "cache:", "pets"):
        assert word in out


def test_prefetch_without_network_is_one_short_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TLCOURSE_DATA_URL", f"http://127.0.0.1:{_closed_port()}/")
    monkeypatch.setenv("TLCOURSE_DATA_DIR", str(tmp_path / "data"))
    assert cli.main(["prefetch", "pets"]) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) <= 3
    assert "TLCOURSE_MODE=quick" in err or "prefetch" in err
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file() and p.suffix in (".tgz", ".part")]
