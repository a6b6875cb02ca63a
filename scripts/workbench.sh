#!/usr/bin/env bash
# Set up, then start the workbench (JupyterLab on notebooks/, markovian-workbench kernel by default).
# Arguments go to `workbench lab`: --dir, --port, --no-browser, and any JupyterLab option as given
# (e.g. --ServerApp.token=abc --allow-root).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/workbench lab "$@"
