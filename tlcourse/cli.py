"""The ``tlcourse`` command: run the course, make student copies, prefetch, check."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tlcourse import notebooks, report
from tlcourse.notebooks import notebook_files, write_student_copies

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _notebooks(folder: Path) -> list[Path]:
    found = notebook_files(folder)
    if not found:
        raise SystemExit(f"No notebooks (NN_topic.ipynb) found in {folder}; pass --notebooks DIR.")
    return found


#: Seconds one cell may run before ``tlcourse run`` gives up on its notebook (``--timeout``).
DEFAULT_TIMEOUT = 1800


def _last_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[-1] if text else type(err).__name__


def execute(path: Path, out_dir: Path, timeout: int = DEFAULT_TIMEOUT) -> dict:
    """Run one notebook top to bottom in a fresh kernel; save the executed copy; summarise.

    Whatever stops the notebook (an error in a cell, a cell over ``timeout`` seconds, a
    kernel that dies) is recorded as its failure; the executed copy, as far as it got,
    is written in every case.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start, error = time.perf_counter(), None
    try:
        client.execute()
    except CellTimeoutError:
        error = (f"a cell ran longer than {timeout} s and was stopped "
                 "(a slow machine? rerun with a larger --timeout)")
    except DeadKernelError as err:
        error = f"the kernel died ({_last_line(err)}; out of memory?)"
    except CellExecutionError as err:
        error = _last_line(err)
    except Exception as err:  # the kernel could not start, a broken notebook, ...
        error = f"{type(err).__name__}: {_last_line(err)}"
    seconds = time.perf_counter() - start
    nbformat.write(nb, out_dir / path.name)
    return {"notebook": path.name, "seconds": round(seconds, 1), "ok": error is None,
            "error": error, "results": report.collect(nb)}


def _summary_markdown(rows: list[dict], mode: str) -> str:
    lines = [f"# tlcourse run ({mode} mode)", "", "| notebook | time (s) | status | key results |",
             "| --- | ---: | --- | --- |"]
    for r in rows:
        results = "; ".join(f"{k['name']}: {k['value']:.3f}" if isinstance(k["value"], float)
                            else f"{k['name']}: {k['value']}" for k in r["results"])
        status = "ok" if r["ok"] else f"FAILED: {r['error']}"
        lines.append(f"| {r['notebook']} | {r['seconds']} | {status} | {results} |")
    lines.append(f"\nTotal: {sum(r['seconds'] for r in rows):.0f} s")
    return "\n".join(lines) + "\n"


def cmd_run(args: argparse.Namespace) -> int:
    """Execute every notebook in order and write executed copies plus a summary."""
    from tqdm.auto import tqdm

    from tlcourse.settings import get_settings  # torch and fastai: kept off the start of `tlcourse --help`

    if args.mode:
        os.environ["TLCOURSE_MODE"] = args.mode
    mode = get_settings().mode
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = _notebooks(Path(args.notebooks))
    if args.only:
        paths = [p for p in paths if any(p.name.startswith(o) for o in args.only)]
    rows = []
    bar = tqdm(paths, desc="notebooks", unit="nb")
    for path in bar:
        bar.set_postfix_str(path.name)
        rows.append(execute(path, out, timeout=args.timeout))
        (out / "summary.json").write_text(json.dumps({"mode": mode, "notebooks": rows}, indent=1))
        (out / "summary.md").write_text(_summary_markdown(rows, mode))  # complete after each one
    text = _summary_markdown(rows, mode)
    (out / "summary.md").write_text(text)
    print(text)
    return 0 if all(r["ok"] for r in rows) else 1


def cmd_student(args: argparse.Namespace) -> int:
    """Write student copies: solutions removed, outputs cleared, the rest identical."""
    written = write_student_copies(Path(args.notebooks), Path(args.out))
    print(f"Wrote {len(written)} student notebooks to {args.out}")
    return 0


def cmd_colab(args: argparse.Namespace) -> int:
    """Rewrite every notebook's Colab badge and setup cell from notebooks.REPOSITORY."""
    import nbformat

    stale = []
    for path in notebooks.notebook_files(Path(args.notebooks)):
        nb = nbformat.read(path, as_version=4)
        if notebooks.sync_colab(nb, path.name):
            stale.append(path.name)
            if not args.check:
                nbformat.write(nb, path)
    verb = "out of date" if args.check else "updated"
    print(f"{len(stale)} notebooks {verb}" + (f": {', '.join(stale)}" if stale else ""))
    return 1 if args.check and stale else 0


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n / 1e3:,.1f} kB"


def cache_contents(cache: Path) -> list[tuple[str, int, int]]:
    """(folder, files, bytes) for each top-level folder of the course cache, sorted."""
    rows = []
    for folder in sorted(p for p in cache.iterdir() if p.is_dir()):
        files = [f for f in folder.rglob("*") if f.is_file() and not f.name.startswith(".")]
        rows.append((folder.name, len(files), sum(f.stat().st_size for f in files)))
    loose = [f for f in cache.iterdir() if f.is_file() and not f.name.startswith(".")]
    if loose:
        rows.append(("(files)", len(loose), sum(f.stat().st_size for f in loose)))
    return rows


def _mode_needs(s) -> list[tuple[str, str]]:
    """(what, state) for everything the current mode uses: weights and data sets."""
    from tlcourse import models, settings  # torch and fastai: kept off the start of `tlcourse --help`
    from tlcourse.data import download  # torch and fastai: kept off the start of `tlcourse --help`

    rows = []
    source, name = settings.arch_source(s.arch)
    if source == "offline":
        converted = s.cache_dir / "weights" / models.WEIGHTS_NAME
        state = (f"ready     {converted}" if models._converted_ok(converted) else
                 "not yet converted (done on first use from the installed package; no download)")
        rows.append((f"weights {name}", state))
    else:
        rows.append((f"weights {name}", str(download.status([name])[name])))
    for field in ("dataset", "few_shot_dataset", "far_dataset"):
        data_set = getattr(s, field, None)
        if not data_set or any(data_set == r[0].split(" ", 1)[-1] for r in rows):
            continue
        if data_set in download.DATASETS:
            rows.append((f"data set {data_set}", str(download.status([data_set])[data_set])))
        else:
            rows.append((f"data set {data_set}", "ships with tlcourse (no download)"))
    return rows


def cmd_check(args: argparse.Namespace) -> int:
    """A short report of the environment: versions, GPU, mode, what the mode needs, what is
    cached, and what full mode would download."""
    import torch

    from tlcourse import settings  # torch and fastai: kept off the start of `tlcourse --help`
    from tlcourse.data import download  # torch and fastai: kept off the start of `tlcourse --help`

    settings.check_versions()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)"
    print(f"GPU: {gpu}")
    try:
        s = settings.get_settings()
    except settings.CacheError as err:
        print(f"cache: PROBLEM. {err}")
        return 1
    print(f"mode: {s.mode} ({s.reason}); data set: {s.dataset}; architecture: {s.arch}")
    ok = settings.writable(s.cache_dir)
    print(f"cache: {s.cache_dir}" + ("" if ok else " (NOT writable: results and features are not "
                                          "kept; set TLCOURSE_CACHE to a writable folder)"))
    code = 0 if ok else 1
    print(f"What {s.mode} mode uses:")
    try:
        for what, state in _mode_needs(s):
            print(f"  {what:<36} {state}")
            code = 1 if state.startswith("DAMAGED") else code
    except ValueError as err:  # an unknown TLCOURSE_ARCH
        print(f"  PROBLEM: {err}")
        code = 1
    print("In the cache:")
    rows = cache_contents(s.cache_dir)
    for folder, n, size in rows:
        print(f"  {folder + '/':<36} {n} files, {_size(size)}")
    if not rows:
        print("  (empty)")
    print("Downloads of full mode (`tlcourse prefetch` gets them now):")
    try:
        for name, state in download.status(download.default_names(settings.full_arch())).items():
            print(f"  {name:<36} {state}")
            code = 1 if state.problem else code
    except ValueError as err:
        print(f"  PROBLEM: {err}")
        code = 1
    return code


def cmd_prefetch(args: argparse.Namespace) -> int:
    """Download everything full mode needs, ahead of a workshop."""
    from tlcourse import settings  # torch and fastai: kept off the start of `tlcourse --help`
    from tlcourse.data import download  # torch and fastai: kept off the start of `tlcourse --help`

    try:
        download.prefetch(args.what or download.default_names(settings.full_arch()))
    except (download.DownloadError, ValueError) as err:
        print(err, file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlcourse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute every notebook in a fresh kernel and summarise")
    run.add_argument("--mode", choices=["quick", "full"], help="override TLCOURSE_MODE")
    run.add_argument("--notebooks", default=str(NOTEBOOKS), help="folder of NN_topic.ipynb files")
    run.add_argument("--out", default="build/run", help="folder for executed copies and summary")
    run.add_argument("--only", nargs="*", help="notebook number prefixes to run, e.g. 00 03")
    run.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT,
                     help=f"seconds one cell may run before its notebook counts as failed "
                          f"(default {DEFAULT_TIMEOUT})")
    run.set_defaults(func=cmd_run)
    student = sub.add_parser("student", help="write student copies without solutions")
    student.add_argument("--notebooks", default=str(NOTEBOOKS), help="folder of NN_topic.ipynb files")
    student.add_argument("--out", default="build/student", help="folder for the student copies")
    student.set_defaults(func=cmd_student)
    colab = sub.add_parser("colab", help="rewrite Colab badges and setup cells from the repository setting")
    colab.add_argument("--notebooks", default=str(NOTEBOOKS), help="folder of NN_topic.ipynb files")
    colab.add_argument("--check", action="store_true", help="only report notebooks that are out of date")
    colab.set_defaults(func=cmd_colab)
    check = sub.add_parser("check", help="report versions, GPU, mode and what is cached")
    check.set_defaults(func=cmd_check)
    prefetch = sub.add_parser("prefetch", help="download what full mode needs (data sets, weights)")
    prefetch.add_argument("what", nargs="*", help="names to fetch (default: everything)")
    prefetch.set_defaults(func=cmd_prefetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
