"""eval.kv_cache=graph (backends/graph_decode.py): our own greedy loop over a static KV cache (a CUDA graph per
batch shape on a GPU) gives the token ids transformers' `generate` gives, batch by batch of the canonical plan;
a model it cannot decode is refused in one line."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest

from ragqa_exp.errors import ConfigError

N_PROMPTS = 12
MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def tiny_llama():
    """A random 2-layer Llama with the char tokenizer, float32, weights large enough that greedy tokens vary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ragqa_exp.random_model import char_tokenizer

    tok = char_tokenizer(2048)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.5,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval(), tok


@pytest.fixture(scope="module")
def tiny_gemma():
    """A random 2-layer Gemma 3 (the embedded model's architecture): a sliding-window layer whose 24-slot window is
    shorter than every prompt, then a full-attention layer; untied head, so that the window moves greedy tokens."""
    import torch
    from transformers import Gemma3ForCausalLM

    from ragqa_exp.random_model import char_tokenizer

    tok = char_tokenizer(2048)

    def model(window: int):
        torch.manual_seed(0)
        return Gemma3ForCausalLM(gemma_config(tok, window)).eval()

    return model, tok


def gemma_config(tok, window: int):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, initializer_range=0.5,
                            sliding_window=window, layer_types=["sliding_attention", "full_attention"],
                            tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)


@pytest.fixture(scope="module")
def prompts():
    """Twelve short prompts of different lengths (several length buckets, so several batch shapes)."""
    from ragqa_exp.data import format_prompt, load_splits

    from conftest import run_config

    rows = load_splits(run_config().data).validation[:N_PROMPTS]
    return [format_prompt(r["question"], r["context"][:1], 1)[:90 + 7 * i] for i, r in enumerate(rows)]


SLICED = 350  # eval.max_prefill_tokens: 2-3 of these prompts' rows per prefill forward (buckets of 96-176 tokens)
WHOLE = 10**6  # eval.max_prefill_tokens: every batch prefilled whole (null is 512 tokens a slice on a CPU)


def token_ids(model, tok, kv_cache: str, prompts: list[str], max_rows: int, max_prefill_tokens: int | None = None):
    from ragqa_exp.backends import LoadInfo
    from ragqa_exp.backends.hf import HFBackend

    backend = HFBackend(model, tok, max_rows, None, LoadInfo(kernel="dense-float32"), kv_cache=kv_cache,
                        length_bucket=16, max_prefill_tokens=max_prefill_tokens)
    out = dict(backend.generate(prompts, MAX_NEW_TOKENS))
    return [out[i].token_ids for i in range(len(prompts))], backend


@pytest.mark.parametrize(("max_rows", "max_prefill_tokens"), [(3, None), (8, WHOLE), (8, SLICED)],
                         ids=["rows3", "rows8-whole-batch", "rows8-prefill-slices"])
def test_graph_loop_gives_generates_token_ids(tiny_llama, prompts, max_rows, max_prefill_tokens):
    """Also with the prefill in slices of rows (backends/prefill.py), which both loops then run."""
    model, tok = tiny_llama
    ref, _ = token_ids(model, tok, "dynamic", prompts, max_rows, max_prefill_tokens)
    got, backend = token_ids(model, tok, "graph", prompts, max_rows, max_prefill_tokens)
    lengths = [len(x) for x in tok(prompts)["input_ids"]]
    sliced = any(backend.plan.slice_rows(p) < len(r) for r, _, p in backend.plan.batches(lengths))
    assert sliced == (max_prefill_tokens != WHOLE)  # the CPU default (None) slices too
    assert sum(len(t) for t in ref) > 3 * N_PROMPTS and len({tuple(t) for t in ref}) > N_PROMPTS // 2  # not trivial
    assert got == ref
    shapes = {(len(rws), padded) for rws, _, padded in backend.plan.batches(lengths)}
    assert backend.plan_record()["decode_graphs_made"] == len(shapes) > 1  # one decoder per shape, made once


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]  # cuda: the decode step captured as a CUDA graph


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("max_rows", "max_prefill_tokens"), [(3, None), (8, WHOLE), (8, SLICED)],
                         ids=["rows3", "rows8-whole-batch", "rows8-prefill-slices"])
def test_sliding_window_layers_decode_as_generate_does(tiny_gemma, prompts, max_rows, max_prefill_tokens, device):
    """Gemma 3: every layer's cache as long as the batch, a sliding-window layer masked to its window (a prefill slice's
    cache keeps only the window's tokens). The control: the same weights with a window longer than any prompt give
    other tokens, so the window is in force here."""
    model, tok = tiny_gemma
    ref, _ = token_ids(model(24).to(device), tok, "dynamic", prompts, max_rows, max_prefill_tokens)
    got, backend = token_ids(model(24).to(device), tok, "graph", prompts, max_rows, max_prefill_tokens)
    assert min(len(x) for x in tok(prompts)["input_ids"]) > 24 + 64  # the window drops slots of every prompt
    assert sum(len(t) for t in ref) > 3 * N_PROMPTS and len({tuple(t) for t in ref}) > N_PROMPTS // 2  # not trivial
    assert got == ref
    assert (backend.decoders.current._graph is not None) == (device == "cuda")
    unwindowed, _ = token_ids(model(10**4).to(device), tok, "dynamic", prompts, max_rows, max_prefill_tokens)
    assert sum(a != b for a, b in zip(unwindowed, ref)) > N_PROMPTS // 2


def test_a_model_with_other_attention_layers_is_refused_in_one_line():
    from ragqa_exp.backends.graph_decode import GraphDecoders

    config = SimpleNamespace(model_type="llama4_text", layer_types=["chunked_attention", "full_attention"])
    with pytest.raises(ConfigError) as ex:
        GraphDecoders(SimpleNamespace(config=config))
    assert str(ex.value) == ("eval.kv_cache=graph: this model (llama4_text) has chunked_attention layers, and the graph "
                             "decode loop handles full and sliding-window attention only; use eval.kv_cache=dynamic")


@pytest.mark.parametrize(("requested", "plan", "device", "model", "runs"), [
    ("auto", "canonical", "cuda", "llama", "graph"),
    ("auto", "canonical", "cpu", "llama", "dynamic"),
    ("auto", "packed", "cuda", "llama", "dynamic"),
    ("auto", "canonical", "cuda", "gemma3", "graph"),
    ("auto", "canonical", "cuda", "llama4-chunked", "dynamic"),
    ("graph", "canonical", "cuda", "gemma3", "graph"),
    ("dynamic", "canonical", "cuda", "llama", "dynamic"),
    ("graph", "canonical", "cpu", "llama", "graph"),
])
def test_auto_kv_cache_is_the_graph_decode_where_it_runs(requested, plan, device, model, runs):
    """eval.kv_cache=auto (the default): the graph decode for the canonical plan on a GPU with a model whose attention
    layers it masks (Llama's full attention, Gemma 3's sliding windows), transformers' dynamic cache elsewhere (a CPU,
    the packed plan, chunked attention); a value asked for by name is kept. The graph rows are the control: auto is
    not always dynamic."""
    from transformers import Gemma3TextConfig, LlamaConfig

    from ragqa_exp.backends.hf import resolve_kv_cache

    chunked = SimpleNamespace(model_type="llama4_text", layer_types=["chunked_attention", "full_attention"])
    config = {"llama": LlamaConfig(), "gemma3": Gemma3TextConfig(), "llama4-chunked": chunked}[model]
    assert resolve_kv_cache(requested, plan, device, config) == runs


@pytest.mark.parametrize(("extra", "runs"), [({"int8_threshold": 6.0}, "dynamic"), ({"int8_threshold": 0.0}, "graph"),
                                             ({}, "graph")])
def test_auto_kv_cache_is_dynamic_for_a_decode_step_no_graph_captures(tiny_llama, monkeypatch, extra, runs):
    """LLM.int8 with outlier columns (quant.int8_threshold > 0) finds them from every forward's activations, and a
    CUDA graph cannot capture that step (an H100: the capture failed), so auto runs the dynamic cache for it; at
    threshold 0, and for any other load, the graph decode. Read by the backend from what the load reports, on a
    machine taken for a GPU (the decision is the backend's; nothing runs)."""
    from ragqa_exp.backends import LoadInfo, hf

    monkeypatch.setattr(hf, "model_device", lambda model: "cuda")
    model, tok = tiny_llama
    backend = hf.HFBackend(model, tok, 8, None, LoadInfo(kernel="k", bits=8, extra=extra))
    assert (backend.requested_kv_cache, backend.kv_cache) == ("auto", runs)


def test_the_cpu_default_runs_the_dynamic_cache_and_says_it_was_auto(tiny_llama, prompts):
    model, tok = tiny_llama
    _, backend = token_ids(model, tok, "auto", prompts[:2], 8)
    record = backend.plan_record()
    assert (record["kv_cache"], record["kv_cache_requested"]) == ("dynamic", "auto") and backend.decoders is None


def shapes(backend, tok, prompts) -> set:
    return {(len(rows), padded) for rows, _, padded in backend.plan.batches([len(x) for x in tok(prompts)["input_ids"]])}


def test_the_graph_capture_leaves_the_decode_as_it_was(tiny_llama, prompts, monkeypatch):
    """On a GPU each batch shape's graph is captured after two warm-up steps, which write the cache and advance
    transformers' own cache position counters; the decode after them must not see that (it once did: the next
    steps wrote past the cache's end). Here, on a CPU, the warm-up steps stand in for the capture, once per batch
    shape as on a GPU, and the answers must still be generate's."""
    from ragqa_exp.backends import graph_decode

    captures = []

    def warm_up_only(self):
        self._warm_up()
        captures.append(self.shape)

    monkeypatch.setattr(graph_decode.GraphDecoder, "_capture", warm_up_only)
    model, tok = tiny_llama
    ref, backend = token_ids(model, tok, "dynamic", prompts, 3)
    backend.kv_cache, backend.decoders = "graph", graph_decode.GraphDecoders(model, graph=True)
    out = dict(backend.generate(prompts, MAX_NEW_TOKENS))
    assert [out[i].token_ids for i in range(len(prompts))] == ref
    assert len(captures) == backend.decoders.made == len(shapes(backend, tok, prompts)) > 2
    # the same with the prefill in slices, which writes the cache and sets its counters itself
    captures.clear()
    ref, backend = token_ids(model, tok, "dynamic", prompts, 8, SLICED)
    backend.kv_cache, backend.decoders = "graph", graph_decode.GraphDecoders(model, graph=True)
    out = dict(backend.generate(prompts, MAX_NEW_TOKENS))
    assert [out[i].token_ids for i in range(len(prompts))] == ref
    assert len(captures) == backend.decoders.made == len(shapes(backend, tok, prompts)) > 2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cycle", [False, True], ids=["decoder", "control-with-a-cycle"])
@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_a_decoder_released_for_the_next_shape_is_freed_without_a_garbage_collector_pass(
        tiny_llama, tiny_gemma, prompts, kind, cycle, device):
    """Each new batch shape drops the last decoder (its cache is 34 GB at 7B shapes) without a gc pass (~0.2 s with a
    model loaded, once per shape): its cache must then go by reference count alone. The control gives the decoder a
    reference cycle: only a gc pass would free it, and the check must see it still alive."""
    import gc
    import weakref

    from ragqa_exp.backends import graph_decode

    model, tok = (copy.deepcopy(tiny_llama[0]), tiny_llama[1]) if kind == "llama" else (tiny_gemma[0](24), tiny_gemma[1])
    model = model.to(device)
    _, backend = token_ids(model, tok, "dynamic", prompts[:1], 3)
    backend.kv_cache, backend.decoders = "graph", graph_decode.GraphDecoders(model)  # a CUDA graph on a GPU
    gc.collect()
    gc.disable()
    try:
        dict(backend.generate(prompts[:1], MAX_NEW_TOKENS))
        first = backend.decoders.current
        if cycle:
            first.cycle = first
        refs = [weakref.ref(first), weakref.ref(first.cache), weakref.ref(first.cache.layers[0].keys)]
        del first
        dict(backend.generate(prompts[-1:], MAX_NEW_TOKENS))  # a longer prompt: another shape, a new decoder
        assert backend.decoders.made == 2 and (backend.decoders.current._graph is not None) == (device == "cuda")
        alive = [r() is not None for r in refs]
    finally:
        gc.enable()
    assert alive == [cycle] * 3


# torch's words on an H100 when gptqmodel 7.6's AWQ torch kernel ran inside the capture (benchmarks/H200_BATCH_PLAN.md,
# fifth follow-up)
CAPTURE_ERROR = ("Cannot copy between CPU and CUDA tensors during CUDA graph capture unless the CPU tensor is pinned. "
                 "Please use tensor.pin_memory() or allocate the tensor with pin_memory=True.")


@pytest.mark.parametrize("raised,expected", [
    (CAPTURE_ERROR, "eval.kv_cache=graph: this model's decode step cannot be captured as a CUDA graph"),
    ("CUDA out of memory. Tried to allocate 2.00 GiB", "out of GPU memory at a batch of"),  # control: not a capture
], ids=["capture", "out-of-memory-control"])
def test_a_decode_step_cuda_cannot_capture_is_one_line(tiny_llama, prompts, monkeypatch, raised, expected):
    """A layer that copies from the host at every step cannot run inside a CUDA graph: the eval stops with one line
    naming eval.kv_cache=dynamic, not torch's traceback (the capture's error, raised here on a CPU in its place).
    Control: an out-of-memory error in the capture is not a capture error and reaches the canonical plan's own line."""
    from ragqa_exp.backends import graph_decode
    from ragqa_exp.errors import ResourceError

    def capture(self):
        raise RuntimeError(raised)

    monkeypatch.setattr(graph_decode.GraphDecoder, "_capture", capture)
    model, tok = tiny_llama
    _, backend = token_ids(model, tok, "dynamic", prompts[:2], 3)
    backend.kv_cache, backend.decoders = "graph", graph_decode.GraphDecoders(model, graph=True)
    with pytest.raises((ConfigError, ResourceError)) as ex:
        list(backend.generate(prompts[:2], MAX_NEW_TOKENS))
    msg = str(ex.value)
    assert "\n" not in msg and msg.startswith(expected), msg
    if raised == CAPTURE_ERROR:
        assert msg.endswith("use eval.kv_cache=dynamic") and "Cannot copy between CPU and CUDA tensors" in msg
