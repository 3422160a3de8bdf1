"""Full mode's dress rehearsal: every notebook in full mode at smoke scale, offline, on a CPU.

``TLCOURSE_MODE=full TLCOURSE_SCALE=smoke`` keeps full mode's data set (all of Oxford-IIIT
Pets, downloaded), architecture (a timm ConvNeXt, downloaded) and code path, at 32 pixels
and one photo a breed.  The downloads come from a local mirror (``tests/rehearsal.py``:
the packaged Pets sample as a Pets-shaped archive, randomly initialised weights) served on
127.0.0.1 through the real download code, inside ``unshare -rn`` (no network but
loopback).  The notebooks run two at a time (one torch thread each), each with its own
empty cache, so each one goes through "downloaded on first use".
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tlcourse import settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import rehearsal  # noqa: E402

#: (notebook number, TLCOURSE_ARCH or None for full mode's default, expected failure or None)
#: The longest first, so that the two slots finish at about the same time.
JOBS = [("05", None, None), ("05", "resnet34", None), ("04", None, None), ("03", None, None), ("00", None, None),
        ("02", None, None), ("01", None, None), ("06", None, None),
        ("03", "resnet34", None), ("04", "resnet34", None)]


def _job_id(job) -> str:
    return f"{job[0]}-{job[1] or 'default'}"


def _network_cut_prefix() -> list[str]:
    """``unshare -rn`` with loopback up, when this machine allows it (else nothing, with a warning)."""
    probe = ["unshare", "-rn", "sh", "-c", "ip link set lo up && true"]
    try:
        if shutil.which("unshare") and subprocess.run(probe, capture_output=True).returncode == 0:
            return ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']
    except OSError:
        pass
    warnings.warn("unshare -rn is not available here: the rehearsal runs with the network on "
                  "(every URL still points at the local mirror)")
    return []


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Run every job (two at a time) once; ``{job id: result}``."""
    work = tmp_path_factory.mktemp("rehearsal")
    start = time.perf_counter()
    archs = [settings.FULL_ARCH] + sorted({arch for _, arch, _ in JOBS if arch})
    mirror = rehearsal.build_mirror(work / "mirror", archs)
    prefix = _network_cut_prefix()
    jobs = list(JOBS)

    def run(job):
        number, arch, _ = job
        notebook = next((ROOT / "notebooks").glob(f"{number}_*.ipynb"))
        out = work / f"{_job_id(job)}.json"
        cmd = prefix + [sys.executable, str(Path(rehearsal.__file__)), str(notebook),
                        "--work", str(work / _job_id(job)), "--mirror", str(mirror), "--out", str(out)]
        cmd += ["--arch", arch] if arch else []
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
        if out.is_file():
            return _job_id(job), json.loads(out.read_text())
        return _job_id(job), {"ok": False, "error": done.stdout[-3000:] + done.stderr[-3000:]}

    with ThreadPoolExecutor(max_workers=2) as pool:
        found = dict(pool.map(run, jobs))
    found["_seconds"] = round(time.perf_counter() - start, 1)
    print(f"full-mode rehearsal: {found['_seconds']} s in all; "
          + ", ".join(f"{k} {v.get('seconds')} s" for k, v in found.items() if k != "_seconds"))
    return found


def _params():
    for job in JOBS:
        marks = []
        if job[2]:
            marks.append(pytest.mark.xfail(reason=job[2], strict=True))
        yield pytest.param(job, id=_job_id(job), marks=marks)


@pytest.mark.parametrize("job", _params())
def test_notebook_runs_in_full_mode_offline(job, results):
    result = results[_job_id(job)]
    assert result["ok"], f"{_job_id(job)} failed in the full-mode rehearsal:\n{result['error']}"
    assert "FULL mode at SMOKE scale" in result["settings"]
    expected_arch = job[1] or settings.FULL_ARCH
    assert expected_arch in result["settings"]


def test_the_rehearsal_stays_within_its_budget(results):
    """The ten runs took 259 s in CI on an idle 2-core machine, and 531 s on the same kind of
    machine on a day it ran about twice as slow (the code before and after a change timed alike,
    side by side).  The budget leaves room for such a day and still fails a rehearsal that grows
    by half on it."""
    assert results["_seconds"] < 800, results["_seconds"]


def test_resized_copy_is_made_once_and_remade_when_incomplete(tmp_path):
    from tlcourse import data

    files = sorted(p.name for p in data.pets_dir().glob("*.jpg"))[:6]
    folder = data.resized_copy(data.pets_dir(), files, 48, tmp_path, progress=False)
    assert sorted(p.name for p in folder.glob("*.jpg")) == files
    from PIL import Image

    with Image.open(folder / files[0]) as im:
        assert min(im.size) == 48 and im.mode == "RGB"
    stamp = (folder / files[1]).stat().st_mtime_ns
    assert data.resized_copy(data.pets_dir(), files, 48, tmp_path, progress=False) == folder
    assert (folder / files[1]).stat().st_mtime_ns == stamp  # not made again
    (folder / "manifest.json").unlink()  # as if interrupted before the end
    (folder / files[2]).unlink()
    again = data.resized_copy(data.pets_dir(), files, 48, tmp_path, progress=False)
    assert again == folder and sorted(p.name for p in folder.glob("*.jpg")) == files
    assert (folder / files[1]).stat().st_mtime_ns == stamp  # what was there is kept
