"""The ``tlcourse`` command: run the course, make student copies, prefetch, check."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _notebooks(folder: Path) -> list[Path]:
    from tlcourse.notebooks import notebook_files

    found = notebook_files(folder)
    if not found:
        raise SystemExit(f"No notebooks (NN_topic.ipynb) found in {folder}; pass --notebooks DIR.")
    return found


def execute(path: Path, out_dir: Path, timeout: int = 1800) -> dict:
    """Run one notebook top to bottom in a fresh kernel; save the executed copy; summarise."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    from tlcourse import report

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start, error = time.perf_counter(), None
    try:
        client.execute()
    except CellExecutionError as err:
        error = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
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

    from tlcourse.settings import get_settings

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
        rows.append(execute(path, out))
        (out / "summary.json").write_text(json.dumps({"mode": mode, "notebooks": rows}, indent=1))
    text = _summary_markdown(rows, mode)
    (out / "summary.md").write_text(text)
    print(text)
    return 0 if all(r["ok"] for r in rows) else 1


def cmd_student(args: argparse.Namespace) -> int:
    """Write student copies: solutions removed, outputs cleared, the rest identical."""
    from tlcourse.notebooks import write_student_copies

    written = write_student_copies(Path(args.notebooks), Path(args.out))
    print(f"Wrote {len(written)} student notebooks to {args.out}")
    return 0


def cmd_colab(args: argparse.Namespace) -> int:
    """Rewrite every notebook's Colab badge and setup cell from notebooks.REPOSITORY."""
    import nbformat

    from tlcourse import notebooks

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


def cmd_check(args: argparse.Namespace) -> int:
    """A short report of the environment: versions, GPU, mode, what is cached or missing."""
    import torch

    from tlcourse import download, settings

    s = settings.get_settings()
    settings.check_versions()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)"
    print(f"GPU: {gpu}")
    print(f"mode: {s.mode} ({s.reason}); data set: {s.dataset}; architecture: {s.arch}")
    print(f"cache: {s.cache_dir}")
    for name, state in download.status().items():
        print(f"  {name:<28} {state}")
    return 0


def cmd_prefetch(args: argparse.Namespace) -> int:
    """Download everything full mode needs, ahead of a workshop."""
    from tlcourse import download

    try:
        download.prefetch(args.what or None)
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
