#!/usr/bin/env bash
# The GPU checks of benchmarks/README.md in one run (under 10 minutes on one GPU, no download):
# vLLM import, the quickstart on colocated vLLM with sleep mode, a LoRA push, rollout
# tokens/s and the 1.5B weight sync against plain vLLM, one step under each accelerate
# config. Writes benchmarks/results/gpu_check.json (override with OUT=...); what a machine
# lacks (a package, CUDA, network) is reported as skipped with the fix, never a half-run.
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if ! "$PY" -c "import rlreason" 2>/dev/null; then
  echo "rlreason is not importable with $PY: pip install -e . (then a CUDA build of torch)" >&2
  exit 2
fi
exec timeout 590 "$PY" benchmarks/gpu_check.py --out "${OUT:-benchmarks/results/gpu_check.json}" "$@"
