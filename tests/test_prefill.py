"""The canonical plan's prefill in slices of rows (`eval.max_prefill_tokens`, backends/prefill.py): a batch is
prefilled a fixed number of rows at a time, and only the slices that hold a real question, so a bucket's last batch
no longer pays a prefill for the copies that fill it; the answers are those of the batch prefilled whole."""
from __future__ import annotations

import pytest

from test_graph_decode import MAX_NEW_TOKENS, SLICED, WHOLE, prompts, tiny_llama, token_ids  # noqa: F401  fixtures


def forward_shapes(model):
    """(rows, tokens) of every forward of `model`'s decoder, in order, while the context is open."""
    shapes = []
    hook = model.model.register_forward_pre_hook(lambda m, args, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                                 with_kwargs=True)
    return shapes, hook


@pytest.mark.parametrize("kv_cache", ["dynamic", "graph"])
def test_only_slices_holding_a_question_are_prefilled(tiny_llama, prompts, kv_cache):
    """Three questions in one bucket, 8 rows a batch, prefilled 2 rows at a time: two slices of 2 rows are
    prefilled (the third question and one copy), never the 4 rows of copies; every decode step runs all 8 rows.
    Control: the same batch prefilled whole (a budget of 8 rows) computes the 8 rows' prompts."""
    model, tok = tiny_llama
    three = [p[:100] for p in prompts[2:5]]  # one length, one bucket (112 tokens with the pad token)
    out = {}
    for budget in (8 * 112, 2 * 112):
        shapes, hook = forward_shapes(model)
        try:
            got, backend = token_ids(model, tok, kv_cache, three, 8, budget)
        finally:
            hook.remove()
        rows, n_real, padded = backend.plan.batches([len(x) for x in tok(three)["input_ids"]])[0]
        assert (len(rows), n_real, padded) == (8, 3, 112)
        prefills = [s for s in shapes if s[1] > 1]
        decode_rows = {s[0] for s in shapes if s[1] == 1}
        out[budget] = got
        if budget == 2 * 112:
            assert backend.plan.slice_rows(padded) == 2 and backend.plan_record()["max_prefill_tokens"] == 224
            assert prefills == [(2, 111)] * 2, shapes  # the third question and a copy; not the 4 rows of copies
        else:
            assert prefills == [(8, 112)], shapes
        assert decode_rows == {8}
    assert out[8 * 112] == out[2 * 112]


@pytest.mark.parametrize(("budget", "warm_up_prefills"), [(None, [(4, 111)]), (2 * 112, [(2, 111)]),
                                                         (8 * 112, [(8, 112)])], ids=["cpu-default", "sliced", "whole"])
def test_the_warm_up_prefills_its_first_slice_only(tiny_llama, prompts, budget, warm_up_prefills):
    """The warm-up runs the plan's first batch in its shapes for a few steps, prefilling its first slice only (its
    other rows are copies, as a bucket's fill is). On a CPU eval.max_prefill_tokens=null is 512 tokens: 4 rows of
    this 112-token bucket a slice. Control: a batch prefilled whole (one slice) prefills all 8 rows."""
    from ragqa_exp.backends import LoadInfo
    from ragqa_exp.backends.hf import HFBackend

    model, tok = tiny_llama
    five = [p[:100] for p in prompts[2:7]]  # 5 questions of one bucket: more than a slice in every case but "whole"
    backend = HFBackend(model, tok, 8, None, LoadInfo(kernel="dense-float32"), kv_cache="dynamic", length_bucket=16,
                        max_prefill_tokens=budget)
    shapes, hook = forward_shapes(model)
    try:
        backend.warmup(five, MAX_NEW_TOKENS)
    finally:
        hook.remove()
    assert backend.plan_record()["max_prefill_tokens"] == (budget or 512)
    assert [s for s in shapes if s[1] > 1] == warm_up_prefills, shapes
    assert {s[0] for s in shapes if s[1] == 1} == {8}  # the decode steps run the whole batch


def test_sliced_prefill_keeps_a_sliding_window_models_answers():
    """Gemma 3's sliding-window layers keep only their window in the cache: the slices' caches are joined layer by
    layer all the same, and the answers equal the batch prefilled whole (prompts longer than the window)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from ragqa_exp.backends import LoadInfo
    from ragqa_exp.backends.hf import HFBackend
    from ragqa_exp.random_model import char_tokenizer

    tok = char_tokenizer(512)
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3, head_dim=16,
                           num_attention_heads=4, num_key_value_heads=2, initializer_range=0.5, sliding_window=24,
                           layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg).eval()
    texts = [f"question {i}: " + "abcdefghij"[i % 10] * (40 + 9 * i) for i in range(10)]
    got = {}
    for budget in (None, 300):
        backend = HFBackend(model, tok, 8, None, LoadInfo(kernel="dense-float32"), length_bucket=16,
                            max_prefill_tokens=budget)
        out = dict(backend.generate(texts, MAX_NEW_TOKENS))
        got[budget] = [out[i].token_ids for i in range(len(texts))]
    assert len({tuple(t) for t in got[None]}) > 3  # not one answer for all
    assert got[300] == got[None]


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_a_prefill_slice_kept_as_views_fills_the_same_cache_without_the_cat(kind, monkeypatch):
    """`KEEP_VIEWS` (on by default; eval_speed.py's `:cat` turns it off): each slice's cache keeps the key and value states
    as the attention hands them instead of DynamicLayer's first-update torch.cat copy (two a layer); the graph loop's
    StaticCache then holds the same bits, every layer's (so no attention read them otherwise), a sliding-window
    layer's last window too."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from ragqa_exp.backends import prefill
    from ragqa_exp.backends.graph_decode import static_cache
    from test_elementwise import tiny

    model = tiny(kind)  # bf16, large weights; Gemma 3: a 24-token sliding window, then full attention
    ids = torch.randint(0, 512, (6, 48), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    for row, pad in enumerate((1, 5, 9, 3, 12, 7)):  # left padding, as the canonical plan's
        mask[row, :pad] = 0
    caches, cats = {}, {}
    for views in (False, True):
        monkeypatch.setattr(prefill, "KEEP_VIEWS", views)
        cache = static_cache(model.config, 48 + 4)
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            assert prefill.fill_static_cache(model, cache, ids, mask, slice_rows=2, n_real=5) == 47
        cats[views] = sum(e.name == "aten::cat" for e in prof.events())
        caches[views] = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    layers = len(model.model.layers)
    assert cats[False] - cats[True] == 2 * layers * 3  # keys and values, every layer, 3 slices (rows 0-5: 5 real)
    for (k0, v0), (k1, v1) in zip(caches[False], caches[True]):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)
    assert caches[True][0][0].abs().sum() > 0


def left_padded_batch(pads, rows: int, tokens: int = 48):
    """Random ids (512-token vocabulary) left-padded by `pads`, one row each; the rows past them copy the last, as a
    bucket's fill does."""
    import torch

    ids = torch.randint(0, 512, (rows, tokens), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
    ids[len(pads):], mask[len(pads):] = ids[len(pads) - 1], mask[len(pads) - 1]
    return ids, mask


def fill(model, ids, mask, slice_rows: int, n_real: int):
    """The StaticCache fill_static_cache leaves (every layer's keys and values) as the graph loop calls it (right-
    padded where `causal_prefill` says), with the SDPA calls it made as (mask given, is_causal) pairs."""
    import torch

    from ragqa_exp.backends import prefill
    from ragqa_exp.backends.graph_decode import causal_prefill, static_cache

    calls, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def recorded(*args, attn_mask=None, is_causal=False, **kwargs):
        calls.append((attn_mask is not None, is_causal))
        return sdpa(*args, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    cache = static_cache(model.config, ids.shape[1] + 4)
    torch.nn.functional.scaled_dot_product_attention = recorded
    try:
        with torch.inference_mode():
            prefix = prefill.fill_static_cache(model, cache, ids, mask, slice_rows, n_real, causal_prefill(model.config))
            assert prefix == ids.shape[1] - 1
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
    return [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers], calls


SLICE_PADS = (1, 5, 9, 3, 12)  # left padding of the real rows: another pad count in each row of each 2-row slice


def test_causal_rows_hand_sdpa_no_mask_and_is_causal(monkeypatch):
    """`CAUSAL_ROWS` (a benchmark switch, eval_speed.py's `:causal`): a full-attention model's prefill slices run
    right-padded, and transformers (given no mask, its empty cache, position ids that rise by one) hands SDPA no
    mask and is_causal=True in every layer of every slice. Control: off, every call gets the padding's mask."""
    from ragqa_exp.backends import prefill
    from test_elementwise import tiny

    model = tiny("llama").float()
    ids, mask = left_padded_batch(SLICE_PADS, 8)
    for causal in (False, True):
        monkeypatch.setattr(prefill, "CAUSAL_ROWS", causal)
        _, calls = fill(model, ids, mask, slice_rows=2, n_real=5)
        assert calls == [(not causal, causal)] * (len(model.model.layers) * 3), calls  # 3 slices: rows 0-5


@pytest.mark.parametrize("views", [False, True], ids=["copied", "views"])
def test_causal_rows_fill_the_static_cache_the_masked_prefill_fills(views, monkeypatch):
    """The right-padded slices' keys and values, gathered back to left padding, are the masked prefill's on every
    real slot of every layer and row (the copies past the prefilled slices too), up to the attention's order of
    summation over keys (float32); with `KEEP_VIEWS` as well. The pad slots are the decode loop's mask's to hide."""
    import torch

    from ragqa_exp.backends import prefill
    from test_elementwise import tiny

    model = tiny("llama").float()
    ids, mask = left_padded_batch(SLICE_PADS, 8)
    monkeypatch.setattr(prefill, "KEEP_VIEWS", views)
    caches = {}
    for causal in (False, True):
        monkeypatch.setattr(prefill, "CAUSAL_ROWS", causal)
        caches[causal], _ = fill(model, ids, mask, slice_rows=2, n_real=5)
    real = mask[:, :-1].bool()  # rows x prefix: the slots the decode loop reads
    for masked, causal in zip(caches[False], caches[True]):
        for a, b in zip(masked, causal):
            a, b = a[:, :, :real.shape[1]].transpose(1, 2)[real], b[:, :, :real.shape[1]].transpose(1, 2)[real]
            assert a.abs().max() > 1 and torch.allclose(a, b, rtol=1e-5, atol=1e-5), (a - b).abs().max()


def test_a_sliding_window_model_keeps_the_masked_prefill_under_causal_rows(monkeypatch):
    """Gemma 3's sliding-window layers need their mask: with `CAUSAL_ROWS` on, its prefill is today's, every SDPA
    call masked and the StaticCache the same bits."""
    import torch

    from ragqa_exp.backends import prefill
    from test_elementwise import tiny

    model = tiny("gemma3").float()
    ids, mask = left_padded_batch(SLICE_PADS, 8)
    got = {}
    for causal in (False, True):
        monkeypatch.setattr(prefill, "CAUSAL_ROWS", causal)
        got[causal] = fill(model, ids, mask, slice_rows=2, n_real=5)
    assert got[True][1] == got[False][1] == [(True, False)] * (len(model.model.layers) * 3)
    for (k0, v0), (k1, v1) in zip(got[False][0], got[True][0]):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)


@pytest.mark.parametrize(("max_rows", "max_prefill_tokens"), [(3, None), (8, WHOLE), (8, SLICED)],
                         ids=["rows3", "rows8-whole-batch", "rows8-prefill-slices"])
def test_graph_loop_with_causal_rows_gives_generates_token_ids(tiny_llama, prompts, max_rows, max_prefill_tokens,
                                                              monkeypatch):
    """`CAUSAL_ROWS` on: the graph loop's right-padded, unmasked prefill slices give `generate`'s token ids (the
    dynamic path, which keeps the masked prefill), on prompts of several buckets and pad counts; a batch prefilled
    whole runs as one such slice."""
    from ragqa_exp.backends import prefill

    model, tok = tiny_llama
    ref, _ = token_ids(model, tok, "dynamic", prompts, max_rows, max_prefill_tokens)
    monkeypatch.setattr(prefill, "CAUSAL_ROWS", True)
    masks = []
    hook = model.model.register_forward_pre_hook(
        lambda m, args, kw: masks.append(kw["attention_mask"] is None) if kw["input_ids"].shape[1] > 1 else None,
        with_kwargs=True)
    try:
        got, _ = token_ids(model, tok, "graph", prompts, max_rows, max_prefill_tokens)
    finally:
        hook.remove()
    assert masks and all(masks)  # every prefill forward ran unmasked
    assert len({tuple(t) for t in ref}) > len(prompts) // 2  # not trivial
    assert got == ref


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("case", ["copied", "views", "control-with-a-cycle"])
def test_a_prefill_slices_cache_is_freed_without_a_garbage_collector_pass(case, device):
    """Each slice's cache (a 7B slice's is gigabytes) goes by reference count once the next slice comes, views kept or
    not: no gc pass runs between slices, and on an H100 the views' bound `update` (a cycle through its layer) kept
    every slice alive until the batch ran out of memory. Control: a slice given a reference cycle must read as alive."""
    import gc
    import weakref

    import torch

    from ragqa_exp.backends import prefill
    from test_elementwise import tiny

    model = tiny("llama", device)
    ids = torch.randint(0, 512, (6, 24), generator=torch.Generator().manual_seed(1)).to(device)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    alive = []
    gc.collect()
    gc.disable()
    try:
        with torch.inference_mode():
            for _, cache in prefill.prefill_slices(model, ids, mask, 2, 6, views=case != "copied"):
                if case == "control-with-a-cycle":
                    cache.itself = cache
                alive.append([weakref.ref(cache)] + [weakref.ref(layer.keys) for layer in cache.layers])
        del cache
        left = [any(r() is not None for r in refs) for refs in alive]
    finally:
        gc.enable()
    assert len(left) == 3
    assert left == [case == "control-with-a-cycle"] * 3
