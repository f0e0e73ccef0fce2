"""`hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml): hydra-submitit-launcher's SlurmLauncher, one SLURM
array task per job.

On top of the upstream launcher (hydra-submitit-launcher 1.2.0, whose `launch` this follows): the driver
waits for every array task and collects each one's outcome instead of stopping at the first task SLURM
killed (timeout, cancel, node failure); a refused sbatch is a one-line error; each job records
`launcher.json` (see _common)."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from ._common import RecordedTask, collect, job_dir_of, require

try:  # the launcher is only usable with the `slurm` extra; without it the class exists and setup() says so
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _Base
except ImportError:  # pragma: no cover - depends on the environment
    from hydra.plugins.launcher import Launcher as _Base

log = logging.getLogger(__name__)


class SlurmLauncher(_Base):  # type: ignore[misc,valid-type]
    _EXECUTOR = "slurm"

    def __init__(self, **params: Any) -> None:
        if _Base.__module__.startswith("hydra_plugins.hydra_submitit_launcher"):
            super().__init__(**params)
        else:
            self.params = params

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        require("slurm", "slurm", ["hydra_plugins.hydra_submitit_launcher.submitit_launcher", "submitit"])
        if shutil.which("sbatch") is None:
            from ragqa_exp.errors import DependencyError

            raise DependencyError("hydra/launcher=slurm needs SLURM's sbatch on PATH (run the sweep on a SLURM login node)")
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = RecordedTask(task_function, "slurm")

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit
        from hydra.core.singleton import Singleton
        from hydra.core.utils import filter_overrides
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        assert self.config is not None and self.hydra_context is not None
        assert len(job_overrides) > 0
        # executor and parameters exactly as upstream BaseSubmititLauncher.launch
        init_keys = {"max_num_timeout", "submitit_folder"}
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
            **{f"{self._EXECUTOR}_max_num_timeout": self.params["max_num_timeout"]},
        )
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{
            (k if k in base else f"{self._EXECUTOR}_{k}"): v for k, v in self.params.items() if k not in init_keys
        })
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")

        job_params: list[Any] = []
        job_dirs: list[Path] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.num = idx
            job_dirs.append(job_dir_of(sweep_config))
        try:
            jobs = executor.map_array(self, *zip(*job_params))
        except Exception as ex:  # sbatch refused: bad partition/gres/account, no controller, ...
            from ragqa_exp.errors import ConfigError
            from ragqa_exp.job import one_line

            raise ConfigError(f"sbatch refused the sweep: {one_line(ex)}") from ex
        log.info("submitted SLURM array %s (%d tasks); logs in %s", jobs[0].job_id.split("_")[0], len(jobs),
                 self.params["submitit_folder"].replace("%j", jobs[0].job_id.split("_")[0] + "_*"))
        results: list[tuple[Path, JobReturn | None, BaseException | None]] = []
        for job_dir, job in zip(job_dirs, jobs):  # wait for every task, even after one fails
            try:
                results.append((job_dir, job.results()[0], None))
            except Exception as ex:  # noqa: BLE001  UncompletedJobError (timeout, cancelled, node failure), ...
                results.append((job_dir, None, ex))
        return collect("slurm", results)
