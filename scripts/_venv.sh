# Sourced by the other scripts: create (once) and activate the project's virtual environment.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    # Debian's python3 ships venv separately.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-venv python3-pip >/dev/null
      rm -rf .venv && "$PYTHON" -m venv .venv
    else
      echo "nbtrack: '$PYTHON -m venv' failed; install python3-venv (apt-get install python3-venv)." >&2
      exit 1
    fi
  fi
fi
# shellcheck disable=SC1091
source .venv/bin/activate
python -m pip install -q --upgrade pip
