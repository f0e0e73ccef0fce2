"""`python -m ragqa_exp.report [SWEEP_DIR] [--ref JOB] [--json] [--wandb-mode MODE]`

Answers "is this difference real?" for the jobs of one sweep (`multirun/<date>/<time>`, default: the latest):
one row per job with its metrics and a 95% bootstrap interval for each accuracy; against its reference job,
the paired McNemar test on the same questions (answers that flipped right→wrong / wrong→right) and a paired
bootstrap interval of the difference; verdicts Holm-adjusted over the rows. A job's reference is the job that
differs from it only in one swept key, set to that key's first value (`neftune.alpha=0` for
`neftune.alpha=5`; in a multi-key sweep, the first key in the sweep's order where the job is not at the
first value); an API model's job is compared with the first unquantized local job. `--ref` picks one
reference for every row. Writes `report.md`, `report.csv` and the plots into the sweep dir, prints the
Markdown (or the rows as JSON) and logs one wandb summary run when the sweep's jobs used wandb.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from ragqa_exp import plots
from ragqa_exp.fsutil import write_text_atomic
from ragqa_exp.report.flat import csv_text
from ragqa_exp.report.jobs import latest_sweep, load_sweep
from ragqa_exp.report.markdown import markdown
from ragqa_exp.report.rows import ALPHA, build_rows
from ragqa_exp.report.wandb_run import WANDB_MODES, log_to_wandb, wandb_target
from ragqa_exp.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED

REPORT_MD, REPORT_CSV = "report.md", "report.csv"


def write_report(sweep_dir: Path, rows: list[dict], fixed_ref: bool = False) -> tuple[str, list[Path]]:
    """report.md, report.csv and the plots, each written atomically; returns the Markdown and the plots."""
    plot_files = plots.write_plots(rows, sweep_dir)
    md = markdown(rows, [p.name for p in plot_files], title=f"Sweep report: {sweep_dir}", fixed_ref=fixed_ref)
    write_text_atomic(sweep_dir / REPORT_MD, md)
    write_text_atomic(sweep_dir / REPORT_CSV, csv_text(rows))
    return md, plot_files


def run(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ragqa_exp.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", nargs="?", help="multirun/<date>/<time> (default: the latest under ./multirun)")
    ap.add_argument("--ref", metavar="JOB", help="reference job for every row: its dir name or leading number")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of Markdown")
    ap.add_argument("--wandb-mode", choices=WANDB_MODES,
                    help="log the summary run online/offline, or not (default: follow the jobs' wandb_mode)")
    a = ap.parse_args(argv)
    sweep_dir = Path(a.sweep_dir) if a.sweep_dir else latest_sweep(Path("multirun"))
    jobs = load_sweep(sweep_dir)
    rows = build_rows(jobs, a.ref, sweep_dir)
    md, plot_files = write_report(sweep_dir, rows, fixed_ref=a.ref is not None)
    sys.stdout.write(json.dumps(rows, ensure_ascii=False, indent=1, default=str) + "\n" if a.json else md)
    sys.stdout.flush()
    config = {"sweep_dir": str(sweep_dir), "ref": a.ref or "default", "jobs": [j.name for j in jobs],
              "bootstrap_resamples": BOOTSTRAP_RESAMPLES, "bootstrap_seed": BOOTSTRAP_SEED, "alpha": ALPHA,
              "multiple_comparisons": "holm"}
    log_to_wandb(wandb_target(jobs, sweep_dir, a.wandb_mode), sweep_dir, rows, plot_files, config)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """User errors (no sweep dir, unknown --ref) are one `error:` line and exit status 2 (`cli.guarded`)."""
    from ragqa_exp.cli import guarded

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    guarded(lambda: run(argv))
