"""The GPTQ/AWQ flow through gptqmodel: calibrate + quantize + save an artifact; load one on a chosen kernel.

`gptq.py` and `awq.py` hold the schemas and the method-specific QuantizeConfig; this module the shared steps.
Kernel choice: `_kernels.py`; Gemma 3 workarounds: `_gemma3_gptqmodel76.py`; AWQ speed-up: `_awq_clip.py`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

from ragqa_exp.errors import ConfigError, DependencyError, ResourceError
from ragqa_exp.quantize import _gemma3_gptqmodel76 as gemma3
from ragqa_exp.quantize._awq_torch import use_for as awq_forward_without_gather
from ragqa_exp.quantize._kernels import (TORCH_KERNEL, eager_torch_dequantize, load_quantized, quant_kernels,
                                         resolve_backend)
from ragqa_exp.quantize.base import LoadedModel, QuantInputs

log = logging.getLogger(__name__)


def import_gptqmodel(method: str, dev: str):
    """gptqmodel, imported on demand (GPTQMODEL_CPU_WORKERS defaults to the core count on CPU)."""
    if dev == "cpu":
        os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))
    try:
        import gptqmodel
    except ImportError as e:
        raise DependencyError(f"quant={method} needs gptqmodel: pip install -e '.[quant]' ({e})") from None
    return gptqmodel


def check_calibration(texts: list[str], method: str) -> None:
    if not texts:
        raise ConfigError(
            f"quant={method} needs calibration text: calib_data produced no samples "
            "(set calib_data.n_samples > 0 and check that the training split is not empty)"
        )


CALIB_MIN_TOKENS = 10  # gptqmodel drops calibration samples of this many tokens or fewer (calibration_data_min_length)


def calibration_dataset(texts: list[str], tok, max_length: int, method: str) -> list[dict]:
    """Token ids of each text, truncated to `calib_data.max_length` tokens; texts gptqmodel would drop (too
    short) are left out here, with a warning, so that the samples counted are the samples used."""
    check_calibration(texts, method)
    rows = []
    for t in texts:
        enc = tok(t, truncation=True, max_length=max_length, add_special_tokens=True)
        rows.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    kept = [r for r in rows if len(r["input_ids"]) > CALIB_MIN_TOKENS]
    if len(kept) < len(rows):
        log.warning("calibration: %d of %d texts have %d tokens or fewer and are left out (gptqmodel's minimum)",
                    len(rows) - len(kept), len(rows), CALIB_MIN_TOKENS)
    if not kept:
        raise ConfigError(f"quant={method}: every calibration text has {CALIB_MIN_TOKENS} tokens or fewer, which "
                          "gptqmodel cannot calibrate on; use longer texts (calib_data.source, calib_data.max_length)")
    return kept


def kernel_dtype(dtype_name: str, dev: str):
    """gptqmodel kernels run fp16/bf16 only (fp32 fails at kernel selection): fp32 becomes bf16 (fp16 on old GPUs)."""
    import torch

    from ragqa_exp.runtime import resolve_dtype

    kind = "cuda" if dev.startswith("cuda") else "cpu"
    dtype = resolve_dtype(dtype_name, kind)
    if dtype == torch.float32:
        cuda_fp16 = kind == "cuda" and not torch.cuda.is_bf16_supported()
        dtype = torch.float16 if cuda_fp16 else torch.bfloat16
        log.info("gptqmodel kernels need fp16/bf16; quantizing and running in %s", dtype)
    return dtype


def quantize(method: str, quantize_config, cfg, inputs: QuantInputs, out_dir: Path) -> dict:
    """Quantize `inputs.model_dir` into `out_dir` with the gptqmodel QuantizeConfig that
    `quantize_config(gptqmodel)` makes (gptqmodel is imported here: a missing install is a one-line error);
    facts about the artifact."""
    from ragqa_exp.loading import load_tokenizer, save_tokenizer
    from ragqa_exp.runtime import release_memory, resolve_quant_device
    from ragqa_exp.quantize._awq_clip import fast_awq_clip

    dev = resolve_quant_device(cfg.device)
    check_calibration(inputs.calib_texts, method)
    gptqmodel = import_gptqmodel(method, dev)
    from gptqmodel import BACKEND

    qcfg = quantize_config(gptqmodel)
    tok = load_tokenizer(inputs.model_dir, inputs.model)
    calib = calibration_dataset(inputs.calib_texts, tok, inputs.calib_max_length, method)
    dtype = kernel_dtype(inputs.model.dtype, dev)
    model_type = json.loads((Path(inputs.model_dir) / "config.json").read_text()).get("model_type")
    trust = inputs.model.trust_remote_code
    with ExitStack() as stack:
        fix_stats = {"norm_groups": 0, "norm_groups_unscaled": 0}
        if gemma3.is_gemma3(model_type):
            gemma3.check_version()
            fix_stats = stack.enter_context(gemma3.gemma3_fixes())
        fast_clip = stack.enter_context(fast_awq_clip()) if method == "awq" else False
        qm = gptqmodel.GPTQModel.load(inputs.model_dir, qcfg, device=dev, dtype=dtype, trust_remote_code=trust)
        rope_fix = gemma3.is_gemma3(model_type) and gemma3.layer_type_rope(qm)
        sliding = getattr(getattr(qm.model, "config", None), "sliding_window", None)
        if rope_fix and sliding and inputs.calib_max_length > sliding:
            log.warning(
                "calib_data.max_length=%d > sliding_window=%d: full-attention layers are calibrated with the "
                "sliding-window mask (gptqmodel replays layer 0's mask)", inputs.calib_max_length, sliding,
            )
        t0 = time.perf_counter()
        qm.quantize(calib, batch_size=1, tokenizer=tok, backend=BACKEND[TORCH_KERNEL[method]],
                    calibration_data_min_length=CALIB_MIN_TOKENS)
        quant_seconds = time.perf_counter() - t0
        qm.save(str(out_dir))
        save_tokenizer(tok, out_dir)
        # gptqmodel rewrites generation_config with do_sample=true; keep the source model's defaults
        src_gen = Path(inputs.model_dir) / "generation_config.json"
        if src_gen.is_file():
            shutil.copyfile(src_gen, Path(out_dir) / "generation_config.json")
    del qm
    release_memory()
    facts = {
        "quant_seconds": round(quant_seconds, 2), "dtype": str(dtype).removeprefix("torch."),
        "calib_texts": len(calib), "calib_tokens": sum(len(r["input_ids"]) for r in calib), "device": dev,
        "layer_type_rope_fix": bool(rope_fix), "fast_awq_clip": fast_clip,
    }
    if method == "awq" and fix_stats["norm_groups"]:
        facts["awq_norm_groups_unscaled"] = f"{fix_stats['norm_groups_unscaled']}/{fix_stats['norm_groups']}"
    return facts


def artifact_quant_config(artifact_dir: str | Path) -> dict:
    """The quantization_config the artifact was saved with (what was really done, not what was asked)."""
    cfg = json.loads((Path(artifact_dir) / "config.json").read_text(encoding="utf-8"))
    return cfg.get("quantization_config") or {}


def load(method: str, cfg, artifact_dir: str | Path, model_cfg) -> LoadedModel:
    """The artifact on its kernel (`quant.backend`, `_kernels.resolve_backend`) on this machine's eval device."""
    import torch

    from ragqa_exp.loading import load_tokenizer

    from ragqa_exp.runtime import device

    dev = device()
    gptqmodel = import_gptqmodel(method, dev)
    backend, user_given = resolve_backend(method, cfg.backend)
    tok = load_tokenizer(str(artifact_dir), model_cfg)
    saved = json.loads((Path(artifact_dir) / "config.json").read_text(encoding="utf-8"))
    dtype = getattr(torch, saved.get("dtype") or saved.get("torch_dtype") or "bfloat16")
    if dev == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    loaded = load_quantized(gptqmodel, artifact_dir, backend, dev, dtype, user_given, model_cfg.trust_remote_code)
    model = loaded.model.eval()  # the HF model inside gptqmodel's wrapper: generate(), parameters(), config
    if dev == "cpu":
        eager_torch_dequantize(model)
    awq_dequantize = awq_forward_without_gather(model)  # AWQ's torch kernel, the same numbers (None: not AWQ)
    if (Path(artifact_dir) / "generation_config.json").is_file():  # undo gptqmodel's in-memory do_sample=true
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(str(artifact_dir))
    kernels = quant_kernels(model)
    if not kernels:
        raise ResourceError(f"quant={method}: the model loaded from {artifact_dir} has no gptqmodel quantized layers")
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    layer = next(m for m in model.modules() if isinstance(m, BaseQuantLinear))
    qc = artifact_quant_config(artifact_dir)
    return LoadedModel(
        model=model, tokenizer=tok, kernel="+".join(kernels),
        bits=int(layer.bits), group_size=int(layer.group_size),
        extra={"format": qc.get("checkpoint_format") or qc.get("version") or qc.get("format"),
               "sym": qc["sym"] if "sym" in qc else (not qc["zero_point"]) if "zero_point" in qc else None,
               "dtype": str(dtype).removeprefix("torch."),
               "dequantize": f"ragqa_exp.quantize._awq_torch, {awq_dequantize}" if awq_dequantize else "gptqmodel"},
    )
