#!/bin/bash
# The GPU tier on a CUDA machine whose python3 has torch but not Ray: unpack .gpu/site.tar.xz
# (tests/gpu/device/build_site.sh), run tests/gpu, time VaR Monte Carlo on cuda and cpu, and probe
# what a Ray task without GPUs can do with one (probe.py). Everything lands in $OUT.
# TIER_ONLY=1: the tier alone; TIER_ARGS: more pytest arguments (e.g. -k policing).
set -u
cd "$(dirname "$0")/../../.."
OUT=${OUT:-/tmp/rayfin-gpu-out}
mkdir -p "$OUT"
t0=$(date +%s)
nvidia-smi > $OUT/nvidia_smi.txt 2>&1
mkdir -p /tmp/site && xz -dc -T0 .gpu/site.tar.xz | tar -C /tmp/site -xf - || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
echo "unpacked in $(( $(date +%s) - t0 ))s"
python3 -c "import sys, ray, torch, pydantic, rayfin; print(sys.version, ray.__version__, torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), torch.cuda.nccl.version())" 2>&1 | tee $OUT/versions.txt
which python python3 | tee -a $OUT/versions.txt
RAYFIN_GPU_TESTS=1 timeout ${TIER_S:-300} python3 -m pytest -v -rA -p no:cacheprovider tests/gpu ${TIER_ARGS:-} 2>&1 | tee $OUT/gpu_tier.log | grep -E "PASS|FAIL|ERROR|passed|failed|error" | tail -30
echo "tier done at $(( $(date +%s) - t0 ))s"
grep -rh -E "outside rayfin|GPU processes on|could not stop" /tmp/ray/session_*/logs/ 2>/dev/null | cut -c1-400 | tail -40 > $OUT/policing_log.txt
nvidia-smi --query-compute-apps=pid,used_memory --format=csv >> $OUT/policing_log.txt 2>&1
[ "${TIER_ONLY:-0}" = 1 ] && { echo "all done at $(( $(date +%s) - t0 ))s"; exit 0; }
for d in cuda cpu; do timeout 120 python3 -c "
import json,sys; sys.argv=['x']
from jobs.var_mc import run_var; from jobs.train_signal import train
import time
for i in range(2): v=run_var(paths=1_000_000, options=300, underlyings=20, seed=i, device='$d')
t=time.perf_counter(); v=run_var(paths=1_000_000, options=300, underlyings=20, seed=5, device='$d'); tv=time.perf_counter()-t
print(json.dumps({'device':'$d','var_mc_1M_paths_s':round(tv,3),'var':v['var']}))
" 2>&1 | tail -3 | tee -a $OUT/jobs_timing.txt; done
timeout 150 python3 tests/gpu/device/probe.py > $OUT/probe.json 2> $OUT/probe.err; echo "probe rc=$?"; tail -c 1500 $OUT/probe.err
echo "all done at $(( $(date +%s) - t0 ))s"
