"""Decode without the DynamicCache copies and host syncs (issue 19's decode lever), measured before it goes
into the hf backend: one canonical batch (rows x padded length, as `profile_eval.py` takes it), greedy,
--max-new-tokens steps, three ways side by side, each a median of --reps after a warm-up:

- `generate`: the hf backend as it is (transformers' generate, DynamicCache: the whole cache is concatenated
  every step, the stop check syncs with the host every step);
- `static`: a loop of our own over a preallocated StaticCache, the 4D mask and positions kept on the device,
  argmax on the device, no host sync until the batch is done;
- `static+graph` (CUDA only): the same decode step captured once in a CUDA graph and replayed (the canonical
  plan's fixed shapes are what make one graph per bucket possible).
Each variant's generated token ids are compared with `generate`'s (row by row, up to the first stop token).
Full-attention decoders only (Llama shapes); sliding-window models (Gemma 3) are refused.

  python benchmarks/static_decode.py --model-dir DIR --overrides model=llama2_7b_shapes --out OUT.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_setup import load, timed  # noqa: E402


class StaticGreedy:
    """Greedy decoding of one fixed-shape batch over a StaticCache; `graph=True` replays the decode step as a
    CUDA graph."""

    def __init__(self, model, rows: int, padded: int, max_new: int, graph: bool) -> None:
        import torch
        from transformers import StaticCache

        c = getattr(model.config, "text_config", None) or model.config
        if any(t != "full_attention" for t in (getattr(c, "layer_types", None) or ["full_attention"])):
            raise SystemExit("static_decode.py: full-attention decoders only (this model has sliding-window layers)")
        self.model, self.rows, self.padded, self.max_new, self.graph = model, rows, padded, max_new, graph
        self.total = padded + max_new
        self.dev = next(model.parameters()).device
        self.cache = StaticCache(config=model.config, max_cache_len=self.total)
        self.tok = torch.zeros(rows, 1, dtype=torch.long, device=self.dev)
        self.pos = torch.zeros(rows, 1, dtype=torch.long, device=self.dev)
        self.slot = torch.zeros(1, dtype=torch.long, device=self.dev)
        self.mask = torch.zeros(rows, 1, 1, self.total, dtype=torch.bool, device=self.dev)
        self.out = torch.zeros(rows, max_new, dtype=torch.long, device=self.dev)
        self._graph = None

    def _step(self):
        import torch

        with torch.inference_mode():
            logits = self.model(input_ids=self.tok, position_ids=self.pos, cache_position=self.slot,
                                attention_mask=self.mask, past_key_values=self.cache, use_cache=True,
                                logits_to_keep=1).logits
        return logits[:, -1].argmax(-1, keepdim=True)

    def _capture(self) -> None:
        import torch

        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):  # warm-up outside the graph (allocations, cuBLAS handles)
                self._step()
        torch.cuda.current_stream().wait_stream(s)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._next = self._step()

    def __call__(self, input_ids, attention_mask):
        import torch

        with torch.inference_mode():  # the cache's tensors are made lazily, as inference tensors
            return self._run(input_ids, attention_mask)

    def _run(self, input_ids, attention_mask):
        import torch

        self.cache.reset()
        padded, total = self.padded, self.total
        keep = attention_mask.bool()
        causal = torch.ones(padded, padded, dtype=torch.bool, device=self.dev).tril()
        prefill_mask = torch.zeros(self.rows, 1, padded, total, dtype=torch.bool, device=self.dev)
        prefill_mask[..., :padded] = causal & keep[:, None, None, :]
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids, position_ids=positions, attention_mask=prefill_mask,
                                cache_position=torch.arange(padded, device=self.dev), past_key_values=self.cache,
                                use_cache=True, logits_to_keep=1).logits
        self.tok.copy_(logits[:, -1].argmax(-1, keepdim=True))
        self.out[:, 0:1].copy_(self.tok)
        self.pos.copy_(positions[:, -1:] + 1)
        self.slot.fill_(padded)
        self.mask.zero_()
        self.mask[:, 0, 0, :padded] = keep
        self.mask[:, 0, 0, padded] = True
        if self.graph and self._graph is None and self.max_new > 1:
            self._capture()  # captured on the first batch (its warm-up steps write the cache: reset below)
            return self._run(input_ids, attention_mask)
        for t in range(1, self.max_new):
            if self._graph is not None:
                self._graph.replay()
                nxt = self._next
            else:
                nxt = self._step()
            self.out[:, t:t + 1].copy_(nxt)
            self.tok.copy_(nxt)
            self.pos += 1
            self.slot += 1
            self.mask[:, 0, 0, padded + t] = True
        return self.out.clone()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quant", default="none")
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import torch

    from ragqa_exp.backends.hf import generated_ids

    run = load(a.quant, a.model_dir, a.overrides)
    backend, model, ids = run.backend, run.model, run.ids
    mnt = a.max_new_tokens
    batch, _, padded = run.plan(mnt).batches([len(x) for x in ids])[0]
    enc = run.padded(batch, padded)
    stops = set(backend.stop_ids)
    res: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                 "torch": torch.__version__, "dtype": str(model.dtype), "rows": len(batch), "padded_length": padded,
                 "max_new_tokens": mnt, "variants": {}}

    def run_generate():
        _, _, token_ids = backend._generate_batch([ids[i] for i in batch], padded, mnt, mnt)
        return token_ids

    def static(graph: bool):
        runner = StaticGreedy(model, len(batch), padded, mnt, graph)
        return lambda: [generated_ids(row, stops) for row in runner(enc["input_ids"], enc["attention_mask"])]

    # Each variant is made when its turn comes and dropped after it: a StaticCache holds the whole batch's KV cache
    # (34 GB at 7B shapes, 77 x 848 tokens), and two of them beside the model did not fit an 80 GB H100.
    variants = {"generate": lambda: run_generate, "static": lambda: static(False)}
    if torch.cuda.is_available():
        variants["static+graph"] = lambda: static(True)
    ref = None
    for name, make in variants.items():
        fn = make()
        med, walls, got = timed(fn, a.reps)  # its warm-up call captures the graph
        del fn
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if ref is None:
            ref = got
        same = sum(x == y for x, y in zip(got, ref))
        res["variants"][name] = {"median_ms": round(med * 1000, 2),
                                 "runs_ms": [round(w * 1000, 2) for w in walls], "rows_equal_to_generate": same}
        print(f"{name}: {res['variants'][name]['median_ms']} ms (median of {a.reps}); rows equal to generate "
              f"{same}/{len(ref)}", flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
