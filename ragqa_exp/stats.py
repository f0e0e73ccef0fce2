"""Statistics for comparing jobs on the same questions: is a difference in accuracy real?

Pure functions over per-item correctness flags (one bool per question):

* `bootstrap_ci` — how precisely one job's accuracy is known (percentile bootstrap over items);
* `paired_bootstrap_ci` — how precisely the difference of two jobs on the *same* items is known;
* `mcnemar` — whether two jobs differ on the *same* items (exact McNemar test on the discordant pairs);
* `holm` — p-values adjusted for testing several rows at once (Holm's step-down).

Two accuracies with overlapping intervals can still differ significantly: paired answers on the same
questions share most of their noise, which only the paired test removes.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
_CHUNK = 1 << 22  # resampled items per batch, so memory stays bounded for large eval sets


def _percentile_bootstrap(x: np.ndarray, level: float, resamples: int, seed: int) -> tuple[float, float]:
    """Resample the items of `x` with replacement `resamples` times; the (1-level)/2 and (1+level)/2
    quantiles of the resampled means."""
    if x.ndim != 1 or x.size == 0:
        raise ValueError("the bootstrap needs a non-empty 1-D sequence of flags")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    n = x.size
    per_chunk = max(1, _CHUNK // n)
    means = np.concatenate([
        x[rng.integers(0, n, size=(min(per_chunk, resamples - done), n))].mean(axis=1)
        for done in range(0, resamples, per_chunk)
    ])
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(
    flags: Sequence[bool], *, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `flags`: resample the items with replacement
    `resamples` times and take the (1-level)/2 and (1+level)/2 quantiles of the resampled means.

    The fixed seed makes a report reproducible: the same predictions give the same interval.
    """
    return _percentile_bootstrap(np.asarray(flags, dtype=np.float64), level, resamples, seed)


def paired_bootstrap_ci(
    ref_flags: Sequence[bool], flags: Sequence[bool], *, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy(flags) - accuracy(ref_flags) on the same items: the
    questions are resampled together (item i's pair stays a pair), i.e. the bootstrap of the per-item
    differences flags[i] - ref_flags[i] in {-1, 0, 1}. `ref_flags[i]` and `flags[i]` must be the same item."""
    if len(ref_flags) != len(flags):
        raise ValueError(f"paired flags differ in length: {len(ref_flags)} vs {len(flags)}")
    diff = np.asarray(flags, dtype=np.float64) - np.asarray(ref_flags, dtype=np.float64)
    return _percentile_bootstrap(diff, level, resamples, seed)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order: sort ascending, p_(i) * (m - i) for i = 0..m-1, made
    non-decreasing along the sorted order and capped at 1. Rejecting where the adjusted p < α keeps the
    chance of any false "real difference" among the m comparisons at most α (any dependence)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class McNemar:
    """Paired comparison of a job against a reference on the same items.

    b: right→wrong (right in the reference, wrong here); c: wrong→right; p: exact two-sided p-value.
    """

    b: int
    c: int
    p: float


def binom_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n trials of a fair coin: min(1, 2·P[X ≤ min(k, n-k)]).

    Integer arithmetic (no floating-point tail sums), so large n stays exact up to the final division.
    """
    if n == 0:
        return 1.0
    m = min(k, n - k)
    return min(1.0, 2 * sum(comb(n, i) for i in range(m + 1)) / 2**n)


def mcnemar(ref_flags: Sequence[bool], flags: Sequence[bool]) -> McNemar:
    """Exact McNemar test: under "no change" each discordant item is equally likely to flip either way,
    so b ~ Bin(b + c, ½). `ref_flags[i]` and `flags[i]` must be the same item."""
    if len(ref_flags) != len(flags):
        raise ValueError(f"paired flags differ in length: {len(ref_flags)} vs {len(flags)}")
    b = sum(1 for r, f in zip(ref_flags, flags) if r and not f)
    c = sum(1 for r, f in zip(ref_flags, flags) if f and not r)
    return McNemar(b=b, c=c, p=binom_two_sided_p(b, b + c))
