"""run(cfg): the stages of one job in order — data → train → quantize → evaluate → record."""
from __future__ import annotations

import json
import logging
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ragqa_exp.config import QuantMethod, RunConfig, to_plain
from ragqa_exp.data import load_splits
from ragqa_exp.evaluate import evaluate
from ragqa_exp.fsutil import write_json_atomic, write_jsonl_atomic
from ragqa_exp.measure import MemoryTracker
from ragqa_exp.models import device, model_location, release_memory
from ragqa_exp.quantize import QuantRequest, quantize_and_load
from ragqa_exp.quantize.calib import calibration_texts
from ragqa_exp.tracking import WandbRun
from ragqa_exp.train import train

log = logging.getLogger(__name__)

VERSIONED = ("ragqa_exp", "torch", "transformers", "trl", "peft", "datasets", "wandb", "bitsandbytes", "gptqmodel")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def as_run_config(cfg: DictConfig | RunConfig) -> RunConfig:
    return cfg if isinstance(cfg, RunConfig) else OmegaConf.to_object(cfg)


def run(cfg: DictConfig | RunConfig, job_dir: str | Path, run_name: str = "run") -> dict[str, Any]:
    """Run one job into `job_dir`; returns the metrics written to `job_dir/metrics.json`."""
    cfg = as_run_config(cfg)
    job_dir = Path(job_dir)
    metrics_file = job_dir / "metrics.json"
    if cfg.skip_existing and metrics_file.is_file():
        log.info("%s exists: job already done, skipping (skip_existing=false to rerun)", metrics_file)
        return json.loads(metrics_file.read_text(encoding="utf-8"))

    from transformers import set_seed

    set_seed(cfg.seed)
    splits = load_splits(cfg.data)
    base = model_location(cfg.model, cfg.cache_dir)
    plain = to_plain(cfg)
    with WandbRun(cfg.wandb, job_dir, run_name, plain) as wb:
        tr = train(cfg, splits, base, report_to=["wandb"] if wb.run is not None else [])
        if tr.reused:
            wb.log_trainer_history(tr.log_history)
        release_memory()  # the trainer's cached GPU memory must not count as the quantized model's load memory
        method = cfg.quant.method
        calib = (
            calibration_texts(cfg.calib_data, splits.train, cfg.data.max_passages)
            if method in (QuantMethod.gptq, QuantMethod.awq) else []
        )
        with MemoryTracker() as load_mem:
            q = quantize_and_load(QuantRequest(cfg=cfg, model_dir=tr.model_dir, out_dir=job_dir / "quantized", calib_texts=calib))
        rows = splits.get(cfg.eval.split)
        with MemoryTracker() as eval_mem:
            ev = evaluate(q.model, q.tokenizer, rows, cfg.eval, cfg.data.max_passages)
        lm, em = load_mem.report, eval_mem.report
        metrics: dict[str, Any] = {
            **ev.metrics,
            "gpu_mem_load_mib": lm.gpu_mem_process_mib_end,
            "gpu_mem_peak_mib": em.gpu_mem_process_mib_peak,
            "torch_peak_allocated_mib": em.torch_peak_allocated_mib,
            "torch_peak_reserved_mib": em.torch_peak_reserved_mib,
            "rss_peak_mib": max(lm.rss_peak_mib, em.rss_peak_mib),
            "gpu_mem_unavailable_reason": em.gpu_unavailable_reason,
            "quant": q.method, "quant_bits": q.bits, "quant_group_size": q.group_size,
            "quant_kernel": q.kernel, "quant_kernel_fallback_reason": q.kernel_fallback_reason,
            "quant_seconds": q.quant_seconds, "model_size_mib": q.model_size_mib, "quant_artifact_dir": q.artifact_dir,
            **{f"quant_{k}": v for k, v in q.extra.items()},
            "train_seconds": tr.train_seconds, "train_loss": tr.train_loss, "eval_loss": tr.eval_loss,
            "train_key": tr.key,
            "reused": ["train"] if tr.reused else [],
            "model": cfg.model.name, "eval_split": cfg.eval.split, "device": device(),
            "seed": cfg.seed, "versions": versions(),
            "wandb_mode": wb.mode, "wandb_run_dir": wb.run_dir,
        }
        write_jsonl_atomic(job_dir / "predictions.jsonl", ev.predictions)
        contexts = {r["qid"]: r["context"] for r in rows}
        metrics["mismatch_rows_logged"] = wb.log_mismatches(ev.predictions, contexts, cfg.eval.table_max_rows)
        wb.summary(metrics)
        write_json_atomic(metrics_file, metrics)  # last: its presence means the job is complete
    del q, ev
    release_memory()
    log.info(
        "exact_match=%.4f partial_match=%.4f n=%d eval_seconds=%.1f -> %s",
        metrics["exact_match"], metrics["partial_match"], metrics["n"], metrics["eval_seconds"], metrics_file,
    )
    return metrics
