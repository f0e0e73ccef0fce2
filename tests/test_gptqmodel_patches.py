"""ragqa_exp's gptqmodel workarounds (Gemma 3 fixes, fast AWQ clip search) are in force only while quantizing:
nothing they replace in gptqmodel stays replaced afterwards — after a normal exit, after an exception inside,
and after real GPTQ/AWQ quantizations — so the rest of the process (loading, other jobs) runs gptqmodel as
shipped. The comparison covers every function, class and method of gptqmodel's modules and classes, not a
list of the patches."""
from __future__ import annotations

import pytest
import torch

from helpers_quant import SMALL_CALIB, build, changed_since, gptqmodel_state
from ragqa_exp.quantize import _gemma3_gptqmodel76 as gemma3
from ragqa_exp.quantize._awq_clip import fast_awq_clip

pytest_plugins = ["quantized_fixtures"]
pytest.importorskip("gptqmodel")

# What the two contexts replace (checked to be replaced inside, so the "restored" checks are not vacuous).
PATCHED = {
    "gptqmodel.models.auto.MODEL_MAP['gemma3_text']",
    "gptqmodel.quantization.awq.quantize.scale.scale_ln_fcs",
    "gptqmodel.looper.awq_processor.apply_scale",
    "gptqmodel.looper.awq_processor.AWQProcessor._compute_best_clip",
}


def test_patches_are_in_force_inside_and_restored_on_exit():
    before = gptqmodel_state()
    with gemma3.gemma3_fixes(), fast_awq_clip() as installed:
        inside = set(changed_since(before))
    assert installed
    assert PATCHED <= inside, PATCHED - inside
    assert changed_since(before) == []


def test_patches_are_restored_after_an_exception_inside():
    before = gptqmodel_state()
    with pytest.raises(RuntimeError, match="boom"):
        with gemma3.gemma3_fixes(), fast_awq_clip():
            assert PATCHED <= set(changed_since(before))
            raise RuntimeError("boom")
    assert changed_since(before) == []


@pytest.mark.slow
def test_quantize_failing_midway_restores_gptqmodel(base_model_dir, tmp_path, monkeypatch):
    """An exception raised by the quantize flow itself, after gptqmodel has loaded the model under the fixes."""
    from conftest import run_config
    from ragqa_exp.quantize import build_artifact

    def fails(qmodel):
        raise RuntimeError("failed after the fixes were installed")

    cfg = run_config(["quant=awq", *SMALL_CALIB])
    before = gptqmodel_state()
    monkeypatch.setattr(gemma3, "layer_type_rope", fails)
    with pytest.raises(RuntimeError, match="after the fixes"):
        build_artifact(cfg, str(base_model_dir), tmp_path / "artifact")
    assert changed_since(before) == []
    assert not (tmp_path / "artifact").exists() and list(tmp_path.iterdir()) == []  # no half-written artifact


@pytest.mark.slow
def test_real_quantizations_leave_gptqmodel_as_imported(quantized_models, gptqmodel_baseline, tmp_path):
    for variant in ("gptq", "awq"):
        quantized_models.artifact(variant)
    if not quantized_models.quantized_here & {"gptq", "awq"}:  # other xdist workers built both: quantize here
        build("gptq", quantized_models.source_dir, tmp_path / "gptq")
    assert changed_since(gptqmodel_baseline) == []


def _clip_error(host, w: torch.Tensor, x: torch.Tensor, max_val: torch.Tensor) -> torch.Tensor:
    """Per (output channel, group): mean squared error of the group's output once its weights are clipped to
    max_val and pseudo-quantized (in the weights' dtype, as AWQ does), products in float32."""
    co, ci = w.shape
    gs = host.qcfg.group_size
    wg = w.reshape(co, -1, gs)
    clipped = torch.max(torch.min(wg, max_val), -max_val).reshape(co, ci).contiguous()
    quant = torch.empty_like(clipped)
    host._pseudo_quantize_tensor_into(clipped, quant)
    xg = x.float().reshape(-1, ci // gs, gs)
    return (torch.einsum("tgk,ogk->otg", xg, (quant.reshape(co, -1, gs) - wg).float()) ** 2).mean(dim=1)


@pytest.mark.fidelity
@pytest.mark.parametrize("sym", [True, False])
def test_fast_awq_clip_search_finds_gptqmodels_clip(sym):
    """The matmul clip search is gptqmodel 7.6's search: the same clip per group in float32; in bf16 (how the
    model is quantized) gptqmodel's products round in bf16 and it picks another clip in a few % of groups, and
    then the float32 search's clip is never worse by the criterion both minimise."""
    from gptqmodel.looper.awq_processor import AWQProcessor

    from ragqa_exp.quantize._awq_clip import _compute_best_clip, clip_search_host

    host = clip_search_host(group_size=128, sym=sym)
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(256, 512, generator=gen), torch.randn(2, 48, 512, generator=gen)
    assert torch.equal(_compute_best_clip(host, w, x), AWQProcessor._compute_best_clip(host, w, x))
    w, x = w.bfloat16(), x.bfloat16()
    ours, theirs = _compute_best_clip(host, w, x), AWQProcessor._compute_best_clip(host, w, x)
    assert (_clip_error(host, w, x, ours) <= _clip_error(host, w, x, theirs) * (1 + 1e-6)).all()
