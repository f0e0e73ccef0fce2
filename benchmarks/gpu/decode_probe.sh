#!/usr/bin/env bash
# On the GPU machine (after benchmarks/gpu/setup.sh): which op makes a 7B decode step's logits move
# run to run (benchmarks/invariance_probe.py): SDPA at an unaligned key length, generate's 5th-step logits with
# the dynamic and the static KV cache, under torch.use_deterministic_algorithms (a non-deterministic op then names
# itself), and generate with SDPA pinned to the math backend.
# Usage: bash benchmarks/gpu/decode_probe.sh OUT_DIR
set -uo pipefail
out=${1:?out dir}; mkdir -p "$out"
export RAGQA_CACHE_DIR=${RAGQA_CACHE_DIR:-/tmp/rqcache} PYTHONUNBUFFERED=1 WANDB_MODE=disabled
m=$(python3 - <<'PY' 2>> "$out/base7b.log" | tail -1
import os
from ragqa_exp.config_store import validate_overrides
from ragqa_exp.base_model import build_base
print(build_base(validate_overrides(["model=llama2_7b_shapes"]).model, os.environ["RAGQA_CACHE_DIR"]))
PY
)
echo "base 7B: $m ($SECONDS s)"
f="$out/decode_probe_auto"
python3 benchmarks/invariance_probe.py --model-dir "$m" --overrides model=llama2_7b_shapes \
  --parts linear_decode_down,linear_decode_head,sdpa_decode_unaligned,generate_dynamic_logits,generate_static_logits --out "$f.json" > "$f.log" 2>&1
echo "auto: exit $? ($SECONDS s)"; grep -E '^(model|sdpa|gener)' "$f.log" | cut -c1-400; tail -2 "$f.log" | grep -i error
f="$out/decode_probe_deterministic"
python3 benchmarks/invariance_probe.py --model-dir "$m" --overrides model=llama2_7b_shapes --deterministic \
  --parts model_decode_logits,generate_dynamic_logits --out "$f.json" > "$f.log" 2>&1
echo "deterministic algorithms: exit $? ($SECONDS s)"; grep -E '^(model|gener)' "$f.log" | cut -c1-400; tail -2 "$f.log" | grep -i error
f="$out/decode_probe_math"
python3 benchmarks/invariance_probe.py --model-dir "$m" --overrides model=llama2_7b_shapes --sdpa-backend math \
  --parts generate_dynamic_logits --out "$f.json" > "$f.log" 2>&1
echo "math: exit $? ($SECONDS s)"; grep -E '^(model|sdpa|gener)' "$f.log" | cut -c1-400; tail -2 "$f.log" | grep -i error
