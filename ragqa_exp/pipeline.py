"""run(cfg, job_dir): one job's stages in order — base model → train → quantize → evaluate — then its record.

This runs in the Hydra job process and only orchestrates: each stage that computes runs in a fresh process
(isolation.py), behind the stage cache (cache.py) and its lock, so a sweep trains once and quantizes once per
quant config even when its jobs run in parallel, and every measurement belongs to one stage of one job.
Before any stage, the job's plan (resolved settings, stage keys) and fingerprint are computed: a finished job
dir, or a killed evaluation's partial answers, are reused only under the same fingerprint (fingerprint.py).
"""
from __future__ import annotations

import functools
import json
import logging
import platform
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from ragqa_exp import fingerprint, manifest
from ragqa_exp.cache import cached_stage
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
    return {"python": platform.python_version(), **manifest.library_versions(VERSIONED)}


@dataclass
class Plan:
    """What a job will build and use, known before any stage runs: what `auto` resolves to here, and the job's
    fingerprint (the eval stage's key: the config, those settings, the keys of the stages before it, the
    evaluated rows, the library versions)."""
    settings: dict
    fingerprint: str
    fingerprint_parts: dict


_resolved: dict[tuple, dict] = {}  # what `auto` resolved to in this process, by what it depends on


def resolve_settings(cfg: RunConfig, job_dir: Path) -> dict:
    """runtime.build_settings of `cfg`, in a stage process (resolving `auto` needs torch: CUDA, bf16 support; this
    process does not import it). Its answer depends on the machine and on the few settings keyed here, so the jobs
    of a sweep that run in this process (Hydra's basic launcher) resolve once per distinct answer (~1.3 CPU s of
    process each, 2026-12-06); a Ray or SLURM job is a process of its own and resolves for itself."""
    import os

    from ragqa_exp.runtime import build_settings

    key = (cfg.model.dtype, cfg.train.enabled, cfg.train.merge_dtype, cfg.quant.produces_artifact,
           getattr(cfg.quant, "device", None), os.environ.get("CUDA_VISIBLE_DEVICES"))
    if key not in _resolved:
        _resolved[key] = run_stage("resolve", build_settings, cfg, work_dir=job_dir)
    return dict(_resolved[key])


def plan(cfg: RunConfig, job_dir: Path, train_rows_id: str, eval_rows_id: str) -> Plan:
    from ragqa_exp.stages import EVALUATE, planned

    settings = {} if cfg.model.is_api else resolve_settings(cfg, job_dir)  # an API model has nothing to resolve
    *_, (stage, _, key, parts, _) = planned(cfg, settings, train_rows_id, eval_rows_id)
    assert stage is EVALUATE
    return Plan(settings=settings, fingerprint=key, fingerprint_parts=parts)


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
            fingerprint.check(old, old_parts, fp, fp_parts, str(partial), fingerprint.FRESH)
    write_json_atomic(job_dir / fingerprint.PARTIAL_FINGERPRINT, {"fingerprint": fp, "parts": fp_parts})


def run(cfg: Any, job_dir: str | Path, run_name: str = "run", tags: Optional[list[str]] = None) -> dict[str, Any]:
    """Run one job into `job_dir`; returns the metrics written to `job_dir/metrics.json`."""
    from ragqa_exp.preflight import preflight
    from ragqa_exp.stages import planned
    from ragqa_exp.tracking import WandbRun

    register_configs()  # the backend names eval.backend is checked against (a no-op after the first call)
    cfg = as_run_config(cfg)  # range checks: a bad value stops the job here
    job_dir = Path(job_dir)
    metrics_file = job_dir / "metrics.json"
    preflight(cfg, job_dir)
    splits = load_splits(cfg.data)  # bad data fails here, before any model is touched
    rows = splits.get(cfg.eval.split)
    train_rows_id = rows_identity(splits.train)  # in the train and calibration cache keys
    eval_rows_id = rows_identity(rows)
    p = plan(cfg, job_dir, train_rows_id, eval_rows_id)
    fp, fp_parts = p.fingerprint, p.fingerprint_parts
    if cfg.skip_existing and metrics_file.is_file():
        done = json.loads(metrics_file.read_text(encoding="utf-8"))
        fingerprint.check(done.get("fingerprint"), done.get("fingerprint_parts"), fp, fp_parts, str(metrics_file),
                          fingerprint.FRESH)
        log.info("%s exists with this job's fingerprint %s: job already done, skipping (skip_existing=false to rerun)",
                 metrics_file, fp)
        return done
    _check_partial_eval(cfg, job_dir, fp, fp_parts)

    record: dict[str, Any] = {"reused": [], "fingerprint": fp, "fingerprint_parts": fp_parts, "cache_entries": {},
                              "data_overlap_qid": splits.overlap.qid, "data_overlap_question": splits.overlap.question}
    entries = record["cache_entries"]
    with WandbRun(cfg.wandb, job_dir, run_name, to_plain(cfg), job_type=JOB_TYPE, tags=tags) as wb:
        if cfg.model.is_api:
            log.info("model.source=%s: %s is evaluated as served at %s; training and quantization are skipped%s",
                     cfg.model.source.value, cfg.model.name, cfg.model.base_url,
                     " (train.enabled=true is not read for API models)" if cfg.train.enabled else "")
        model_dir: Optional[str] = None
        for stage, inp, key, parts, entry in planned(cfg, p.settings, train_rows_id, eval_rows_id):
            built = None
            if not stage.cached:  # every job, in its own process, in its job dir
                built = _build_in_process(stage, cfg, model_dir, key, job_dir, job_dir)
            elif entry is not None:  # built once, in its own process, behind the cache and its lock
                build = functools.partial(_build_in_process, stage, cfg, model_dir, key, job_dir)
                if cached_stage(entry, stage.marker, stage.what, build, config=parts, verify=cfg.cache_verify,
                                resume=stage.resume) and stage.report_reuse:
                    record["reused"].append(stage.process)
            out = stage.read(replace(inp, source_dir=model_dir), entry, key, built)
            if out.log_history is not None:
                wb.log_trainer_history(out.log_history)
            _merge(record, out.record)
            if stage.cached:
                entries[stage.name] = {**(_entry_facts(entry, stage.resolved(p.settings)) if entry else {"key": None}),
                                       **out.entry_facts}
            if stage.job_link and entry is not None:
                _link(job_dir / stage.job_link, entry)
            model_dir = out.model_dir

        rec = JobRecord(quant=cfg.quant.method, model=cfg.model.name, model_source=cfg.model.source.value,
                        eval_split=cfg.eval.split, eval_backend=cfg.eval.backend, seed=cfg.seed, versions=versions(),
                        wandb_mode=wb.mode, wandb_run_dir=wb.run_dir, wandb_group=cfg.wandb.group, **record)
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


def _merge(record: dict, fields: dict) -> None:
    """A stage's metrics.json fields into the job's; a dict field both set (quant_extra) is merged, the later
    stage's values winning."""
    for k, v in fields.items():
        record[k] = {**record[k], **v} if isinstance(v, dict) and isinstance(record.get(k), dict) else v


def _build_in_process(stage, cfg: RunConfig, source_dir: Optional[str], key: str, job_dir: Path, work: Path) -> Any:
    return run_stage(stage.process, stage.build, cfg, source_dir, work, key, work_dir=job_dir)


def _link(link: Path, entry: Path) -> None:
    """`link` -> a cached entry (`<job>/quantized`), for users who look for it in the job dir."""
    try:
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(entry, target_is_directory=True)
    except OSError as ex:  # a filesystem without symlinks: the path is in metrics.json anyway
        log.debug("could not link %s -> %s: %s", link, entry, ex)
