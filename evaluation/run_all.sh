#!/usr/bin/env bash
# The three miniature experiments of evaluation/README.md, one after the other (never two
# heavy jobs at once on a small machine), with the cut the step-0 timing check chose and a
# fresh warm-start cache, so the wall time printed at the end includes every warm start.
#   bash evaluation/run_all.sh            # cut 1 (evaluation/README.md, "Step 0")
#   CUT=0 bash evaluation/run_all.sh      # the uncut protocol
set -euo pipefail
cd "$(dirname "$0")/.."
CUT="${CUT:-1}"
WORKERS="${WORKERS:-2}"  # runs side by side, one thread each (evaluation/protocol.py pmap)
export RLREASON_CACHE="${RLREASON_CACHE:-$(mktemp -d /tmp/rlreason-eval-cache.XXXXXX)}"
mkdir -p runs
start=$(date +%s)
for exp in pope otr past; do
  t0=$(date +%s)
  python "evaluation/${exp}_synthetic.py" --cut "$CUT" --workers "$WORKERS" 2> "runs/${exp}_synthetic.log"
  echo "${exp}: $(( $(date +%s) - t0 )) s"
done
echo "total: $(( $(date +%s) - start )) s (cache ${RLREASON_CACHE})"
