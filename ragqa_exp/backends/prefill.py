"""The canonical plan's prefill in slices of rows (`eval.max_prefill_tokens`): a batch's prompts are prefilled a
fixed number of rows at a time, and only the slices that hold a real question; the decode then runs over the whole
batch. A bucket's last batch no longer pays a full prefill for the copies that fill it (25% of the prompt tokens
computed at 7B shapes, benchmarks/H200_PROFILE.md), while every tensor a question meets still has shapes fixed by
its bucket and the config: a slice is `slice_rows x (padded - 1)` tokens, a decode step `rows x 1`.

The prefill covers every prompt token but the last: the first decode step computes the last prompt token for the
whole batch and gives the first new token, so `generate` (or the graph loop) continues from the cache as from any
earlier turn (transformers' "re-use the cache to continue generation"). Decode rows past the prefilled slices are
copies of the last real row, in their ids, mask and cache alike, and are thrown away as before.
"""
from __future__ import annotations

import math
import types
from typing import Iterator

# The graph loop's slices keep their key and value states as the attention hands them (views) instead of copying them
# by DynamicLayer's first-update torch.cat; the copy into the StaticCache is then the one write. On an H100 at 7B
# shapes: 29.70 s -> 28.89 s for the 980 prompts, every token id equal (benchmarks/H200_PROFILE.md, session 18). False
# (eval_speed.py's `:cat`) copies as before, for benchmarks.
KEEP_VIEWS = True

# The graph loop's slices run right-padded with no mask, so SDPA runs `is_causal` (a kernel that skips the upper
# triangle; given the left padding's mask, cuDNN computes all of it: 128.5 ms against 28.9 ms for a 32k-token batch's
# prefill attention at Llama-2-7B shapes on an H100), for models whose attention layers are all full attention (the
# loop decides: graph_decode.causal_prefill). A benchmark switch (eval_speed.py's `:causal`): on an H100 at 7B shapes
# it gained 1.037x but moved 761 of 980 token-id sequences (the attention sums keys in another order), so it is not
# the default (benchmarks/H200_PROFILE.md, session 17).
CAUSAL_ROWS = False


def prefilled_rows(n_real: int, slice_rows: int) -> int:
    """Rows prefilled for a batch with `n_real` real rows: whole slices, up to the one holding the last real row."""
    return math.ceil(n_real / slice_rows) * slice_rows


def positions(attention_mask):
    """Position ids of left-padded rows, as `generate` makes them: each row's real tokens count from 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def left_roll(attention_mask, prefix: int, by: int = 1):
    """An index (rows x `prefix`) that, gathered along the tokens, rolls each row's first `prefix` slots left by `by`
    times its pad count p_i: with by=1 a left-padded row becomes right-padded (its real tokens first, its pads last),
    with by=-1 a right-padded row goes back (slot s takes position (s - p_i) mod prefix)."""
    import torch

    pads = prefix - attention_mask[:, :prefix].sum(-1, keepdim=True)
    return (torch.arange(prefix, device=attention_mask.device) + by * pads) % prefix


def _first_update_as_views(layer, key_states, value_states, *args, **kwargs):
    """A prefill slice's one cache update, without a copy: what DynamicLayer / DynamicSlidingWindowLayer keep (all
    the states; a sliding-window layer its last window - 1), as views of the states handed over."""
    if layer.is_initialized:
        raise RuntimeError("a prefill slice's cache is written once")
    layer.lazy_initialization(key_states, value_states)
    keep = slice(None)
    window = getattr(layer, "sliding_window", None)
    if window is not None:
        layer.cumulative_length += key_states.shape[-2]
        keep = slice(-window + 1, None)
    layer.keys, layer.values = key_states[:, :, keep], value_states[:, :, keep]
    return key_states, value_states


def prefill_slices(model, input_ids, attention_mask, slice_rows: int, n_real: int, views: bool = False,
                   causal: bool = False) -> Iterator[tuple[int, object]]:
    """(first row, DynamicCache) for each slice of `slice_rows` rows holding a real row: every token but the last.
    `views`: the cache keeps the states as handed over (read once, by a copy, as fill_static_cache does).
    `causal` (full-attention models only): the rows right-padded (`left_roll`) and no mask, so the attention is
    causal alone (transformers hands SDPA no mask and is_causal=True); row i's position j then holds its left-padded
    slot (j + p_i) mod prefix, and the cache is for fill_static_cache to roll back."""
    import torch
    from transformers import DynamicCache

    prefix = input_ids.shape[1] - 1
    ids, mask, pos = input_ids[:, :prefix], attention_mask[:, :prefix], positions(attention_mask)[:, :prefix]
    if causal:
        # real tokens first, at positions 0, 1, ...; the pads after them (no real token sees them) take the positions
        # that follow, so that they rise by one throughout (transformers reads position ids that fall as packed
        # sequences, though only when called without a cache)
        ids, mask = ids.gather(1, left_roll(attention_mask, prefix)), None
        pos = torch.arange(prefix, device=ids.device).expand_as(ids)
    for start in range(0, prefilled_rows(n_real, slice_rows), slice_rows):
        rows = slice(start, start + slice_rows)
        cache = DynamicCache(config=model.config)
        if views:
            for layer in cache.layers:
                layer.update = types.MethodType(_first_update_as_views, layer)
        model(input_ids=ids[rows], attention_mask=None if mask is None else mask[rows], position_ids=pos[rows],
              cache=cache, use_cache=True, logits_to_keep=1)
        if views:  # the bound method refers back to its layer: a cycle that would keep the slice's states until a gc
            for layer in cache.layers:  # pass (none runs per slice: a 7B batch ran out of memory on an H100)
                del layer.update
        yield start, cache


def batch_cache(model, input_ids, attention_mask, slice_rows: int, n_real: int):
    """One DynamicCache for the whole batch (`rows` = input_ids' rows), built slice by slice; the decode rows past
    the prefilled slices copy the last real row's cache. A layer's slices are joined and dropped one layer at a time,
    so the peak is the batch's cache and one layer's copy. Always the masked prefill (`CAUSAL_ROWS` is the graph
    loop's only)."""
    import torch

    caches = [cache for _, cache in prefill_slices(model, input_ids, attention_mask, slice_rows, n_real)]
    rows, done = input_ids.shape[0], prefilled_rows(n_real, slice_rows)
    last = n_real - 1
    merged = caches[0]
    for i, layer in enumerate(merged.layers):
        for name in ("keys", "values"):
            parts = [getattr(c.layers[i], name) for c in caches]
            if rows > done:
                src = parts[last // slice_rows][last % slice_rows:last % slice_rows + 1]
                parts.append(src.expand(rows - done, *src.shape[1:]))
            setattr(layer, name, torch.cat(parts) if len(parts) > 1 else parts[0])
            for c in caches[1:]:
                setattr(c.layers[i], name, None)
    return merged


def _write(dst, states, back) -> None:
    """`states` into `dst`; `back` (a `left_roll` by=-1, right-padded slices) gathers each row's slots back to
    left padding on the way, in the one write."""
    import torch

    if back is None:
        dst.copy_(states)
    else:
        torch.gather(states, 2, back.expand_as(states), out=dst)


def fill_static_cache(model, cache, input_ids, attention_mask, slice_rows: int, n_real: int,
                      causal: bool = False) -> int:
    """Prefill a StaticCache (rows x max length, the graph loop's) slice by slice in place, left-padded as the
    prompts are (`causal`: from right-padded, unmasked slices; full-attention models only); returns the tokens it
    now holds (padded - 1), where the next step writes."""
    prefix = input_ids.shape[1] - 1
    rows, last, done = input_ids.shape[0], n_real - 1, prefilled_rows(n_real, slice_rows)
    back = left_roll(attention_mask, prefix, by=-1)[:, None, :, None] if causal else None  # rows x 1 x prefix x 1
    cache.reset()
    for start, part in prefill_slices(model, input_ids, attention_mask, slice_rows, n_real, views=KEEP_VIEWS,
                                      causal=causal):
        rows_back = None if back is None else back[start:start + slice_rows]
        for layer, src in zip(cache.layers, part.layers):
            if not layer.is_initialized:  # lazily made at the first update; sized for the whole batch
                layer.lazy_initialization(src.keys[:1].expand(rows, -1, -1, -1), src.values[:1].expand(rows, -1, -1, -1))
            # all `prefix` tokens, or a sliding-window layer's last window - 1: the slots before those lie outside
            # every later query's window, and stay zero
            kept = src.keys.shape[-2]
            _write(layer.keys[start:start + slice_rows, :, prefix - kept:prefix], src.keys, rows_back)
            _write(layer.values[start:start + slice_rows, :, prefix - kept:prefix], src.values, rows_back)
    for layer in cache.layers:
        if rows > done:
            layer.keys[done:, :, :prefix].copy_(layer.keys[last:last + 1, :, :prefix].expand(rows - done, -1, -1, -1))
            layer.values[done:, :, :prefix].copy_(layer.values[last:last + 1, :, :prefix].expand(rows - done, -1, -1, -1))
        layer.cumulative_length.fill_(prefix)  # transformers' StaticLayer writes the next keys where this says
    return prefix
