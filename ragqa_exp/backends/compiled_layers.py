"""`eval.elementwise=compiled-layers`: each decoder layer's whole forward through torch.compile with eager's numbers
(issue 19's prefill lever past backends/elementwise.py's pieces: Inductor can then fuse the residual adds with the
norms too). As a benchmark variant in its first form (a graph per layer, the cache and attention inside) on an H100 at
7B shapes, 980 prompts: 29.70 s eager, 26.26 s with the pieces, 24.41 s with whole layers after 146 s of compile
(benchmarks/H200_PROFILE.md, session 18). This form, on another H100 (session 19): 29.26 s eager, 26.28 s with the
pieces, 26.90 s with whole layers after 48 s of compile, 980 of 980 token ids equal in each. With the cache and the
attention eager between graphs, a layer runs as several graphs and the first form's gain is gone: not recommended yet.

Eager's numbers as the pieces keep them: Inductor's `emulate_precision_casts`, and every RMSNorm's mean an eager
reduction (`exact_compile.mean_last`). The matmuls stay the extern kernels eager calls.

One set of graphs for every layer: transformers' `Cache.update` runs eagerly between two graphs (a graph break), and a
module's int attributes (each layer's `layer_idx`) are not specialized on. Without both, Dynamo traced each layer
apart: 146 s of compile at 7B shapes (session 18). The attention function itself (transformers' interface for the
model's `_attn_implementation`, SDPA) runs eagerly there too: compiled inside a layer on a CPU, Gemma 3's decode-step
attention computed other numbers (1 of the embedded model's first 12 answers moved, session 18); on a GPU SDPA is an
extern kernel either way. These are process-wide settings of torch and transformers, held while a model is compiled
this way and put back by `restore`.

The model's logits over a left-padded prompt and two decode steps on its cache are checked against eager bit for
bit at load; if they differ or the compile fails, everything is put back and the eval runs eager, saying why. A model
with other than `torch.nn.Linear` projections (a 4-bit one) gets the pieces instead: compiled inside a compiled
module, gptqmodel's TorchLinear lost its `self` (an H100, 2026-12-06).
"""
from __future__ import annotations

import os
from typing import Optional

from ragqa_exp.backends import exact_compile


def decoder_layers(model) -> list:
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


# transformers' wrappers of a layer's forward that only matter in training or for renamed arguments: `deprecate_kwarg`
# (utils/deprecation.py; 5.24 renames `past_key_values` to `cache`, which the models themselves already pass) and
# GradientCheckpointingLayer's `forward_with_checkpointing` (modeling_layers.py; it checkpoints only while training)
WRAPPER_FILES = (os.path.join("utils", "deprecation.py"), os.path.join("transformers", "modeling_layers.py"))


def is_wrapper(fn) -> bool:
    code = getattr(fn, "__code__", None)
    return hasattr(fn, "__wrapped__") and code is not None and code.co_filename.endswith(WRAPPER_FILES)


def unwrapped(fn):
    """`fn` without those wrappers. Traced, one wrapper's code is shared by every forward it wraps (a layer's and its
    attention's, called with 2 and 1 positional arguments), so Dynamo compiled it again and again: 25 frames for a
    2-layer Llama where 12 made its graphs, 30 for Gemma 3 where 14 did; on an H100 the tiny Gemma 3's compile did not
    finish in 110 s (session 19)."""
    while is_wrapper(fn):
        fn = fn.__wrapped__
    return fn


def sixteen_bit(model) -> bool:
    """Whether every projection inside the decoder layers (a module with `in_features`) is a plain `torch.nn.Linear`:
    not bitsandbytes' Linear4bit (a subclass), gptqmodel's or AWQ's kernels."""
    import torch

    return all(type(m) is torch.nn.Linear for layer in decoder_layers(model) for m in layer.modules()
               if hasattr(m, "in_features"))


class Patched:
    """What `use` changed: the layers', norms' and wrapped inner modules' forwards, and three process-wide settings
    (transformers' `Cache.update` and attention function, Dynamo's `allow_unspec_int_on_nn_module`)."""

    def __init__(self, model) -> None:
        self.model = model
        self.modules: list = []
        self.settings: Optional[tuple] = None  # (transformers' Cache.update, Dynamo's allow_unspec_int_on_nn_module)
        self.attention: Optional[tuple] = None  # (attention interface key, its local entry before or None, the function)

    def patch(self) -> str:
        import types

        import torch
        from transformers import cache_utils
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        exact_compile.mean_last()  # registered before any trace: made while tracing, it breaks the graph
        norms = [m for m in self.model.modules() if type(m).__name__ in exact_compile.NORMS]
        for m in norms:  # traced plain inside the layer (Dynamo refuses a compiled function inside a compiled one)
            fn, eps = exact_compile.NORMS[type(m).__name__]
            m.forward = exact_compile.norm_forward(m, fn, getattr(m, eps))
        layers = decoder_layers(self.model)
        self.settings = (cache_utils.Cache.update, torch._dynamo.config.allow_unspec_int_on_nn_module)
        cache_utils.Cache.update = torch._dynamo.disable(self.settings[0])
        self.attention = attention_entry(self.model, layers[0])
        key, before, fn = self.attention
        ALL_ATTENTION_FUNCTIONS[key] = torch._dynamo.disable(fn)
        torch._dynamo.config.allow_unspec_int_on_nn_module = True
        fn = exact_compile.compiled(("layer", type(layers[0])), unwrapped(type(layers[0]).forward))
        for m in layers:
            m.forward = types.MethodType(fn, m)
        inner = [m for layer in layers for m in layer.modules()  # e.g. the attention: run (and traced) unwrapped too
                 if m is not layer and is_wrapper(type(m).forward)]
        for m in inner:
            m.forward = types.MethodType(unwrapped(type(m).forward), m)
        self.modules = layers + norms + inner
        return f"compiled layers ({len(layers)} {type(layers[0]).__name__}, {len(norms)} {type(norms[0]).__name__})"

    def restore(self) -> None:
        import torch
        from transformers import cache_utils
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        for m in self.modules:
            del m.forward  # the class's forward again
        if self.settings is not None:
            cache_utils.Cache.update, torch._dynamo.config.allow_unspec_int_on_nn_module = self.settings
        if self.attention is not None:
            key, before, _ = self.attention
            if before is None:
                del ALL_ATTENTION_FUNCTIONS[key]
            else:
                ALL_ATTENTION_FUNCTIONS[key] = before
        self.modules, self.settings, self.attention = [], None, None


def attention_entry(model, layer) -> tuple:
    """(key, the interface's own local entry for it or None, the attention function the layers call): transformers'
    registry of attention functions under the model's `_attn_implementation` (eager's is the modeling module's own)."""
    import sys

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    key = model.config._attn_implementation or "eager"
    eager = getattr(sys.modules[type(layer).__module__], "eager_attention_forward", None)
    return key, ALL_ATTENTION_FUNCTIONS._local_mapping.get(key), ALL_ATTENTION_FUNCTIONS.get_interface(key, eager)


def logits(model) -> tuple:
    """The model's logits over 3 random prompts of 47 tokens (one left-padded by 10) and two decode steps on their
    cache: what `use` compares, eager against compiled. (With 5 tokens and one step, Gemma 3's SDPA compiled on a CPU
    passed here and moved 1 of 12 of the embedded model's answers; at 47 tokens it differed here too.)"""
    import torch
    from transformers import DynamicCache

    dev = next(model.parameters()).device
    vocab = min(model.get_input_embeddings().num_embeddings, 1000)
    ids = torch.randint(0, vocab, (3, 49), generator=torch.Generator().manual_seed(0)).to(dev)
    mask = torch.ones_like(ids)
    mask[1, :10] = 0
    prompt = ids.shape[1] - 2
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        out = [model(input_ids=ids[:, :prompt], attention_mask=mask[:, :prompt], cache=cache, use_cache=True).logits]
        for end in (prompt + 1, prompt + 2):  # one token a step, the mask as long as the cache after it
            out.append(model(input_ids=ids[:, end - 1:end], attention_mask=mask[:, :end], cache=cache,
                             use_cache=True).logits)
    return tuple(out)


def use(model) -> tuple[Optional[Patched], str]:
    """Compile the model's decoder layers in place if they compute eager's logits; returns (what to restore, or None
    when nothing stays compiled; what runs, for eval_plan.elementwise)."""
    import torch

    if not decoder_layers(model) or not any(type(m).__name__ in exact_compile.NORMS for m in model.modules()):
        return None, "eager (compiled-layers: no decoder layer of this model is known)"
    eager = logits(model)
    patched = Patched(model)
    try:
        ran = patched.patch()
        got = logits(model)
        why = None if all(torch.equal(a, b) for a, b in zip(eager, got)) else "compiled layers differ from eager"
    except Exception as ex:  # noqa: BLE001  a compile that fails leaves the eager model, with its reason
        why = exact_compile.compile_failure(ex)
    if why:
        patched.restore()
        return None, f"eager ({why})"
    return patched, ran
