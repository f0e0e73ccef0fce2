#!/usr/bin/env bash
# On the GPU machine, after llama7b_pipeline.sh: eval speed of each method at Llama-2-7B shapes, each in its
# own process (per-process NVML memory). Usage: bash benchmarks/gpu/eval_7b.sh OUT_DIR METHOD...
set -uo pipefail
out=${1:?out dir}; shift
export RAGQA_CACHE_DIR=${RAGQA_CACHE_DIR:-/tmp/rqcache} PYTHONUNBUFFERED=1
base=$(ls -d "$RAGQA_CACHE_DIR"/models/llama2_7b_shapes-*/ | head -1)
for q in "$@"; do
  case $q in
    none) dir=$base; extra="--old-prompts 96 --batch1-prompts 32";;
    bnb) dir=$(python3 -c "import json; print(json.load(open('/tmp/j/bnb/metrics.json'))['quant_artifact_dir'])"); extra="--old-prompts 96 --batch1-prompts 0";;
    *) dir=/tmp/art/$q; extra="--old-prompts 0 --batch1-prompts 0";;
  esac
  t=$SECONDS
  python3 benchmarks/eval_speed.py --quant $q --model-dir "$dir" --overrides ${MODEL_ARGS:-model=llama2_7b_shapes} \
    --prompts ${PROMPTS:-980} --runs ${RUNS:-3} --max-new-tokens 16 --variants dynamic,static $extra --out "$out/eval_$q.json" \
    > "$out/eval_$q.log" 2>&1
  echo "eval $q: exit $? in $((SECONDS - t)) s"; grep '^\[' "$out/eval_$q.log" | tail -4
done
