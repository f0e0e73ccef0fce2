"""The sweep report's plots: exact-match accuracy (with its bootstrap interval) against cost.

Drawn on a bare `Figure` with the Agg canvas (no pyplot state, no display needed) and written atomically.
Inputs are the report's rows (`ragqa_exp.report.collect`): `label`, `exact_match`, `exact_match_ci`, costs.
"""
from __future__ import annotations

import io
import textwrap
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ragqa_exp.fsutil import write_bytes_atomic
from ragqa_exp.record import is_api_model

ACCURACY_KEY = "exact_match"
LABEL_WIDTH = 28  # characters per line of a point's label
EVAL_SECONDS_PLOT = "accuracy_vs_eval_seconds.png"
MEMORY_PLOT = "accuracy_vs_memory.png"


def memory_axis(rows: list[dict]) -> tuple[str, str]:
    """GPU peak memory when any job measured it; on CPU-only sweeps (GPU memory null) the process RSS."""
    if any(r.get("gpu_mem_peak_mib") is not None for r in rows):
        return "gpu_mem_peak_mib", "peak GPU memory (MiB, this process)"
    return "rss_peak_mib", "peak RSS (MiB, CPU run)"


def _error_bar(row: dict) -> tuple[float, float]:
    """(below, above) the point; 0 without an interval, never negative (matplotlib rejects that)."""
    ci = row.get(f"{ACCURACY_KEY}_ci")
    if not ci:
        return 0.0, 0.0
    y = row[ACCURACY_KEY]
    return max(0.0, y - ci[0]), max(0.0, ci[1] - y)


def plot_accuracy_vs(rows: list[dict], x_key: str, x_label: str, path: Path) -> bool:
    """One point per finished job that has `x_key`; False (nothing written) when no job has it."""
    pts = [r for r in rows if r.get("status") == "ok" and r.get(x_key) is not None and r.get(ACCURACY_KEY) is not None]
    if not pts:
        return False
    fig = Figure(figsize=(6.4, 4.4), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bars = [_error_bar(r) for r in pts]
    ax.errorbar([r[x_key] for r in pts], [r[ACCURACY_KEY] for r in pts],
                yerr=[[b[0] for b in bars], [b[1] for b in bars]], fmt="o", capsize=4)
    xs = [r[x_key] for r in pts]
    mid = (min(xs) + max(xs)) / 2
    for r in pts:
        right_half = len(pts) > 1 and r[x_key] > mid  # label to the left of points in the right half
        ann = ax.annotate(textwrap.fill(r["label"], LABEL_WIDTH), (r[x_key], r[ACCURACY_KEY]),
                          textcoords="offset points", xytext=(-6 if right_half else 6, 4),
                          ha="right" if right_half else "left", fontsize=7)
        ann.set_in_layout(False)  # long labels must not shrink the axes
    ax.ticklabel_format(useOffset=False)  # plain MiB / seconds on the axis, not "+2.06e3"
    ax.set_xlabel(x_label)
    ax.set_ylabel("exact match (95% bootstrap interval)")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes_atomic(path, buf.getvalue())
    return True


def write_plots(rows: list[dict], out_dir: str | Path) -> list[Path]:
    """The report's PNGs in `out_dir`; returns those written. A plot without any data point is not drawn,
    and an older file of that name is removed so the report never shows a stale plot. API models' jobs are
    left out of the memory plot (what they measured is the client process, not the model)."""
    out_dir = Path(out_dir)
    local = [r for r in rows if not is_api_model(r)]
    mem_key, mem_label = memory_axis(local)
    written = []
    for plotted, key, label, path in [
        (rows, "eval_seconds", "eval seconds (whole eval split)", out_dir / EVAL_SECONDS_PLOT),
        (local, mem_key, mem_label, out_dir / MEMORY_PLOT),
    ]:
        if plot_accuracy_vs(plotted, key, label, path):
            written.append(path)
        else:
            path.unlink(missing_ok=True)
    return written
