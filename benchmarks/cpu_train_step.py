"""One LoRA SFT step on the embedded model, TRL's default loss vs ragqa_exp's sparse LM head, side by side.

    python benchmarks/cpu_train_step.py --steps 5 --out benchmarks/results/cpu_train_step.json

Same data (bundled train rows), same config (the default lora/train groups), same process; prints the median
seconds per step (after one warm-up step) and the loss of each, which must agree up to bf16 noise.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/cpu_train_step.json")
    a = ap.parse_args()

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from conftest import run_config
    from ragqa_exp.data import load_splits, to_sft_example
    from ragqa_exp.base_model import embedded_model_dir
    from ragqa_exp.loading import load_model, load_tokenizer
    from ragqa_exp.runtime import resolve_dtype
    from ragqa_exp.sparse_head import SparseHeadSFTTrainer
    from ragqa_exp.train import _sft_config

    cfg = run_config([f"train.max_steps={a.steps + 1}", "train.eval_holdout=0", "train.logging_steps=1"])
    base = str(embedded_model_dir(cfg.model, cfg.cache_dir))
    rows = load_splits(cfg.data).train[: (a.steps + 1) * cfg.train.per_device_train_batch_size]
    ds = Dataset.from_list([to_sft_example(r, cfg.data.max_passages) for r in rows])

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], None

        def on_step_begin(self, *args, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, *args, **kw):
            self.times.append(time.perf_counter() - self.t0)

    results = {}
    for name, cls in (("trl_default", SFTTrainer), ("sparse_lm_head", SparseHeadSFTTrainer)):
        torch.manual_seed(cfg.seed)
        model = load_model(base, torch.float32, cfg.model)
        lora = cfg.lora
        timer = StepTimer()
        tr = cls(model=model, args=_sft_config(cfg, Path("/tmp/bench_step") / name, False, []), train_dataset=ds,
                 processing_class=load_tokenizer(base, cfg.model), callbacks=[timer],
                 peft_config=LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=0.0,
                                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))
        tr.train()
        losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
        results[name] = {"step_seconds": [round(t, 3) for t in timer.times],
                         "median_step_seconds": round(statistics.median(timer.times[1:]), 3), "losses": losses}
        print(name, results[name], flush=True)
    results["speedup"] = round(results["trl_default"]["median_step_seconds"] / results["sparse_lm_head"]["median_step_seconds"], 2)
    results["setup"] = {"batch": cfg.train.per_device_train_batch_size, "autocast": str(resolve_dtype(cfg.model.dtype)),
                        "torch_threads": torch.get_num_threads(), "steps_timed": a.steps}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2))
    print("speedup", results["speedup"])


if __name__ == "__main__":
    main()
