"""A job's fingerprint: a hash of what determines its results, recorded with them, so that a job dir is checked
before it is reused, not trusted.

The parts hashed (kept readable in metrics.json as `fingerprint_parts`): the resolved config less what does not
change results (RUN_ONLY: tracking, where caches live and how they are checked, checkpoint frequency, API
timeouts/concurrency, the wandb table size), what `auto` resolved to (runtime.build_settings), the stage keys,
the content of the evaluated rows, and the versions of the libraries that compute (manifest.library_versions).
A finished job is skipped, and a killed evaluation resumed, only when the fingerprint recorded with it
(metrics.json; `predictions.partial.fingerprint.json` beside the partial predictions) equals the current one;
otherwise the job stops with one line naming the first differences and how to run it fresh.

What `auto` resolves to only once the model is loaded (the eval plan: `eval.kv_cache`, `eval.elementwise`, the
kernels; backends/hf.py) is not in the fingerprint: the eval process records it beside the partial answers
(PARTIAL_PLAN) and resumes them only under the same plan (evaluate.check_resumed_plan).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from ragqa_exp.errors import ConfigError

RUN_ONLY = ("wandb", "skip_existing", "cache_dir", "cache_verify", "eval.table_max_rows", "eval.concurrency",
            "train.save_steps", "model.request_timeout_s", "model.max_retries", "model.api_key_env")
PARTIAL_FINGERPRINT = "predictions.partial.fingerprint.json"  # beside evaluate.PARTIAL
PARTIAL_PLAN = "predictions.partial.eval_plan.json"  # beside it: the eval plan the partial answers ran under
FRESH = "skip_existing=false (overwrites this job dir) or another hydra.sweep.dir / hydra.run.dir"
SHOWN = 3  # differences named in the error line
_ABSENT = object()


class FingerprintMismatch(ConfigError):
    """A job dir holds results (or partial results) of a different setup than this run's."""


def _drop(tree: dict, dotted: str) -> None:
    *path, last = dotted.split(".")
    for k in path:
        tree = tree.get(k) if isinstance(tree, dict) else None
        if tree is None:
            return
    if isinstance(tree, dict):
        tree.pop(last, None)


def parts(plain_cfg: dict, settings: dict, keys: dict, eval_rows: str, versions: dict) -> dict:
    """The readable parts hashed: `plain_cfg` (config.to_plain) less RUN_ONLY, and the rest as given."""
    cfg = json.loads(json.dumps(plain_cfg))
    for dotted in RUN_ONLY:
        _drop(cfg, dotted)
    return {"config": cfg, "resolved": settings, "keys": keys, "eval_rows": eval_rows, "versions": versions}


def digest(fp_parts: dict) -> str:
    blob = json.dumps(fp_parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


def differences(old: dict, new: dict, shown: int = SHOWN) -> str:
    """`key: old → new` for the first `shown` differing leaves (config first), and how many more."""
    a, b = _flat(old), _flat(new)
    changed = [k for k in dict.fromkeys([*b, *a]) if a.get(k, _ABSENT) != b.get(k, _ABSENT)]
    show = lambda v: "<absent>" if v is _ABSENT else json.dumps(v, ensure_ascii=False)  # noqa: E731
    items = [f"{k.removeprefix('config.')}: {show(a.get(k, _ABSENT))} → {show(b.get(k, _ABSENT))}" for k in changed[:shown]]
    more = f" (+{len(changed) - shown} more)" if len(changed) > shown else ""
    return "; ".join(items) + more


def check(recorded_hash: Optional[str], recorded_parts: Optional[dict], current_hash: str, current_parts: dict,
          what: str, fresh: str) -> None:
    """Raise FingerprintMismatch (one line: what, what changed, how to run fresh) unless the hashes match."""
    if recorded_hash == current_hash:
        return
    if recorded_hash is None or not isinstance(recorded_parts, dict):
        why = "recorded no fingerprint (made by an older version), so it cannot be checked against this run"
    else:
        why = f"was made by a different setup: {differences(recorded_parts, current_parts)}"
    raise FingerprintMismatch(f"{what} {why}; to run it fresh: {fresh}")


def read_partial(job_dir: Path) -> tuple[Optional[str], Optional[dict]]:
    try:
        data = json.loads((Path(job_dir) / PARTIAL_FINGERPRINT).read_text(encoding="utf-8"))
        return data.get("fingerprint"), data.get("parts")
    except (OSError, ValueError, AttributeError):
        return None, None
