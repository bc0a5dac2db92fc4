#!/usr/bin/env bash
# sweeps/roadmap-small.yaml on one GPU, in one device call (an H200, no network): WORKERS processes
# share the GPU (small models leave it idle); the study resumes where an earlier call stopped (from
# results/roadmap-small when carried back, else from the records committed in studies/roadmap-small).
# Then the maps of the meta-token row and its no-meta counterpart (MQAR, seed 0). Records, curves and maps (no checkpoints) come back as
# $OUT/roadmap-small.tar.gz and $OUT/maps.tar.gz.   Expects the optuna wheels in .whl and the training corpora in .devdata.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p ../shared && ln -sfn "$PWD/.devdata" ../shared/data
# a fresh machine continues from the committed records: finished points of an unchanged configuration
# are skipped, the others run (from step 0: their checkpoints stayed on the earlier machine)
if [ ! -d results/roadmap-small ] && [ -d studies/roadmap-small/runs ]; then
  mkdir -p results/roadmap-small && cp -r studies/roadmap-small/runs results/roadmap-small/
fi
(while sleep 30; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done) &
monitor=$!
sweep=sweeps/roadmap-small.yaml
if [ -n "${TASKS:-}" ]; then  # TASKS=text: only those tasks' points of the study (the same runs, the same results)
  python3 - "$TASKS" <<'PY'
import sys, yaml
study = yaml.safe_load(open("sweeps/roadmap-small.yaml"))
study.update(name="roadmap-small-" + sys.argv[1].replace(",", "-"), tasks=sys.argv[1].split(","),
             results="results/roadmap-small")
yaml.safe_dump(study, open("/tmp/roadmap-small-tasks.yaml", "w"), sort_keys=False)
PY
  sweep=/tmp/roadmap-small-tasks.yaml
fi
timeout "${STUDY_S:-420}" python3 -m ablate.cli sweep "$sweep" --workers "${WORKERS:-16}" 2>&1 \
  | grep -v "WARNING\|For example\|it/s]" | grep -v "^  .* done, .* failed, running" | tail -80
kill "$monitor" 2>/dev/null
# the records first, so a call cut short during the maps still brings them back (files over 16 MiB do not)
tar czf "$OUT/roadmap-small.tar.gz" --exclude='*.ckpt' --exclude='*.pt' --exclude='tokenizer.json' \
  --exclude='maps' --exclude='study.db*' results/roadmap-small 2>/dev/null
cp results/roadmap-small/study.db "$OUT/" 2>/dev/null
for run in E-meta-{mqar,text}-s0 D-kv-share-{mqar,text}-s0 C-swa-text-s0; do
  [ -f "results/roadmap-small/runs/$run/run.json" ] && \
    timeout 60 python3 -m ablate.cli maps "results/roadmap-small/runs/$run" --out "results/roadmap-small/maps/$run" 2>&1 | tail -3
done
# the maps' statistics and the global layers' PNGs (each ~1 MB; the PDFs and arrays stay)
tar czf "$OUT/maps.tar.gz" --exclude='*.npz' --exclude='*.pdf' --exclude='layer[12456].png' results/roadmap-small/maps 2>/dev/null
ls -la "$OUT"
