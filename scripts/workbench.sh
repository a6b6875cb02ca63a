#!/usr/bin/env bash
# Set up, then start the workbench (JupyterLab on notebooks/). Arguments go to `workbench lab`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/workbench lab "$@"
