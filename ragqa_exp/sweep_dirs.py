"""A sweep job's directory name (`hydra.sweep.subdir`, conf/config.yaml): `<num>_<overrides>-<hash>`, one flat,
safe level whatever the override values hold (paths, slashes, long lists, non-ASCII), the overrides that vary
across the sweep first, so that jobs can be told apart by name (`0_quant=none,data.train_path=…`,
`1_quant=bnb,…`). The hash covers all of the job's overrides; the full overrides stay in
`.hydra/overrides.yaml` and status.json.

Hydra composes each job's config from that job's overrides alone, so which keys vary is taken from the sweep's
own overrides when the sweep starts (`SweepVaries`, a Hydra callback) and handed to every job's config as the
Hydra override `hydra.job.env_set.RAGQA_SWEEP_VARIES='<key>,<key>'` (Hydra replays its own overrides into every
job's config, whichever launcher runs it; the job also sees it as an environment variable).
"""
from __future__ import annotations

import hashlib
import re
from typing import Any, Iterable, Sequence

from hydra.experimental.callback import Callback

VARIES_ENV = "RAGQA_SWEEP_VARIES"
READABLE_MAX = 64


def override_key(override: str) -> str:
    """`quant` of `quant=bnb`, `+quant.x=1` and `~quant.x` (Hydra's key or group of an override)."""
    return override.split("=", 1)[0].lstrip("+~")


def varying_keys(sweep_overrides: Sequence[str]) -> list[str]:
    """The keys a sweep's overrides give more than one value (`quant=none,bnb`, `seed=range(3)`, ...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(o) for o in sweep_overrides])
    return sorted({o.key_or_group for o in parsed if o.is_sweep_override()})


def job_subdir(num: Any, override_dirname: Any, overrides: Iterable[Any] = (), varies: Any = "") -> str:
    """`<num>_<readable overrides>-<hash of override_dirname>`. `overrides`: the job's own (`hydra.overrides.task`);
    `varies`: the sweep's varying keys, comma-separated: those overrides lead, the others follow, each group in
    Hydra's order; without them the readable part is `override_dirname` as Hydra writes it."""
    text = str(override_dirname or "")
    if not text:
        return str(num)
    leading = set(str(varies or "").split(",")) - {""}
    items = sorted(str(o) for o in overrides or ())
    if leading and items:
        readable = ",".join([o for o in items if override_key(o) in leading] +
                            [o for o in items if override_key(o) not in leading])
    else:
        readable = text
    readable = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", readable).strip("_")[:READABLE_MAX].rstrip("_,")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return f"{num}_{readable}-{digest}"


class SweepVaries(Callback):
    """Hydra callback (conf/config.yaml): at the start of a sweep, records the keys its overrides vary as a
    Hydra override that every job's config is composed with (read by `hydra.sweep.subdir`)."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf, read_write

        keys = varying_keys(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
        if not keys:
            return
        hydra_overrides = config.hydra.overrides.hydra
        with read_write(hydra_overrides):
            hydra_overrides.append(f"++hydra.job.env_set.{VARIES_ENV}='{','.join(keys)}'")
