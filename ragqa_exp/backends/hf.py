"""eval.backend=hf: greedy generation with transformers, built for prefill efficiency.

- stop on newline *token ids* (every token whose text contains "\\n", plus EOS) instead of per-step
  stop-string checks; the answer is then cut at its first newline as before (same greedy output);
- prompts tokenized once, sorted longest first, and packed into batches by a token budget
  (`eval.max_batch_tokens`: padded prompt + new tokens per batch; `eval.batch_size` bounds the prompt count;
  auto on a CPU: batches of 8, as the first wave);
- transformers' `generate` computes last-position logits only in prefill;
- a CUDA out-of-memory halves the budget and retries the batch, down to one prompt, before failing.
"""
from __future__ import annotations

import logging
import time
from typing import Iterator, Optional

from ragqa_exp import faults
from ragqa_exp.backends import Generation, GenerationBackend, LoadInfo, register_backend

log = logging.getLogger(__name__)

CPU_AUTO_BATCH_PROMPTS = 8  # on a CPU: the first-wave batch (a token budget of ~8 prompts made more batches, slower)
GPU_MEMORY_FRACTION = 0.5  # of the memory free after loading, spent on the KV cache of one batch


def newline_token_ids(tok) -> list[int]:
    """Ids of every token whose decoded text contains a newline (what a "\\n" stop string would stop on)."""
    texts = tok.batch_decode([[i] for i in range(len(tok))])
    return [i for i, t in enumerate(texts) if "\n" in t]


def stop_token_ids(model, tok) -> list[int]:
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tok.eos_token_id is not None:
        eos.append(tok.eos_token_id)
    return sorted(set(eos) | set(newline_token_ids(tok)))


def kv_bytes_per_token(config, elem_bytes: int) -> int:
    c = getattr(config, "text_config", None) or config
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * heads * head_dim * elem_bytes


def auto_batch_limits(model, batch_size: int) -> tuple[int, int]:
    """(prompts, tokens) per batch when `eval.max_batch_tokens` is null. On a GPU: `eval.batch_size` prompts,
    and the tokens whose KV cache fills half the memory free after loading (plus the same again for
    activations). On a CPU: 8 prompts (measured: benchmarks/CPU_EVAL.md), no token limit."""
    import torch

    dev = next(model.parameters()).device
    if dev.type != "cuda":
        return min(batch_size, CPU_AUTO_BATCH_PROMPTS), 2**62
    free, _ = torch.cuda.mem_get_info(dev)
    per_token = 2 * kv_bytes_per_token(model.config, torch.finfo(model.dtype).bits // 8)
    return batch_size, max(1024, int(free * GPU_MEMORY_FRACTION / per_token))


def token_budget_batch(order: list[int], lengths: list[int], max_new: int, max_items: int, max_tokens: int) -> list[int]:
    """The next batch from the front of `order` (longest first): as many prompts as fit
    `count x (longest prompt + max_new) <= max_tokens`, at most `max_items`, at least one."""
    batch: list[int] = []
    longest = 0
    for i in order:
        longest_if = max(longest, lengths[i] + max_new)
        if batch and (len(batch) >= max_items or (len(batch) + 1) * longest_if > max_tokens):
            break
        batch.append(i)
        longest = longest_if
    return batch


def is_oom(ex: BaseException) -> bool:
    import torch

    return isinstance(ex, torch.cuda.OutOfMemoryError) or "out of memory" in str(ex).lower()


@register_backend("hf")
class HFBackend(GenerationBackend):
    def __init__(self, model, tok, batch_size: int, max_batch_tokens: Optional[int], info: LoadInfo,
                 kv_cache: str = "dynamic") -> None:
        self.model, self.tok, self.info = model, tok, info
        self.kv_cache = kv_cache
        if max_batch_tokens:
            self.batch_size, self.max_batch_tokens = batch_size, max_batch_tokens
        else:
            self.batch_size, self.max_batch_tokens = auto_batch_limits(model, batch_size)
        self.stop_ids = stop_token_ids(model, tok)
        self.oom_retries = 0

    @classmethod
    def load(cls, cfg, model_dir: Optional[str]) -> "HFBackend":
        from ragqa_exp.quantize import method_module

        lm = method_module(cfg.quant.method).load(cfg.quant, model_dir, cfg.model)
        info = LoadInfo(kernel=lm.kernel, bits=lm.bits, group_size=lm.group_size,
                        kernel_fallback_reason=lm.kernel_fallback_reason, extra=dict(lm.extra))
        return cls(lm.model, lm.tokenizer, cfg.eval.batch_size, cfg.eval.max_batch_tokens, info, cfg.eval.kv_cache)

    def _generate_batch(self, ids: list[list[int]], max_new_tokens: int) -> tuple[list[str], list[int]]:
        import torch

        faults.before_generate(len(ids))  # RAGQA_FAULT_EVAL_OOM (tests/test_faults.py)
        dev = next(self.model.parameters()).device
        enc = self.tok.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(dev)
        cache = {"cache_implementation": "static", "disable_compile": True} if self.kv_cache == "static" else {}
        with torch.inference_mode():
            out = self.model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                eos_token_id=self.stop_ids, pad_token_id=self.tok.pad_token_id,
                temperature=None, top_p=None, top_k=None, **cache,
            )
        new = out[:, enc["input_ids"].shape[1]:]
        texts = self.tok.batch_decode(new, skip_special_tokens=True)
        pad = self.tok.pad_token_id
        lengths = [int((row != pad).sum()) for row in new] if pad is not None else [new.shape[1]] * len(texts)
        return texts, lengths

    def generate(self, prompts: list[str], max_new_tokens: int, stop: str = "\n") -> Iterator[tuple[int, Generation]]:
        import torch
        from tqdm.auto import tqdm

        from ragqa_exp.errors import ResourceError

        if stop != "\n":
            raise ValueError("the hf backend stops at newlines only (the task's answers are one line)")
        self.tok.padding_side = "left"
        ids = self.tok(prompts, add_special_tokens=True)["input_ids"]
        lengths = [len(x) for x in ids]
        remaining = sorted(range(len(prompts)), key=lambda i: -lengths[i])
        cuda = torch.cuda.is_available()
        with tqdm(total=len(prompts), desc="eval", unit="q") as bar:
            while remaining:
                batch = token_budget_batch(remaining, lengths, max_new_tokens, self.batch_size, self.max_batch_tokens)
                try:
                    if cuda:
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    texts, new_lengths = self._generate_batch([ids[i] for i in batch], max_new_tokens)
                    if cuda:
                        torch.cuda.synchronize()
                    dt = time.perf_counter() - t0
                except Exception as ex:  # noqa: BLE001  only OOM is handled; everything else propagates
                    if not is_oom(ex):
                        raise
                    if len(batch) == 1:
                        raise ResourceError(
                            f"out of GPU memory evaluating one prompt of {lengths[batch[0]]} tokens: lower "
                            "eval.max_new_tokens, use a 4-bit quant, or free the GPU"
                        ) from None
                    self.oom_retries += 1
                    self.batch_size = max(1, len(batch) // 2)
                    self.max_batch_tokens = max(1, self.max_batch_tokens // 2)
                    log.warning("eval: out of memory at a batch of %d prompts; retrying with at most %d",
                                len(batch), self.batch_size)
                    del ex
                    if cuda:
                        torch.cuda.empty_cache()
                    continue
                taken = set(batch)
                remaining = [i for i in remaining if i not in taken]
                for i, text, n_new in zip(batch, texts, new_lengths):
                    yield i, Generation(text=text, seconds=dt / len(batch), prompt_tokens=lengths[i],
                                        completion_tokens=n_new)
                bar.update(len(batch))
