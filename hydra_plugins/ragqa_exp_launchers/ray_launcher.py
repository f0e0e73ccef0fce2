"""`hydra/launcher=ray` (conf/hydra/launcher/ray.yaml): hydra-ray-launcher's RayLauncher, one Ray task per job.

On top of the upstream launcher (hydra-ray-launcher 1.2.2, whose `_core.launch` loop this follows):
- `ray.remote.num_gpus: auto` = 1 GPU per job when the Ray cluster has GPUs (Ray then sets the job's
  CUDA_VISIBLE_DEVICES to its GPU), else 0;
- with `ray.init.address` set (join a running cluster), the init keys that only make sense for a local Ray
  (num_cpus, object_store_memory, include_dashboard, ...) are left out instead of making ray.init fail, the
  driver's RAGQA_*/WANDB_*/HF_* variables reach the jobs (runtime_env env_vars), and a Ray auth token in
  ~/.ray/auth_token is used (RAY_AUTH_MODE=token, which Ray 2.60 needs to join a `ray start` cluster);
- Ray is shut down at the end of the sweep if this launcher started it;
- each job records `launcher.json`; failures, a crashed worker included, are collected (see _common)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from ._common import RecordedTask, collect, job_dir_of, require

try:  # the launcher is only usable with the `ray` extra; without it the class exists and setup() says so
    from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher as _Base
except ImportError:  # pragma: no cover - depends on the environment
    from hydra.plugins.launcher import Launcher as _Base
else:
    # hydra-ray-launcher stores its schema as hydra/launcher/ray in the ConfigStore. Our conf/hydra/launcher/ray.yaml
    # shadows it, and Hydra would warn on every run that the yaml "is validated against ConfigStore schema with the
    # same name" (deprecated automatic schema matching): drop the shadowed entry.
    from hydra.core.config_store import ConfigStore
    from hydra_plugins.hydra_ray_launcher import _config  # noqa: F401  registers it now, so it can be dropped

    ConfigStore.instance().repo.get("hydra", {}).get("launcher", {}).pop("ray.yaml", None)

log = logging.getLogger(__name__)

# ray.init arguments that start/size a local Ray; ray.init refuses most of them with an address
LOCAL_ONLY = ("num_cpus", "num_gpus", "resources", "labels", "object_store_memory", "include_dashboard",
              "dashboard_host", "dashboard_port", "_temp_dir", "_system_config", "_node_ip_address")


# environment variables a job reads (cache dir, wandb, hub) that the driver passes on to a running cluster's jobs
FORWARD_ENV = ("RAGQA_", "WANDB_", "HF_")


class RayLauncher(_Base):  # type: ignore[misc,valid-type]
    def __init__(self, ray: DictConfig) -> None:
        self.ray_cfg = ray
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.config: DictConfig | None = None

    def _ray_env(self) -> None:
        """Ray reads these when it is imported: set them first."""
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline machines; no usage report
        # A cluster started by `ray start` (Ray 2.60) authenticates with the token in ~/.ray/auth_token, but a
        # driver joining it sends the token only with RAY_AUTH_MODE=token (else "InvalidAuthToken").
        token_path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
        joining = OmegaConf.select(self.ray_cfg, "init.address") is not None
        if joining and "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(token_path)):
            log.info("joining a Ray cluster with a Ray auth token available: RAY_AUTH_MODE=token (set RAY_AUTH_MODE to choose)")
            os.environ["RAY_AUTH_MODE"] = "token"

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self._ray_env()
        require("ray", "ray", ["hydra_plugins.hydra_ray_launcher._launcher_util", "ray"])
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = RecordedTask(task_function, "ray")

    def _start_ray(self) -> bool:
        import ray

        if ray.is_initialized():
            log.info("Ray is already running: using it")
            return False
        init: dict[str, Any] = OmegaConf.to_container(self.ray_cfg.init, resolve=True)  # type: ignore[assignment]
        if init.get("address"):
            dropped = [k for k in LOCAL_ONLY if init.pop(k, None) is not None]
            if dropped:
                log.info("joining the Ray cluster at %s: not passing %s", init["address"], ", ".join(dropped))
        init = {k: v for k, v in init.items() if v is not None}
        log.info("ray.init(%s)", ", ".join(f"{k}={v!r}" for k, v in init.items()))
        if not init.get("address"):
            ray.init(**init)  # a local Ray that does not start is a bug or a broken install: keep the traceback
            return True
        try:
            ray.init(**init)
        except Exception as ex:  # noqa: BLE001  ConnectionError, RuntimeError("Failed to connect to GCS ..."), ...
            err = f"{type(ex).__name__}: {str(ex).strip().splitlines()[0] if str(ex).strip() else ''}"
        else:
            return True
        from ragqa_exp.errors import ConfigError

        raise ConfigError(f"hydra.launcher.ray.init.address={init.get('address')}: could not join that Ray cluster ({err})")

    def _remote_options(self) -> dict[str, Any]:
        import ray

        remote: dict[str, Any] = OmegaConf.to_container(self.ray_cfg.remote, resolve=True)  # type: ignore[assignment]
        if OmegaConf.select(self.ray_cfg, "init.address") is not None:
            # Workers of a running cluster have the cluster's environment, not this shell's: pass on ours
            forward = {k: v for k, v in os.environ.items() if k.startswith(FORWARD_ENV)}
            env_vars = remote.setdefault("runtime_env", {}).setdefault("env_vars", {})
            for k, v in forward.items():
                env_vars.setdefault(k, v)
            log.info("jobs get this shell's %s", ", ".join(sorted(env_vars)) or "(nothing to forward)")
        resources = ray.cluster_resources()
        if str(remote.get("num_gpus", "")).lower() == "auto":
            remote["num_gpus"] = 1 if resources.get("GPU", 0) >= 1 else 0
        cpus, gpus = remote.get("num_cpus") or 0, remote.get("num_gpus") or 0
        limits = [int(resources.get("CPU", 0) // cpus)] if cpus else []
        limits += [int(resources.get("GPU", 0) // gpus)] if gpus else []
        shown = {k: v for k, v in remote.items() if k != "runtime_env"}  # env var values (API keys) stay out of logs
        log.info("Ray cluster: %s CPU, %s GPU; each job: %s -> at most %s jobs at once",
                 resources.get("CPU", 0), resources.get("GPU", 0), shown,
                 min(limits) if limits else "unlimited")
        return remote

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import ray
        from hydra.core.singleton import Singleton
        from hydra.core.utils import configure_log, filter_overrides, setup_globals
        from hydra_plugins.hydra_ray_launcher._launcher_util import launch_job_on_ray

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Ray launcher is launching {len(job_overrides)} jobs, sweep output dir: {sweep_dir}")
        started = self._start_ray()
        try:
            remote = OmegaConf.create(self._remote_options())
            runs = []
            for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                with open_dict(sweep_config):
                    sweep_config.hydra.job.id = f"job_id_for_{idx}"
                    sweep_config.hydra.job.num = idx
                    ref = launch_job_on_ray(self.hydra_context, remote, sweep_config, self.task_function,
                                            Singleton.get_state())
                runs.append((job_dir_of(sweep_config), ref))
            results: list[tuple[Path, JobReturn | None, BaseException | None]] = []
            for job_dir, ref in runs:  # wait for every job, even after one fails
                try:
                    results.append((job_dir, ray.get(ref), None))
                except Exception as ex:  # noqa: BLE001  RayTaskError, WorkerCrashedError, OutOfMemoryError, ...
                    results.append((job_dir, None, ex))
        finally:
            if started:
                ray.shutdown()
        return collect("ray", results)
