"""The registration step: the implementations' schemas and names into the registries, then compose.

`config.py` holds only the base schema and empty registries (it imports no implementation); this module,
above both, imports the quant methods (`quantize.methods()`) and the generation backends and stores each
method's `Config` in Hydra's ConfigStore (`quant_schema/<method>`) and the backend names in
`config.BACKEND_NAMES`. Every entry calls `register_configs()` before composing or checking a config:
`__main__`, `compose`/`validate_overrides` (the CLI's --validate, the tests) and `pipeline.run`.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

from ragqa_exp import config
from ragqa_exp.config import CONF_DIR, RunConfig, as_run_config


@lru_cache(maxsize=None)
def register_configs() -> None:
    """Idempotent: fills the ConfigStore, the `ragqa_job_subdir` resolver and the backend names once."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from ragqa_exp.backends import backend_names
    from ragqa_exp.quantize import methods
    from ragqa_exp.sweep_dirs import job_subdir

    OmegaConf.register_new_resolver("ragqa_job_subdir", job_subdir, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=RunConfig)
    for name, module in methods().items():
        cs.store(group="quant_schema", name=name, node=module.Config)
    config.BACKEND_NAMES[:] = backend_names()


def compose(overrides: Sequence[str] = (), with_hydra: bool = False) -> Any:
    """The composed DictConfig of `python -m ragqa_exp <overrides>` (conf/config.yaml + the overrides);
    `with_hydra`: with its `hydra` node (launcher, sweeper params)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=with_hydra)


def validate_overrides(overrides: Sequence[str] = ()) -> RunConfig:
    """Compose `overrides` and check every value, loading nothing: the typed config, or the one-line error
    (`ConfigError`, or Hydra's for an unknown key / option / type) the job would stop with."""
    return as_run_config(compose(overrides))
