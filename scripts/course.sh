#!/usr/bin/env bash
# Install the course into .venv and run every notebook headlessly (tlcourse run).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
.venv/bin/tlcourse run "$@"
