#!/bin/bash
# Compile every shape in parallel (one process each, filling Triton's cache), then time them all in
# one process. Usage: bash benchmarks/tune_scan.sh [--L 2048] SHAPE ...
set -e
L=(); if [ "$1" = "--L" ]; then L=(--L "$2"); shift 2; fi
for s in "$@"; do python -m benchmarks.tune_scan "${L[@]}" --compile-only "$s" & done
wait
python -m benchmarks.tune_scan "${L[@]}" "$@"
