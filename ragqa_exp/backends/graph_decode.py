"""`eval.kv_cache=graph`: greedy decoding of one fixed-shape batch over a preallocated StaticCache, by a loop of
our own instead of transformers' `generate` (issue 19's decode lever; measured in benchmarks/static_decode.py):
positions, the attention mask and the argmax stay on the device, nothing syncs with the host until the batch is
done, and on CUDA the decode step is captured once as a CUDA graph and replayed. The canonical plan's shapes
(rows x padded length, per length bucket) are what make one graph per bucket possible.

It runs every step up to the token budget (no early stop when every row has stopped): the answer is still cut at
its first stop token. Full-attention and sliding-window layers (Llama shapes; Gemma 3, the embedded model): every
layer gets a cache as long as the batch (prompt and new tokens), and a sliding-window layer a mask of its own that
sees only the last `sliding_window` slots, as transformers' own masks do (their window counts cache slots, padding
included). Other kinds of attention layer are refused in one line (`check_model`).
"""
from __future__ import annotations

from ragqa_exp.errors import ConfigError


DECODABLE = {"full_attention", "sliding_attention"}  # the kinds of attention layer this loop masks as transformers does


def text_config(config):
    """The decoder's config: a multimodal model's `text_config`, else the config itself."""
    return getattr(config, "text_config", None) or config


def attention_kinds(config) -> set[str]:
    """The kinds of the model's attention layers (`full_attention`, `sliding_attention`, ...)."""
    return set(getattr(text_config(config), "layer_types", None) or ["full_attention"])


def decodable(config) -> bool:
    return attention_kinds(config) <= DECODABLE


def sliding_window(config) -> int | None:
    """The window of the model's sliding-window layers (None: it has none)."""
    return text_config(config).sliding_window if "sliding_attention" in attention_kinds(config) else None


def causal_prefill(config) -> bool:
    """Whether this loop prefills right-padded, unmasked slices (`prefill.CAUSAL_ROWS`, read at each batch): only
    where every attention layer is full attention; a sliding-window layer needs its mask, and keeps the masked
    prefill."""
    from ragqa_exp.backends import prefill

    return prefill.CAUSAL_ROWS and attention_kinds(config) == {"full_attention"}


def check_model(model) -> None:
    """One line if `model` has attention layers this loop's masks would get wrong."""
    c = text_config(model.config)
    kinds = attention_kinds(model.config)
    if not decodable(model.config):
        raise ConfigError(
            f"eval.kv_cache=graph: this model ({getattr(c, 'model_type', '?')}) has {', '.join(sorted(kinds - DECODABLE))} "
            "layers, and the graph decode loop handles full and sliding-window attention only; use eval.kv_cache=dynamic")


def static_cache(config, length: int):
    """transformers' StaticCache of `length` slots in every layer, a sliding-window layer's too (its own layer keeps
    only the window, in a ring, and places keys by its own counter): the window is this loop's mask's to apply."""
    from transformers import StaticCache
    from transformers.cache_utils import StaticLayer

    cache = StaticCache(config=config, max_cache_len=length)
    cache.layers = [StaticLayer(max_cache_len=length) if getattr(layer, "is_sliding", False) else layer
                    for layer in cache.layers]
    return cache


def capture_error(ex: RuntimeError) -> ConfigError | None:
    """One line for a decode step CUDA cannot capture as a graph: a layer that copies from the host or syncs at
    every step (on an H100, gptqmodel 7.6's own AWQ torch forward, which indexes with a Python list: the eval now
    runs quantize/_awq_torch.py's instead). Other errors (out of memory among them, which the canonical plan turns
    into its own line) are not this: None."""
    first = (str(ex).strip().splitlines() or [""])[0].split(". ")[0]  # torch's first sentence
    if "captur" not in first.lower():
        return None
    return ConfigError(
        f"eval.kv_cache=graph: this model's decode step cannot be captured as a CUDA graph ({first.rstrip('.')}); a "
        "layer copies from the host at every step (gptqmodel's own AWQ torch forward did): use eval.kv_cache=dynamic")


class GraphDecoder:
    """Greedy decoding of batches of one shape (rows x padded prompt length, max_new new tokens)."""

    def __init__(self, model, rows: int, padded: int, max_new: int, graph: bool | None = None,
                 slice_rows: int | None = None) -> None:
        """`graph`: replay the decode step as a CUDA graph (None: on CUDA; benchmarks/static_decode.py times both).
        `slice_rows`: prefilled that many rows at a time (backends/prefill.py); None: the whole batch at once."""
        import torch

        check_model(model)
        self.model, self.rows, self.padded, self.max_new = model, rows, padded, max_new
        self.slice_rows = slice_rows
        self.shape = (rows, padded, max_new, slice_rows)
        self.total = padded + max_new
        self.dev = next(model.parameters()).device
        self.graph = (self.dev.type == "cuda" if graph is None else graph) and max_new > 1
        self.cache = static_cache(model.config, self.total)
        self.window = sliding_window(model.config)
        self.slots = torch.arange(self.total, device=self.dev)
        self.tok = torch.zeros(rows, 1, dtype=torch.long, device=self.dev)
        self.pos = torch.zeros(rows, 1, dtype=torch.long, device=self.dev)
        self.slot = torch.zeros(1, dtype=torch.long, device=self.dev)
        self.mask = torch.zeros(rows, 1, 1, self.total, dtype=torch.bool, device=self.dev)
        self.out = torch.zeros(rows, max_new, dtype=torch.long, device=self.dev)
        self._graph = None
        self._next = None
        self._prepared = False

    def _masks(self, mask, query_slots):
        """The attention mask(s) for queries at `query_slots` given the full-attention `mask` (rows x 1 x queries x
        slots): a sliding-window layer also drops every slot at least `sliding_window` before its query."""
        if self.window is None:
            return mask
        near = self.slots[None, :] > query_slots[:, None] - self.window  # queries x slots
        return {"full_attention": mask, "sliding_attention": mask & near}

    def _step(self):
        logits = self.model(input_ids=self.tok, position_ids=self.pos, cache_position=self.slot,
                            attention_mask=self._masks(self.mask, self.slot), cache=self.cache, use_cache=True,
                            logits_to_keep=1).logits
        return logits[:, -1].argmax(-1, keepdim=True)

    def _warm_up(self) -> None:
        """Steps outside the graph before capturing it (allocations, cuBLAS handles). They write the cache and
        advance its own position counters (transformers' StaticLayer places keys by `cumulative_length`, not by
        our `cache_position`), so they run before the prefill, whose `cache.reset()` zeroes both."""
        for _ in range(2):
            self._step()

    def prepare(self) -> None:
        """Capture the decode step as a CUDA graph, once (on CUDA; elsewhere nothing): first, on whatever state,
        since the prefill resets the cache (one prefill)."""
        import torch

        if not self.graph or self._prepared:
            return
        self._prepared = True
        with torch.inference_mode():  # the cache's tensors are made lazily, as inference tensors
            try:
                self._capture()
            except RuntimeError as ex:
                err = capture_error(ex)
                if err is None:
                    raise
                raise err from None

    def _capture(self) -> None:
        import torch

        self.mask[..., 0] = True  # no fully masked row while warming up (the prefill sets the real mask)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            self._warm_up()
        torch.cuda.current_stream().wait_stream(s)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._next = self._step()

    def __call__(self, input_ids, attention_mask, steps: int, n_real: int | None = None):
        """The generated token ids (rows x steps, on the device) of a batch left-padded to `padded` tokens (the
        first `n_real` rows real, the others copies: only prefilled when they share a slice with a real row)."""
        import torch

        with torch.inference_mode():  # the cache's tensors are made lazily, as inference tensors
            self.prepare()  # once: GraphDecoders prepares (and times) it before the first batch
            causal = causal_prefill(self.model.config)
            if self.slice_rows or causal:  # causal: a whole batch as one slice
                first = self._prefill_slices(input_ids, attention_mask, n_real or self.rows, causal)
            else:
                self._prefill(input_ids, attention_mask)
                first = 1
            for t in range(first, steps):
                if self._graph is not None:
                    self._graph.replay()
                    nxt = self._next
                else:
                    nxt = self._step()
                self.out[:, t:t + 1].copy_(nxt)
                self.tok.copy_(nxt)
                self.pos += 1
                self.slot += 1
                self.mask[:, 0, 0, self.padded + t] = True
            return self.out[:, :steps].clone()

    def _prefill_slices(self, input_ids, attention_mask, n_real: int, causal: bool) -> int:
        """Every prompt token but the last into the cache, slice by slice (`causal`: right-padded, unmasked); the
        decode loop's first step then computes the last prompt token for the whole batch. Returns the loop's first
        step (0)."""
        from ragqa_exp.backends.prefill import fill_static_cache, positions

        slice_rows = self.slice_rows or self.rows
        prefix = fill_static_cache(self.model, self.cache, input_ids, attention_mask, slice_rows, n_real, causal)
        self.tok.copy_(input_ids[:, prefix:])
        self.pos.copy_(positions(attention_mask)[:, prefix:])
        self.slot.fill_(prefix)
        self.mask.zero_()
        self.mask[:, 0, 0, :self.padded] = attention_mask.bool()
        return 0

    def _prefill(self, input_ids, attention_mask) -> None:
        import torch

        from ragqa_exp.backends.prefill import positions as prompt_positions

        self.cache.reset()
        padded, dev = self.padded, self.dev
        keep = attention_mask.bool()
        causal = torch.ones(padded, padded, dtype=torch.bool, device=dev).tril()
        prefill_mask = torch.zeros(self.rows, 1, padded, self.total, dtype=torch.bool, device=dev)
        prefill_mask[..., :padded] = causal & keep[:, None, None, :]
        positions = prompt_positions(attention_mask)
        slots = torch.arange(padded, device=dev)
        logits = self.model(input_ids=input_ids, position_ids=positions, attention_mask=self._masks(prefill_mask, slots),
                            cache_position=slots, cache=self.cache,
                            use_cache=True, logits_to_keep=1).logits
        self.tok.copy_(logits[:, -1].argmax(-1, keepdim=True))
        self.out[:, 0:1].copy_(self.tok)
        self.pos.copy_(positions[:, -1:] + 1)
        self.slot.fill_(padded)
        self.mask.zero_()
        self.mask[:, 0, 0, :padded] = keep
        self.mask[:, 0, 0, padded] = True


# A benchmark switch (eval_speed.py's `:gc`): release a decoder as before 2026-12-07, with a garbage-collector pass
# (runtime.release_memory), ~0.2 s a pass with a model loaded, once per batch shape (benchmarks/H200_PROFILE.md)
COLLECT_ON_RELEASE = False


class GraphDecoders:
    """The decoder of the current batch shape: one at a time (a 7B model's StaticCache for a 65k-token batch is
    34 GB), made anew when the shape changes; the canonical plan runs a bucket's batches one after another."""

    def __init__(self, model, graph: bool | None = None) -> None:
        check_model(model)
        self.model, self.graph = model, graph
        self.current: GraphDecoder | None = None
        self.made = 0  # decoders (graph captures on CUDA) made: one per bucket under the canonical plan
        self.setup_seconds = 0.0  # wall time spent releasing, making and capturing decoders (benchmarks read it)
        self.release_seconds = 0.0  # the part of it spent dropping the last decoder (and emptying CUDA's cache)

    def __call__(self, input_ids, attention_mask, max_new: int, steps: int, slice_rows: int | None = None,
                 n_real: int | None = None):
        import time

        shape = (input_ids.shape[0], input_ids.shape[1], max_new, slice_rows)
        if self.current is None or self.current.shape != shape:
            sync(input_ids.device)
            t = time.perf_counter()
            self.release()
            sync(input_ids.device)
            self.release_seconds += time.perf_counter() - t
            self.current = GraphDecoder(self.model, *shape[:3], graph=self.graph, slice_rows=slice_rows)
            self.current.prepare()
            self.made += 1
            sync(input_ids.device)
            self.setup_seconds += time.perf_counter() - t
        return self.current(input_ids, attention_mask, steps, n_real)

    def release(self) -> None:
        """Drop the current decoder: its cache and graph go by reference count (nothing in it refers back to it),
        without a garbage-collector pass; CUDA's cached blocks go back to the driver, so the next shape's cache
        has the memory whole."""
        from ragqa_exp.runtime import release_memory

        if self.current is not None:
            self.current = None
            release_memory(collect=COLLECT_ON_RELEASE)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
