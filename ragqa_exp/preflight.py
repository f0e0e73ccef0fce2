"""Source checks at the start of a job, after its config values are checked and before any data or model is
loaded: every location the job will read or write exists, is reachable and writable, every module its
methods import is installed and a GPU it asks for is there, or the job stops with one line naming the fix.
An API model's server must answer for its models and accept the key; `model.name=auto` becomes the one
model it serves.

The output dir itself is Hydra's (`hydra.run.dir`, `hydra.sweep.dir`): `OutputDirCheck`, a Hydra callback
registered in conf/config.yaml, checks it before Hydra creates it (which would end in a traceback); Hydra
turns a callback's exceptions into warnings, so its error travels to the entrypoint as a `UserAbort`.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from ragqa_exp.config import ModelSource, RunConfig
from ragqa_exp.errors import DependencyError, SourceError, UserAbort

HUB_TIMEOUT_S = 10


def check_writable_dir(path: str | Path, key: str) -> None:
    p = Path(path).expanduser()
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".write-test-"):
            pass
    except OSError as ex:
        raise SourceError(
            f"{key}={str(path)!r} cannot be created or written ({ex.strerror or type(ex).__name__}); "
            f"point {key} at a writable directory"
        ) from None


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (1 / true / yes / on)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def check_hub_model(path: str, revision: str | None) -> None:
    """A hub model must be in the local HF cache, or the hub must answer for it."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError

    try:
        cached = try_to_load_from_cache(path, "config.json", revision=revision)
    except HFValidationError:
        raise SourceError(
            f"model.path={path!r} is neither a local model directory nor a hub id (owner/name); "
            "point model.path at a directory saved with save_pretrained, or at a hub id such as rinna/youri-7b-instruction"
        ) from None
    if isinstance(cached, str):
        return
    if hub_offline():
        reason = "HF_HUB_OFFLINE is set"
    else:
        from huggingface_hub import HfApi

        try:
            HfApi().model_info(path, revision=revision, timeout=HUB_TIMEOUT_S)
            return
        except Exception as ex:  # noqa: BLE001  network down, unknown repo, gated, ...
            reason = f"{type(ex).__name__}: {' '.join(str(ex).split())[:160]}"
    raise SourceError(
        f"model.path={path!r} is not in the Hugging Face cache and the hub did not answer for it ({reason}); "
        f"pre-download it where there is network (`hf download {path}`; HF_HOME / HF_HUB_CACHE say where the cache "
        "is) or set model.path to a local directory"
    )


def check_model(cfg: RunConfig) -> None:
    from ragqa_exp.base_model import looks_local
    from ragqa_exp.embedded import embedded_package

    m = cfg.model
    if m.source == ModelSource.embedded_gguf:
        embedded_package(m.path)  # installed, with its version (the cache key), and holding a GGUF model
    elif m.source == ModelSource.openai:
        from ragqa_exp.backends.openai_api import served_model_id

        m.name = served_model_id(m)
    elif m.source == ModelSource.hub:
        if looks_local(m.path):
            local = Path(m.path).expanduser()
            if not (local / "config.json").is_file():
                raise SourceError(
                    f"model.path={m.path!r}: no model there ({'no config.json in it' if local.is_dir() else 'no such directory'}); "
                    "point model.path at a directory saved with save_pretrained, or at a hub id"
                )
        else:
            check_hub_model(m.path, m.revision)


def check_quant_method(cfg: RunConfig) -> None:
    """The quant method's libraries are installed, and a GPU it is told to use is visible."""
    q = cfg.quant
    for module in getattr(q, "requires", ()):
        if importlib.util.find_spec(module) is None:
            raise DependencyError(f"quant={q.method} needs the {module} package: pip install -e '.[quant]'")
    if q.produces_artifact and str(q.device).strip().lower().startswith("cuda"):
        from ragqa_exp.runtime import resolve_quant_device

        resolve_quant_device(q.device)  # ResourceError without a (that) GPU


def preflight(cfg: RunConfig, job_dir: Path) -> None:
    check_writable_dir(cfg.cache_dir, "cache_dir")
    check_writable_dir(job_dir, "hydra.run.dir")
    check_model(cfg)
    if not cfg.model.is_api:
        check_quant_method(cfg)


class OutputDirCheck(Callback):
    """Hydra callback: the run / sweep output dir can be created and written, before Hydra creates it."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(path: str, key: str) -> None:
        """Create the dir to test it, then remove what the test created (Hydra creates it when a job starts:
        a sweep stopped before that, e.g. by a missing launcher extra, leaves nothing behind)."""
        p = Path(path).expanduser().absolute()
        created = p
        while not created.parent.exists():
            created = created.parent
        existed = created.exists()
        try:
            check_writable_dir(p, key)
        except SourceError as ex:
            raise UserAbort(ex) from None
        finally:
            if not existed:
                import shutil

                shutil.rmtree(created, ignore_errors=True)
