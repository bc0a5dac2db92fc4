#!/usr/bin/env bash
# sweeps/roadmap-small.yaml on one GPU, in one device call (an H200, no network): WORKERS processes
# share the GPU (small models leave it idle); the study resumes where an earlier call stopped (from
# results/roadmap-small when carried back, else from the records committed in studies/roadmap-small).
# Then the maps of the meta-token row and its no-meta counterpart (MQAR, seed 0). Records, curves and maps (no checkpoints) come back as
# $OUT/roadmap-small.tar.gz and $OUT/maps.tar.gz.   Expects the optuna wheels in .whl and the training corpora in .devdata.
#   TASKS=mqar SEEDS=0 WORKERS=11 STUDY_S=520 bash benchmarks/gpu_roadmap_small.sh
# TASKS and SEEDS narrow the file to those points for this call (the same runs: a run's identity
# does not depend on which others the file lists). A run cut at STUDY_S starts again next call, so
# size a call to whole runs: WORKERS runs side by side. On a card of < 100 GB at most 10 workers
# (about 7.6 GB a process at MQAR's 16k-token batches). The processes share the GPU under MPS where
# it starts, so their small kernels run side by side instead of time-sliced.
set -uo pipefail
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
workers=${WORKERS:-16}
if (( $(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1) < 100000 && workers > 10 )); then
  workers=10; echo "workers: 10 (a card of < 100 GB)"
fi
mkdir -p ../shared && ln -sfn "$PWD/.devdata" ../shared/data
# a fresh machine continues from the committed records: finished points of an unchanged configuration
# are skipped, the others run (from step 0: their checkpoints stayed on the earlier machine)
if [ ! -d results/roadmap-small ] && [ -d studies/roadmap-small/runs ]; then
  mkdir -p results/roadmap-small && cp -r studies/roadmap-small/runs results/roadmap-small/
fi
(while sleep 30; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done) &
monitor=$!
sweep=sweeps/roadmap-small.yaml
if [ -n "${TASKS:-}${SEEDS:-}" ]; then  # TASKS=text, SEEDS=0,1: only those points of the study (the same runs, the same results)
  python3 - "${TASKS:-}" "${SEEDS:-}" <<'PY'
import sys, yaml
study = yaml.safe_load(open("sweeps/roadmap-small.yaml"))
tasks, seeds = sys.argv[1], sys.argv[2]
if tasks:
    study.update(name="roadmap-small-" + tasks.replace(",", "-"), tasks=tasks.split(","))
if seeds:
    study["seeds"] = [int(s) for s in seeds.split(",")]
study["results"] = "results/roadmap-small"
yaml.safe_dump(study, open("/tmp/roadmap-small-tasks.yaml", "w"), sort_keys=False)
PY
  sweep=/tmp/roadmap-small-tasks.yaml
fi
start=$(date +%s)
timeout "${STUDY_S:-420}" python3 -m ablate.cli sweep "$sweep" --workers "$workers" 2>&1 \
  | grep -v "WARNING\|For example\|it/s]" | grep -v "^  .* done, .* failed, running" | tail -80
echo "study: $(( $(date +%s) - start )) s"
kill "$monitor" 2>/dev/null
echo quit | nvidia-cuda-mps-control 2>/dev/null
# the records first, so a call cut short during the maps still brings them back (files over 16 MiB do not)
tar czf "$OUT/roadmap-small.tar.gz" --exclude='*.ckpt' --exclude='*.pt' --exclude='tokenizer.json' \
  --exclude='maps' --exclude='study.db*' results/roadmap-small 2>/dev/null
cp results/roadmap-small/study.db "$OUT/" 2>/dev/null
for run in ${MAPS-E-meta-mqar-s0 D-kv-share-mqar-s0}; do  # MAPS="": none (the text maps: 2026-12-03)
  [ -f "results/roadmap-small/runs/$run/run.json" ] && \
    timeout 60 python3 -m ablate.cli maps "results/roadmap-small/runs/$run" --out "results/roadmap-small/maps/$run" 2>&1 | tail -3
done
# the maps' statistics and the global layers' PNGs (each ~1 MB; the PDFs and arrays stay)
tar czf "$OUT/maps.tar.gz" --exclude='*.npz' --exclude='*.pdf' --exclude='layer[12456].png' results/roadmap-small/maps 2>/dev/null
ls -la "$OUT"
