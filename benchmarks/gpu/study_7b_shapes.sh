#!/usr/bin/env bash
# On the GPU machine (after benchmarks/gpu/setup.sh): the study's sweep at 7B shapes (issue 16),
# `python -m ragqa_exp experiment=study_7b_shapes -m` (none, bnb, gptq, awq: one training, three
# quantizations, four evaluations), run the way a preemptible slot runs it: each call of this script gives the
# sweep at most BUDGET seconds, then SIGTERM (and SIGKILL GRACE seconds later, as a cluster would), and the
# next call runs the SAME command into the SAME sweep dir and cache, which must pick up where it stopped.
# Call it back to back (the machine keeps /tmp between calls while it is held) until it prints "sweep: done".
# Usage: bash benchmarks/gpu/study_7b_shapes.sh OUT_DIR [BUDGET_S=480] [GRACE_S=30] [extra overrides...]
# Writes OUT_DIR/resume_log.jsonl (one line per call: exit, seconds, what was finished/resumed/reused, from the
# jobs' status.json/metrics.json and the train entry's checkpoints) and, when done, the report and
# OUT_DIR/study_7b_shapes.json (benchmarks/study_sweep_table.py: the per-stage table).
set -uo pipefail
out=${1:?out dir}; budget=${2:-480}; grace=${3:-30}; shift $(( $# < 3 ? $# : 3 ))
export RAGQA_CACHE_DIR=${RAGQA_CACHE_DIR:-/tmp/rqcache} PYTHONUNBUFFERED=1
sweep=${SWEEP_DIR:-/tmp/study_7b_shapes}
mkdir -p "$out"
t0=$SECONDS
timeout -s TERM -k "$grace" "$budget" python3 -m ragqa_exp experiment=study_7b_shapes wandb.mode=offline \
  hydra.sweep.dir="$sweep" "$@" -m >> "$out/sweep.log" 2>&1
rc=$?
python3 benchmarks/study_sweep_table.py "$sweep" --cache "$RAGQA_CACHE_DIR" --call-exit "$rc" \
  --call-seconds $((SECONDS - t0)) --resume-log "$out/resume_log.jsonl"
if [ "$rc" -eq 0 ]; then
  python3 -m ragqa_exp.report "$sweep" --wandb-mode ${REPORT_WANDB:-offline} > "$out/report.md" 2> "$out/report.err"
  cp "$sweep"/report.csv "$sweep"/*.png "$out/" 2>/dev/null
  python3 benchmarks/study_sweep_table.py "$sweep" --cache "$RAGQA_CACHE_DIR" --table > "$out/study_7b_shapes.md"
  python3 benchmarks/study_sweep_table.py "$sweep" --cache "$RAGQA_CACHE_DIR" --json > "$out/study_7b_shapes.json"
  echo "sweep: done"
else
  echo "sweep: stopped (exit $rc after $((SECONDS - t0)) s); run the same command again to resume"
fi
