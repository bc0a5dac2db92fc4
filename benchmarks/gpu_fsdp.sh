#!/usr/bin/env bash
# recipe.strategy fsdp on the H200 (benchmarks/gpu_fsdp.py), then the CPU two-process DDP/FSDP tests
# on that machine. Expects the optuna wheels in .whl (the tests' sweep) and the corpora in .devdata.
#   device: bash benchmarks/gpu_fsdp.sh      (results in $OUT/fsdp.tar.gz and the log)
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
mkdir -p ../shared && ln -sfn "$PWD/.devdata" ../shared/data
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
git log -1 --format='git %h %s' 2>/dev/null || true
timeout "${FSDP_S:-400}" python3 -m benchmarks.gpu_fsdp results/fsdp --steps "${STEPS:-300}" 2>&1 | grep -v "Warning\|warn("
tar czf "$OUT/fsdp.tar.gz" --exclude='*.ckpt' --exclude='cache' results/fsdp 2>/dev/null
timeout "${TESTS_S:-150}" python3 -m pytest tests/test_ddp.py -q -x -p no:cacheprovider 2>&1 | tail -5
