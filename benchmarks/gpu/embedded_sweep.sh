#!/usr/bin/env bash
# On the GPU machine (after benchmarks/gpu/setup.sh): the four-way quant sweep on the embedded model, full validation set.
# Usage: bash benchmarks/gpu/embedded_sweep.sh OUT_DIR [extra overrides...]
set -uo pipefail
out=${1:?out dir}; shift
export RAGQA_CACHE_DIR=${RAGQA_CACHE_DIR:-/tmp/rqcache} PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
sweep=/tmp/sweep_gpu
python3 -m ragqa_exp -m quant=none,bnb,gptq,awq wandb.mode=disabled \
  hydra.sweep.dir=$sweep "$@" > "$out/sweep.log" 2>&1
echo "sweep exit: $?"
python3 -m ragqa_exp.report $sweep | tee "$out/sweep_table.md"
python3 -m ragqa_exp.report $sweep --json > "$out/sweep_rows.json"
