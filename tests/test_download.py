"""Downloads against a real HTTP server on 127.0.0.1 (no other network traffic).

The server hands out an archive shaped like fastai's Oxford-IIIT Pets
(``oxford-iiit-pet/images/<Breed>_<n>.jpg``) and can misbehave on purpose: close
the connection half-way, send other bytes, ignore ``Range``, never answer.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import socket
import tarfile
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlcourse import data, settings
from tlcourse.data import download
from tlcourse.settings import get_settings

BREEDS = ("Abyssinian", "Bengal", "beagle", "pug")


def pets_tarball() -> bytes:
    """A tiny .tgz with the real archive's layout: images, and a bulky annotations file."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name: str, payload: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

        for breed in BREEDS:
            for n in range(1, 4):
                img = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
                jpg = io.BytesIO()
                img.save(jpg, "JPEG")
                add(f"oxford-iiit-pet/images/{breed}_{n}.jpg", jpg.getvalue())
        # Incompressible bytes so that "half of the body" is a real half.
        add("oxford-iiit-pet/annotations/trimaps.bin", rng.bytes(200_000))
    return buf.getvalue()


TGZ = pets_tarball()


class Server:
    """A local file server whose behaviour a test can switch (``mode``)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.mode = "ok"
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest's output clean
                pass

            def do_GET(self):
                server.requests.append({"path": self.path, "range": self.headers.get("Range")})
                body = server.files.get(self.path.rsplit("/", 1)[-1])
                if server.mode == "hang":
                    time.sleep(2)
                    return
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and server.mode != "norange":
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                if server.mode == "corrupt":
                    payload = bytes(b ^ 0xFF for b in payload[:64]) + payload[64:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if server.mode == "cut":  # promise everything, send half, hang up
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server()
    srv.files[download.PETS.filename] = TGZ
    yield srv
    srv.close()


@pytest.fixture
def env(tmp_path, monkeypatch, server):
    """Every download folder in tmp_path, the base URL on the local server, no proxy, no pauses."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("TLCOURSE_DATA_DIR", str(tmp_path / "fastai"))
    monkeypatch.setenv("TLCOURSE_DATA_URL", server.url)
    monkeypatch.setenv("TLCOURSE_WEIGHTS_URL", server.url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(download, "RETRY_DELAY", 0.0)
    return tmp_path


@pytest.fixture
def small_pets(monkeypatch):
    """Make the registry expect the tiny archive's size and checksum (same code path)."""
    fake = replace(download.PETS, size=len(TGZ), md5_first_mib=hashlib.md5(TGZ[: 1 << 20]).hexdigest())
    monkeypatch.setitem(download.DATASETS, "pets", fake)
    return fake


def leftovers(root: Path) -> list[str]:
    """Every file or folder under ``root`` (to show that a failure left nothing behind)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.name.endswith(".lock"))


def assert_short(err: download.DownloadError) -> None:
    text = str(err)
    assert len(text.splitlines()) <= 3, text
    assert "TLCOURSE_MODE=quick" in text and "tlcourse prefetch" in text
    assert err.__suppress_context__ or err.__cause__ is None
    assert err._render_traceback_() == [f"DownloadError: {text}"]


# --- the real constants -----------------------------------------------------------------------

def test_defaults_are_fastais_real_url_size_and_checksum(monkeypatch):
    import fastai.data
    from fastai.data.external import URLs
    from fastdownload import checks_module, read_checks

    monkeypatch.delenv("TLCOURSE_DATA_URL", raising=False)
    assert download.url_of(download.PETS) == URLs.PETS
    size, md5 = read_checks(checks_module(fastai.data))[URLs.PETS]
    assert (download.PETS.size, download.PETS.md5_first_mib) == (size, md5)


def test_weights_resource_uses_torchvision_default_weights(monkeypatch):
    import torchvision

    monkeypatch.delenv("TLCOURSE_WEIGHTS_URL", raising=False)
    res = download.resource("resnet34")
    assert download.url_of(res) == torchvision.models.ResNet34_Weights.DEFAULT.url
    assert res.sha256_prefix and res.filename.endswith(f"-{res.sha256_prefix}.pth")
    with pytest.raises(ValueError, match="neither a timm model nor a torchvision model"):
        download.resource("no_such_net")


# --- success -------------------------------------------------------------------------------------

def test_fetch_unpacks_the_pets_layout_and_reuses_it(env, server, small_pets):
    folder = download.fetch("pets", progress=False)
    assert folder == env / "fastai" / "data" / "oxford-iiit-pet"
    names = sorted(p.name for p in (folder / "images").iterdir())
    assert names == sorted(f"{b}_{n}.jpg" for b in BREEDS for n in range(1, 4))
    assert (env / "fastai" / "archive" / "oxford-iiit-pet.tgz").read_bytes() == TGZ
    assert not [p for p in leftovers(env) if ".part" in p or "unpacking" in p]
    n = len(server.requests)
    assert download.fetch("pets", progress=False) == folder  # cached: no new request
    assert len(server.requests) == n


def test_course_data_functions_go_through_the_download(env, server, small_pets):
    assert download.pets_images(progress=False) == env / "fastai" / "data" / "oxford-iiit-pet" / "images"
    df = data.items("pets", get_settings())
    assert set(df.label) == set(BREEDS) and len(df) == 12


def test_prefetch_and_status(env, server, small_pets, capsys):
    before = download.status(["pets"])["pets"]
    assert before.cached is False
    assert str(before).startswith("missing") and "prefetch" in str(before)
    assert "missing" in download.status_text({"pets": before})
    got = download.prefetch(["pets"], progress=False)
    assert got["pets"].is_dir()
    assert "fetched" in capsys.readouterr().out
    after = download.status(["pets"])["pets"]
    assert after.cached is True and str(after) == f"cached    {got['pets']}"
    assert after.url == server.url + "oxford-iiit-pet.tgz"
    download.prefetch(["pets"], progress=False)
    assert "cached" in capsys.readouterr().out


def test_default_names_follow_the_architecture(monkeypatch):
    monkeypatch.setenv("TLCOURSE_ARCH", "resnet34")
    assert download.default_names(settings.full_arch()) == ["pets", "resnet34"]
    monkeypatch.setenv("TLCOURSE_ARCH", "tf_efficientnet_lite0")
    assert download.default_names(settings.full_arch()) == ["pets"]


def test_weights_land_where_torchvision_looks(env, server, monkeypatch):
    payload = b"pretend these are weights" * 100
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    fake = replace(download.weights_resource("resnet18"), filename=f"resnet18-{prefix}.pth",
                   sha256_prefix=prefix)
    monkeypatch.setattr(download, "weights_resource", lambda arch: fake)
    server.files[fake.filename] = payload
    path = download.fetch("resnet18", progress=False)
    assert path == env / "torch" / "hub" / "checkpoints" / fake.filename
    assert path.read_bytes() == payload


# --- failures: one short message, nothing under the real name ------------------------------------

def test_interrupted_download_fails_clearly_then_starts_again(env, server, small_pets):
    server.mode = "cut"
    with pytest.raises(download.DownloadError, match="interrupted") as info:
        download.fetch("pets", progress=False, retries=1)
    assert_short(info.value)
    assert "nothing of it was kept" in str(info.value)
    archive = env / "fastai" / "archive" / "oxford-iiit-pet.tgz"
    assert leftovers(env / "fastai") == ["archive"]  # no partial file, nothing unpacked
    assert len(server.requests) == 2  # one retry, from the first byte
    assert [r["range"] for r in server.requests] == [None, None]
    state = download.status(["pets"])["pets"]
    assert not state.cached and str(state).startswith("missing")

    server.mode = "ok"
    folder = download.fetch("pets", progress=False)
    assert archive.read_bytes() == TGZ
    assert (folder / "images" / "pug_1.jpg").is_file()


def test_server_that_ignores_range_restarts_cleanly(env, server, small_pets):
    server.mode = "cut"
    with pytest.raises(download.DownloadError):
        download.fetch("pets", progress=False, retries=0)
    server.mode = "norange"
    download.fetch("pets", progress=False)
    assert (env / "fastai" / "archive" / "oxford-iiit-pet.tgz").read_bytes() == TGZ


def test_corrupt_download_is_deleted(env, server, small_pets):
    server.mode = "corrupt"
    with pytest.raises(download.DownloadError, match="corrupt") as info:
        download.fetch("pets", progress=False)
    assert_short(info.value)
    assert leftovers(env / "fastai") == ["archive"]


def test_real_checksums_reject_an_archive_that_is_not_the_real_one(env, server):
    with pytest.raises(download.DownloadError, match="corrupt or incomplete"):
        download.fetch("pets", progress=False)
    assert leftovers(env / "fastai") == ["archive"]


def test_a_mirrors_own_checksums_replace_the_published_ones(env, server, monkeypatch):
    listed = env / "checksums.json"
    figures = {"size": len(TGZ), "md5_first_mib": hashlib.md5(TGZ[: 1 << 20]).hexdigest(),
               "sha256": hashlib.sha256(TGZ).hexdigest()}
    listed.write_text(json.dumps({download.PETS.filename: figures}))
    monkeypatch.setenv("TLCOURSE_CHECKSUMS", str(listed))
    assert download.resource("pets").size == len(TGZ)
    assert (download.fetch("pets", progress=False) / "images").is_dir()
    # the listed figures are checked as strictly as the published ones
    listed.write_text(json.dumps({download.PETS.filename: dict(figures, size=len(TGZ) + 1)}))
    server.files[download.PETS.filename] = TGZ
    monkeypatch.setenv("TLCOURSE_DATA_DIR", str(env / "again"))
    with pytest.raises(download.DownloadError, match="corrupt or incomplete"):
        download.fetch("pets", progress=False)


def test_a_broken_checksums_file_is_named_with_what_to_do(env, monkeypatch):
    listed = env / "checksums.json"
    for content in ("not json", json.dumps({download.PETS.filename: {"size": 1}})):
        listed.write_text(content)
        monkeypatch.setenv("TLCOURSE_CHECKSUMS", str(listed))
        with pytest.raises(ValueError, match="TLCOURSE_CHECKSUMS=.*unset TLCOURSE_CHECKSUMS"):
            download.resource("pets")
    monkeypatch.setenv("TLCOURSE_CHECKSUMS", str(env / "missing.json"))
    with pytest.raises(ValueError, match="missing.json"):
        download.resource("pets")


def test_archive_that_cannot_be_unpacked_is_deleted(env, server, monkeypatch):
    not_a_tar = gzip.compress(b"a whole gzip stream, but no tar archive inside " * 100)
    server.files["oxford-iiit-pet.tgz"] = not_a_tar
    monkeypatch.setitem(download.DATASETS, "pets",
                        replace(download.PETS, size=len(not_a_tar), md5_first_mib=None))
    with pytest.raises(download.DownloadError, match="could not be unpacked") as info:
        download.fetch("pets", progress=False)
    assert_short(info.value)
    assert leftovers(env / "fastai") == ["archive", "data"]


def test_broken_gzip_is_rejected_before_unpacking(env, server, monkeypatch):
    garbage = b"\x1f\x8b" + bytes(5000)  # a gzip header and nothing valid after it
    server.files["oxford-iiit-pet.tgz"] = garbage
    monkeypatch.setitem(download.DATASETS, "pets",
                        replace(download.PETS, size=len(garbage), md5_first_mib=None))
    with pytest.raises(download.DownloadError, match="compressed data is damaged") as info:
        download.fetch("pets", progress=False)
    assert_short(info.value)
    assert leftovers(env / "fastai") == ["archive"]


def big_tarball() -> bytes:
    """A .tgz of the Pets layout over 1 MiB compressed (incompressible bytes inside)."""
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, payload in [("oxford-iiit-pet/images/pug_1.jpg", b"jpeg" * 10),
                              ("oxford-iiit-pet/annotations/trimaps.bin", rng.bytes(1_600_000))]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def test_archive_damaged_after_its_first_mib_is_never_kept(env, server, monkeypatch):
    good = big_tarball()
    bad = bytearray(good)
    bad[1_300_000] ^= 0xFF  # same size, same first MiB: fastai's own check cannot see it
    monkeypatch.setitem(download.DATASETS, "pets", replace(
        download.PETS, size=len(good), md5_first_mib=hashlib.md5(good[: 1 << 20]).hexdigest()))
    server.files["oxford-iiit-pet.tgz"] = bytes(bad)
    with pytest.raises(download.DownloadError, match="compressed data is damaged") as info:
        download.fetch("pets", progress=False)
    assert_short(info.value)
    assert leftovers(env / "fastai") == ["archive"]  # nothing kept, nothing unpacked
    # the same damage in an archive already on disk: found, deleted, fetched again
    archive = env / "fastai" / "archive" / "oxford-iiit-pet.tgz"
    archive.write_bytes(bytes(bad))
    server.files["oxford-iiit-pet.tgz"] = good
    folder = download.fetch("pets", progress=False)
    assert archive.read_bytes() == good and (folder / "images" / "pug_1.jpg").is_file()


def test_damaged_torchvision_weights_on_disk_are_named(env, server, capsys):
    from tlcourse import cli

    res = download.resource("resnet18")
    on_disk = env / "torch" / "hub" / "checkpoints" / res.filename
    on_disk.parent.mkdir(parents=True)
    on_disk.write_bytes(b"PK" + bytes(1000))  # what an interrupted copy by another tool leaves
    state = download.status(["resnet18"])["resnet18"]
    assert not state.cached and state.problem and str(state).startswith("DAMAGED") and str(on_disk) in str(state)
    with pytest.raises(download.DownloadError, match="damaged") as info:
        download.fetch("resnet18", progress=False)
    assert f"Delete {on_disk}" in str(info.value) and len(str(info.value).splitlines()) <= 3
    assert cli.main(["prefetch", "resnet18"]) == 1
    assert f"Delete {on_disk}" in capsys.readouterr().err
    assert not server.requests  # nothing downloaded over it
    on_disk.unlink()
    server.files[res.filename] = b"still not the weights"
    with pytest.raises(download.DownloadError, match="SHA-256"):
        download.fetch("resnet18", progress=False)


# --- timm weights -------------------------------------------------------------------------------

TINY_TIMM = "test_resnet.r160_in1k"  # a tiny timm test model whose weights live on the hub


@pytest.fixture
def tiny_timm_weights(server):
    import timm
    from safetensors.torch import save

    torch_state = timm.create_model("test_resnet", pretrained=False).state_dict()
    server.files["model.safetensors"] = save({k: v.contiguous() for k, v in torch_state.items()})
    return torch_state


def test_timm_weights_come_through_the_course_download(env, server, tiny_timm_weights, monkeypatch):
    import torch

    from tlcourse import models

    monkeypatch.setenv("HF_HOME", str(env / "hf"))
    res = download.resource(TINY_TIMM)
    assert res.hf_repo == "timm/test_resnet.r160_in1k"
    assert server.requests == [] and download.status([TINY_TIMM])[TINY_TIMM].cached is False
    kwargs = models.timm_kwargs(TINY_TIMM)
    assert server.requests[0]["path"] == "/files/timm/test_resnet.r160_in1k/resolve/main/model.safetensors"
    import timm

    model = timm.create_model(TINY_TIMM, pretrained=True, **kwargs)
    name = next(iter(tiny_timm_weights))
    assert torch.equal(model.state_dict()[name], tiny_timm_weights[name])
    assert download.status([TINY_TIMM])[TINY_TIMM].cached
    n = len(server.requests)
    models.timm_kwargs(TINY_TIMM)
    assert len(server.requests) == n  # on disk and checked: no second download
    monkeypatch.setenv("TLCOURSE_ARCH", TINY_TIMM)
    assert download.default_names(settings.full_arch()) == ["pets", TINY_TIMM]


def test_failed_timm_download_is_one_short_message_within_seconds(env, monkeypatch):
    from tlcourse import models

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_HOME", str(env / "hf"))
    monkeypatch.delenv("TLCOURSE_WEIGHTS_URL")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")  # the hub, unreachable
    for arch in ("resnet18d", "resnet18.a1_in1k", "convnext_tiny"):
        start = time.perf_counter()
        with pytest.raises(download.DownloadError, match=f"timm {arch.split('.')[0]}") as info:
            models.timm_kwargs(arch)
        assert time.perf_counter() - start < 5, arch
        assert_short(info.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(download.DownloadError, match="HF_HUB_OFFLINE"):
        models.timm_kwargs("resnet18d")


def test_wrong_weights_are_rejected(env, server):
    res = download.resource("resnet18")
    server.files[res.filename] = b"not the weights"
    with pytest.raises(download.DownloadError, match="SHA-256"):
        download.fetch("resnet18", progress=False)
    assert leftovers(env / "torch") == ["hub", "hub/checkpoints"]


def test_no_server_at_all(env, monkeypatch):
    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TLCOURSE_DATA_URL", f"http://127.0.0.1:{port}/")
    start = time.perf_counter()
    with pytest.raises(download.DownloadError, match="refused the connection") as info:
        download.fetch("pets", progress=False, timeout=5)
    assert time.perf_counter() - start < 5
    assert_short(info.value)
    assert leftovers(env / "fastai") == ["archive"]


def test_server_that_never_answers(env, server):
    server.mode = "hang"
    with pytest.raises(download.DownloadError, match="did not answer in time") as info:
        download.fetch("pets", progress=False, timeout=0.3)
    assert_short(info.value)
    assert leftovers(env / "fastai") == ["archive"]


def test_missing_file_on_server(env, server):
    server.files.clear()
    with pytest.raises(download.DownloadError, match="HTTP 404"):
        download.fetch("pets", progress=False)


def test_proxy_failure_names_the_proxy(env, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TLCOURSE_DATA_URL", "http://course-data.invalid/")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("no_proxy")
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(download.DownloadError, match="proxy"):
        download.fetch("pets", progress=False, timeout=5)


def test_explained_wraps_third_party_network_errors():
    import urllib.error

    with pytest.raises(download.DownloadError, match="resnet34 weights") as info:
        with download.explained("resnet34 weights"):
            raise urllib.error.URLError(ConnectionRefusedError(111, "refused"))
    assert_short(info.value)


def test_fetch_url_any_file(env, server, tmp_path):
    server.files["notes.bin"] = b"0123456789" * 1000
    dest = tmp_path / "mine" / "notes.bin"
    assert download.fetch_url(server.url + "notes.bin", dest, size=10_000, progress=False) == dest
    assert dest.read_bytes() == server.files["notes.bin"]
    server.mode = "cut"
    other = tmp_path / "mine" / "other.bin"
    server.files["other.bin"] = bytes(5000)
    with pytest.raises(download.DownloadError, match="^Could not download other.bin: the download was"):
        download.fetch_url(server.url + "other.bin", other, progress=False, retries=0)
    assert sorted(p.name for p in other.parent.iterdir()) == ["notes.bin"]  # nothing partial left
