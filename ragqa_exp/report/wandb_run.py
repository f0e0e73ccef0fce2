"""The report's wandb summary run (`job_type="report"`) in the sweep's group, beside the jobs' runs."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ragqa_exp.report.flat import flat_record
from ragqa_exp.report.jobs import Job
from ragqa_exp.tracking import sweep_group

log = logging.getLogger(__name__)

WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class WandbTarget:
    mode: str
    project: str = "ragqa_exp"
    entity: Optional[str] = None
    group: Optional[str] = None


def wandb_target(jobs: Sequence[Job], sweep_dir: Path, mode: Optional[str] = None) -> WandbTarget:
    """Follow the jobs: offline if any logged offline, else online if any did, else disabled; the group and
    project of the jobs' runs (metrics.json `wandb_group`; for sweeps that did not record it, the group the
    jobs get by default, `tracking.sweep_group` of the sweep dir)."""
    if mode is None:
        modes = {j.metrics.get("wandb_mode") for j in jobs}
        mode = next((m for m in ("offline", "online") if m in modes), "disabled")
    target = WandbTarget(mode=mode, group=sweep_group(sweep_dir))
    first = next((j for j in jobs if j.ok), None)
    if first is not None:
        cfg = _job_wandb_config(first.dir)
        target.project = cfg.get("project") or target.project
        target.entity = cfg.get("entity")
        target.group = first.metrics.get("wandb_group") or cfg.get("group") or target.group
    return target


def _job_wandb_config(job_dir: Path) -> dict:
    """The `wandb:` section of the job's composed config (.hydra/config.yaml), {} when unreadable."""
    import yaml

    try:
        cfg = yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text(encoding="utf-8"))
        return dict(cfg.get("wandb") or {})
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
        return {}


def log_to_wandb(target: WandbTarget, sweep_dir: Path, rows: list[dict], plot_files: Sequence[Path],
                 config: dict) -> None:
    """One summary run (`report/table` + the plots). A wandb problem is a warning, never a failed report."""
    if target.mode == "disabled":
        return
    os.environ.setdefault("WANDB_SILENT", "true")
    run = None
    try:
        import wandb

        records = [flat_record(r) for r in rows]
        run = wandb.init(
            project=target.project, entity=target.entity, group=target.group, job_type="report", name="report",
            dir=str(sweep_dir), mode=target.mode, config=config, reinit="finish_previous",
            settings=wandb.Settings(console="off", silent=True, init_timeout=90),
        )
        table = wandb.Table(columns=list(records[0]), data=[list(r.values()) for r in records],
                            allow_mixed_types=True)
        run.log({"report/table": table, **{f"report/{Path(p).stem}": wandb.Image(str(p)) for p in plot_files}})
    except Exception as ex:  # noqa: BLE001 - the report's files are already written
        log.warning("wandb report run failed (%s: %s); report files are still in %s", type(ex).__name__, ex,
                    sweep_dir)
    finally:
        if run is not None:
            try:
                run.finish()
            except Exception as ex:  # noqa: BLE001
                log.warning("wandb finish failed: %s", ex)
