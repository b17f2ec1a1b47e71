#!/usr/bin/env bash
# Training speed on this CPU as it is, and as an AVX2-only CPU without fast bf16 (the slower CPU kind), side by side
# in one run: N steps of an experiment's first design as the experiment trains it, the median seconds per step (the
# first three steps left out), and the minutes the config's own max_steps would take at that speed.
#
#   bash benchmarks/cpu_kinds.sh [EXPERIMENT_CONFIG] [STEPS]     (default: configs/best_cpu.yaml, 12 steps)
#
# The AVX2 kind is emulated on this machine: torch's kernels dispatched at AVX2 (ATEN_CPU_CAPABILITY=avx2), oneDNN
# and MKL limited to AVX2 (ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS), fp32 weights and no autocast (what
# `dtype: auto` and `mixed_precision: auto` choose on a CPU without AVX512-BF16). Same cores, clocks and memory: it
# isolates the instruction set and the dtype, and is a lower bound for a real AVX2 machine, not a measurement of one
# (measured on an AMD EPYC Zen 4: fp32 on AVX2 kernels only 1.1x slower than its bf16; the AVX2-only machines this
# project also runs on take about 4x longer for the same work).
set -euo pipefail
cd "$(dirname "$0")/.."
EXPERIMENT=${1:-configs/best_cpu.yaml}
STEPS=${2:-12}
PY=${PYTHON:-.venv/bin/python}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
lscpu | grep -E "Model name" | sed 's/^ */cpu: /'
grep -q avx512_bf16 /proc/cpuinfo && echo "this CPU: AVX512-BF16 present (fast bf16)" || echo "this CPU: no AVX512-BF16"

# The training config the experiment gives its first design; prints its max_steps.
full_steps=$("$PY" -c '
import sys, yaml
from pathlib import Path
from poolattn.experiment import ExperimentConfig, train_config_for
cfg = ExperimentConfig.load(sys.argv[1])
tc = train_config_for(cfg, cfg.designs[0], Path(sys.argv[2]) / "unused")
Path(sys.argv[2], "train.yaml").write_text(yaml.safe_dump(tc.model_dump(mode="json"), sort_keys=False))
print(tc.max_steps)' "$EXPERIMENT" "$OUT")

median_step() {  # metrics.jsonl -> median seconds per step, first three steps left out
  "$PY" -c '
import json, sys, numpy as np
t = [json.loads(x)["elapsed_s"] for x in open(sys.argv[1]) if x.strip()]
print(f"{float(np.median(np.diff(t)[2:])):.2f}")' "$1"
}

common=(--set max_steps="$STEPS" --set progress=false --set max_time_minutes=null --set snapshot_steps=[])
failed() { echo "training ($1) failed:"; tail -20 "$OUT/$1.log"; exit 1; }
"$PY" -m poolattn.cli train "$OUT/train.yaml" --set output_dir="$OUT/native" "${common[@]}" >"$OUT/native.log" 2>&1 \
  || failed native
ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
  "$PY" -m poolattn.cli train "$OUT/train.yaml" --set output_dir="$OUT/avx2" "${common[@]}" \
  --set model.dtype=float32 --set mixed_precision=no >"$OUT/avx2.log" 2>&1 || failed avx2

printf '\n%s, first design, %s timed steps each\n' "$EXPERIMENT" "$((STEPS - 3))"
printf '| kind | weights | s/step (median) | %s steps, min |\n|---|---|---:|---:|\n' "$full_steps"
for kind in native avx2; do
  s=$(median_step "$OUT/$kind/metrics.jsonl")
  w=$([ $kind = native ] && echo "dtype auto" || echo "fp32, AVX2 kernels")
  printf '| %s | %s | %s | %s |\n' "$kind" "$w" "$s" "$("$PY" -c "print(f'{$s * $full_steps / 60:.1f}')")"
done
