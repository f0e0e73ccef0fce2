"""What a sweep varies: the swept keys, each with its values in the sweep's order (the first is the baseline),
and each job's value of every swept key.

The order comes from the sweep's `multirun.yaml` (`hydra.overrides.task`: `neftune.alpha=0,5` lists 0 first),
else it is inferred from the jobs: values in order of first appearance by job number (Hydra's basic sweeper
runs the product of the overrides in command-line order, so job 0 holds every key's first value).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ragqa_exp.report.jobs import Job

log = logging.getLogger(__name__)

MULTIRUN_YAML = "multirun.yaml"


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def job_values(job: Job, keys: Sequence[str]) -> dict[str, Optional[str]]:
    """The job's override (`key=value`, as written) of each key; None where the job does not set it."""
    own = {override_key(o): o for o in job.overrides}
    return {k: own.get(k) for k in keys}


@dataclass
class Swept:
    keys: list[str]  # in the sweep's command-line order
    values: dict[str, list[Optional[str]]]  # key -> its overrides (`key=value`) in sweep order; None: not set
    order_from: str  # "multirun.yaml" | "job order"

    def first(self, key: str) -> Optional[str]:
        return self.values[key][0]


def varying_keys(jobs: Sequence[Job]) -> list[str]:
    """Override keys whose value is not the same in every job (a key missing in a job counts as different)."""
    values: dict[str, set[str]] = {}
    for j in jobs:
        for o in j.overrides:
            values.setdefault(override_key(o), set()).add(o)
    in_every_job = set.intersection(*({override_key(o) for o in j.overrides} for j in jobs)) if jobs else set()
    return [k for k, v in values.items() if len(v) > 1 or k not in in_every_job]


def multirun_order(sweep_dir: Path) -> Optional[list[tuple[str, list[str]]]]:
    """(key, its overrides in order) for every override of the sweep command in `multirun.yaml`, in
    command-line order; a key whose values Hydra cannot list here (`glob(...)`) has []. None without a
    readable file."""
    path = sweep_dir / MULTIRUN_YAML
    if not path.is_file():
        return None
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        task = OmegaConf.select(OmegaConf.load(path), "hydra.overrides.task")
        parsed = OverridesParser.create().parse_overrides([str(t) for t in task or []])
    except Exception as ex:  # noqa: BLE001 - any unreadable file: infer the order from the jobs instead
        log.warning("%s: unreadable (%s); the order of swept values is inferred from the job numbers", path, ex)
        return None
    order = []
    for o in parsed:
        key = override_key(o.get_key_element())
        try:
            vals = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        except Exception:  # noqa: BLE001 - glob() needs the config loader: order inferred for this key
            vals = []
        order.append((key, [f"{o.get_key_element()}={v}" for v in vals]))
    return order


def swept(jobs: Sequence[Job], sweep_dir: Optional[Path] = None) -> Swept:
    """The keys that differ between the jobs, and the order of each key's values (see the module doc)."""
    keys = varying_keys(jobs)
    by_num = sorted(jobs, key=lambda j: (j.num is None, j.num or 0, j.name))
    seen: dict[str, list[Optional[str]]] = {k: [] for k in keys}
    for j in by_num:
        for k, v in job_values(j, keys).items():
            if v not in seen[k]:
                seen[k].append(v)
    order = multirun_order(sweep_dir) if sweep_dir is not None else None
    if order is None:
        return Swept(keys=keys, values=seen, order_from="job order")
    listed = {k: vals for k, vals in order}
    position = {k: i for i, (k, _) in enumerate(order)}
    ordered_keys = sorted(keys, key=lambda k: (position.get(k, len(position)), keys.index(k)))
    values = {}
    for k in ordered_keys:  # the command's values first, then any a job has beyond them (a later sweep)
        first = [v for v in listed.get(k, []) if v in seen[k]]
        values[k] = first + [v for v in seen[k] if v not in first]
    return Swept(keys=ordered_keys, values=values, order_from=MULTIRUN_YAML)


def labels(jobs: Sequence[Job], keys: Sequence[str]) -> dict[str, str]:
    """Short names for plots: the varying values ("bnb") or `key=value`s when several keys vary."""
    out = {}
    for j in jobs:
        own = [o for o in j.overrides if override_key(o) in keys]
        if len(keys) == 1 and own:
            out[j.name] = own[0].split("=", 1)[-1]
        else:
            out[j.name] = ", ".join(own) or ("defaults" if keys else j.name)
    if len(set(out.values())) < len(out):  # same overrides twice: the job number tells them apart
        out = {j.name: f"{j.num if j.num is not None else j.name}: {out[j.name]}" for j in jobs}
    return out
