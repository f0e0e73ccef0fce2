"""run(cfg, job_dir): one job's stages in order — base model → train → quantize → evaluate → record.

This runs in the Hydra job process and only orchestrates: each stage that computes runs in a fresh process
(isolation.py), behind the stage cache (cache.py) and its lock, so a sweep trains once and quantizes once per
quant config even when its jobs run in parallel, and every measurement belongs to one stage of one job.
Before any stage, the job's plan (resolved settings, stage keys) and fingerprint are computed: a finished job
dir, or a killed evaluation's partial answers, are reused only under the same fingerprint (fingerprint.py).
"""
from __future__ import annotations

import json
import logging
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from ragqa_exp import fingerprint, manifest
from ragqa_exp.cache import cached_stage, stage_dir
from ragqa_exp.config import RunConfig, as_run_config, to_plain
from ragqa_exp.config_store import register_configs
from ragqa_exp.data import load_splits, rows_identity
from ragqa_exp.fsutil import write_json_atomic
from ragqa_exp.isolation import run_stage
from ragqa_exp.record import JobRecord

log = logging.getLogger(__name__)

VERSIONED = ("ragqa_exp", "torch", "transformers", "trl", "peft", "datasets", "wandb", "bitsandbytes", "gptqmodel",
             "openai")
JOB_TYPE = "train-quantize-eval"


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def prepare_base(cfg: RunConfig, job_dir: Path) -> str:
    from ragqa_exp.base_model import BASE_MARKER, base_entry, base_key_parts, build_base_into

    entry = base_entry(cfg.model, cfg.cache_dir)
    if entry is None:
        return cfg.model.path
    cached_stage(entry, BASE_MARKER, "base model",
                 lambda work: run_stage("base", build_base_into, cfg.model, work, work_dir=job_dir),
                 config=base_key_parts(cfg.model), verify=cfg.cache_verify)
    return str(entry)


FRESH = "skip_existing=false (overwrites this job dir) or another hydra.sweep.dir / hydra.run.dir"


@dataclass
class Plan:
    """What a job will build and use, known before any stage runs: what `auto` resolves to here, the base
    model's identity and the stage keys."""
    settings: dict
    source_id: Optional[str] = None  # the base model's identity (hub id@commit, package==version, ...)
    keys: dict = field(default_factory=dict)  # stage -> key


def plan(cfg: RunConfig, job_dir: Path, train_rows_id: str) -> Plan:
    from ragqa_exp.base_model import base_entry, base_identity
    from ragqa_exp.runtime import build_settings
    from ragqa_exp.quantize import quant_key
    from ragqa_exp.train import train_key

    if cfg.model.is_api:
        return Plan(settings={})
    # resolving `auto` needs torch (CUDA, bf16 support): a stage process, not this one (~2 s)
    out = Plan(settings=run_stage("resolve", build_settings, cfg, work_dir=job_dir), source_id=base_identity(cfg.model))
    entry = base_entry(cfg.model, cfg.cache_dir)
    out.keys["base"] = entry.name if entry is not None else out.source_id
    source = out.source_id
    if cfg.train.enabled:
        source = out.keys["train"] = train_key(cfg, out.source_id, train_rows_id, out.settings)
    if cfg.quant.produces_artifact:
        out.keys["quant"] = quant_key(cfg, source, train_rows_id, out.settings)
    return out


def _entry_facts(entry: Path, resolved: dict) -> dict:
    """A cache entry as metrics.json's `cache_entries` shows it: key, dir, resolved settings, library versions."""
    return {"key": entry.name, "dir": str(entry), "resolved": resolved,
            "versions": (manifest.read(entry) or {}).get("versions")}


def _check_partial_eval(cfg: RunConfig, job_dir: Path, fp: str, fp_parts: dict) -> None:
    """A killed eval's predictions resume only under the same fingerprint; record this run's beside them."""
    from ragqa_exp.evaluate import PARTIAL

    partial = job_dir / PARTIAL
    if partial.is_file():
        old, old_parts = fingerprint.read_partial(job_dir)
        if old != fp and not cfg.skip_existing:
            log.info("%s was written by a different setup; skip_existing=false: starting the evaluation afresh", partial)
            partial.unlink()
        else:
            fingerprint.check(old, old_parts, fp, fp_parts, str(partial), FRESH)
    write_json_atomic(job_dir / fingerprint.PARTIAL_FINGERPRINT, {"fingerprint": fp, "parts": fp_parts})


def run(cfg: Any, job_dir: str | Path, run_name: str = "run", tags: Optional[list[str]] = None) -> dict[str, Any]:
    """Run one job into `job_dir`; returns the metrics written to `job_dir/metrics.json`."""
    from ragqa_exp import train as train_mod
    from ragqa_exp.evaluate import eval_stage
    from ragqa_exp.base_model import base_entry
    from ragqa_exp.fsutil import dir_size_mib
    from ragqa_exp.preflight import preflight
    from ragqa_exp.quantize import QUANT_SETTINGS, RESULT_FILE, build_artifact, quant_key_parts
    from ragqa_exp.tracking import WandbRun

    register_configs()  # the backend names eval.backend is checked against (a no-op after the first call)
    cfg = as_run_config(cfg)  # range checks: a bad value stops the job here
    job_dir = Path(job_dir)
    metrics_file = job_dir / "metrics.json"
    preflight(cfg, job_dir)
    splits = load_splits(cfg.data)  # bad data fails here, before any model is touched
    rows = splits.get(cfg.eval.split)
    train_rows_id = rows_identity(splits.train)  # in the train and calibration cache keys
    p = plan(cfg, job_dir, train_rows_id)
    fp_parts = fingerprint.parts(to_plain(cfg), p.settings, p.keys, rows_identity(rows), manifest.library_versions())
    fp = fingerprint.digest(fp_parts)
    if cfg.skip_existing and metrics_file.is_file():
        done = json.loads(metrics_file.read_text(encoding="utf-8"))
        fingerprint.check(done.get("fingerprint"), done.get("fingerprint_parts"), fp, fp_parts, str(metrics_file), FRESH)
        log.info("%s exists with this job's fingerprint %s: job already done, skipping (skip_existing=false to rerun)",
                 metrics_file, fp)
        return done
    _check_partial_eval(cfg, job_dir, fp, fp_parts)

    record: dict[str, Any] = {"reused": [], "fingerprint": fp, "fingerprint_parts": fp_parts, "cache_entries": {},
                              "data_overlap_qid": splits.overlap.qid, "data_overlap_question": splits.overlap.question}
    entries = record["cache_entries"]
    with WandbRun(cfg.wandb, job_dir, run_name, to_plain(cfg), job_type=JOB_TYPE, tags=tags) as wb:
        model_dir: Optional[str] = None
        if cfg.model.is_api:
            log.info("model.source=%s: %s is evaluated as served at %s; training and quantization are skipped%s",
                     cfg.model.source.value, cfg.model.name, cfg.model.base_url,
                     " (train.enabled=true is not read for API models)" if cfg.train.enabled else "")
        else:
            model_dir = prepare_base(cfg, job_dir)
            base_dir = base_entry(cfg.model, cfg.cache_dir)  # None: a hub/local model, loaded where it is
            entries["base"] = {**(_entry_facts(base_dir, {}) if base_dir else {"key": None}), "id": p.source_id}
            source_id = p.source_id
            if cfg.train.enabled:
                key = p.keys["train"]
                entry = stage_dir(cfg.cache_dir, "train", key)
                base = model_dir
                if cached_stage(entry, train_mod.RESULT_FILE, "train",
                                lambda work: run_stage("train", train_mod.train, cfg, base, work, key, work_dir=job_dir),
                                config=train_mod.train_key_parts(cfg, source_id, train_rows_id, p.settings),
                                verify=cfg.cache_verify, resume=True):
                    record["reused"].append("train")
                tr = train_mod.read_result(entry)
                wb.log_trainer_history(tr.log_history)
                record.update(train_seconds=tr.train_seconds, train_loss=tr.train_loss, eval_loss=tr.eval_loss,
                              train_key=key, train_resumed_from_step=tr.resumed_from_step,
                              train_rows_shortened=tr.rows_shortened)
                entries["train"] = _entry_facts(entry, {k: p.settings[k] for k in train_mod.TRAIN_SETTINGS if k in p.settings})
                model_dir, source_id = str(entry / "merged"), key
            if cfg.quant.produces_artifact:
                qkey = p.keys["quant"]
                qentry = stage_dir(cfg.cache_dir, "quant", qkey)
                src = model_dir
                if cached_stage(qentry, RESULT_FILE, "quantize",
                                lambda work: run_stage("quantize", build_artifact, cfg, src, work, work_dir=job_dir),
                                config=quant_key_parts(cfg, source_id, train_rows_id, p.settings), verify=cfg.cache_verify):
                    record["reused"].append("quantize")
                facts = json.loads((qentry / RESULT_FILE).read_text(encoding="utf-8"))
                calib_texts = facts.pop("calib_texts", facts.pop("calib_samples", None))  # older entries: calib_samples
                record.update(quant_seconds=facts.pop("quant_seconds", None), model_size_mib=facts.pop("size_mib", None),
                              quant_calib_texts=calib_texts, quant_calib_tokens=facts.pop("calib_tokens", None),
                              quant_artifact_dir=str(qentry), quant_key=qkey, quant_extra=facts)
                entries["quant"] = _entry_facts(qentry, {k: p.settings[k] for k in QUANT_SETTINGS if k in p.settings})
                model_dir = str(qentry)
                _link_artifact(job_dir, qentry)
            else:
                record["model_size_mib"] = dir_size_mib(model_dir) if Path(model_dir).exists() else None

        ev = run_stage("eval", eval_stage, cfg, model_dir, str(job_dir), work_dir=job_dir)
        (job_dir / fingerprint.PARTIAL_FINGERPRINT).unlink(missing_ok=True)  # its partial predictions are gone
        lm, em, info = ev.load_memory, ev.eval_memory, ev.info
        rec = JobRecord(
            **ev.metrics,
            gpu_mem_load_mib=lm.gpu_mem_process_mib_end, gpu_mem_peak_mib=em.gpu_mem_process_mib_peak,
            torch_peak_allocated_mib=em.torch_peak_allocated_mib, torch_peak_reserved_mib=em.torch_peak_reserved_mib,
            rss_peak_mib=max(lm.rss_peak_mib, em.rss_peak_mib), gpu_mem_unavailable_reason=em.gpu_unavailable_reason,
            quant=cfg.quant.method, quant_bits=info.bits, quant_group_size=info.group_size, quant_kernel=info.kernel,
            quant_kernel_fallback_reason=info.kernel_fallback_reason,
            model=cfg.model.name, model_source=cfg.model.source.value, eval_split=cfg.eval.split,
            eval_backend=cfg.eval.backend, device=ev.device, **ev.gpu,
            pid=ev.pid, seed=cfg.seed, versions=versions(), wandb_mode=wb.mode, wandb_run_dir=wb.run_dir,
            wandb_group=cfg.wandb.group, **record,
        )
        rec.quant_extra = {**rec.quant_extra, **info.extra}
        preds = [json.loads(line) for line in (job_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
        contexts = {r["qid"]: r["context"] for r in rows}
        rec.mismatch_rows_logged = wb.log_mismatches(preds, contexts, cfg.eval.table_max_rows)
        metrics = rec.to_json()
        wb.summary(metrics)
        write_json_atomic(metrics_file, metrics)  # last: its presence means the job is complete
    log.info(
        "exact_match=%.4f partial_match=%.4f n=%d eval_seconds=%.1f -> %s",
        metrics["exact_match"], metrics["partial_match"], metrics["n"], metrics["eval_seconds"], metrics_file,
    )
    return metrics


def _link_artifact(job_dir: Path, entry: Path) -> None:
    """`<job>/quantized` -> the cached artifact, for users who look for it in the job dir."""
    link = job_dir / "quantized"
    try:
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(entry, target_is_directory=True)
    except OSError as ex:  # a filesystem without symlinks: the path is in metrics.json anyway
        log.debug("could not link %s -> %s: %s", link, entry, ex)
