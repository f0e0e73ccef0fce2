#!/usr/bin/env bash
# On a one-GPU machine (after setup.sh with the ray wheels): two jobs of a hydra/launcher=ray sweep at the same
# time on one GPU (num_gpus: 0.5 each), each job's stages in their own processes. Prints, per job: GPU
# (CUDA_VISIBLE_DEVICES, UUID), start and end times, per-process NVML memory.
# Usage: bash benchmarks/gpu/ray_one_gpu.sh OUT_DIR [MODEL_ARGS...]
set -uo pipefail
out=${1:?out dir}; shift
export RAGQA_CACHE_DIR=${RAGQA_CACHE_DIR:-/tmp/rqcache} PYTHONUNBUFFERED=1
sweep=/tmp/sweep_ray
t=$SECONDS
python3 -m ragqa_exp -m hydra/launcher=ray hydra.launcher.ray.remote.num_gpus=${RAY_NUM_GPUS:-0.5} quant=none,bnb \
  ${@:-model=llama2_7b_shapes} train.enabled=false eval.limit=${EVAL_LIMIT:-392} eval.max_new_tokens=16 eval.max_batch_tokens=65536 \
  wandb.mode=disabled hydra.sweep.dir=$sweep > "$out/ray_sweep.log" 2>&1
echo "ray sweep: exit $? in $((SECONDS - t)) s"
python3 - "$sweep" "$out" <<'PY'
import json, sys
from pathlib import Path
sweep, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = []
for job in sorted(p for p in sweep.iterdir() if (p / "status.json").exists()):
    st = json.loads((job / "status.json").read_text())
    m = json.loads((job / "metrics.json").read_text()) if (job / "metrics.json").exists() else {}
    ln = json.loads((job / "launcher.json").read_text()) if (job / "launcher.json").exists() else {}
    rows.append({"job": job.name, "status": st["status"], "error": st.get("error"), "started_at": st.get("started_at"),
                 "finished_at": st.get("finished_at"), "job_pid": st.get("job_pid"), "eval_pid": m.get("pid"),
                 "launcher": ln, "cuda_visible_devices": m.get("cuda_visible_devices"), "gpu_uuid": m.get("gpu_uuid"),
                 "gpu_mem_load_mib": m.get("gpu_mem_load_mib"), "gpu_mem_peak_mib": m.get("gpu_mem_peak_mib"),
                 "torch_peak_allocated_mib": m.get("torch_peak_allocated_mib"), "eval_seconds": m.get("eval_seconds"),
                 "quant_kernel": m.get("quant_kernel")})
for r in rows:
    print(json.dumps({k: v for k, v in r.items() if k != "launcher"}))
if len(rows) == 2 and all(r["started_at"] and r["finished_at"] for r in rows):
    a, b = rows
    overlap = max(a["started_at"], b["started_at"]) < min(a["finished_at"], b["finished_at"])
    print("jobs overlap in time:", overlap)
(out / "ray_one_gpu.json").write_text(json.dumps(rows, indent=1))
PY
