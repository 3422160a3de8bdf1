#!/usr/bin/env bash
# Install the course with its test extra into .venv and run every test, notebooks included.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
TLCOURSE_MODE=quick .venv/bin/python -m pytest "$@"
