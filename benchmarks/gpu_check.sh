#!/usr/bin/env bash
# GPU acceptance check, under 5 minutes on one modern GPU: prints one PASS / FAIL / SKIP line per check and a summary;
# exits 1 if any check failed. On a CPU-only machine the CUDA-only checks are SKIPped (the CPU ones still run).
#
#   bash benchmarks/gpu_check.sh            # from the repository root; output also kept in runs/gpu_check/
#   DEVICE=cuda:1 bash benchmarks/gpu_check.sh
#
# Checks: (1) tests/test_cuda.py: tiny models and SmolLM2 on CUDA, auto placement and bf16, GPU = CPU and
# bidirectional equal under SDPA / eager (and flash-attention 2 where installed), GradCache = plain step with
# dropout; (2) the attention switch under every installed implementation (tests/test_attention.py);
# (3) encode throughput (benchmarks/encode.py, 500 sentences); (4) train throughput (benchmarks/train.py, batch 32
# and 256 with GradCache); (5) two designs of configs/paper.yaml on SmolLM2 at 5 steps with the paper's settings
# (batch 256, chunk 32, lr 1e-5, max length 512, bf16), evaluated on STSBenchmark, report written;
# (6) peak host RAM per rank when two ranks load SmolLM2 (benchmarks/load_memory.py).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEVICE=${DEVICE:-auto}
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
pass=0; fail=0; skip=0
result() {  # name status detail
  printf '%-4s %-28s %s\n' "$2" "$1" "$3"
  case $2 in PASS) pass=$((pass + 1));; FAIL) fail=$((fail + 1));; SKIP) skip=$((skip + 1));; esac
}
run() {  # name timeout_s command...: PASS on exit 0, FAIL otherwise (log in $OUT/<name>.log)
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
    result "$name" PASS "$((SECONDS - t0)) s  $(grep -E '^(RESULT|[0-9]+ passed)' "$OUT/$name.log" | tail -1 | cut -c1-150)"
  else
    result "$name" FAIL "exit $? after $((SECONDS - t0)) s; last lines of $OUT/$name.log:"
    tail -5 "$OUT/$name.log" | sed 's/^/       /'
  fi
}

CUDA=$($PY - <<'EOF'
import torch
print(torch.cuda.device_count() if torch.cuda.is_available() else 0)
EOF
)
$PY - <<EOF
import importlib.util, torch
from poolattn.device import resolve_device
from poolattn.backbone import resolve_dtype
d = resolve_device("$DEVICE")
name = torch.cuda.get_device_name(d) if d.type == "cuda" else d.type
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), device $DEVICE -> {d} ({name}), dtype auto -> "
      f"{resolve_dtype('auto', d)}, flash-attn {'installed' if importlib.util.find_spec('flash_attn') else 'absent'}")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if [ "$CUDA" -gt 0 ]; then
  run cuda-tests 240 $PY -m pytest -q -m "" -p no:cacheprovider tests/test_cuda.py
else
  result cuda-tests SKIP "no CUDA device (tests/test_cuda.py skips itself)"
fi
run attention-implementations 120 $PY -m pytest -q -p no:cacheprovider tests/test_attention.py \
  -k "implementation or bidirectional_lets"
if [ "$CUDA" -gt 0 ]; then
  run encode-throughput 120 $PY benchmarks/encode.py --n 500 --repeats 2 --batch-size 64 --device "$DEVICE"
  run train-throughput 150 $PY benchmarks/train.py --batch-sizes 32 256 --chunk-size 32 --max-length 128 \
    --device "$DEVICE" --out "$OUT/train.json"
  rm -rf "$OUT/experiment"
  run paper-2-designs 300 $PY -m poolattn.cli experiment configs/paper.yaml --device "$DEVICE" \
    --set output_dir="$OUT/experiment" --set base.backbone=smollm2-135m \
    --set 'designs=[1-eos-causal, {name: 5-multilayer-bidirectional, pooling_kwargs: {num_latents: 64}}]' \
    --set train.max_steps=5 --set train.warmup_steps=1 --set train.save_every=5 --set 'eval.tasks=[STSBenchmark]'
  [ -f "$OUT/experiment/report.md" ] || result paper-2-designs-report FAIL "no $OUT/experiment/report.md"
  run load-memory-2-ranks 120 $PY benchmarks/load_memory.py --nproc 2 --device "$DEVICE"
else
  for n in encode-throughput train-throughput paper-2-designs load-memory-2-ranks; do
    result "$n" SKIP "CUDA only (run the benchmark by hand with --device cpu)"
  done
fi
echo "summary: $pass passed, $fail failed, $skip skipped (logs in $OUT/)"
[ "$fail" -eq 0 ]
