"""The ``tlcourse`` command: run the course, make student copies, prefetch, check."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from tlcourse import report
from tlcourse.notebooks import notebook_files, sync_colab, write_student_copies

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
#: Seconds one cell may run before ``tlcourse run`` gives up on its notebook (``--timeout``).
DEFAULT_TIMEOUT = 1800


def _last_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[-1] if text else type(err).__name__


def execute(path: Path, out_dir: Path, timeout: int = DEFAULT_TIMEOUT) -> dict:
    """Run one notebook in a fresh kernel, save the executed copy (as far as it got) and summarise;
    whatever stops it (an error, a cell over ``timeout`` seconds, a dead kernel) is its failure."""
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
        results = "; ".join(f"{k['name']}: {report.shown(k['value'])}" for k in r["results"])
        status = "ok" if r["ok"] else f"FAILED: {r['error']}"
        lines.append(f"| {r['notebook']} | {r['seconds']} | {status} | {results} |")
    lines.append(f"\nTotal: {sum(r['seconds'] for r in rows):.0f} s")
    return "\n".join(lines) + "\n"


def cmd_run(args: argparse.Namespace) -> int:
    """Execute every notebook in a fresh kernel and summarise (executed copies, summary.md/json)."""
    from tqdm.auto import tqdm

    from tlcourse.settings import get_settings  # torch and fastai: kept off the start of `tlcourse --help`

    if args.mode:
        os.environ["TLCOURSE_MODE"] = args.mode
    mode = get_settings().mode
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = notebook_files(Path(args.notebooks))
    if not paths:
        raise SystemExit(f"No notebooks (NN_topic.ipynb) found in {args.notebooks}; pass --notebooks DIR.")
    paths = [p for p in paths if not args.only or p.name.startswith(tuple(args.only))]
    rows, bar = [], tqdm(paths, desc="notebooks", unit="nb")
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
    """Write student copies without solutions (outputs cleared, the rest identical)."""
    written = write_student_copies(Path(args.notebooks), Path(args.out))
    print(f"Wrote {len(written)} student notebooks to {args.out}")
    return 0


def cmd_colab(args: argparse.Namespace) -> int:
    """Rewrite Colab badges and setup cells from the repository setting (notebooks.REPOSITORY)."""
    stale = []
    for path in notebook_files(Path(args.notebooks)):
        nb = nbformat.read(path, as_version=4)
        if sync_colab(nb, path.name):
            stale.append(path.name)
            if not args.check:
                nbformat.write(nb, path)
    verb = "out of date" if args.check else "updated"
    print(f"{len(stale)} notebooks {verb}" + (f": {', '.join(stale)}" if stale else ""))
    return 1 if args.check and stale else 0


def cache_contents(cache: Path) -> list[tuple[str, str]]:
    """``(folder/, "N files, size")`` for each top-level folder of the cache, sorted, then loose files."""
    def tally(name: str, paths) -> tuple[str, str]:
        files = [f for f in paths if f.is_file() and not f.name.startswith(".")]
        n = sum(f.stat().st_size for f in files)
        size = f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n / 1e3:,.1f} kB"
        return f"{name}/", f"{len(files)} files, {size}"

    rows = [tally(p.name, p.rglob("*")) for p in sorted(cache.iterdir()) if p.is_dir()]
    loose = tally("(files)", cache.iterdir())
    return rows if loose[1].startswith("0 files") else rows + [loose]


def _mode_needs(s) -> list[tuple[str, str]]:
    """(what, state) for everything the current mode uses: weights and data sets."""
    from tlcourse import models, settings  # torch and fastai: kept off the start of `tlcourse --help`
    from tlcourse.data import download

    source, name = settings.arch_source(s.arch)
    converted = s.cache_dir / "weights" / models.WEIGHTS_NAME
    if source != "offline":
        state = str(download.status([name])[name])
    elif models._converted_ok(converted):
        state = f"ready     {converted}"
    else:
        state = "not yet converted (done on first use from the installed package; no download)"
    data_sets = dict.fromkeys((s.dataset, s.few_shot_dataset, s.far_dataset))
    return [(f"weights {name}", state)] + [
        (f"data set {d}", str(download.status([d])[d]) if d in download.DATASETS
         else "ships with tlcourse (no download)") for d in data_sets]


def _section(heading: str, rows) -> bool:
    """Print ``heading`` and the pairs of ``rows()``; True if one is DAMAGED or it raises a ValueError."""
    print(heading)
    try:
        found = list(rows())
    except ValueError as err:
        print(f"  PROBLEM: {err}")
        return True
    print("\n".join(f"  {what:<36} {state}" for what, state in found) or "  (empty)")
    return any(str(state).startswith("DAMAGED") for _, state in found)


def cmd_check(args: argparse.Namespace) -> int:
    """Report versions, GPU, mode, what the mode needs, what is cached, what full mode would download."""
    import torch

    from tlcourse import settings  # torch and fastai: kept off the start of `tlcourse --help`
    from tlcourse.data import download

    settings.check_versions()
    print(f"GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none (CPU only)'}")
    try:
        s = settings.get_settings()
    except settings.CacheError as err:
        print(f"cache: PROBLEM. {err}")
        return 1
    print(f"mode: {s.mode} ({s.reason}); data set: {s.dataset}; architecture: {s.arch}")
    ok = settings.writable(s.cache_dir)
    print(f"cache: {s.cache_dir}" + ("" if ok else " (NOT writable: results and features are not "
                                          "kept; set TLCOURSE_CACHE to a writable folder)"))
    uses = _section(f"What {s.mode} mode uses:", lambda: _mode_needs(s))
    _section("In the cache:", lambda: cache_contents(s.cache_dir))
    downloads = _section("Downloads of full mode (`tlcourse prefetch` gets them now):",
                         lambda: download.status(download.default_names(settings.full_arch())).items())
    return 1 if not ok or uses or downloads else 0


def cmd_prefetch(args: argparse.Namespace) -> int:
    """Download what full mode needs (data sets, weights), ahead of a workshop."""
    from tlcourse import settings  # torch and fastai: kept off the start of `tlcourse --help`
    from tlcourse.data import download

    try:
        download.prefetch(args.what or download.default_names(settings.full_arch()))
    except (download.DownloadError, ValueError) as err:
        print(err, file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per ``cmd_*`` function, named after it; its docstring is the help."""
    parser = argparse.ArgumentParser(prog="tlcourse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for func in (cmd_run, cmd_student, cmd_colab, cmd_check, cmd_prefetch):
        command = sub.add_parser(func.__name__.removeprefix("cmd_"), help=func.__doc__.split("\n\n")[0])
        command.set_defaults(func=func)
    run, student, colab, _, prefetch = sub.choices.values()
    for command in (run, student, colab):
        command.add_argument("--notebooks", default=str(NOTEBOOKS), help="folder of NN_topic.ipynb files")
    run.add_argument("--mode", choices=["quick", "full"], help="override TLCOURSE_MODE")
    run.add_argument("--out", default="build/run", help="folder for executed copies and summary")
    run.add_argument("--only", nargs="*", help="notebook number prefixes to run, e.g. 00 03")
    run.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, help="seconds one cell may run "
                     f"before its notebook counts as failed (default {DEFAULT_TIMEOUT})")
    student.add_argument("--out", default="build/student", help="folder for the student copies")
    colab.add_argument("--check", action="store_true", help="only report notebooks that are out of date")
    prefetch.add_argument("what", nargs="*", help="names to fetch (default: everything)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
