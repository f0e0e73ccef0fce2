"""The sweep report, one module per concern (each imports only those before it):

    jobs       find a sweep's job dirs, read overrides, metrics.json, predictions.jsonl
    swept      the swept keys and the order of their values (multirun.yaml, else the job numbers)
    refs       each job's reference (one swept key at a time toward its first value; API rows; --ref)
    rows       rows with statistics: intervals, paired McNemar + paired bootstrap, Holm over the rows
    markdown   the table, verdicts and notes          flat   CSV / wandb-table records
    wandb_run  the summary run                        cli    `python -m ragqa_exp.report` (usage there)

Plots are `ragqa_exp.plots`, statistics `ragqa_exp.stats` (pure functions)."""
from ragqa_exp.report.cli import REPORT_CSV, REPORT_MD, main, run, write_report
from ragqa_exp.report.flat import csv_text, flat_record
from ragqa_exp.report.jobs import ACCURACY_FLAGS, Items, Job, find_job_dirs, latest_sweep, load_sweep, read_items
from ragqa_exp.report.markdown import markdown, verdict
from ragqa_exp.report.refs import default_ref, resolve_ref
from ragqa_exp.report.rows import ALPHA, PRIMARY, build_rows, collect, compare
from ragqa_exp.report.swept import Swept, swept
from ragqa_exp.report.wandb_run import WandbTarget, log_to_wandb, wandb_target

__all__ = [
    "ACCURACY_FLAGS", "ALPHA", "PRIMARY", "REPORT_CSV", "REPORT_MD", "Items", "Job", "Swept", "WandbTarget",
    "build_rows", "collect", "compare", "csv_text", "default_ref", "find_job_dirs", "flat_record", "latest_sweep",
    "load_sweep", "log_to_wandb", "main", "markdown", "read_items", "resolve_ref", "run", "swept", "verdict",
    "wandb_target", "write_report",
]
