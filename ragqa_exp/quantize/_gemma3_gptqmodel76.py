"""Workarounds for Gemma 3 in gptqmodel 7.6 (written for, and only applied on, gptqmodel 7.6.x).

Applied only while quantizing and restored afterwards (`gemma3_fixes()`, `layer_type_rope()`); on another
gptqmodel version quantizing a Gemma 3 model stops with a one-line error naming this module, since the
patched internals may have changed. Why each fix exists: benchmarks/QUANT_NOTES.md.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Iterator

import torch

from ragqa_exp.errors import DependencyError

WRITTEN_FOR = "7.6."  # gptqmodel version prefix these patches were written against


def is_gemma3(model_type: str | None) -> bool:
    return bool(model_type) and model_type.startswith("gemma3")


def check_version() -> None:
    from importlib.metadata import version

    found = version("gptqmodel")
    if not found.startswith(WRITTEN_FOR):
        raise DependencyError(
            f"gptqmodel {found}: ragqa_exp's Gemma 3 workarounds (ragqa_exp/quantize/_gemma3_gptqmodel76.py) were "
            f"written for gptqmodel {WRITTEN_FOR}x; pip install gptqmodel==7.6.0, or re-check them for {found}"
        )


def layer_type_rope(qmodel) -> bool:
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


def gemma3_text_definition(base_cls):
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


@torch.inference_mode()
def fold_into_gemma3_norm(ln, fcs, scales: torch.Tensor) -> None:
    """AWQ's scale folding for a Gemma3RMSNorm, which multiplies by `(1 + weight)`: the gain becomes
    `(1 + w) / s`, i.e. the weight `(1 + w) / s - 1` (computed in float32, stored in the weight's dtype), and
    the following linears' input columns are multiplied by `s`."""
    fcs = fcs if isinstance(fcs, list) else [fcs]
    s = scales.to(ln.weight.device, torch.float32)
    ln.weight.copy_(((1.0 + ln.weight.float()) / s - 1.0).to(ln.weight.dtype))
    for fc in fcs:
        fc.weight.mul_(s.view(1, -1).to(fc.weight.dtype))


@contextmanager
def gemma3_fixes() -> Iterator[dict]:
    """Scoped fixes of gptqmodel 7.6 for Gemma 3 (restored on exit):
    - `gemma3_text` gets the module tree above (AWQ scales the MLP's real input norm);
    - AWQ's norm folding treats Gemma3RMSNorm as the `(1 + weight)` norm it is: gptqmodel special-cases
      Gemma/Gemma2 RMSNorm only, and `weight /= s` on a `(1 + weight)` norm is not a division by s.
      The fold is computed in float32 (`(1 + w) / s - 1`), then stored in the weight's dtype;
    - a scaling group whose fold into a Gemma 3 norm bf16/fp16 cannot hold is left unscaled: Gemma 3's
      MLP-input norm has gains 1 + w near 0 where AWQ wants its largest scales, and the folded gain, stored
      in bf16, is noise (the measurements behind this: benchmarks/QUANT_NOTES.md). Groups are unscaled when
      a gain would be off by > 1%.
    Yields counters of the Gemma norm scaling groups seen and left unscaled."""
    from gptqmodel.looper import awq_processor
    from gptqmodel.models import auto as gm_auto
    from gptqmodel.quantization.awq.quantize import scale as awq_scale
    from gptqmodel.quantization.awq.utils.module import get_op_by_name

    saved_map = gm_auto.MODEL_MAP.get("gemma3_text")
    saved_fold = awq_scale.scale_ln_fcs
    saved_apply = awq_processor.apply_scale
    stats = {"norm_groups": 0, "norm_groups_unscaled": 0}

    def scale_ln_fcs(ln, fcs, scales):
        if type(ln).__name__ != "Gemma3RMSNorm":
            return saved_fold(ln, fcs, scales)
        return fold_into_gemma3_norm(ln, fcs, scales)  # looked up per call (tests swap in a wrong fold)

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
        gm_auto.MODEL_MAP["gemma3_text"] = gemma3_text_definition(saved_map)
    awq_scale.scale_ln_fcs = scale_ln_fcs
    awq_processor.apply_scale = apply_scale
    try:
        yield stats
    finally:
        if saved_map is not None:
            gm_auto.MODEL_MAP["gemma3_text"] = saved_map
        awq_scale.scale_ln_fcs = saved_fold
        awq_processor.apply_scale = saved_apply


