"""Shared code of quant=gptq and quant=awq: calibrate + quantize with gptqmodel, save, reload with an explicit kernel.

The loaded artifact runs on a kernel chosen here, never by gptqmodel's automatic choice (on Hopper that
picks Machete, which downloads CUTLASS at first use and fails offline):
- `quant.backend=auto`: on CPU the torch kernel; on CUDA Marlin, then ExLlamaV2, then Triton, then torch,
  the first that loads and runs a forward (what failed before it goes to `kernel_fallback_reason`).
- any other value: that BACKEND member (name or value, case-insensitive), used as is.
"""
from __future__ import annotations

import inspect
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ragqa_exp.errors import ConfigError, DependencyError, ResourceError
from ragqa_exp.fsutil import atomic_dir
from ragqa_exp.models import (
    dir_size_mib, load_tokenizer, release_memory, resolve_dtype, resolve_quant_device, weights_mib,
)
from ragqa_exp.quantize import QuantRequest, QuantResult

log = logging.getLogger(__name__)

# quant.backend=auto, in order of preference (BACKEND member names).
AUTO_BACKENDS = {
    "gptq": {"cuda": ["GPTQ_MARLIN", "GPTQ_EXLLAMA_V2", "GPTQ_TRITON", "GPTQ_TORCH"], "cpu": ["GPTQ_TORCH"]},
    "awq": {"cuda": ["AWQ_MARLIN", "AWQ_EXLLAMA_V2", "AWQ_GEMM_TRITON", "AWQ_TORCH"], "cpu": ["AWQ_TORCH"]},
}
# Names gptqmodel does not map for a method but that mean one kernel here (the `TRITON` step of the auto order).
BACKEND_ALIASES = {"awq": {"triton": "awq_gemm_triton"}}
# The kernel that packs the weights at the end of quantization (layout is the same for every kernel of a format).
PACK_BACKEND = {"gptq": "GPTQ_TORCH", "awq": "AWQ_TORCH"}


def import_gptqmodel(method: str, dev: str):
    """gptqmodel, imported on demand (GPTQMODEL_CPU_WORKERS defaults to the core count on CPU)."""
    if dev == "cpu":
        os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))
    try:
        import gptqmodel
    except ImportError as e:
        raise DependencyError(f"quant={method} needs gptqmodel: pip install -e '.[quant]' ({e})") from None
    return gptqmodel


def _valid_backend_names(method: str) -> list[str]:
    from gptqmodel import BACKEND

    own = [m.lower() for m in BACKEND.__members__ if m.lower().startswith(method + "_")]
    try:  # generic names gptqmodel maps onto this method's kernels (torch -> gptq_torch / awq_torch, ...)
        from gptqmodel.utils.backend import _LEGACY_BACKEND_BY_METHOD

        generic = [b.value for b in _LEGACY_BACKEND_BY_METHOD.get(method, {})]
    except ImportError:
        generic = []
    return ["auto", *own, *generic, *BACKEND_ALIASES.get(method, {})]


def resolve_backends(method: str, name: str, dev: str) -> tuple[list[Any], bool]:
    """(kernels to try in order, whether the user named one). An unknown name is a ConfigError."""
    from gptqmodel import BACKEND
    from gptqmodel.utils.backend import normalize_backend

    raw = (name or "auto").strip()
    raw = BACKEND_ALIASES.get(method, {}).get(raw.lower(), raw)
    if raw.lower() == "auto":
        kind = "cpu" if dev == "cpu" else "cuda"
        return [BACKEND[n] for n in AUTO_BACKENDS[method][kind]], False
    member = BACKEND.__members__.get(raw.upper())
    if member is None:
        try:
            member = BACKEND(raw.lower())
        except ValueError:
            member = None
    if member is not None:
        member = normalize_backend(member, quant_method=method)  # generic names: torch -> gptq_torch / awq_torch
    if member is None or not member.value.startswith(method + "_"):
        raise ConfigError(
            f"quant.backend={raw!r} is not a gptqmodel kernel for quant={method}; "
            f"valid: {', '.join(_valid_backend_names(method))}"
        )
    return [member], True


def check_calibration(texts: list[str], method: str) -> None:
    if not texts:
        raise ConfigError(
            f"quant={method} needs calibration text: calib_data produced no samples "
            "(set calib_data.n_samples > 0 and check that the training split is not empty)"
        )


def calibration_dataset(texts: list[str], tok, max_length: int, method: str) -> list[dict]:
    """Token ids of each text, truncated to `calib_data.max_length` tokens."""
    check_calibration(texts, method)
    rows = []
    for t in texts:
        enc = tok(t, truncation=True, max_length=max_length, add_special_tokens=True)
        rows.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return rows


def _layer_type_rope(qmodel) -> bool:
    """Gemma 3 style models (one rotary module, `forward(x, position_ids, layer_type)`, sliding + full layers).

    gptqmodel 7.6 replays every decoder layer with the kwargs captured at layer 0, i.e. the sliding-window
    rotary embeddings, and AWQ's scale search calls `rotary(x, position_ids)` without `layer_type` (TypeError).
    Here each replayed layer gets the embeddings of its own type, and AWQ's scale search keeps the captured
    embeddings instead of rebuilding them (layer 0's type: approximate for the few full-attention layers).
    The captured attention mask is the sliding-window one: identical to the full causal mask while
    calibration samples are no longer than `sliding_window`."""
    hf = getattr(qmodel, "model", None)
    base = getattr(hf, "model", hf)
    rotary = getattr(base, "rotary_emb", None)
    if rotary is None:
        return False
    try:
        if "layer_type" not in inspect.signature(rotary.forward).parameters:
            return False
    except (TypeError, ValueError):
        return False

    qmodel.awq_preserve_explicit_position_embeddings = True
    original = qmodel.prepare_layer_replay_kwargs

    def prepare_layer_replay_kwargs(layer, layer_input, additional_inputs, target_device):
        kw = original(
            layer=layer, layer_input=layer_input, additional_inputs=additional_inputs, target_device=target_device
        )
        layer_type = getattr(getattr(layer, "self_attn", None), "layer_type", None)
        if layer_type is None or "position_embeddings" not in kw or not layer_input:
            return kw
        hidden = layer_input[0]
        if not torch.is_tensor(hidden) or hidden.dim() != 3:
            return kw
        pos = kw.get("position_ids")
        if pos is None or pos.shape[-1] != hidden.shape[1]:
            pos = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0).expand(hidden.shape[0], -1)
        buf = next(iter(rotary.buffers()), None)
        rdev = buf.device if buf is not None else hidden.device
        with torch.no_grad():
            cos, sin = rotary(hidden.to(rdev), pos.to(rdev), layer_type)
        kw["position_embeddings"] = (cos.to(target_device), sin.to(target_device))
        return kw

    qmodel.prepare_layer_replay_kwargs = prepare_layer_replay_kwargs
    return True


def _gemma3_text_definition(base_cls):
    """gptqmodel 7.6 maps `gemma3_text` onto Llama's module tree, where the MLP's input norm is
    `post_attention_layernorm`; in Gemma 3 that norm closes the attention branch and the MLP reads
    `pre_feedforward_layernorm`. AWQ folds its MLP input scales into that "previous op", so with the Llama
    tree it rescales the wrong norm and the MLP no longer computes the same function. GPTQ only uses the
    tree for ordering."""

    class Gemma3TextQModelFixed(base_cls):
        shared_input_verified_model_types = frozenset({"gemma3_text"})
        module_tree = [
            "model",
            "layers",
            "#",
            {
                "input_layernorm": ("input_layernorm:!",),
                "self_attn": ("q_proj:0:in=x", "k_proj:0:in=x", "v_proj:0:in=x", "o_proj:1"),
                "pre_feedforward_layernorm": ("pre_feedforward_layernorm:!",),
                "mlp": ("gate_proj:0:in=x", "up_proj:0:in=x", "down_proj:1"),
            },
        ]

    return Gemma3TextQModelFixed


@torch.inference_mode()
def _compute_best_clip(self, w, input_feat, n_grid=20, max_shrink=0.5, n_sample_token=512):
    """AWQProcessor._compute_best_clip of gptqmodel 7.6, the same search with its two products written as
    batched matmuls (float32) instead of a broadcast multiply + sum over a [out, tokens, groups, group_size]
    tensor; that broadcast is >90% of AWQ's time on CPU (minutes per layer)."""
    assert w.dim() == 2
    co, ci = w.shape
    gs = self.qcfg.group_size if self.qcfg.group_size > 0 else ci
    x = input_feat.reshape(-1, input_feat.shape[-1])
    x = x[:: max(1, x.shape[0] // n_sample_token)]
    x = x.to(device=w.device, dtype=torch.float32).reshape(x.shape[0], -1, gs)  # [tokens, groups, gs]
    wg = w.reshape(co, 1, -1, gs)
    ob = 256 if co % 256 == 0 else 64  # as gptqmodel: output channels per batch
    assert co % ob == 0
    clamp_buf = torch.empty_like(wg[:ob])
    quant_buf = torch.empty_like(clamp_buf)
    best_all = []
    for i in range(co // ob):
        wb = wg[i * ob : (i + 1) * ob]
        org_max = wb.abs().amax(dim=-1, keepdim=True)  # [ob, 1, groups, 1]
        best = org_max.clone()
        min_errs = torch.full(org_max.shape, 1e9, dtype=torch.float32, device=w.device)
        org_out = torch.einsum("tgk,ogk->otg", x, wb[:, 0].float())
        for i_s in range(int(max_shrink * n_grid)):
            max_val = org_max * (1 - i_s / n_grid)
            torch.clamp(wb, -max_val, max_val, out=clamp_buf)
            self._pseudo_quantize_tensor_into(clamp_buf, quant_buf)
            cur = torch.einsum("tgk,ogk->otg", x, quant_buf[:, 0].float())
            err = (cur - org_out).pow(2).mean(dim=1).view(min_errs.shape)
            better = err < min_errs
            min_errs[better] = err[better]
            best[better] = max_val[better]
        best_all.append(best)
    return torch.cat(best_all, dim=0).squeeze(1)


# Largest relative error a folded Gemma norm gain may get from being stored in the model's dtype (bf16 rounds
# to 0.4% by itself).
GEMMA_NORM_MAX_FOLD_ERROR = 0.01


def _gemma_norm_fold_error(weight: torch.Tensor, scales: torch.Tensor) -> float:
    """Worst relative error of the gains `(1 + w) / s` once the folded weight `(1 + w) / s - 1` is stored in
    `weight.dtype` (channels whose gain is exactly 0 are exact and ignored)."""
    w = weight.detach().float().cpu()
    exact = (1.0 + w) / scales.detach().float().cpu()
    stored = 1.0 + (exact - 1.0).to(weight.dtype).float()
    live = exact != 0
    if not bool(live.any()):
        return 0.0
    return float(((stored - exact).abs()[live] / exact.abs()[live]).max())


@contextmanager
def gptqmodel_fixes():
    """Scoped fixes of gptqmodel 7.6 for Gemma 3 (restored on exit):
    - `gemma3_text` gets the module tree above (AWQ scales the MLP's real input norm);
    - AWQ's norm folding treats Gemma3RMSNorm as the `(1 + weight)` norm it is: gptqmodel special-cases
      Gemma/Gemma2 RMSNorm only, and `weight /= s` on a `(1 + weight)` norm is not a division by s.
      The fold is computed in float32 (`(1 + w) / s - 1`), then stored in the weight's dtype;
    - a scaling group whose fold into a Gemma 3 norm bf16/fp16 cannot hold is left unscaled. Gemma 3's
      MLP-input norm has gains 1 + w near 0 on the channels where AWQ wants its largest scales (~1e3): the
      folded gain ~1e-3 is stored as w' ~ -0.999, i.e. as noise, and the model emits garbage (NLL on 6
      validation prompts: 3.45 unquantized, 11.0 AWQ). Limiting those scales per channel was no better
      (7.1); unscaling the whole group keeps clipping and the other groups and scored as a float32 fold
      does (3.86 vs 3.86; GPTQ 3.79, bnb 3.82). Groups are unscaled when a gain would be off by > 1%;
    - AWQ's clipping search uses matmuls (see `_compute_best_clip`): same result, a fraction of the time.
    Yields counters of the Gemma norm scaling groups seen and left unscaled."""
    from gptqmodel.looper import awq_processor
    from gptqmodel.looper.awq_processor import AWQProcessor
    from gptqmodel.models import auto as gm_auto
    from gptqmodel.quantization.awq.quantize import scale as awq_scale
    from gptqmodel.quantization.awq.utils.module import get_op_by_name

    saved_map = gm_auto.MODEL_MAP.get("gemma3_text")
    saved_fold = awq_scale.scale_ln_fcs
    saved_apply = awq_processor.apply_scale
    saved_clip = AWQProcessor.__dict__["_compute_best_clip"]
    stats = {"norm_groups": 0, "norm_groups_unscaled": 0}

    @torch.inference_mode()
    def scale_ln_fcs(ln, fcs, scales):
        if type(ln).__name__ != "Gemma3RMSNorm":
            return saved_fold(ln, fcs, scales)
        fcs = fcs if isinstance(fcs, list) else [fcs]
        s = scales.to(ln.weight.device, torch.float32)
        ln.weight.copy_(((1.0 + ln.weight.float()) / s - 1.0).to(ln.weight.dtype))
        for fc in fcs:
            fc.weight.mul_(s.view(1, -1).to(fc.weight.dtype))

    def apply_scale(module, scales_list, input_feat_dict=None):
        fixed = []
        for prev_name, layer_names, scales, *rest in scales_list:
            prev = get_op_by_name(module, prev_name)
            if type(prev).__name__ == "Gemma3RMSNorm" and prev.weight.dtype in (torch.float16, torch.bfloat16):
                stats["norm_groups"] += 1
                if _gemma_norm_fold_error(prev.weight, scales) > GEMMA_NORM_MAX_FOLD_ERROR:
                    stats["norm_groups_unscaled"] += 1
                    scales = torch.ones_like(scales)  # identity: norm, fcs and features stay as they are
            fixed.append((prev_name, layer_names, scales, *rest))
        return saved_apply(module, fixed, input_feat_dict)

    if saved_map is not None:
        gm_auto.MODEL_MAP["gemma3_text"] = _gemma3_text_definition(saved_map)
    awq_scale.scale_ln_fcs = scale_ln_fcs
    awq_processor.apply_scale = apply_scale
    AWQProcessor._compute_best_clip = _compute_best_clip
    try:
        yield stats
    finally:
        if saved_map is not None:
            gm_auto.MODEL_MAP["gemma3_text"] = saved_map
        awq_scale.scale_ln_fcs = saved_fold
        awq_processor.apply_scale = saved_apply
        AWQProcessor._compute_best_clip = saved_clip


def quant_kernels(model) -> list[str]:
    """Class names of the gptqmodel quantized linear layers in `model`."""
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    return sorted({type(m).__name__ for m in model.modules() if isinstance(m, BaseQuantLinear)})


def _one_line(e: BaseException, limit: int = 160) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:limit]}"


def _smoke(model, tok) -> None:
    dev = next(model.parameters()).device
    enc = tok(["テスト"], return_tensors="pt").to(dev)
    with torch.inference_mode():
        model(**enc)


def _load_quantized(gptqmodel, out_dir: Path, backends: list, dev: str, dtype: torch.dtype, tok, user_given: bool,
                    trust: bool = False):
    """Load the saved artifact with the first kernel of `backends` that works; (qmodel, fallback reason)."""
    failures: list[str] = []
    for i, be in enumerate(backends):
        last = i == len(backends) - 1
        try:
            qm = gptqmodel.GPTQModel.load(str(out_dir), backend=be, device=dev, dtype=dtype, trust_remote_code=trust)
            if not last:  # a kernel can load and still fail at its first matmul (JIT build, missing extension)
                _smoke(qm.model, tok)
            reason = "; ".join(failures) if failures else None
            if reason:
                log.warning("kernel fallback to %s: %s", be.value, reason)
            return qm, reason
        except Exception as e:  # noqa: BLE001  any kernel failure -> next candidate
            if user_given or last:
                raise ResourceError(
                    f"quant.backend={be.value}: the quantized model in {out_dir} did not load with it ({_one_line(e)})"
                    + (f"; earlier: {'; '.join(failures)}" if failures else "")
                    + "; try quant.backend=auto or another kernel"
                ) from e
            failures.append(f"{be.value} failed ({_one_line(e)})")
            release_memory()
    raise AssertionError("unreachable")


def quantize_and_load(req: QuantRequest, method: str) -> QuantResult:
    cfg = req.cfg
    q = cfg.quant
    dev = resolve_quant_device(q.device)
    check_calibration(req.calib_texts, method)
    gptqmodel = import_gptqmodel(method, dev)
    from gptqmodel import BACKEND, QuantizeConfig
    from gptqmodel.quantization import FORMAT, METHOD

    backends, user_given = resolve_backends(method, q.backend, dev)  # a bad name fails before any work
    if q.bits != 4:
        log.warning("quant.bits=%s: this study compares 4-bit methods; continuing with %s bits", q.bits, q.bits)
    tok = load_tokenizer(req.model_dir, cfg.model)
    calib = calibration_dataset(req.calib_texts, tok, cfg.calib_data.max_length, method)
    dtype = resolve_dtype(cfg.model.dtype, "cuda" if dev.startswith("cuda") else "cpu")
    if dtype == torch.float32:  # every gptqmodel kernel runs fp16/bf16 only (fp32 fails at kernel selection)
        cuda_fp16 = dev.startswith("cuda") and not torch.cuda.is_bf16_supported()
        dtype = torch.float16 if cuda_fp16 else torch.bfloat16
        log.warning("quant=%s: gptqmodel kernels need fp16/bf16; quantizing and running in %s", method, dtype)

    if method == "gptq":
        qcfg = QuantizeConfig(
            bits=q.bits, group_size=q.group_size, sym=q.sym, desc_act=q.desc_act,
            method=METHOD.GPTQ, format=FORMAT.GPTQ,  # GPTQ v1 on disk: what transformers/optimum, vLLM, TGI read
        )
        fmt = "gptq"
    else:
        qcfg = QuantizeConfig(bits=q.bits, group_size=q.group_size, sym=q.sym, method=METHOD.AWQ, format=FORMAT.GEMM)
        fmt = "gemm"

    trust = cfg.model.trust_remote_code
    out = Path(req.out_dir)
    with gptqmodel_fixes() as fix_stats:
        qm = gptqmodel.GPTQModel.load(req.model_dir, qcfg, device=dev, dtype=dtype, trust_remote_code=trust)
        patched = _layer_type_rope(qm)
        sliding = getattr(getattr(qm.model, "config", None), "sliding_window", None)
        if patched and sliding and cfg.calib_data.max_length > sliding:
            log.warning(
                "calib_data.max_length=%d > sliding_window=%d: full-attention layers are calibrated with the "
                "sliding-window mask (gptqmodel replays layer 0's mask)", cfg.calib_data.max_length, sliding,
            )
        t0 = time.perf_counter()
        qm.quantize(calib, batch_size=1, tokenizer=tok, backend=BACKEND[PACK_BACKEND[method]])
        quant_seconds = time.perf_counter() - t0
        with atomic_dir(out) as tmp:
            qm.save(str(tmp))
            tok.save_pretrained(tmp)
            # gptqmodel rewrites generation_config with do_sample=true; keep the source model's defaults
            src_gen = Path(req.model_dir) / "generation_config.json"
            if src_gen.is_file():
                shutil.copyfile(src_gen, tmp / "generation_config.json")
    del qm
    release_memory()

    loaded, reason = _load_quantized(gptqmodel, out, backends, dev, dtype, tok, user_given, trust)
    model = loaded.model.eval()  # the HF model inside gptqmodel's wrapper: generate(), parameters(), config
    if (out / "generation_config.json").is_file():  # undo gptqmodel's in-memory do_sample=true as well
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(str(out))
    kernels = quant_kernels(model)
    if not kernels:
        raise ResourceError(f"quant={method}: the model loaded from {out} has no gptqmodel quantized layers")
    return QuantResult(
        model=model, tokenizer=tok, method=method, bits=q.bits, group_size=q.group_size,
        kernel="+".join(kernels), kernel_fallback_reason=reason, quant_seconds=round(quant_seconds, 2),
        model_size_mib=dir_size_mib(out), artifact_dir=str(out),
        extra={
            "format": fmt,
            "dtype": str(dtype).removeprefix("torch."),
            "weights_mib": weights_mib(out),
            "calib_samples": len(calib),
            "layer_type_rope_fix": patched,
            **({"awq_norm_groups_unscaled": f"{fix_stats['norm_groups_unscaled']}/{fix_stats['norm_groups']}"}
               if method == "awq" and fix_stats["norm_groups"] else {}),
            "device": dev,
        },
    )
