#!/usr/bin/env bash
# Install nbtrack with everything its tests need, then run the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k capture -x
source "$(dirname "$0")/_venv.sh"
python -m pip install -q -e ".[test]"
bash scripts/install_browser.sh
python -m ruff check nbtrack tests benchmarks
python -m pytest "$@"
