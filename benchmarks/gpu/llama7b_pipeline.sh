#!/usr/bin/env bash
# On the GPU machine (after benchmarks/gpu/setup.sh): the pipeline at Llama-2-7B shapes (model=llama2_7b_shapes, random
# weights): a job that trains, the same job with training taken from the cache (their load memory must match:
# each stage runs in its own process), a bnb job, and RTN-made GPTQ/AWQ-format artifacts for eval_7b.sh.
# Usage: bash benchmarks/gpu/llama7b_pipeline.sh OUT_DIR [STEP...]   STEP: trained cached bnb rtn summary (default all)
# (env MODEL_ARGS, RTN_DEVICE for a CPU dry run)
set -uo pipefail
out=${1:?out dir}; shift
steps=" ${*:-trained cached bnb rtn summary} "
want() { [[ $steps == *" $1 "* ]]; }
export RAGQA_CACHE_DIR=${RAGQA_CACHE_DIR:-/tmp/rqcache} PYTHONUNBUFFERED=1
MODEL_ARGS=${MODEL_ARGS:-model=llama2_7b_shapes}  # a dry run on CPU: tiny model.init.* shapes here
M="$MODEL_ARGS wandb.mode=disabled train.max_steps=20 train.eval_holdout=0 train.logging_steps=5 eval.limit=64 eval.max_new_tokens=16"
run() { local name=$1; shift; local t=$SECONDS
  python3 -m ragqa_exp $M "$@" hydra.run.dir=/tmp/j/$name > "$out/$name.log" 2>&1; echo "$name: exit $? in $((SECONDS - t)) s"; }
want trained && run trained
want cached && run cached
want bnb && run bnb quant=bnb
base=$(ls -d "$RAGQA_CACHE_DIR"/models/llama2_7b_shapes-*/ | head -1)
want rtn && for f in gptq awq; do t=$SECONDS
  python3 benchmarks/rtn_artifact.py "$base" /tmp/art/$f $f --device "${RTN_DEVICE:-cuda}" > "$out/rtn_$f.log" 2>&1; echo "rtn $f: exit $? in $((SECONDS - t)) s"
done
want summary || exit 0
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
rows = {}
for name in ("trained", "cached", "bnb"):
    try:
        rows[name] = json.load(open(f"/tmp/j/{name}/metrics.json"))
    except OSError as e:
        rows[name] = {"error": str(e)}
keys = ("reused", "pid", "gpu_mem_load_mib", "gpu_mem_peak_mib", "torch_peak_allocated_mib", "torch_peak_reserved_mib",
        "model_size_mib", "train_seconds", "quant_seconds", "quant_kernel", "eval_seconds", "gpu_name", "gpu_uuid")
for name, m in rows.items():
    print(name, {k: m.get(k) for k in keys})
# SFT speed: the trained job's 20 steps (batch 4); tokens from the model's own tokenizer over the SFT examples
import glob, os, statistics
from transformers import AutoTokenizer
from ragqa_exp.data import load_splits, to_sft_example
from ragqa_exp.config import DataConfig
m = rows["trained"]
tr = json.load(open(glob.glob(os.path.join(os.environ["RAGQA_CACHE_DIR"], "train", m["train_key"], "train_result.json"))[0]))
steps = max(h.get("step", 0) for h in tr["log_history"])
tok = AutoTokenizer.from_pretrained(glob.glob(os.path.join(os.environ["RAGQA_CACHE_DIR"], "models", "llama2_7b_shapes-*", ""))[0])
ex = [to_sft_example(r, 5) for r in load_splits(DataConfig()).train[:400]]
mean_tokens = statistics.fmean(len(tok(e["prompt"] + e["completion"]).input_ids) for e in ex)
s_per_step = tr["train_seconds"] / steps
sft = {"steps": steps, "batch": 4, "train_seconds": tr["train_seconds"], "seconds_per_step": s_per_step,
       "mean_tokens_per_example": mean_tokens, "tokens_per_s": 4 * mean_tokens / s_per_step,
       "projected_epoch_2939_examples_s": s_per_step * 2939 / 4}
print("sft", sft)
rows["sft"] = sft
json.dump(rows, open(f"{out}/pipeline_metrics.json", "w"), indent=1)
PY
