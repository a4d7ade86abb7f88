#!/usr/bin/env bash
# The GPU check kit (benchmarks/gpu_check.py): one command, <= 8 minutes on one H100/H200-class GPU.
#
#   bash benchmarks/gpu_check.sh           on the GPU machine: installs the carried wheels (.whl/, built
#                                          here by benchmarks/gpu_wheels.sh) without an index, then runs
#                                          every step; results in $OUT (else benchmarks/results/gpu-check-gpu)
#   bash benchmarks/gpu_check.sh --cpu     the dry run on a CPU (tiny sizes; tests/test_gpu_check.py)
#
# Other arguments go to gpu_check.py (--help lists them). Environment: PYTHON (default python3),
# KIT_BUDGET_S (seconds for the whole command, default 470 on a GPU: pip install included).
# Writes gpu_check.json, gpu_check.png and this command's log gpu_check.log into the output folder.
set -uo pipefail
start=$(date +%s)
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
cpu=0
out=""
prev=""
for a in "$@"; do
  [ "$a" = "--cpu" ] && cpu=1
  [ "$prev" = "--out" ] && out=$a
  prev=$a
done
if [ -z "$out" ]; then
  if [ -n "${OUT:-}" ]; then out=$OUT; elif [ $cpu = 1 ]; then out=benchmarks/results/gpu-check-cpu; else out=benchmarks/results/gpu-check-gpu; fi
  set -- "$@" --out "$out"
fi
mkdir -p "$out"
log="$out/gpu_check.log"
: > "$log"
if [ $cpu = 0 ] && ls .whl/*.whl >/dev/null 2>&1; then
  # The GPU machine has no package index: the wheels travel with the working tree (carry=[".whl"]).
  site=${KIT_SITE:-/tmp/jaxpto-site}
  echo "+ pip install --no-index --no-deps --target $site .whl/*.whl" | tee -a "$log"
  if ! "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
      >>"$log" 2>&1; then
    echo "pip install of .whl/ failed (see $log)" | tee -a "$log"
    exit 2
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  [ -d .whl/nequix ] && export JAXPTO_NEQUIX_DIR=${JAXPTO_NEQUIX_DIR:-$PWD/.whl/nequix}
fi
budget=${KIT_BUDGET_S:-$([ $cpu = 1 ] && echo 300 || echo 470)}
left=$(( budget - ($(date +%s) - start) - 20 ))
[ $left -lt 60 ] && left=60
echo "+ $py benchmarks/gpu_check.py --budget-s $left $*" | tee -a "$log"
# A hard stop 30 s after the script's own budget: SIGTERM ends the step in progress as "killed"
# and the JSON is still written; SIGKILL 20 s later if that hangs.
PYTHONUNBUFFERED=1 timeout -k 20 $(( left + 30 )) "$py" benchmarks/gpu_check.py --budget-s "$left" "$@" 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
echo "gpu_check.py exit status $rc after $(( $(date +%s) - start )) s" | tee -a "$log"
exit "$rc"
