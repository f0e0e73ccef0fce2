"""Weights & Biases, one run per job. Offline unless an API key is set; never blocks or fails a run.

Runs of one sweep share `group` (`sweep_group`: unique per sweep dir) and carry `job_type` and tags for the job's choices
(`quant:gptq`, `neftune.alpha:5`), so sweeps compare side by side in the dashboard."""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional

from ragqa_exp.config import WandbConfig

log = logging.getLogger(__name__)

MISMATCH_COLUMNS = ["qid", "question", "answer", "pred", "exact", "partial", "context"]


def resolve_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


TAG_MAX = 64  # wandb's limit on a tag's length
GROUP_MAX = 128  # wandb's limit on a group's length
GROUP_HASH_CHARS = 8


def sweep_group(sweep_dir: str | Path) -> str:
    """The wandb group of a sweep: `<date>_<time>-<hash>` for `multirun/<date>/<time>` (the dir's last two
    parts, readable) and 8 hex digits of the sha256 of its absolute path (unique: two sweeps started at
    the same time of day on different days, or in two checkouts, never share a group). The path is made
    absolute lexically (`os.path.abspath`, as the launchers do), so every job of the sweep gets the same group."""
    path = os.path.abspath(os.fspath(sweep_dir))
    digest = hashlib.sha256(path.encode("utf-8")).hexdigest()[:GROUP_HASH_CHARS]
    parts = Path(path).parts[-2:]
    readable = "_".join(p for p in parts if p != os.sep)
    return f"{readable[:GROUP_MAX - GROUP_HASH_CHARS - 1]}-{digest}"


def override_tags(overrides: list[str]) -> list[str]:
    """`quant=gptq` -> `quant:gptq`; hydra.* overrides are not choices; long values are cut to wandb's limit."""
    tags = []
    for o in overrides:
        key, sep, value = o.lstrip("+~").partition("=")
        if sep and not key.startswith("hydra"):
            tags.append(f"{key}:{value}"[:TAG_MAX])
    return tags


def rewrite_trainer_logs(entry: dict) -> dict:
    """A trainer log_history entry → wandb keys as transformers' WandbCallback names them."""
    out: dict[str, Any] = {}
    for k, v in entry.items():
        if k == "step":
            out["train/global_step"] = v
        elif k.startswith("eval_"):
            out["eval/" + k[5:]] = v
        elif k.startswith("test_"):
            out["test/" + k[5:]] = v
        else:
            out["train/" + k] = v
    return out


class WandbRun:
    """`with WandbRun(cfg, dir, name, config) as run:` — always `finish()`es, even on error."""

    def __init__(self, cfg: WandbConfig, job_dir: Path, name: str, config: dict, job_type: Optional[str] = None,
                 tags: Optional[list[str]] = None) -> None:
        self.cfg, self.job_dir, self.name, self.config = cfg, Path(job_dir), name, config
        self.job_type = job_type
        self.tags = [*cfg.tags, *(tags or [])]
        self.run = None
        self.mode = resolve_mode(cfg.mode)

    def __enter__(self) -> "WandbRun":
        if self.mode == "disabled":
            return self
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("WANDB_LOG_MODEL", "false")
        kwargs = dict(
            project=self.cfg.project, entity=self.cfg.entity, group=self.cfg.group, job_type=self.job_type,
            tags=self.tags or None, name=self.name, config=self.config, dir=str(self.job_dir), reinit="finish_previous",
        )
        try:
            self.run = wandb.init(mode=self.mode, settings=wandb.Settings(init_timeout=90), **kwargs)
        except Exception as ex:  # network trouble online: fall back to offline, never fail the run
            log.warning("wandb %s init failed (%s); logging offline instead", self.mode, ex)
            self.mode = "offline"
            try:
                self.run = wandb.init(mode="offline", **kwargs)
            except Exception as ex2:  # e.g. a full disk: the job goes on without wandb
                log.warning("wandb offline init failed too (%s); the job goes on without wandb", ex2)
                self.mode = "disabled"
                return self
        self._call("define_metric", self._define_metrics)
        return self

    def _define_metrics(self) -> None:
        self.run.define_metric("train/global_step")
        self.run.define_metric("train/*", step_metric="train/global_step")
        self.run.define_metric("eval/*", step_metric="train/global_step")

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """A wandb call that may fail (network loss, a full disk, a wandb bug): warned about, never raised;
        metrics.json and predictions.jsonl hold every number regardless."""
        if self.run is None:
            return None
        try:
            return fn()
        except Exception as ex:  # noqa: BLE001
            log.warning("wandb %s failed (%s: %s); the job goes on without it", what, type(ex).__name__, ex)
            return None

    def log_trainer_history(self, history: list[dict]) -> None:
        """Loss curves of a training stage taken from the cache (a fresh one logs live via report_to)."""
        self._call("log", lambda: [self.run.log(rewrite_trainer_logs(entry)) for entry in history])

    def log_mismatches(self, predictions: list[dict], contexts: dict[str, list[str]], max_rows: int) -> int:
        def log_table() -> int:
            import wandb

            rows = [p for p in predictions if not p["exact"]][:max_rows]
            table = wandb.Table(columns=MISMATCH_COLUMNS)
            for p in rows:
                table.add_data(p["qid"], p["question"], p["answer"], p["pred"], p["exact"], p["partial"],
                               "\n".join(contexts.get(p["qid"], [])))
            self.run.log({"eval/mismatches": table})
            return len(rows)

        return self._call("table log", log_table) or 0

    def summary(self, metrics: dict) -> None:
        self._call("summary", lambda: self.run.summary.update(
            {k: v for k, v in metrics.items() if v is None or isinstance(v, (int, float, str, bool))}))

    @property
    def run_dir(self) -> Optional[str]:
        return getattr(self.run, "dir", None) and str(Path(self.run.dir).parent)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._call("finish", lambda: self.run.finish(exit_code=1 if exc_type else 0))
