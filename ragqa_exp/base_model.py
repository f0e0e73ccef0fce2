"""The base model stage: what the base model *is* (embedded package at its version, hub id at its commit,
local dir with its files, random shapes), its cache key and entry, and building it (embedded conversion or
random weights) under `<cache_dir>/models/<name>-<key>/`. Hub and local models are not built: they load
from `model.path`."""
from __future__ import annotations

import functools
import re
from pathlib import Path

from ragqa_exp.cache import cached_stage, stage_dir, stage_key
from ragqa_exp.config import ModelConfig, ModelSource, to_plain
from ragqa_exp.embedded import convert_embedded, embedded_distribution
from ragqa_exp.errors import SourceError
from ragqa_exp.fsutil import disk_space_guard
from ragqa_exp.random_model import build_random_model, random_model_bytes


COMMIT = re.compile(r"[0-9a-f]{40}")


@functools.lru_cache(maxsize=None)
def hub_revision(repo_id: str, revision: str | None) -> str:
    """The commit `model.revision` (None: the default branch) names for hub model `repo_id`: a commit hash as
    given; else the commit the local HF cache holds for it (refs/<revision>), else the one the hub serves."""
    if revision and COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import constants

    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / (revision or "main")
    if ref.is_file():
        return ref.read_text().strip()
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(repo_id, revision=revision, timeout=30).sha
    except Exception as ex:
        raise SourceError(
            f"model.path={repo_id!r} model.revision={revision!r}: could not resolve the commit it names (cache keys "
            f"hold it): {type(ex).__name__}: {str(ex).splitlines()[0][:160] if str(ex) else ''}; download the model "
            "once (it is then read from the HF cache) or pass model.revision=<commit hash>"
        ) from None


def looks_local(path: str) -> bool:
    """A filesystem path rather than a hub id (`owner/name`)."""
    return path.startswith(("/", "./", "../", "~")) or Path(path).expanduser().exists()


def local_dir_identity(path: str) -> str:
    """A local model dir, for cache keys: its absolute path and each file's name, size and modification time,
    so that a model saved again into the same dir gets new cache entries."""
    root = Path(path).expanduser().resolve()
    files = sorted((str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns)
                   for f in root.rglob("*") if f.is_file())
    return f"{root}#{stage_key('local_model', {'files': files})}"


def base_identity(cfg: ModelConfig) -> str:
    """What the base model *is*, for cache keys: the embedded package at its installed version, the hub id at
    its revision, a local dir with its files' sizes and times, the random shapes."""
    if cfg.source == ModelSource.embedded_gguf:
        return embedded_distribution(cfg.path)
    if cfg.source == ModelSource.random_init:
        return "random_init:" + stage_key("random_init", to_plain(cfg.init))
    if looks_local(cfg.path):
        return local_dir_identity(cfg.path)
    return f"{cfg.path}@{hub_revision(cfg.path, cfg.revision)}"


def base_key_parts(cfg: ModelConfig) -> dict:
    return {"id": base_identity(cfg)}


def base_entry(cfg: ModelConfig, cache_dir: str | Path) -> Path | None:
    """The cache dir a base model is built into (embedded conversion, random weights); None for hub/local
    models, which load from `model.path`."""
    if cfg.source not in (ModelSource.embedded_gguf, ModelSource.random_init):
        return None
    label = re.sub(r"[^\w.+-]+", "_", cfg.name).strip("._") or "model"  # one safe path component
    return stage_dir(cache_dir, "models", f"{label}-{stage_key('models', base_key_parts(cfg))}")


BASE_MARKER = "config.json"  # written by save_pretrained after the weights


def build_base_into(cfg: ModelConfig, work: Path) -> None:
    """Build the base model (embedded conversion or random weights) into `work`, the cache entry's build dir
    (runs in a stage process; the pipeline's loop over stages.STAGES publishes it)."""
    if cfg.source == ModelSource.random_init:
        with disk_space_guard(work, "the random-weight base model", "cache_dir", need=random_model_bytes(cfg.init)):
            build_random_model(cfg.init, work)
    else:
        convert_embedded(cfg, work)


def build_base(cfg: ModelConfig, cache_dir: str | Path, verify: str = "sha256") -> str:
    """The base model's cache entry, built here (in this process) if missing or failing its check."""
    out = base_entry(cfg, cache_dir)
    cached_stage(out, BASE_MARKER, "base model", lambda work: build_base_into(cfg, work),
                 config=base_key_parts(cfg), verify=verify)
    return str(out)


def embedded_model_dir(cfg: ModelConfig, cache_dir: str | Path) -> Path:
    """The embedded model converted to safetensors (converted here, once, if missing)."""
    return Path(build_base(cfg, cache_dir))


def model_location(cfg: ModelConfig, cache_dir: str | Path) -> str:
    """Where `from_pretrained` loads the base model from (building a cached base if needed)."""
    if base_entry(cfg, cache_dir) is not None:
        return build_base(cfg, cache_dir)
    return cfg.path
