"""Full mode's dress rehearsal: a local mirror of what full mode downloads, and a runner.

Full mode downloads Oxford-IIIT Pets (fastai's ``oxford-iiit-pet.tgz``) and ImageNet
weights.  :func:`build_mirror` makes stand-ins for them on this machine, with no network:

* ``data/oxford-iiit-pet.tgz``: the packaged Pets sample (``data.pets_dir()``) in the
  official archive's layout and naming (``oxford-iiit-pet/images/<Breed>_<n>.jpg``,
  with an ``annotations`` folder and one of the stray ``.mat`` files the real
  ``images`` folder holds, and one photo stored in grey, as some real ones are);
* ``weights/...``: weights of each architecture, randomly initialised and saved where
  the real server keeps them (torchvision's ``<arch>-<hash>.pth``, timm's Hugging Face
  ``<repo>/resolve/main/<file>``);
* ``manifest.json``: the size, MD5 of the first MiB and SHA-256 of each file, keyed by
  file name: what the mirror's files are expected to be, in place of the published
  figures (which only the real files match).

:func:`run_notebook` serves the mirror on 127.0.0.1 and executes one notebook with
``TLCOURSE_MODE=full TLCOURSE_SCALE=smoke``, every download URL pointed at the mirror.
Run as a script, it does that inside ``unshare -rn`` (no network but loopback) when it
can; ``tests/test_full_mode.py`` calls it so.  The real checks stay in force: the
download code verifies each file against the manifest's figures (``TLCOURSE_CHECKSUMS``,
see ``download.resource``), with the full SHA-256 where the real name carries only its prefix.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import sys
import tarfile
import threading
import time
import traceback
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _describe(path: Path) -> dict:
    data = path.read_bytes()
    return {"size": len(data), "md5_first_mib": hashlib.md5(data[: 1 << 20]).hexdigest(),
            "sha256": hashlib.sha256(data).hexdigest()}


def pets_archive(target: Path, per_breed: int = 10) -> Path:
    """``per_breed`` photos of each breed of the packaged Pets sample as ``oxford-iiit-pet.tgz``,
    in the official layout.

    Ten a breed (all 370 packaged photos) leaves every breed at least two training photos
    after full mode's seeded split (``data.full_pets``): lesson 05's smallest near sizes
    at smoke scale are 1 and 2 a class.
    """
    from PIL import Image

    from tlcourse import data

    by_breed: dict[str, list[Path]] = {}
    for photo in sorted(data.pets_dir().glob("*.jpg")):
        by_breed.setdefault(photo.name.rsplit("_", 1)[0], []).append(photo)
    photos = sorted((p for group in by_breed.values() for p in group[:per_breed]), key=lambda p: p.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as tar:
        def add(name: str, payload: bytes) -> None:
            info = tarfile.TarInfo(f"oxford-iiit-pet/{name}")
            info.size, info.mtime = len(payload), 0
            tar.addfile(info, io.BytesIO(payload))

        for i, photo in enumerate(photos):
            payload = photo.read_bytes()
            if i == 1:  # one photo in grey, as a few real ones are
                buffer = io.BytesIO()
                with Image.open(photo) as im:
                    im.convert("L").save(buffer, format="JPEG", quality=90)
                payload = buffer.getvalue()
            add(f"images/{photo.name}", payload)
        add("images/Abyssinian_100.mat", b"MATLAB 5.0 MAT-file, not an image\n")
        add("annotations/README", b"A stand-in for the official annotations folder.\n")
    return target


def weights_file(arch: str, target: Path) -> Path:
    """Randomly initialised weights of ``arch`` in the format its real download has."""
    import torch

    from tlcourse import settings

    source, name = settings.arch_source(arch)
    target.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        if source == "torchvision":
            import torchvision

            torch.save(getattr(torchvision.models, name)().state_dict(), target)
        else:
            import timm
            from safetensors.torch import save_file

            model = timm.create_model(name, pretrained=False)
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            if target.suffix == ".safetensors":
                save_file(state, str(target))
            else:
                torch.save(state, target)
    return target


def build_mirror(folder: Path, archs: list[str]) -> Path:
    """Write the mirror (data, weights of ``archs``, manifest) into ``folder``; return it."""
    from tlcourse import settings
    from tlcourse.data import download

    manifest = {}
    archive = pets_archive(folder / "data" / download.PETS.filename)
    manifest[archive.name] = _describe(archive)
    for arch in archs:
        if settings.arch_source(arch)[0] == "offline":
            continue
        res = download.weights_resource(arch)
        path = weights_file(arch, folder / "weights" / (res.remote or res.filename))
        manifest[res.filename] = _describe(path)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def serve(folder: Path) -> tuple[ThreadingHTTPServer, str]:
    """Serve ``folder`` on 127.0.0.1 (a free port) in a thread; return the server and its URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def rehearsal_env(work: Path, mirror: Path, url: str, arch: str | None) -> dict[str, str]:
    """The environment of a rehearsal kernel: full mode at smoke scale, everything local."""
    env = dict(os.environ)
    env.pop("TLCOURSE_ARCH", None)
    env.update(TLCOURSE_MODE="full", TLCOURSE_SCALE="smoke", TLCOURSE_CACHE=str(work / "cache"),
               TLCOURSE_DATA_DIR=str(work / "fastai"), TORCH_HOME=str(work / "torch"),
               HF_HOME=str(work / "hf"), TLCOURSE_DATA_URL=f"{url}/data/",
               TLCOURSE_WEIGHTS_URL=f"{url}/weights/", TLCOURSE_CHECKSUMS=str(mirror / "manifest.json"),
               MPLBACKEND="Agg",
               # The hub itself is never asked (the download code takes timm weights from the
               # mirror); a call that bypasses it fails at once instead of retrying for a minute.
               HF_HUB_OFFLINE="1",
               # Two notebooks run at once on two cores: one torch thread each, and lesson 05's
               # grid trains in the notebook's own process (no second worker process).
               TLCOURSE_THREADS="1", TLCOURSE_WORKERS="1",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    if arch:
        env["TLCOURSE_ARCH"] = arch
    return env


def _slowest(nb, n: int = 4) -> list[tuple[int, float]]:
    """The ``n`` slowest code cells of an executed notebook: (index, seconds)."""
    from datetime import datetime

    times = []
    for i, cell in enumerate(nb.cells):
        stamps = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in stamps and "shell.execute_reply" in stamps:
            begin, end = (datetime.fromisoformat(stamps[k].replace("Z", "+00:00"))
                          for k in ("iopub.execute_input", "shell.execute_reply"))
            times.append((i, round((end - begin).total_seconds(), 1)))
    return sorted(times, key=lambda t: -t[1])[:n]


def run_notebook(notebook: Path, work: Path, mirror: Path, arch: str | None = None,
                 timeout: int = 600) -> dict:
    """Serve ``mirror`` and execute ``notebook`` in full mode at smoke scale; return what happened."""
    import nbclient
    import nbformat

    httpd, url = serve(mirror)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(rehearsal_env(work, mirror, url, arch))
    start = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    result = {"notebook": notebook.name, "arch": arch or "default", "ok": True, "error": None}
    try:
        nb = nbformat.read(notebook, as_version=4)
        client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                         resources={"metadata": {"path": str(notebook.parent)}})
        try:
            client.execute()
        except nbclient.exceptions.CellExecutionError as err:
            result.update(ok=False, error=str(err)[-3000:])
        printed = [o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream"]
        result["settings"] = next((t for t in printed if "tlcourse is in" in t), "")[:2000]
        result["slowest_cells"] = _slowest(nb)
        nbformat.write(nb, work / f"executed-{arch or 'default'}-{notebook.name}")
    except Exception:  # the harness itself failed: say where
        result.update(ok=False, error=traceback.format_exc()[-3000:])
    finally:
        os.environ.clear()
        os.environ.update(saved)
        httpd.shutdown()
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--work", type=Path, required=True, help="folder for caches and downloads")
    parser.add_argument("--mirror", type=Path, required=True, help="a folder made by build_mirror")
    parser.add_argument("--arch", default=None, help="TLCOURSE_ARCH (default: full mode's)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the result")
    args = parser.parse_args(argv)
    result = run_notebook(args.notebook, args.work, args.mirror, args.arch)
    args.out.write_text(json.dumps(result))
    print(json.dumps({k: v for k, v in result.items() if k != "settings"})[:4000])
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
