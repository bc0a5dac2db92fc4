#!/usr/bin/env bash
# The peers benchmark section (benchmarks/peers.py) on one GPU (an H200, no network), in two device
# calls one after the other, because a call carries at most 64 MiB and the two wheels from
# ../shared/wheels are 40 MB (mamba_ssm) and 26 MB (causal_conv1d):
#   call 1, carrying .gpu/peers with the mamba_ssm wheel:
#     WHEELS=.gpu/peers bash benchmarks/gpu_peers.sh install
#   call 2, right after, carrying .gpu/peers with only the causal_conv1d wheel:
#     WHEELS=.gpu/peers bash benchmarks/gpu_peers.sh run [more bench options]
# Both install whatever wheels $WHEELS (default .whl) holds into /tmp/site, which the machine keeps
# while warm between the calls; `run` then runs the section and leaves $OUT/peers.md (the table),
# $OUT/peers.jsonl (one row per line) and $OUT/peers.log (each row as it finished, kept even if the
# run is cut short). Options after `run` go to the bench, e.g. `run --peers-parts train --sizes 125M`.
# BUDGET_S (default 420): rows not started by then are skipped and say so; STUDY_S (570) kills the run.
set -uo pipefail
mode=${1:-}
shift || true
case "$mode" in
  install|run) ;;
  *) echo "usage: bash benchmarks/gpu_peers.sh install|run [bench options]" >&2; exit 2 ;;
esac
shopt -s nullglob
wheels=("${WHEELS:-.whl}"/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}" \
    || exit 1
  echo "installed into /tmp/site: ${wheels[*]}"
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# compiled kernels stay in /tmp while the machine is warm: a second run compiles less
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache TRITON_CACHE_DIR=/tmp/triton-cache
for package in mamba_ssm causal_conv1d transformers flash_attn; do
  python3 -c "import $package as p; print('$package', getattr(p, '__version__', '?'), 'imports')" 2>/dev/null \
    || echo "$package does not import here (its rows say so)"
done
if [ "$mode" = install ]; then
  python3 -c "import mamba_ssm" 2>/dev/null || echo "WARNING: mamba_ssm does not import; was its wheel in .whl?"
  exit 0
fi
python3 -c "import mamba_ssm" 2>/dev/null \
  || echo "WARNING: mamba_ssm does not import: run the install call first, while the machine is still warm"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
timeout "${STUDY_S:-570}" python3 -m benchmarks.bench --sections peers --out "$OUT/peers.md" \
  --peers-budget-s "${BUDGET_S:-420}" "$@" 2>&1 \
  | grep -v "WARNING\|For example\|warnings.warn" | tee "$OUT/peers.log" | tail -60
echo "exit: ${PIPESTATUS[0]}"
[ -f "$OUT/peers.md" ] && cat "$OUT/peers.md"
ls -la "$OUT"
