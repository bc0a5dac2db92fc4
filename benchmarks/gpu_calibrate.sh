#!/usr/bin/env bash
# The default study's MQAR calibration on a GPU, in one device call (an H200, no network):
# the sweep files given run side by side, WORKERS processes each, sharing the GPU (small models leave it idle);
# records and training curves (no checkpoints) come back as $OUT/calibration.tar.gz.
#   bash benchmarks/gpu_calibrate.sh benchmarks/mqar_calibration/default4.yaml ...
# A file given as FILE@N runs with N worker processes instead of WORKERS (default 8).
# Expects the wheels in .whl (optuna and its needs).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
STUDY_S=${STUDY_S:-480}
(while sleep 30; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done) &
monitor=$!
pids=()
for arg in "$@"; do  # the sweeps side by side, WORKERS (or @N) processes each
  sweep=${arg%@*}; workers=${WORKERS:-8}; [[ $arg == *@* ]] && workers=${arg##*@}
  (timeout "$STUDY_S" python3 -m ablate.cli sweep "$sweep" --workers "$workers" 2>&1 \
    | grep -v "WARNING\|For example\|it/s]" > "/tmp/$(basename "$sweep").log"; tail -45 "/tmp/$(basename "$sweep").log") &
  pids+=($!)
done
wait "${pids[@]}"
kill "$monitor" 2>/dev/null
tar czf "$OUT/calibration.tar.gz" --exclude='*.ckpt' --exclude='*.db*' --exclude='*.pt' results/calibrate-* 2>/dev/null
ls -la "$OUT"
