"""Stage 2 (quantize) on the real embedded Gemma 3 270M (as experiment=tiny trains it), on CPU: what each variant's
artifact and loaded model are made of. Every variant (bnb nf4, bnb 8-bit, GPTQ, AWQ) is quantized once per test
session through the quantize stage into the session's stage cache (`quantize.build_artifact`;
tests/quantized_fixtures.py, shared with test_quant_fidelity.py, which checks the numbers, and test_e2e.py). The fast tests at the bottom check the one-line errors and need no model.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch.testing import assert_close

from conftest import run_config
from helpers_quant import PROJECTIONS, VARIANTS, projections
from ragqa_exp.errors import ConfigError, DependencyError, ResourceError
from ragqa_exp.fsutil import weights_mib
from ragqa_exp.quantize import RESULT_FILE, method_module, methods
from ragqa_exp.quantize.base import QuantInputs

pytest_plugins = ["quantized_fixtures"]

def quantized_layer_class(variant: str) -> type:
    if variant.startswith("bnb"):
        import bitsandbytes as bnb

        return bnb.nn.Linear8bitLt if variant == "bnb-int8" else bnb.nn.Linear4bit
    from gptqmodel.nn_modules import qlinear

    return {"gptq": qlinear.GPTQQuantLinear, "awq": qlinear.AWQuantLinear}[variant]


def packed_weight(layer) -> torch.Tensor:
    """The integer tensor holding a quantized layer's weights (gptqmodel: qweight; bnb: weight)."""
    return layer.qweight if hasattr(layer, "qweight") else layer.weight


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_projection_is_stored_in_the_artifacts_bits(variant, quantized_models):
    lm = quantized_models.loaded(variant)
    cls = quantized_layer_class(variant)
    layers = projections(lm.model)
    assert len(layers) == len(PROJECTIONS) * lm.model.config.num_hidden_layers
    for name, layer in zip(PROJECTIONS * len(lm.model.model.layers), layers):
        assert isinstance(layer, cls), f"{name}: {type(layer).__name__}"
        packed = packed_weight(layer)
        assert not packed.is_floating_point(), name
        assert packed.numel() * packed.element_size() * 8 == lm.bits * layer.in_features * layer.out_features, name
    assert not lm.model.training


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_artifact_is_complete_and_its_projections_shrink(variant, quantized_models):
    art = quantized_models.artifact(variant)
    assert json.loads((art.dir / RESULT_FILE).read_text()) == art.facts  # written by the stage, with its facts
    for name in ("config.json", "tokenizer_config.json", "tokenizer.json", "generation_config.json"):
        assert (art.dir / name).is_file(), name
    beside = sorted(p.name for p in art.dir.parent.iterdir() if p.name.startswith(art.dir.name))
    assert beside == [art.dir.name, f"{art.dir.name}.lock"]  # the build left no .partial (or other) sibling
    # Only the projections are quantized (the 262k x 640 embedding stays bf16): the weights shrink by what
    # storing the projections in `bits` instead of 16 bits saves, less scales/zeros (> 80% of it).
    lm = quantized_models.loaded(variant)
    n = sum(layer.in_features * layer.out_features for layer in projections(lm.model))
    saved_mib = weights_mib(quantized_models.source_dir) - art.facts["weights_mib"]
    expected_mib = n * (16 - lm.bits) / 8 / 2**20
    assert 0.8 * expected_mib < saved_mib <= expected_mib, (saved_mib, expected_mib)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["gptq", "awq"])
def test_artifact_reloads_with_plain_transformers(variant, quantized_models, fidelity_items):
    """`AutoModelForCausalLM.from_pretrained(artifact)` on CPU (gptqmodel installed, nothing else: no gptqmodel
    API call, no GPU, no network) computes what the stage's own load computes."""
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear
    from transformers import AutoModelForCausalLM

    from ragqa_exp.nll import answer_nll

    art = quantized_models.artifact(variant)
    model = AutoModelForCausalLM.from_pretrained(str(art.dir), device_map="cpu").eval()
    assert all(isinstance(layer, BaseQuantLinear) for layer in projections(model))
    assert model.config.quantization_config.quant_method.value == variant
    items = tuple(part[:2] for part in fidelity_items)
    plain = answer_nll(model, quantized_models.loaded(variant).tokenizer, *items)
    assert_close(plain, quantized_models.nll(variant, items), rtol=0, atol=0.02)


@pytest.mark.slow
def test_gptqmodel_artifacts_keep_the_source_generation_config(quantized_models):
    """gptqmodel saves do_sample=true; the stage keeps the source model's greedy defaults (file and loaded)."""
    source = json.loads((quantized_models.source_dir / "generation_config.json").read_text())
    for variant in ("gptq", "awq"):
        art = quantized_models.artifact(variant)
        assert json.loads((art.dir / "generation_config.json").read_text()) == source
        assert not source.get("do_sample") and not quantized_models.loaded(variant).model.generation_config.do_sample



@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path (on a GPU the kernel is Marlin)")
@pytest.mark.parametrize("variant", ["gptq"])  # in that variant's xdist group, where its model is loaded
def test_gptq_on_cpu_dequantizes_eagerly_with_the_compiled_numbers(variant, quantized_models):
    """On a CPU, load undoes gptqmodel's per-layer torch.compile of the torch kernel's dequantize_weight
    (quantize._kernels.eager_torch_dequantize: seconds of tracing in every eval process); what the compiled
    function returns is the same, bit for bit (two layers of different shapes)."""
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear
    from gptqmodel.utils.torch import torch_compile

    layers = [m for m in quantized_models.loaded(variant).model.modules() if type(m) is TorchLinear]
    assert layers and not any("dequantize_weight" in vars(m) for m in layers)  # the class's eager method
    for layer in (layers[0], layers[-1]):
        with torch.no_grad():
            assert torch.equal(torch_compile(layer.dequantize_weight)(), layer.dequantize_weight())


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["gptq", "awq"])  # in each variant's xdist group, where its model is loaded
def test_awq_runs_its_torch_kernel_without_gptqmodels_gather(variant, quantized_models):
    """load puts every AWQ torch-kernel layer on quantize._awq_torch (gptqmodel's numbers without its per-forward
    gather and host copy: tests/test_awq_torch.py) and says so in quant_extra; GPTQ (the control) keeps
    gptqmodel's. The forward's output is checked against gptqmodel's own, bit for bit, when the model loads
    (helpers_quant.reuse_dequantized_weights)."""
    from gptqmodel.nn_modules.qlinear.torch_awq import AwqTorchLinear

    lm = quantized_models.loaded(variant)
    layers = [m for m in lm.model.modules() if type(m) is AwqTorchLinear]
    if variant == "gptq":
        assert not layers and lm.extra["dequantize"] == "gptqmodel"
        return
    assert layers and lm.extra["dequantize"] == "ragqa_exp.quantize._awq_torch, eager"  # compiled on CUDA only
    assert all(vars(m)["forward"].__qualname__.startswith("forward_of.") for m in layers)


# ------------------------------------------------------------------------------------ fast: errors
ARTIFACT_METHODS = sorted(name for name, m in methods().items() if m.Config.produces_artifact)
CALIBRATING = sorted(name for name, m in methods().items() if m.Config.needs_calibration)
LIBRARY = {"bnb": "bitsandbytes", "gptq": "gptqmodel", "awq": "gptqmodel"}


def _quantize(method: str, *overrides: str, calib: list[str] | None = None, model_dir: str = "/nonexistent"):
    cfg = run_config([f"quant={method}", *overrides])
    inputs = QuantInputs(model_dir=model_dir, model=cfg.model, calib_texts=["テキスト"] if calib is None else calib)
    return method_module(method).quantize(cfg.quant, inputs, "/nonexistent/out")


@pytest.mark.parametrize("method", CALIBRATING)
def test_empty_calibration_is_a_one_line_config_error(method):
    with pytest.raises(ConfigError) as e:
        _quantize(method, "quant.device=cpu", calib=[])
    assert "calib_data.n_samples" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
@pytest.mark.parametrize("method", ARTIFACT_METHODS)
def test_cuda_without_a_gpu_is_a_one_line_resource_error(method):
    with pytest.raises(ResourceError) as e:
        _quantize(method, "quant.device=cuda")
    msg = str(e.value)
    assert "quant.device=cuda" in msg and "quant.device=cpu" in msg and "\n" not in msg


@pytest.mark.parametrize("method", sorted(LIBRARY))
def test_missing_quant_library_is_a_one_line_dependency_error(method, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, LIBRARY[method], None)  # `import <library>` now fails
    with pytest.raises(DependencyError) as e:
        _quantize(method, "quant.device=cpu")
    msg = str(e.value)
    assert f"quant={method} needs {LIBRARY[method]}" in msg and "pip install" in msg and "\n" not in msg


@pytest.mark.parametrize("method", ARTIFACT_METHODS)
def test_bad_quant_device_is_a_one_line_config_error(method):
    with pytest.raises(ConfigError) as e:
        run_config([f"quant={method}", "quant.device=tpu"])
    assert str(e.value).startswith("quant.device='tpu' is not allowed") and "\n" not in str(e.value)


@pytest.mark.slow
def test_loading_a_model_without_quantized_layers_is_a_resource_error(base_model_dir):
    cfg = run_config(["quant=bnb"])
    with pytest.raises(ResourceError, match="no bitsandbytes layers"):
        method_module("bnb").load(cfg.quant, str(base_model_dir), cfg.model)


def test_variants_cover_every_method_that_makes_an_artifact():
    covered = {run_config(overrides).quant.method for overrides in VARIANTS.values()}
    assert set(ARTIFACT_METHODS) <= covered, f"add a variant (tests/helpers_quant.py) for {set(ARTIFACT_METHODS) - covered}"
