"""Answer NLL of the models of finished jobs: `ragqa_exp.nll.answer_nll` (the training loss: answer tokens only)
on the first N items of each job's eval split, with the full prompts its eval stage used, each model loaded
the way its eval stage loads it (the job's quant artifact, else its merged / base model). Complements the
jobs' exact match: a finer measure of how much a quantization changed the model.

    python benchmarks/answer_nll.py multirun/<date>/<time> --n 32 --out benchmarks/results/<name>.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def job_config(job_dir: Path):
    """The job's RunConfig, recomposed from its `.hydra/overrides.yaml`."""
    import yaml

    from ragqa_exp.config_store import validate_overrides  # compose (schemas registered) + the typed checks

    overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text(encoding="utf-8")) or []
    return validate_overrides(overrides)


def model_dir(cfg, metrics: dict) -> str:
    from ragqa_exp.cache import stage_dir
    from ragqa_exp.base_model import model_location

    if metrics.get("quant_artifact_dir"):
        return metrics["quant_artifact_dir"]
    if metrics.get("train_key"):
        return str(stage_dir(cfg.cache_dir, "train", metrics["train_key"]) / "merged")
    return model_location(cfg.model, cfg.cache_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path, help="a sweep dir (its job dirs) or one job dir")
    ap.add_argument("--n", type=int, default=32, help="items of the eval split (default 32)")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = ap.parse_args()

    from ragqa_exp.config import to_plain
    from ragqa_exp.data import format_prompt, load_splits
    from ragqa_exp.runtime import release_memory
    from ragqa_exp.nll import answer_nll
    from ragqa_exp.quantize import method_module

    jobs = [args.sweep] if (args.sweep / "metrics.json").is_file() else sorted(
        p for p in args.sweep.iterdir() if (p / "metrics.json").is_file())
    rows = []
    for job in jobs:
        cfg = job_config(job)
        metrics = json.loads((job / "metrics.json").read_text(encoding="utf-8"))
        items = load_splits(cfg.data).get(cfg.eval.split)[: args.n]
        prompts = [format_prompt(r["question"], r["context"], cfg.data.max_passages) for r in items]
        where = model_dir(cfg, metrics)
        lm = method_module(cfg.quant.method).load(cfg.quant, where, cfg.model)
        t0 = time.perf_counter()
        nll = answer_nll(lm.model, lm.tokenizer, prompts, [r["answer"] for r in items])
        row = {"job": job.name, "quant": to_plain(cfg.quant), "kernel": lm.kernel, "answer_nll": round(nll, 4),
               "n_nll": len(items), "exact_match": metrics["exact_match"], "n_exact": metrics["n"],
               "nll_seconds": round(time.perf_counter() - t0, 1), "model_dir": where}
        print(json.dumps(row, ensure_ascii=False), flush=True)
        rows.append(row)
        del lm
        release_memory()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
