#!/usr/bin/env bash
# One device call of a GPU study (an H200 or H100, no network, at most 10 minutes a call): the runs
# of one sweep file for the seeds and tasks given, WORKERS processes sharing the GPU. The study is
# resumable across calls: carry results/NAME in, and what comes back ($OUT/study.tar.gz: the Optuna
# storage and every run record and curve, no checkpoints) replaces it here. A call runs whole runs
# only if WORKERS runs fit in STUDY_S; a run cut at the limit starts again in the next call.
#   STUDY_S=540 bash benchmarks/gpu_study.sh sweeps/roadmap-small.yaml 11 "[0]" "[mqar]"
# The seeds and tasks narrow the file for this call only (its runs' identities do not depend on them).
# Under MPS where it starts, so the small models' kernels run side by side instead of time-sliced.
# Expects the wheels in .whl (optuna and its needs).
set -uo pipefail
sweep=$1 workers=$2 seeds=$3 tasks=$4
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
mkdir -p /tmp/mps /tmp/mps-log
if nvidia-cuda-mps-control -d 2>/dev/null && timeout 60 python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
  echo "MPS: on"
else
  echo quit | nvidia-cuda-mps-control 2>/dev/null; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY; echo "MPS: off"
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
mem=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
if (( mem < 100000 && workers > 10 )); then workers=10; echo "workers: 10 (an 80 GB card: about 7.6 GB a process)"; fi
name=$(basename "$sweep" .yaml)
sed -e "s/^seeds: .*/seeds: $seeds/" -e "s/^tasks: .*/tasks: $tasks/" "$sweep" > "/tmp/$name.yaml"
(while sleep 60; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done) &
monitor=$!
start=$(date +%s)
timeout "${STUDY_S:-540}" python3 -m ablate.cli sweep "/tmp/$name.yaml" --workers "$workers" 2>&1 \
  | grep -v "WARNING\|For example\|it/s]"
echo "study: $(( $(date +%s) - start )) s"
kill "$monitor" 2>/dev/null
echo quit | nvidia-cuda-mps-control 2>/dev/null
tar czf "$OUT/study.tar.gz" --exclude='*.ckpt' --exclude='*.pt' "results/$name"
ls -la "$OUT"
