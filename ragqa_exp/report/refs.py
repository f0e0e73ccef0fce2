"""Which job each row is compared with.

Default: one swept key at a time toward its first value. For each swept key, in the sweep's order, at which
the job is not at the key's first value, the candidate is the job that has the key's first value and the
job's own value of every other swept key; the first finished candidate is the reference (else the first
candidate, whose failure the row then states). So in `quant=none,gptq lora.r=8,16 -m` the gptq/r=16 job is
compared with none/r=16 (quant is listed first), none/r=16 with none/r=8, gptq/r=8 with none/r=8, and
none/r=8 is a reference. A job at every key's first value is its own reference. An API model's job
(`model_source=openai`) is compared with the first finished `quant=none` local job (the API row is the
baseline beside the local model), and a local job is never compared with an API job; with no local job,
API jobs pair by the swept keys. Where no job fits (a partial grid), the first finished job.
"""
from __future__ import annotations

from typing import Sequence

from ragqa_exp.errors import RagqaError
from ragqa_exp.record import is_api_model
from ragqa_exp.report.jobs import Job
from ragqa_exp.report.swept import Swept, job_values


def one_key_refs(job: Job, jobs: Sequence[Job], sw: Swept) -> list[Job]:
    """The jobs that differ from `job` in exactly one swept key, set to that key's first value; in the
    sweep's key order (the lowest job number where two jobs have the same overrides)."""
    mine = job_values(job, sw.keys)
    out = []
    for key in sw.keys:
        if mine[key] == sw.first(key):
            continue
        want = {**mine, key: sw.first(key)}
        out += [j for j in jobs if j is not job and job_values(j, sw.keys) == want][:1]
    return out


def default_ref(job: Job, jobs: Sequence[Job], sw: Swept) -> Job:
    """The job's reference by the rules in the module doc (the job itself when it is a reference)."""
    finished = [j for j in jobs if j.ok]
    if is_api_model(job.metrics):
        local = [j for j in finished if j.metrics.get("quant") == "none" and not is_api_model(j.metrics)]
        if local:
            return local[0]
        pool = list(jobs)
    else:
        pool = [j for j in jobs if not is_api_model(j.metrics)]
    candidates = one_key_refs(job, pool, sw)
    if candidates:
        return next((c for c in candidates if c.ok), candidates[0])
    if all(v == sw.first(k) for k, v in job_values(job, sw.keys).items()):
        return job
    return next((j for j in finished if j in pool), job)


def ref_differs(job: Job, ref: Job, sw: Swept) -> list[str]:
    """The reference's overrides where it differs from the job (`quant=none`); `key=(default)` for a key the
    reference leaves unset."""
    mine, theirs = job_values(job, sw.keys), job_values(ref, sw.keys)
    return [theirs[k] or f"{k}=(default)" for k in sw.keys if theirs[k] != mine[k]]


def resolve_ref(spec: str, jobs: Sequence[Job]) -> Job:
    """`--ref`: a job's name (its dir relative to the sweep dir) or its leading number."""
    matches = [j for j in jobs if j.name == spec or (spec.isdigit() and j.num == int(spec))]
    if len(matches) != 1:
        known = ", ".join(j.name for j in jobs)
        what = "no such job" if not matches else "ambiguous"
        raise RagqaError(f"--ref {spec}: {what} in this sweep (jobs: {known})")
    if not matches[0].ok:
        raise RagqaError(f"--ref {spec}: job {matches[0].name} failed ({matches[0].error}); pick a finished job")
    return matches[0]

