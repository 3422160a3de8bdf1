"""Downloads for full mode that either succeed completely or fail with one clear message.

Full mode needs two kinds of files from the internet: the Oxford-IIIT Pets archive
(fastai's copy, 811 MB) and, for ``TLCOURSE_ARCH=resnet...``, torchvision's ImageNet
weights.  Workshop Wi-Fi drops, proxies block, laptops sleep.  Here:

* every download goes to ``<name>.part`` first and is resumed from where it stopped
  (HTTP ``Range``) on the next attempt; only a file whose size and checksum match
  the published ones is renamed (atomically) to its real name;
* an archive is unpacked into a temporary folder that is renamed when complete;
* anything that goes wrong ends in one :class:`DownloadError` that says what
  failed and how to go on (offline ``quick`` mode, or ``tlcourse prefetch`` on a
  good connection).

Files go where fastai and torchvision look for them (``~/.fastai/archive``,
``~/.fastai/data``, ``$TORCH_HOME/hub/checkpoints``), so a copy either library
already downloaded is reused.  Environment variables for tests and mirrors:
``TLCOURSE_DATA_URL`` (base URL of data sets), ``TLCOURSE_WEIGHTS_URL`` (base URL
of weights), ``TLCOURSE_DATA_DIR`` (folder for archives and data instead of fastai's).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import socket
import ssl
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

try:
    import fcntl
except ImportError:  # Windows: no lock, downloads still work
    fcntl = None

from fastai.data.external import URLs, fastai_path

from tlcourse import __version__
from tlcourse.settings import get_settings

HOW_TO_GO_ON = ("To go on: work offline with TLCOURSE_MODE=quick (set it, then restart the "
                "kernel), or run `tlcourse prefetch` on a good connection and try again.")


class DownloadError(RuntimeError):
    """A download that failed; ``str()`` is the short message for the learner.

    ``what`` names the file, ``reason`` says what went wrong.  In Jupyter the
    error is shown as that message alone, without a traceback.
    """

    def __init__(self, what: str, reason: str, hint: str = HOW_TO_GO_ON):
        self.what, self.reason, self.hint = what, reason, hint
        super().__init__(f"Could not download {what}: {reason}.\n{hint}")

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


@dataclass(frozen=True)
class Resource:
    """One file the course can download, with what is known to check it."""

    name: str
    description: str
    kind: str  # "dataset" (a .tgz unpacked into a folder), "weights" or "file" (one file)
    filename: str
    default_base: str
    size: int | None = None  # bytes
    md5_first_mib: str | None = None  # fastai's check: MD5 of the first MiB
    sha256_prefix: str | None = None  # torchvision's check: start of the SHA-256 in the name

    @property
    def what(self) -> str:
        """The file and what it is, for messages."""
        return f"{self.filename} ({self.description})" if self.description else self.filename

    @property
    def stem(self) -> str:
        return self.filename.removesuffix(".tgz").removesuffix(".tar.gz")


#: Oxford-IIIT Pets as fastai publishes it: URL, size and checksum from
#: ``fastai/data/download_checks.py`` (a test keeps them in step with fastai).
PETS = Resource(
    name="pets", description="Oxford-IIIT Pets, 37 breeds of cats and dogs", kind="dataset",
    filename=URLs.PETS.rsplit("/", 1)[1], default_base=URLs.PETS.rsplit("/", 1)[0] + "/",
    size=811706944, md5_first_mib="e4db5c768afd933bb91f5f594d7417a4")
DATASETS = {"pets": PETS}


def weights_resource(arch: str) -> Resource:
    """The ImageNet weights fastai's ``vision_learner`` uses for torchvision model ``arch``."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError) as err:
        raise ValueError(f"{arch!r} is not a torchvision model with pretrained weights "
                         "(try resnet18, resnet34 or resnet50).") from err
    base, filename = weights.url.rsplit("/", 1)
    prefix = filename.rsplit("-", 1)[-1].split(".")[0] if "-" in filename else None
    return Resource(name=arch, description=f"torchvision {arch} ImageNet weights ({weights.name})",
                    kind="weights", filename=filename, default_base=base + "/", sha256_prefix=prefix)


def resource(name: str) -> Resource:
    """The :class:`Resource` called ``name``: a data set (``pets``) or a torchvision arch."""
    if name in DATASETS:
        return DATASETS[name]
    return weights_resource(name)


# --- where files go -------------------------------------------------------------------------

def archive_dir() -> Path:
    """Folder for downloaded archives: ``$TLCOURSE_DATA_DIR/archive`` or fastai's."""
    env = os.environ.get("TLCOURSE_DATA_DIR")
    return Path(env).expanduser() / "archive" if env else Path(fastai_path("archive"))


def data_dir() -> Path:
    """Folder for unpacked data sets: ``$TLCOURSE_DATA_DIR/data`` or fastai's."""
    env = os.environ.get("TLCOURSE_DATA_DIR")
    return Path(env).expanduser() / "data" if env else Path(fastai_path("data"))


def weights_dir() -> Path:
    """torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), where torchvision looks."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def url_of(res: Resource, base_url: str | None = None) -> str:
    """Download URL of ``res``: ``base_url`` or the environment's base, else the real one."""
    env = "TLCOURSE_DATA_URL" if res.kind == "dataset" else "TLCOURSE_WEIGHTS_URL"
    base = base_url or os.environ.get(env) or res.default_base
    return base.rstrip("/") + "/" + res.filename


def target_of(res: Resource) -> Path:
    """Where the downloaded file goes (the archive for data sets, the weights file otherwise)."""
    return (archive_dir() if res.kind == "dataset" else weights_dir()) / res.filename


def ready_path(res: Resource) -> Path:
    """What a finished fetch returns: the unpacked folder, or the weights file."""
    return data_dir() / res.stem if res.kind == "dataset" else target_of(res)


# --- checks ---------------------------------------------------------------------------------

def _md5_first_mib(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.md5(f.read(1 << 20)).hexdigest()


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks (weights and archives can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(res: Resource, path: Path) -> str | None:
    """None when ``path`` matches the published size and checksums, else what differs."""
    size = path.stat().st_size
    if res.size is not None and size != res.size:
        return f"it has {size:,} bytes instead of {res.size:,}"
    if res.md5_first_mib is not None and _md5_first_mib(path) != res.md5_first_mib:
        return "its checksum differs from the published one"
    if res.sha256_prefix is not None and not sha256_file(path).startswith(res.sha256_prefix):
        return "its SHA-256 differs from the published one"
    return None


# --- the transfer ---------------------------------------------------------------------------

class _Interrupted(Exception):
    """The body stopped before its end; what arrived is kept in the ``.part`` file."""


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:,.1f} MB"


def _transfer(url: str, part: Path, expected: int | None, timeout: float, progress: bool,
              desc: str) -> None:
    """Fetch ``url`` into ``part``, resuming what is already there when the server allows it."""
    from tqdm.auto import tqdm

    start = part.stat().st_size if part.exists() else 0
    if expected is not None and start > expected:
        part.unlink()
        start = 0
    if expected is not None and start == expected:
        return
    headers = {"User-Agent": f"tlcourse/{__version__}"}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        # A fresh opener reads HTTP(S)_PROXY / NO_PROXY now, not when urllib was first used.
        response = urllib.request.build_opener().open(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # our .part is not a prefix the server knows: start over
            part.unlink()
            return _transfer(url, part, expected, timeout, progress, desc)
        raise
    except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
        raise urllib.error.URLError(err) from None  # no answer at all: not worth retrying
    with response:
        content_range = response.headers.get("Content-Range", "")
        resumed = start > 0 and response.status == 206 and content_range.startswith(f"bytes {start}-")
        if start > 0 and response.status == 206 and not resumed:  # a range we did not ask for: start over
            part.unlink(missing_ok=True)
            response.close()
            return _transfer(url, part, expected, timeout, progress, desc)
        if not resumed:
            start = 0
        length = response.headers.get("Content-Length")
        length = int(length) if length is not None else None
        total = start + length if length is not None else expected
        received = 0
        with open(part, "ab" if resumed else "wb") as f, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=desc, disable=not progress, leave=False) as bar:
            while True:
                try:
                    chunk = response.read(1 << 20)
                except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
                    raise _Interrupted(f"the download was interrupted after {_mb(start + received)} "
                                       f"of {_mb(total)} ({type(err).__name__})") from None
                if not chunk:
                    break
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if length is not None and received < length:
            raise _Interrupted(f"the download was interrupted: the connection closed after "
                               f"{_mb(start + received)} of {_mb(total)}")


def _proxy_for(url: str) -> str | None:
    """The proxy urllib will use for ``url`` (from HTTP(S)_PROXY / NO_PROXY), or None."""
    parts = urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def _reason(err: BaseException, url: str) -> str:
    """The cause of a failed transfer, in words a learner can act on."""
    host = urlsplit(url).hostname or url
    proxy = _proxy_for(url)
    if isinstance(err, _Interrupted):
        return f"{err}; the part received is kept and the next attempt resumes it"
    if isinstance(err, urllib.error.HTTPError):
        if err.code == 407:
            return f"the proxy {proxy or ''} asks for a login (HTTP 407): check HTTPS_PROXY"
        return f"the server {host} answered HTTP {err.code} ({err.reason})"
    cause = err.reason if isinstance(err, urllib.error.URLError) else err
    text = str(cause)
    if isinstance(cause, ssl.SSLError):
        return ("the secure connection failed (certificate not trusted: common behind "
                "company proxies or with a wrong clock)")
    if "tunnel connection failed" in text.lower() or (proxy and isinstance(cause, ConnectionRefusedError)):
        return f"the proxy {proxy} refused the connection (check HTTPS_PROXY)"
    if isinstance(cause, socket.gaierror):
        return f"there is no network, or {host} cannot be found (DNS)"
    if isinstance(cause, ConnectionRefusedError):
        return f"{host} refused the connection (no network or a firewall?)"
    if isinstance(cause, (TimeoutError, socket.timeout)):
        return f"{host} did not answer in time (slow or no network)"
    if isinstance(cause, (ConnectionError, http.client.HTTPException)):
        return f"the connection to {host} broke ({type(cause).__name__})"
    if isinstance(cause, OSError) and cause.errno == 28:
        return "the disk is full"
    return f"{type(cause).__name__}: {text}"


#: Seconds of the first pause before a retry (doubles each time); tests set it to 0.
RETRY_DELAY = 1.0


def _download(res: Resource, url: str, target: Path, timeout: float, retries: int,
              progress: bool) -> Path:
    """Get ``res`` into ``target``, verified, or raise :class:`DownloadError`."""
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    if res.size is not None:
        have = shutil.disk_usage(target.parent).free + (part.stat().st_size if part.exists() else 0)
        need = res.size * (2.2 if res.kind == "dataset" else 1.05)
        if have < need:
            raise DownloadError(res.what, f"the disk has {_mb(have)} free and this needs "
                                f"about {_mb(int(need))} (the archive plus its unpacked copy)")
    attempt = 0
    while True:
        try:
            _transfer(url, part, res.size, timeout, progress, res.filename)
            break
        except _Interrupted as err:
            if attempt >= retries:
                raise DownloadError(res.what, _reason(err, url)) from None
            attempt += 1
            time.sleep(min(2.0 ** attempt, 10.0) * RETRY_DELAY)
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as err:
            raise DownloadError(res.what, _reason(err, url)) from None
    problem = verify(res, part)
    if problem:
        part.unlink(missing_ok=True)
        raise DownloadError(res.what, f"the file that arrived is corrupt or incomplete "
                            f"({problem}); it was deleted")
    os.replace(part, target)
    return target



def _extract(res: Resource, archive: Path) -> Path:
    """Unpack ``archive`` into a temporary folder, then rename it to its final place."""
    dest = data_dir() / res.stem
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{res.stem}.unpacking-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = dest.parent / f".{res.stem}.unpacking-{os.getpid()}"
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(tmp, filter="data")
        inner = [p for p in tmp.iterdir() if not p.name.startswith("._")]
        folder = inner[0] if len(inner) == 1 and inner[0].is_dir() else tmp
        os.replace(folder, dest)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        archive.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno == 28:
            reason = "the disk filled up while unpacking"
        else:
            reason = f"the archive could not be unpacked ({type(err).__name__}); it was deleted"
        raise DownloadError(res.what, reason) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (so two notebooks never download the same file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        if fcntl:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl:
                fcntl.flock(f, fcntl.LOCK_UN)


def fetch(name: str, *, base_url: str | None = None, timeout: float = 30.0, retries: int = 3,
          progress: bool = True, keep_archive: bool = True) -> Path:
    """Download (or find in the cache) resource ``name``; return its ready-to-use path.

    ``name`` is ``"pets"`` (returns the unpacked ``oxford-iiit-pet`` folder) or a
    torchvision architecture such as ``"resnet34"`` (returns the weights file, in
    the folder where torchvision looks for it).  Interrupted transfers are resumed
    up to ``retries`` times.  Raises :class:`DownloadError` with a short message
    when the file cannot be had; nothing half-downloaded is ever left under the
    real name.
    """
    res = resource(name)
    ready = ready_path(res)
    if ready.exists():
        return ready
    url = url_of(res, base_url)
    target = target_of(res)
    with _locked(archive_dir() / f"{res.filename}.lock"):
        if ready.exists():  # another process finished it while we waited
            return ready
        if not (target.is_file() and verify(res, target) is None):
            target.unlink(missing_ok=True)
            _download(res, url, target, timeout, retries, progress)
        if res.kind == "weights":
            return target
        folder = _extract(res, target)
        if not keep_archive:
            target.unlink(missing_ok=True)
        return folder


def fetch_url(url: str, dest: str | Path, *, size: int | None = None, md5_first_mib: str | None = None,
              sha256_prefix: str | None = None, timeout: float = 30.0, retries: int = 3,
              progress: bool = True) -> Path:
    """Download any ``url`` to ``dest`` the same careful way (resumable, checked, atomic).

    Give ``size`` and/or a checksum when you know them; without them a complete
    transfer (every byte the server announced) is all that can be checked.  Unlike
    :func:`fetch` it takes no lock: do not run two of them on the same ``dest`` at once.
    """
    dest = Path(dest).expanduser()
    if dest.is_file() and (size is None or dest.stat().st_size == size):
        return dest
    res = Resource(name=dest.name, description="", kind="file", filename=dest.name,
                   default_base=url.rsplit("/", 1)[0] + "/", size=size,
                   md5_first_mib=md5_first_mib, sha256_prefix=sha256_prefix)
    dest.parent.mkdir(parents=True, exist_ok=True)
    return _download(res, url, dest, timeout, retries, progress)


def pets_images(**kwargs) -> Path:
    """The folder of Oxford-IIIT Pets photos (``<Breed>_<n>.jpg``), downloaded if needed."""
    return fetch("pets", **kwargs) / "images"


# --- what the CLI wires --------------------------------------------------------------------

def default_names() -> list[str]:
    """What full mode needs: the Pets data set, plus weights when the arch is a torchvision one."""
    names = ["pets"]
    arch = os.environ.get("TLCOURSE_ARCH") or get_settings().arch
    if arch.startswith("resnet"):  # models.learner builds these from torchvision
        names.append(arch)
    return names


def prefetch(names: list[str] | None = None, *, base_url: str | None = None, timeout: float = 30.0,
             retries: int = 3, progress: bool = True, quiet: bool = False) -> dict[str, Path]:
    """Download everything full mode needs (or ``names``), ahead of time; return name -> path.

    Meant for ``tlcourse prefetch`` on a good connection before a workshop.  Each
    item prints one line; the first failure raises :class:`DownloadError`.
    """
    names = names or default_names()
    done: dict[str, Path] = {}
    for name in names:
        res = resource(name)
        cached = ready_path(res).exists()
        path = fetch(name, base_url=base_url, timeout=timeout, retries=retries, progress=progress)
        done[name] = path
        if not quiet:
            print(f"{'cached' if cached else 'fetched'}  {name:<10} {path}")
    return done


@dataclass(frozen=True)
class Status:
    """Whether one resource is on this machine; ``str()`` is one readable line."""

    name: str
    description: str
    cached: bool
    path: str  # where it is, or will be
    url: str
    size: int | None  # bytes, when known
    partial: int  # bytes of an interrupted download waiting to be resumed

    def __str__(self) -> str:
        if self.cached:
            return f"cached    {self.path}"
        size = f", {_mb(self.size)}" if self.size else ""
        resume = f"; {_mb(self.partial)} already downloaded, will resume" if self.partial else ""
        return f"missing   {self.description}{size}{resume} (`tlcourse prefetch` gets it)"


def status(names: list[str] | None = None) -> dict[str, Status]:
    """What is cached and what is missing, by name (for ``tlcourse check``); downloads nothing."""
    found = {}
    for name in names or default_names():
        res = resource(name)
        part = target_of(res).with_name(res.filename + ".part")
        found[name] = Status(name=name, description=res.description, cached=ready_path(res).exists(),
                             path=str(ready_path(res)), url=url_of(res), size=res.size,
                             partial=part.stat().st_size if part.exists() else 0)
    return found


def status_text(found: dict[str, Status] | None = None) -> str:
    """:func:`status` as a few readable lines, one per resource."""
    found = status() if found is None else found
    lines = [f"{name:<10} {state}" for name, state in found.items()]
    if any(not state.cached for state in found.values()):
        lines.append("Missing files are downloaded on first use in full mode; "
                     "`tlcourse prefetch` gets them now.")
    return "\n".join(lines)


@contextlib.contextmanager
def explained(what: str) -> Iterator[None]:
    """Turn a network failure inside a third-party download into one :class:`DownloadError`.

    ``with download.explained("resnet34 weights"): model = ...`` for code that
    downloads by itself (torch hub, timm, Hugging Face).
    """
    try:
        yield
    except DownloadError:
        raise
    except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError,
            http.client.HTTPException, ssl.SSLError) as err:
        raise DownloadError(what, _reason(err, getattr(err, "url", "") or "the server")) from None
