#!/usr/bin/env bash
# The GPU measurements of the lm-eval issue, in one device call (an H200 with no network):
#   1. eval speed of the adapter at Hymba's 125M shapes (benchmarks/eval_speed.py);
#   2. the text study (sweeps/text.yaml): 5 core variants at ~30M trained on the local corpora and
#      evaluated by lm-eval on the full local sets, 3 workers sharing the GPU; resumable, so a
#      second call continues where a first one stopped.
# Expects the wheels in .whl (optuna, lm-eval and their needs) and the data in .devdata (a copy of
# ../shared/data's evaluation files and training corpora); results come back as $OUT/*.tar.gz.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
mkdir -p ../shared && ln -sfn "$PWD/.devdata" ../shared/data
STUDY_S=${STUDY_S:-480}
if [ "${CHECK:-1}" = 1 ]; then  # the GPU kernels the study relies on: flex attention, graphed decoding
  python3 -m pytest -q -p no:cacheprovider tests/ops/test_gpu_kernels.py -k "flex or decoding" 2>&1 | tail -3
fi
if [ "${SPEED:-1}" = 1 ]; then
  python3 -m benchmarks.eval_speed --size 125M --device cuda --variants llama,mamba,hymba --limit 200 \
    --batch-size 64 2>&1 | grep -v "WARNING\|For example\|it/s]" | tail -20
  cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
fi
(while sleep 30; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done) &
timeout "$STUDY_S" python3 -m ablate.cli sweep text --workers "${WORKERS:-3}" 2>&1 | grep -v "WARNING\|For example\|it/s]" | tail -60
kill %1 2>/dev/null
tar czf "$OUT/text-study.tar.gz" --exclude='*.ckpt' --exclude='samples_*' --exclude='*.db*' results/text 2>/dev/null
ls -la "$OUT"
