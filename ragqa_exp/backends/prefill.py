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
# by DynamicLayer's first-update torch.cat; the copy into the StaticCache is then the one write. A benchmark switch
# (eval_speed.py's `:views`) until a GPU run shows what it saves and that it moves no token (benchmarks/kv_write.py).
KEEP_VIEWS = False


def prefilled_rows(n_real: int, slice_rows: int) -> int:
    """Rows prefilled for a batch with `n_real` real rows: whole slices, up to the one holding the last real row."""
    return math.ceil(n_real / slice_rows) * slice_rows


def positions(attention_mask):
    """Position ids of left-padded rows, as `generate` makes them: each row's real tokens count from 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


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


def prefill_slices(model, input_ids, attention_mask, slice_rows: int, n_real: int,
                   views: bool = False) -> Iterator[tuple[int, object]]:
    """(first row, DynamicCache) for each slice of `slice_rows` rows holding a real row: every token but the last.
    `views`: the cache keeps the states as handed over (read once, by a copy, as fill_static_cache does)."""
    from transformers import DynamicCache

    prefix = input_ids.shape[1] - 1
    pos = positions(attention_mask)
    for start in range(0, prefilled_rows(n_real, slice_rows), slice_rows):
        rows = slice(start, start + slice_rows)
        cache = DynamicCache(config=model.config)
        if views:
            for layer in cache.layers:
                layer.update = types.MethodType(_first_update_as_views, layer)
        model(input_ids=input_ids[rows, :prefix], attention_mask=attention_mask[rows, :prefix],
              position_ids=pos[rows, :prefix], cache=cache, use_cache=True, logits_to_keep=1)
        yield start, cache


def batch_cache(model, input_ids, attention_mask, slice_rows: int, n_real: int):
    """One DynamicCache for the whole batch (`rows` = input_ids' rows), built slice by slice; the decode rows past
    the prefilled slices copy the last real row's cache. A layer's slices are joined and dropped one layer at a time,
    so the peak is the batch's cache and one layer's copy."""
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


def fill_static_cache(model, cache, input_ids, attention_mask, slice_rows: int, n_real: int) -> int:
    """Prefill a StaticCache (rows x max length, the graph loop's) slice by slice in place; returns the tokens it
    now holds (padded - 1), where the next step writes."""
    prefix = input_ids.shape[1] - 1
    rows, last, done = input_ids.shape[0], n_real - 1, prefilled_rows(n_real, slice_rows)
    cache.reset()
    for start, part in prefill_slices(model, input_ids, attention_mask, slice_rows, n_real, views=KEEP_VIEWS):
        for layer, src in zip(cache.layers, part.layers):
            if not layer.is_initialized:  # lazily made at the first update; sized for the whole batch
                layer.lazy_initialization(src.keys[:1].expand(rows, -1, -1, -1), src.values[:1].expand(rows, -1, -1, -1))
            # all `prefix` tokens, or a sliding-window layer's last window - 1: the slots before those lie outside
            # every later query's window, and stay zero
            kept = src.keys.shape[-2]
            layer.keys[start:start + slice_rows, :, prefix - kept:prefix].copy_(src.keys)
            layer.values[start:start + slice_rows, :, prefix - kept:prefix].copy_(src.values)
    for layer in cache.layers:
        if rows > done:
            layer.keys[done:, :, :prefix].copy_(layer.keys[last:last + 1, :, :prefix].expand(rows - done, -1, -1, -1))
            layer.values[done:, :, :prefix].copy_(layer.values[last:last + 1, :, :prefix].expand(rows - done, -1, -1, -1))
        layer.cumulative_length.fill_(prefix)  # transformers' StaticLayer writes the next keys where this says
    return prefix
