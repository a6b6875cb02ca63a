#!/usr/bin/env bash
# Set up, then run every quality gate and test. Extra arguments go to pytest (e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
bin=.venv/bin
echo "== ruff"; "$bin/ruff" check . && "$bin/ruff" format --check .
echo "== mypy"; "$bin/mypy"
echo "== pytest"
# pytest exits 5 when it collects nothing: that is a failure here too (set -e).
"$bin/python" -m pytest "$@"
echo "== notebooks"
# Run through the venv's python so the notebooks' python3 kernel is the venv's.
"$bin/python" -m pytest --nbmake notebooks/ -p no:cacheprovider --nbmake-timeout=300
