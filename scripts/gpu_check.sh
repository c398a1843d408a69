#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py), prepared to run unattended where a CUDA device is lent:
#   scripts/gpu_check.sh [OUT_DIR] [extra gpu_check.py flags]     # < 8 minutes on an H200
#   scripts/gpu_check.sh /tmp/dry --device cpu --tiny             # the CPU dry run (seconds)
# OUT_DIR (default: $OUT, else runs/gpu-check) receives results.json, results.md and log.txt;
# the table is printed at the end. A section that fails is recorded and the others still run;
# the whole check is stopped after GPU_CHECK_TIMEOUT seconds (default 450), keeping the results
# of the sections that finished.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-runs/gpu-check}}"
shift $(( $# > 0 ? 1 : 0 ))
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
  echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC') $(uname -n), python: $py"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader
  "$py" -c 'import torch, zarr; print("torch", torch.__version__, "cuda", torch.version.cuda,
"available", torch.cuda.is_available(), "zarr", zarr.__version__)'
} 2>&1 | tee "$out/log.txt"
timeout "${GPU_CHECK_TIMEOUT:-450}" "$py" scripts/gpu_check.py --out "$out" "$@" 2>&1 \
  | tee -a "$out/log.txt"
rc=${PIPESTATUS[0]}
if [ "$rc" = 124 ]; then
  echo "gpu_check: stopped after ${GPU_CHECK_TIMEOUT:-450} s; results of finished sections:" \
    | tee -a "$out/log.txt"
  cat "$out/results.md" 2>/dev/null
fi
exit "$rc"
