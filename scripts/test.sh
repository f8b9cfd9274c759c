#!/usr/bin/env bash
# Install nbtrack with everything its tests need (Chromium, PostgreSQL), then run the whole suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k capture -x
source "$(dirname "$0")/_venv.sh"
# torch first, pinned to the release whose CPU build this machine keeps on disk (/opt/wheels, in
# pip's find-links): ~190 MB instead of PyPI's CUDA build (~6.5 GB with its nvidia packages, which
# once filled CI's disk). No test needs a GPU. Where that file is absent, pip takes 2.13.0 from PyPI.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
bash scripts/install_browser.sh
bash scripts/install_postgres.sh
python -m ruff check nbtrack tests benchmarks
# The 20 slowest tests, so a test that grows slow shows in every full run. Two workers
# (pytest-xdist), each test file in one of them: module fixtures (a JupyterLab, a team server)
# start once, and a test waiting on its kernel leaves the other core to the other worker.
python -m pytest -n 2 --dist loadfile --durations=20 "$@"
