#!/usr/bin/env bash
# On the GPU machine (after benchmarks/gpu/setup.sh): issue 17's GPU side and issue 19's profile, one step per
# call (device commands stop at 10 minutes). Every step logs to OUT_DIR and prints a short summary.
# Usage: bash benchmarks/gpu/h200_plan_speed.sh OUT_DIR STEP...
#   plan7b     the 7B-shapes base model (random weights), then eval_speed.py --plan both: canonical vs packed,
#              980 prompts, RUNS (3) runs each, alternating, one loaded model, under INV=true|false
#              (eval.invariant_kernels; one process each), DET=true|false, KV=auto|dynamic|graph (the canonical
#              plan's eval.kv_cache, auto: graph here; packed runs dynamic), PREFILL=<tokens>|null (eval.max_prefill_tokens: null is
#              16384 on a GPU; 65536 prefills every batch whole, as before 2026-12-06) (issue 17's cost table)
#   cost7b     eval_speed.py at 7B shapes, 980 prompts, the default eval (canonical, deterministic) with
#              VARIANTS (dynamic,dynamic:nanfill,graph): deterministic mode's NaN fill off (the eval's) and on
#              (torch's default), and the CUDA-graph decode; RUNS (2) runs each, token ids against the first
#   profile7b  profile_eval.py at 7B shapes: one prefill batch and one decode step by kernel category (issue 19);
#              TOKENS=32768: eval.max_batch_tokens (an 80 GB card runs out of memory at the default 65536);
#              COMPILE=pieces|layers: with the element-wise work compiled (profile_eval.py --compile)
#   probe7b    invariance_probe.py at 7B shapes: run to run, row position, batch-mates, for a linear layer, masked
#              SDPA and the model's logits (prefill and decode), bit for bit (which part moves answers on the GPU),
#              with default kernels and with eval.invariant_kernels
#   bitests    pytest -m gpu tests/test_batch_invariance.py -s (every method, every composition; needs the
#              embedded model's wheels) ; K=... selects variants (-k); KV=auto|dynamic|graph: the canonical plan's
#              eval.kv_cache (auto: the graph decode, dynamic for LLM.int8 with outliers); EW=compiled: every case
#              with eval.elementwise=compiled
#   pieces     elementwise_speed.py: RoPE, the RMSNorm and act(gate) * up alone at 7B shapes, eager and compiled with
#              dynamic / automatic dynamic / static shapes: ms, GB/s, eager's values (seconds); PIECES=rope FORMS=... select
#              (rope_shared_cos: cos and sin of one row, as a forward without position ids makes them); Inductor's generated code in the log
#              (TORCH_LOGS=output_code)
#   elementwise  pytest -m gpu tests/test_elementwise.py tests/test_compiled_layers.py, then compile_exactness.py (eval.elementwise=compiled, bit for bit)
#   gputests   pytest -m gpu tests/test_gpu.py tests/test_awq_torch.py
#   graphtests pytest -m gpu tests/test_graph_decode.py tests/test_prefill.py (tiny models: the graph decode's tokens, a released decoder and a prefill slice's cache freed)
#   decodeprobe  invariance_probe.py at 7B shapes, the decode loop only (it moved run to run on an H100): decode
#              GEMMs (down projection, LM head), SDPA at an unaligned key length, generate's 5th-step logits with the
#              dynamic and the static KV cache; then under torch.use_deterministic_algorithms (a non-deterministic
#              op names itself); then generate with SDPA pinned to the math backend (one process each)
#   noise7b    Q=bnb|none: a 7B-shapes CLI job (no training) whose noise check re-evaluates every question in another
#              composition, under eval.deterministic=true and =false (the control)
#   decode7b   static_decode.py at 7B shapes: generate vs a StaticCache loop vs that loop as a CUDA graph (issue 19)
#   embedded   eval_speed.py on the embedded model (the default job's model), its 360 questions, 32 new tokens, RUNS (3)
#              runs of each of VARIANTS (dynamic,graph,continuous: transformers' dynamic cache, the graph decode that
#              eval.kv_cache=auto runs on a GPU, transformers' generate_batch; `continuous:key=value...` its settings),
#              then profile_eval.py on one of its batches (PROFILE=0: not) (issue 19)
#   split7b    Q=none|awq: eval_speed.py's graph decode at 1 vs 16 new tokens (prefill vs decode, issue 19)
#   artifact7b Q=none|bnb|gptq|awq: only build the model compiled7b/split7b would run (a call of its own)
#   compiled7b Q=none|bnb|gptq|awq: eval_speed.py's graph decode (the default) against the same with the MLPs and
#              RoPE through torch.compile keeping eager's roundings (`graph:compiled`, compile_elementwise.py; a 4-bit
#              model: its dequantize instead of the MLPs), RUNS (2) each, 980 prompts, 16 new tokens (issue 19's prefill
#              lever); VARIANTS=graph times the default alone, `graph:compiled-fused` adds the norms at Inductor's
#              default precision, `graph:compiled-layer` compiles whole decoder layers (~150 s of compile at 7B). gptq/awq run RTN artifacts (/tmp/art/Q, rtn_artifact.py, ~300 s each); bnb the
#              quantize stage's artifact (a CLI job, no training); a `continuous[:k=v...]` variant (generate_batch) warms
#              up on its first CW prompts (0: all 980, a full untimed pass)
#   kvwrite    kv_write.py: one layer's KV-cache write at the 7B profile's batch (77 x 832 tokens), from the layout the
#              attention hands over and from a contiguous one: torch.cat (DynamicLayer), index_copy_ (StaticLayer), a
#              slice copy (seconds; `VARIANTS=graph,graph:cat ... compiled7b` times the whole eval with the old copy)
#   vllm7b     vllm_speed.py at 7B shapes (issue 19's peer row): vLLM 0.26's offline engine on the same 980 prompts'
#              token ids, greedy, 16 new tokens each (ignore_eos), dummy weights, bf16, CUDA graphs + torch.compile,
#              RUNS (3) timed runs after a warm-up, prefix caching off (PC=1: on); BI=1: VLLM_BATCH_INVARIANT=1.
#              Needs vllm in /tmp/site: setup.sh .whl/a,
#              then .whl/v1 ... .whl/v6, one call each (benchmarks/README.md, "vLLM")
set -uo pipefail
out=${1:?out dir}; shift
export RAGQA_CACHE_DIR=${RAGQA_CACHE_DIR:-/tmp/rqcache} PYTHONUNBUFFERED=1 WANDB_MODE=disabled
mkdir -p "$out"
base() { python3 - "$@" <<'PY'   # the base model of these overrides, built once into the cache; prints its dir
import os, sys
from ragqa_exp.config_store import validate_overrides
from ragqa_exp.base_model import build_base
print(build_base(validate_overrides(sys.argv[1:]).model, os.environ["RAGQA_CACHE_DIR"]))
PY
}
base7b() { base model=llama2_7b_shapes; }
artifact7b() {  # the 7B-shapes model of method $1 (built once): base, RTN artifact (gptq/awq) or the quantize stage's (bnb)
  local m; m=$(base7b 2>> "$out/base7b.log" | tail -1)
  case $1 in
    none) echo "$m";;
    gptq|awq) [ -e /tmp/art/$1/config.json ] || python3 benchmarks/rtn_artifact.py "$m" /tmp/art/$1 $1 > "$out/rtn_$1.log" 2>&1
      echo /tmp/art/$1;;
    bnb) local j=/tmp/j/bnb7b_artifact; [ -e $j/metrics.json ] || python3 -m ragqa_exp model=llama2_7b_shapes quant=bnb \
        train.enabled=false eval.limit=8 wandb.mode=disabled hydra.run.dir=$j > "$out/bnb7b_artifact.log" 2>&1
      python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['quant_artifact_dir'])" $j/metrics.json;;
  esac
}
for step in "$@"; do
  t=$SECONDS
  case $step in
    plan7b)  # INV=true|false: eval.invariant_kernels (default false); DET=true|false: eval.deterministic (default true)
      m=$(base7b 2>> "$out/base7b.log" | tail -1); echo "base 7B: $m in $((SECONDS - t)) s"
      f="$out/plan_cost_none_inv_${INV:-false}_det_${DET:-true}_kv_${KV:-auto}_prefill_${PREFILL:-null}"
      python3 benchmarks/eval_speed.py --quant none --model-dir "$m" --overrides model=llama2_7b_shapes \
        eval.invariant_kernels=${INV:-false} eval.deterministic=${DET:-true} eval.kv_cache=${KV:-auto} \
        eval.max_prefill_tokens=${PREFILL:-null} --prompts 980 --runs ${RUNS:-3} \
        --max-new-tokens 16 --plan both --out "$f.json" > "$f.log" 2>&1
      echo "plan7b (invariant kernels ${INV:-false}, deterministic ${DET:-true}): exit $?"; grep -E '^\[|^canonical|^batch inv' "$f.log" | tail -3;;
    split7b)  # Q=none|awq: prefill alone (1 new token) vs prefill + 15 graph decode steps, one process each (issue 19);
      # awq runs the RTN artifact in /tmp/art/awq, built first if missing (rtn_artifact.py, ~300 s on an H100)
      q=${Q:-none}; d=$(artifact7b $q); echo "$q 7B: $d in $((SECONDS - t)) s"
      for mnt in ${MNT:-1 16}; do
        f="$out/split_${q}_7b_980_new_$mnt"
        python3 benchmarks/eval_speed.py --quant $q --model-dir "$d" --overrides model=llama2_7b_shapes --prompts 980 \
          --runs ${RUNS:-2} --max-new-tokens $mnt --variants graph --old-prompts 0 --batch1-prompts 0 --out "$f.json" \
          > "$f.log" 2>&1
        echo "split7b $q max_new_tokens=$mnt: exit $?"; grep -E '^\[' "$f.log" | tail -2 | cut -c1-400
      done;;
    artifact7b)  # Q's model alone (base, RTN or quantize-stage artifact), for a later call on the same machine
      q=${Q:-none}; d=$(artifact7b $q); echo "$q 7B: $d in $((SECONDS - t)) s"; ls -la "$d" | tail -3;;
    compiled7b)
      q=${Q:-none}; d=$(artifact7b $q); echo "$q 7B: $d in $((SECONDS - t)) s"
      f="$out/compiled_${q}_7b_980"
      python3 benchmarks/eval_speed.py --quant $q --model-dir "$d" --overrides model=llama2_7b_shapes --prompts 980 \
        --runs ${RUNS:-2} --max-new-tokens 16 --variants ${VARIANTS:-graph,graph:compiled} --old-prompts 0 \
        --batch1-prompts 0 --continuous-warmup-prompts ${CW:-0} --out "$f.json" > "$f.log" 2>&1
      echo "compiled7b $q: exit $?"; grep -E '^\[|^compiled' "$f.log" | tail -5 | cut -c1-400
      grep -E 'Error|error:' "$f.log" | tail -3 | cut -c1-300;;
    cost7b)
      m=$(base7b 2>> "$out/base7b.log" | tail -1); echo "base 7B: $m in $((SECONDS - t)) s"
      f="$out/cost_7b_${PROMPTS:-980}"
      python3 benchmarks/eval_speed.py --quant none --model-dir "$m" --overrides model=llama2_7b_shapes \
        --prompts ${PROMPTS:-980} --runs ${RUNS:-2} --max-new-tokens 16 --variants ${VARIANTS:-dynamic,dynamic:nanfill,graph} \
        --old-prompts 0 --batch1-prompts 0 --out "$f.json" > "$f.log" 2>&1
      echo "cost7b: exit $?"; grep -E '^\[' "$f.log" | tail -5;;
    profile7b)
      m=$(base7b 2>> "$out/base7b.log" | tail -1)
      python3 benchmarks/profile_eval.py --quant none --model-dir "$m" --overrides model=llama2_7b_shapes \
        ${TOKENS:+eval.max_batch_tokens=$TOKENS} --prompts 980 --compile ${COMPILE:-none} \
        --out "$out/profile_7b_none${COMPILE:+_$COMPILE}.json" > "$out/profile_7b_none${COMPILE:+_$COMPILE}.log" 2>&1
      echo "profile7b: exit $?"; grep -E '^(prefill|decode|generate|graph_step|summary)' "$out/profile_7b_none${COMPILE:+_$COMPILE}.log" | cut -c1-600;;
    probe7b)  # without and with eval.invariant_kernels, each in its own process
      m=$(base7b 2>> "$out/base7b.log" | tail -1); echo "base 7B: $m in $((SECONDS - t)) s"
      for inv in "" --invariant; do
        f="$out/probe_7b${inv:+_invariant}"
        python3 benchmarks/invariance_probe.py --model-dir "$m" --overrides model=llama2_7b_shapes --out "$f.json" $inv \
          > "$f.log" 2>&1
        echo "probe7b ${inv:-default kernels}: exit $?"; grep -E '^(linear|sdpa|model)' "$f.log" | cut -c1-300
      done;;
    decodeprobe)
      m=$(base7b 2>> "$out/base7b.log" | tail -1); echo "base 7B: $m in $((SECONDS - t)) s"
      for run in "auto|linear_decode_down,linear_decode_head,sdpa_decode_unaligned,generate_dynamic_logits,generate_static_logits|" \
                 "deterministic|model_decode_logits,generate_dynamic_logits|--deterministic" \
                 "math|generate_dynamic_logits|--sdpa-backend math"; do
        IFS='|' read -r name parts flags <<< "$run"; f="$out/decode_probe_$name"
        python3 benchmarks/invariance_probe.py --model-dir "$m" --overrides model=llama2_7b_shapes --parts "$parts" \
          $flags --out "$f.json" > "$f.log" 2>&1
        echo "decodeprobe $name: exit $?"; grep -E '^(linear|sdpa|model|gener)' "$f.log" | cut -c1-400
      done;;
    noise7b)  # Q=bnb|none: a CLI job (no training) with the noise check, eval.deterministic true then false (control)
      base7b > /dev/null 2>> "$out/base7b.log"; echo "base 7B in $((SECONDS - t)) s"
      for det in true false; do
        d=/tmp/j/noise_${Q:-bnb}_$det
        python3 -m ragqa_exp model=llama2_7b_shapes quant=${Q:-bnb} train.enabled=false eval.limit=${LIMIT:-128} \
          eval.max_new_tokens=16 eval.noise_check_items=${LIMIT:-128} eval.deterministic=$det wandb.mode=disabled \
          hydra.run.dir=$d > "$out/noise_${Q:-bnb}_$det.log" 2>&1
        echo "noise7b ${Q:-bnb} deterministic=$det: exit $?"; cp "$d/metrics.json" "$out/noise_${Q:-bnb}_$det.metrics.json" 2>/dev/null
        python3 -c "import json,sys; m=json.load(open(sys.argv[1])); p=m['eval_plan']; print({k: m.get(k) for k in ('quant_kernel','eval_noise_checked','eval_noise_changed','eval_seconds','exact_match')}, {k: p.get(k) for k in ('deterministic_algorithms','CUBLAS_WORKSPACE_CONFIG','max_rows','max_batch_tokens')})" "$d/metrics.json" 2>&1 | tail -1
      done;;
    decode7b)
      m=$(base7b 2>> "$out/base7b.log" | tail -1)
      python3 benchmarks/static_decode.py --model-dir "$m" --overrides model=llama2_7b_shapes --out "$out/static_decode_7b.json" \
        > "$out/static_decode_7b.log" 2>&1
      echo "decode7b: exit $?"; grep -E '^(generate|static)' "$out/static_decode_7b.log";;
    bitests)
      RAGQA_TEST_KV_CACHE=${KV:-auto} RAGQA_TEST_ELEMENTWISE=${EW:-eager} python3 -m pytest -m gpu tests/test_batch_invariance.py -s -q -rxX -p no:cacheprovider ${K:+-k "$K"} \
        > "$out/bitests${K:+_${K// /_}}.log" 2>&1
      echo "bitests: exit $?"; grep -E '^\[|^(XFAIL|XPASS)|passed|failed|error' "$out/bitests${K:+_${K// /_}}.log" | cut -c1-600 | tail -14;;
    pieces)
      TORCH_LOGS=output_code python3 benchmarks/elementwise_speed.py --pieces ${PIECES:-rope,norm,act_mul} \
        ${FORMS:+--forms $FORMS} --out "$out/elementwise_speed.json" > "$out/elementwise_speed.log" 2>&1
      echo "pieces: exit $?"; grep -E '^(rope|rope_shared_cos|norm|act_mul) ' "$out/elementwise_speed.log" | cut -c1-110;;
    elementwise)  # eval.elementwise=compiled on the GPU: its tests (tiny Llama / Gemma 3, the control), then bit for bit
      python3 -m pytest -m gpu tests/test_elementwise.py tests/test_compiled_layers.py -q -p no:cacheprovider -rA > "$out/elementwise_gpu.log" 2>&1
      echo "elementwise tests: exit $?"; grep -E '^(PASSED|FAILED|ERROR|SKIPPED)|passed|failed|skipped' "$out/elementwise_gpu.log" | tail -6
      python3 benchmarks/compile_exactness.py --out "$out/compile_exactness_gpu.json" > "$out/compile_exactness_gpu.log" 2>&1
      echo "compile_exactness: exit $?"; grep -E '^(exact|fused)' "$out/compile_exactness_gpu.log" | cut -c1-200;;
    graphtests)
      python3 -m pytest -m gpu tests/test_graph_decode.py tests/test_prefill.py -q -p no:cacheprovider -rA > "$out/graphtests.log" 2>&1
      echo "graphtests: exit $?"; grep -E '^(PASSED|FAILED|ERROR)|passed|failed' "$out/graphtests.log" | cut -c1-200 | tail -12;;
    gputests)
      python3 -m pytest -m gpu tests/test_gpu.py tests/test_awq_torch.py -s -q -p no:cacheprovider > "$out/gputests.log" 2>&1
      echo "gputests: exit $?"; grep -E '^\[|passed|failed|error' "$out/gputests.log" | tail -9;;
    embedded)
      m=$(base 2> "$out/embedded_base.log" | tail -1)
      python3 benchmarks/eval_speed.py --quant none --model-dir "$m" --prompts 360 --runs ${RUNS:-3} --max-new-tokens 32 \
        --variants "${VARIANTS:-dynamic,graph,continuous}" --old-prompts 0 --batch1-prompts 0 --out "$out/eval_embedded.json" \
        > "$out/eval_embedded.log" 2>&1
      echo "embedded: exit $?"; grep -E '^\[' "$out/eval_embedded.log" | cut -c1-300 | tail -9
      if [ "${PROFILE:-1}" != 0 ]; then
        python3 benchmarks/profile_eval.py --quant none --model-dir "$m" --prompts 360 --max-new-tokens 32 \
          --out "$out/profile_embedded.json" > "$out/profile_embedded.log" 2>&1
        echo "profile embedded: exit $?"; grep -E '^(prefill|decode|summary)' "$out/profile_embedded.log" | cut -c1-400
      fi;;
    kvwrite)
      python3 benchmarks/kv_write.py --out "$out/kv_write.json" > "$out/kv_write.log" 2>&1
      echo "kvwrite: exit $?"; grep -vE 'Warning|warn' "$out/kv_write.log" | tail -7;;
    vllm7b)  # BI=1: --batch-invariant (VLLM_BATCH_INVARIANT=1); PC=1: --prefix-caching (vLLM's default; off here)
      m=$(base7b 2>> "$out/base7b.log" | tail -1); echo "base 7B: $m in $((SECONDS - t)) s"
      bi=$([ "${BI:-0}" = 1 ] && echo --batch-invariant); pc=$([ "${PC:-0}" = 1 ] && echo --prefix-caching)
      f="$out/vllm_7b_980${bi:+_batch_invariant}${pc:+_prefix_caching}"
      VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python3 benchmarks/vllm_speed.py \
        --model-dir "$m" --overrides model=llama2_7b_shapes --prompts 980 --runs ${RUNS:-3} --max-new-tokens 16 $bi $pc \
        --out "$f.json" > "$f.log" 2>&1; rc=$?
      echo "vllm7b (batch invariant ${BI:-0}, prefix caching ${PC:-0}): exit $rc"; grep -E '^(\[vllm\]|vllm_speed)' "$f.log" | cut -c1-600 | tail -7
      [ $rc = 0 ] || grep -E 'Error|error:|No module' "$f.log" | cut -c1-400 | tail -6;;  # the engine's root cause
    *) echo "unknown step $step"; continue;;
  esac
  echo "  ($step: $((SECONDS - t)) s)"
done
