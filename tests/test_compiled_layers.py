"""`eval.elementwise=compiled-layers` (backends/compiled_layers.py): each decoder layer's whole forward compiled with
eager's numbers, one set of graphs for every layer, checked at load on the model's logits."""
from __future__ import annotations

import pytest

from test_elementwise import logits, tiny


def settings():
    import torch
    from transformers import cache_utils

    return cache_utils.Cache.update, torch._dynamo.config.allow_unspec_int_on_nn_module


def deeper(model, layers: int):
    """`model` with its decoder layers repeated to `layers` (each its own module and layer_idx)."""
    import copy

    model.model.layers.extend(copy.deepcopy(model.model.layers[i % 2]) for i in range(len(model.model.layers), layers))
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i % 2] for i in range(layers)]
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = i
    return model


LLAMA, GEMMA3 = "compiled layers ({} LlamaDecoderLayer, {} LlamaRMSNorm)", "compiled layers ({} Gemma3DecoderLayer, {} Gemma3RMSNorm)"


@pytest.mark.slow  # torch.compile of two models on a CPU: ~30 s a kind (Gemma 3 on a CPU: the embedded model's test,
# tests/test_elementwise.py, checks its compiled layers)
@pytest.mark.parametrize(("kind", "ran", "device"), [("llama", LLAMA, "cpu"),
                                                     pytest.param("llama", LLAMA, "cuda", marks=pytest.mark.gpu),
                                                     pytest.param("gemma3", GEMMA3, "cuda", marks=pytest.mark.gpu)])
def test_compiled_layers_compute_eager_logits_with_one_set_of_graphs_for_every_layer(kind, ran, device):
    """A bf16 Llama's and Gemma 3's logits bit for bit, and 4 layers compile no more graphs than 2: the cache's update
    runs eagerly between two graphs and the layers' layer_idx is not specialized on (with either removed, the
    4-layer Llama compiled more graphs than the 2-layer one: 12 against 6, 16 against 12), and transformers' wrapper of the
    layers' forward is never compiled (traced, its code, shared with other forwards, was compiled for every way it was
    called). The process-wide settings come back at restore."""
    import torch
    from torch._dynamo.utils import counters

    from ragqa_exp.backends import elementwise

    before = settings()
    graphs = {}
    for layers in (2, 4):
        model = deeper(tiny(kind, device), layers)
        norms = sum(type(m).__name__.endswith("RMSNorm") for m in model.modules())
        eager = logits(model)
        torch._dynamo.reset()
        counters.clear()
        try:
            assert elementwise.use(model, "compiled-layers") == ran.format(layers, norms)
            assert settings() != before
            assert torch.equal(logits(model), eager)
        finally:
            elementwise.restore(model)
        graphs[layers] = counters["stats"]["unique_graphs"]
        assert not any("forward" in m.__dict__ for m in model.modules()) and settings() == before
        assert wrapper_compiles(model) == 0  # traced unwrapped (3 compiles of the wrapper for a 2-layer Llama when not)
    assert graphs[2] > 0 and graphs[4] == graphs[2], graphs


def wrapper_compiles(model) -> int:
    """Dynamo's compiled entries for the code of transformers' wrapper of the decoder layers' forward (gradient
    checkpointing's, shared by every layer class it wraps)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from ragqa_exp.backends.compiled_layers import decoder_layers, is_wrapper

    codes = {type(m).forward.__code__ for m in decoder_layers(model) if is_wrapper(type(m).forward)}
    assert codes, "transformers no longer wraps the layers' forward: this check shows nothing"
    return sum(len(_debug_get_cache_entry_list(code)) for code in codes)


def perturbed(key, fn):
    """A stand-in for the compile whose layers add a little to their output: other numbers, at once."""
    def layer(*args, **kwargs):
        out = fn(*args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
        hidden = hidden + 0.01
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden
    return layer


@pytest.mark.parametrize("case", ["differs", "fails"])
def test_compiled_layers_that_differ_or_fail_leave_the_model_eager_and_say_why(case, monkeypatch):
    """The load's check: layers whose logits are not eager's bit for bit (control: the same stand-in without the
    perturbation keeps them compiled), or a compile that fails, put everything back, and eval_plan says why."""
    import torch

    from ragqa_exp.backends import elementwise, exact_compile

    def broken(key, fn):
        def fail(*args, **kwargs):
            raise RuntimeError("no C++ compiler here\nsecond line")
        return fail

    before = settings()
    model = tiny("llama")
    eager = logits(model)
    monkeypatch.setattr(exact_compile, "compiled", lambda key, fn: fn)  # the control: the layers as they are
    assert elementwise.use(model, "compiled-layers") == "compiled layers (2 LlamaDecoderLayer, 5 LlamaRMSNorm)"
    elementwise.restore(model)
    monkeypatch.setattr(exact_compile, "compiled", perturbed if case == "differs" else broken)
    want = ("eager (compiled layers differ from eager)" if case == "differs" else
            "eager (torch.compile failed: RuntimeError: no C++ compiler here)")
    assert elementwise.use(model, "compiled-layers") == want
    assert not any("forward" in m.__dict__ for m in model.modules()) and settings() == before
    assert torch.equal(logits(model), eager)


def test_a_4bit_model_gets_the_pieces(monkeypatch):
    """Projections other than torch.nn.Linear (bitsandbytes' Linear4bit subclasses it; gptqmodel's kernels do not)
    are not compiled inside a layer: the pieces run instead, and eval_plan says so."""
    import torch

    from ragqa_exp.backends import compiled_layers, elementwise, exact_compile

    class Linear4bit(torch.nn.Linear):
        pass

    model = tiny("llama")
    assert compiled_layers.sixteen_bit(model)
    proj = model.model.layers[1].mlp.up_proj
    quantized = Linear4bit(proj.in_features, proj.out_features, bias=False, dtype=proj.weight.dtype)
    quantized.weight = proj.weight
    model.model.layers[1].mlp.up_proj = quantized
    assert not compiled_layers.sixteen_bit(model)
    monkeypatch.setattr(exact_compile, "compiled", lambda key, fn: fn)  # no compile needed to see which path runs
    try:
        assert elementwise.use(model, "compiled-layers") == (
            "compiled (LlamaMLP, LlamaRMSNorm, apply_rotary_pos_emb) (compiled-layers: 16-bit models only)")
    finally:
        elementwise.restore(model)
