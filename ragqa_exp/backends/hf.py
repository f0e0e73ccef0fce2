"""eval.backend=hf: greedy generation with transformers, in batches whose shapes do not depend on the other
questions (`eval.batch_plan=canonical`, the default) or packed for speed (`packed`).

- stop on newline *token ids* (every token whose text contains "\\n", plus EOS) instead of per-step
  stop-string checks; the answer is then cut at its first newline as before (same greedy output);
- an explicit greedy GenerationConfig built here (nothing inherited from the checkpoint's
  generation_config.json), recorded in metrics.json (`generation_config`);
- `canonical`: each prompt is left-padded to its length bucket (`eval.length_bucket`; at least one pad token,
  so every batch carries an explicit attention mask and runs the same attention path), each bucket is cut
  into batches of a fixed number of rows (from the constant token budget `eval.max_batch_tokens`, at most
  `eval.batch_size`), and a bucket's last batch is filled with copies that are thrown away. The prompts are
  prefilled a fixed number of rows at a time (`eval.max_prefill_tokens`; on a GPU), only the slices that hold
  real rows, so the copies cost decode steps but almost no prefill (backends/prefill.py). A question's
  tensors then have the same shapes whatever else is evaluated and in what order; the plan's constants go
  to metrics.json (`eval_plan`). Out of memory stops the job with one line (the plan is never changed);
- `packed`: prompts sorted longest first and packed by a token budget (null: half the GPU memory free after
  loading as KV cache; on a CPU 8 prompts); a CUDA out-of-memory halves the budget and retries, recorded in
  metrics.json (`eval_oom_retries`, `eval_batch_limits_changed`). Answers can then depend on batch-mates in
  bf16 (issue 17); kept as an option and as the batch-invariance tests' negative control;
- transformers' `generate` computes last-position logits only in prefill; one untimed warm-up batch.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Iterator, Optional

from ragqa_exp import faults
from ragqa_exp.backends import Generation, GenerationBackend, LoadInfo, elementwise, register_backend

log = logging.getLogger(__name__)

BATCH_PLANS = ("canonical", "packed")
ATTN_IMPLEMENTATION = "sdpa"  # pinned for every plan: transformers 5's default (CPU and GPU); with the canonical
# plan's pad token it always runs with an explicit mask (eager vs sdpa speed: not measured yet)
CANONICAL_GPU_BATCH_TOKENS = 65536  # eval.max_batch_tokens=null, canonical, on a GPU (H200 at 7B: ~the old auto)
CANONICAL_GPU_PREFILL_TOKENS = 16384  # eval.max_prefill_tokens=null, canonical, on a GPU: a bucket's last batch
# prefills its real rows in slices of this many tokens, not the copies that fill it (benchmarks/H200_PROFILE.md)
CANONICAL_CPU_PREFILL_TOKENS = 512  # the same on a CPU: about one prompt of the default data a slice (a bucket of
# 640 tokens: one row), so an eval of a few questions does not prefill the 8-row batch's copies (CPU_EVAL.md)
CPU_MAX_ROWS = 8  # on a CPU, prompts per batch at most (the first-wave batch; benchmarks/CPU_EVAL.md)
GPU_MEMORY_FRACTION = 0.5  # packed, auto budget: of the memory free after loading, spent on one batch's KV cache
WARMUP_NEW_TOKENS = 2  # the warm-up batch's decode steps (prefill + a step compile/allocate what timing would see)


def newline_token_ids(tok) -> list[int]:
    """Ids of every token whose decoded text contains a newline (what a "\\n" stop string would stop on). A fast
    tokenizer decodes them in one call of its Rust backend (0.4 s for Gemma 3's 262k tokens, against 1.8 s
    through `batch_decode`'s per-item Python)."""
    singles = [[i] for i in range(len(tok))]
    backend = getattr(tok, "backend_tokenizer", None)
    texts = backend.decode_batch(singles, skip_special_tokens=False) if backend is not None else tok.batch_decode(singles)
    return [i for i, t in enumerate(texts) if "\n" in t]


def stop_token_ids(model, tok) -> list[int]:
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tok.eos_token_id is not None:
        eos.append(tok.eos_token_id)
    return sorted(set(eos) | set(newline_token_ids(tok)))


def greedy_settings(stop_ids: list[int], pad_id: Optional[int], max_new_tokens: int, kv_cache: str) -> dict:
    """Every generation setting this backend runs with, explicit: greedy, nothing left for a checkpoint's
    generation_config.json to fill in (repetition_penalty, no_repeat_ngram_size, min_new_tokens, ...)."""
    settings = dict(
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, min_new_tokens=0,
        repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0, length_penalty=1.0,
        bad_words_ids=None, suppress_tokens=None, begin_suppress_tokens=None, forced_bos_token_id=None,
        forced_eos_token_id=None, sequence_bias=None, renormalize_logits=False, remove_invalid_values=False,
        num_return_sequences=1, use_cache=True, eos_token_id=list(stop_ids), pad_token_id=pad_id,
    )
    if kv_cache == "static":
        settings.update(cache_implementation="static", disable_compile=True)
    return settings


def generation_config(settings: dict):
    from transformers import GenerationConfig

    return GenerationConfig(**settings)


def settings_record(settings: dict) -> dict:
    """`generation_config` in metrics.json: the settings, with the stop ids as their count and a hash."""
    out = {k: v for k, v in settings.items() if k != "eos_token_id"}
    ids = settings["eos_token_id"]
    out["eos_token_ids"] = {"count": len(ids), "sha256": hashlib.sha256(repr(ids).encode()).hexdigest()[:16]}
    out["inherited_from_checkpoint"] = False
    return out


def kv_bytes_per_token(config, elem_bytes: int) -> int:
    from ragqa_exp.backends.graph_decode import text_config

    c = text_config(config)
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * heads * head_dim * elem_bytes


def model_device(model) -> str:
    return next(model.parameters()).device.type


def resolve_kv_cache(kv_cache: str, batch_plan: str, device: str, model_config, capturable: bool = True) -> str:
    """`eval.kv_cache=auto`: the graph decode (backends/graph_decode.py) where it runs: the canonical plan on a GPU, a
    model whose attention layers it masks (full attention, as Llama's; sliding windows too, as Gemma 3's), and a
    decode step a CUDA graph can capture (`capturable`: not LLM.int8 with outlier columns, `graph_capturable`).
    Transformers' dynamic cache otherwise. On an H100 at 7B shapes the graph decode took 1.01x packing's time
    against 1.08x on the dynamic cache (benchmarks/H200_BATCH_PLAN.md); the embedded Gemma 3's 360 questions 3.23 s
    against 5.78 s, and the GPU batch-invariance tests pass on it for every method they hold to it (H100,
    benchmarks/H200_PROFILE.md). Decided by the device, the plan, the base model's architecture and the quant
    method's load options: the same for every row of a sweep on one kind of machine."""
    if kv_cache != "auto":
        return kv_cache
    from ragqa_exp.backends.graph_decode import decodable

    graph = batch_plan == "canonical" and device == "cuda" and decodable(model_config) and capturable
    return "graph" if graph else "dynamic"


def graph_capturable(info: LoadInfo) -> bool:
    """Whether a loaded model's decode step can be captured as a CUDA graph: not LLM.int8 at a threshold above 0,
    whose outlier columns are found anew from every forward's activations (on an H100 its capture failed:
    `operation failed due to a previous error during capture`). quant.int8_threshold=0 captures."""
    return not (info.extra or {}).get("int8_threshold")


def auto_batch_limits(model, batch_size: int) -> tuple[int, int]:
    """`packed`, `eval.max_batch_tokens=null`: (prompts, tokens) per batch. On a GPU: `eval.batch_size` prompts,
    and the tokens whose KV cache fills half the memory free after loading (plus the same again for
    activations). On a CPU: 8 prompts (measured: benchmarks/CPU_EVAL.md), no token limit."""
    import torch

    dev = next(model.parameters()).device
    if dev.type != "cuda":
        return min(batch_size, CPU_MAX_ROWS), 2**62
    free, _ = torch.cuda.mem_get_info(dev)
    per_token = 2 * kv_bytes_per_token(model.config, torch.finfo(model.dtype).bits // 8)
    return batch_size, max(1024, int(free * GPU_MEMORY_FRACTION / per_token))


def token_budget_batch(order: list[int], lengths: list[int], max_new: int, max_items: int, max_tokens: int) -> list[int]:
    """`packed`: the next batch from the front of `order` (longest first): as many prompts as fit
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


@dataclass(frozen=True)
class CanonicalPlan:
    """`eval.batch_plan=canonical`: batch shapes from the config's constants and each prompt's own length."""

    length_bucket: int
    max_batch_tokens: Optional[int]  # padded prompt + new tokens, per batch; None: no token limit (CPU)
    max_rows: int
    max_new_tokens: int
    max_prefill_tokens: Optional[int] = None  # padded prompt tokens per prefill forward; None: the whole batch at once

    def padded_length(self, prompt_tokens: int) -> int:
        """The prompt's bucket: the next multiple of `length_bucket` with room for at least one pad token."""
        return math.ceil((prompt_tokens + 1) / self.length_bucket) * self.length_bucket

    def _budget_rows(self, padded_length: int) -> int:
        if self.max_batch_tokens is None:
            return self.max_rows
        return max(1, min(self.max_rows, self.max_batch_tokens // (padded_length + self.max_new_tokens)))

    def _slices(self, padded_length: int) -> int:
        """Prefill forwards of a full batch: as few as keep each within `max_prefill_tokens`."""
        rows = self._budget_rows(padded_length)
        if self.max_prefill_tokens is None:
            return 1
        return math.ceil(rows / max(1, self.max_prefill_tokens // padded_length))

    def slice_rows(self, padded_length: int) -> int:
        """Rows of every prefill forward of a bucket (backends/prefill.py); the batch's rows when not sliced."""
        return self._budget_rows(padded_length) // self._slices(padded_length)

    def rows(self, padded_length: int) -> int:
        """Rows of every batch of a bucket: what the token budget allows, cut to a whole number of equal prefill
        slices (fewer than one row a slice lost)."""
        return self.slice_rows(padded_length) * self._slices(padded_length)

    def batches(self, lengths: list[int]) -> list[tuple[list[int], int, int]]:
        """(rows: indices into lengths, the last ones copies to fill; real rows; padded length) per batch,
        longest bucket first (an out-of-memory shows at the first batch); questions in their given order."""
        buckets: dict[int, list[int]] = {}
        for i, n in enumerate(lengths):
            buckets.setdefault(self.padded_length(n), []).append(i)
        out = []
        for padded in sorted(buckets, reverse=True):
            members, rows = buckets[padded], self.rows(padded)
            for start in range(0, len(members), rows):
                real = members[start:start + rows]
                out.append((real + [real[-1]] * (rows - len(real)), len(real), padded))
        return out


def canonical_plan(model, batch_size: int, max_batch_tokens: Optional[int], length_bucket: int,
                   max_new_tokens: int, max_prefill_tokens: Optional[int] = None,
                   kv_cache: str = "dynamic") -> CanonicalPlan:
    """The plan's constants: `eval.max_batch_tokens` (null: 65536 on a GPU, no token limit on a CPU), rows at
    most `eval.batch_size` (and 8 on a CPU), `eval.max_prefill_tokens` (null: 16384 on a GPU, 512 on a CPU;
    kv_cache=static: the whole batch). Never read from free memory."""
    cpu = model_device(model) != "cuda"
    tokens = max_batch_tokens or (None if cpu else CANONICAL_GPU_BATCH_TOKENS)
    default_prefill = CANONICAL_CPU_PREFILL_TOKENS if cpu else CANONICAL_GPU_PREFILL_TOKENS
    prefill = None if kv_cache == "static" else max_prefill_tokens or default_prefill
    return CanonicalPlan(length_bucket=length_bucket, max_batch_tokens=tokens,
                         max_rows=min(batch_size, CPU_MAX_ROWS) if cpu else batch_size, max_new_tokens=max_new_tokens,
                         max_prefill_tokens=prefill)


def pin_attention(model, implementation: str = ATTN_IMPLEMENTATION) -> str:
    """Run `model` with `implementation` whatever it was loaded with; returns the one it now runs."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != implementation and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(implementation)
    return getattr(config, "_attn_implementation", None) or "unknown"


def is_oom(ex: BaseException) -> bool:
    import torch

    return isinstance(ex, torch.cuda.OutOfMemoryError) or "out of memory" in str(ex).lower()


def generated_ids(row, stop_ids: set[int]) -> list[int]:
    """A row's new tokens up to and including its first stop token (what follows is padding)."""
    out = []
    for t in row.tolist():
        out.append(t)
        if t in stop_ids:
            break
    return out


NONDETERMINISTIC_MARK = "does not have a deterministic implementation"


def raise_if_nondeterministic(ex: BaseException) -> None:
    """eval.deterministic on a GPU: an op without a deterministic CUDA implementation raises (torch names it);
    that becomes one line naming the setting."""
    from ragqa_exp.errors import ConfigError

    msg = str(ex)
    if NONDETERMINISTIC_MARK in msg:
        op = msg.split(NONDETERMINISTIC_MARK)[0].strip()
        raise ConfigError(
            f"eval.deterministic=true: {op} has no deterministic CUDA implementation in this torch; set "
            "eval.deterministic=false to evaluate anyway (answers can then move run to run; the report's noise "
            "floor shows by how much)"
        ) from None


@register_backend("hf")
class HFBackend(GenerationBackend):
    latency_kind = "batch_share"  # a batch's time divided by its questions (throughput, not a request's wait)
    batches_prompts = True

    def __init__(self, model, tok, batch_size: int, max_batch_tokens: Optional[int], info: LoadInfo,
                 kv_cache: str = "auto", batch_plan: str = "canonical", length_bucket: int = 64,
                 max_prefill_tokens: Optional[int] = None) -> None:
        if batch_plan not in BATCH_PLANS:
            raise ValueError(f"batch_plan {batch_plan!r}: choose one of {BATCH_PLANS}")
        self.model, self.tok, self.info = model, tok, info
        self.tokenizer = tok
        self.requested_kv_cache = kv_cache
        kv_cache = resolve_kv_cache(kv_cache, batch_plan, model_device(model), model.config, graph_capturable(info))
        self.kv_cache, self.batch_plan, self.length_bucket = kv_cache, batch_plan, length_bucket
        self.max_prefill_tokens = max_prefill_tokens
        self.requested_batch_size, self.requested_max_batch_tokens = batch_size, max_batch_tokens
        if max_batch_tokens:
            self.batch_size, self.max_batch_tokens = batch_size, max_batch_tokens
        elif batch_plan == "packed":
            self.batch_size, self.max_batch_tokens = auto_batch_limits(model, batch_size)
        else:
            self.batch_size, self.max_batch_tokens = batch_size, None
        self.attn_implementation = pin_attention(model)
        self.stop_ids = stop_token_ids(model, tok)
        self.oom_retries = 0
        self.batch_limits_changed = False
        self.plan: Optional[CanonicalPlan] = None
        self.settings: Optional[dict] = None
        self.kernels: dict = {}  # what runtime.batch_invariant_kernels, deterministic_algorithms, elementwise.use set
        self.decoders = None  # kv_cache=graph: our own static-cache loop, a CUDA graph per batch shape
        if kv_cache == "graph":
            from ragqa_exp.backends.graph_decode import check_model

            check_model(model)  # a model it cannot decode: one line at load, before any batch

    @classmethod
    def load(cls, cfg, model_dir: Optional[str]) -> "HFBackend":
        from ragqa_exp.quantize import method_module
        from ragqa_exp.runtime import batch_invariant_kernels, deterministic_algorithms

        kernels = batch_invariant_kernels() if cfg.eval.invariant_kernels else {"invariant_kernels": False}
        kernels.update(deterministic_algorithms() if cfg.eval.deterministic else {"deterministic_algorithms": False})
        lm = method_module(cfg.quant.method).load(cfg.quant, model_dir, cfg.model)
        kernels["elementwise"] = elementwise.use(lm.model, cfg.eval.elementwise)  # compiled at load, if asked
        info = LoadInfo(kernel=lm.kernel, bits=lm.bits, group_size=lm.group_size,
                        kernel_fallback_reason=lm.kernel_fallback_reason, extra=dict(lm.extra))
        e = cfg.eval
        backend = cls(lm.model, lm.tokenizer, e.batch_size, e.max_batch_tokens, info, e.kv_cache, e.batch_plan,
                      e.length_bucket, e.max_prefill_tokens)
        backend.kernels = kernels
        return backend

    # ------------------------------------------------------------------------------------------ one batch
    def _generate_batch(self, ids: list[list[int]], pad_to: Optional[int], max_new_tokens: int, steps: int,
                        slice_rows: Optional[int] = None,
                        n_real: Optional[int] = None) -> tuple[list[str], list[int], list[list[int]]]:
        """Greedy continuations of `ids`, left-padded to `pad_to` tokens (None: to the longest), for `steps`
        new tokens at most (the warm-up runs fewer than max_new_tokens); prefilled `slice_rows` rows at a time (None:
        the whole batch at once), only the slices up to the `n_real` real rows (backends/prefill.py)."""
        import torch

        faults.before_generate(len(ids))  # RAGQA_FAULT_EVAL_OOM (tests/test_faults.py)
        dev = next(self.model.parameters()).device
        padding = {"padding": "max_length", "max_length": pad_to} if pad_to else {"padding": True}
        enc = self.tok.pad({"input_ids": ids}, return_tensors="pt", **padding).to(dev)
        settings = greedy_settings(self.stop_ids, self.tok.pad_token_id, max_new_tokens, self.kv_cache)
        gen_cfg = generation_config({**settings, "max_new_tokens": steps})
        self.settings = settings
        if self.kv_cache == "graph":
            from ragqa_exp.backends.graph_decode import GraphDecoders

            self.decoders = self.decoders or GraphDecoders(self.model)
            new = self.decoders(enc["input_ids"], enc["attention_mask"], max_new_tokens, steps, slice_rows, n_real)
        else:
            self.model.generation_config = gen_cfg  # generate fills unset values from the model's: none left
            with torch.inference_mode():
                if slice_rows:
                    from ragqa_exp.backends.prefill import batch_cache

                    cache = batch_cache(self.model, enc["input_ids"], enc["attention_mask"], slice_rows, n_real)
                    out = self.model.generate(**enc, cache=cache, generation_config=gen_cfg)
                    del cache
                else:
                    out = self.model.generate(**enc, generation_config=gen_cfg)
            new = out[:, enc["input_ids"].shape[1]:]
        stops = set(self.stop_ids)
        token_ids = [generated_ids(row, stops) for row in new]
        texts = self.tok.batch_decode(token_ids, skip_special_tokens=True)
        return texts, [len(t) for t in token_ids], token_ids

    def _timed(self, ids, pad_to, max_new_tokens, steps, slice_rows=None, n_real=None):
        import torch

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            res = self._generate_batch(ids, pad_to, max_new_tokens, steps, slice_rows, n_real)
        except RuntimeError as ex:
            raise_if_nondeterministic(ex)
            raise
        if cuda:
            torch.cuda.synchronize()
        return res, time.perf_counter() - t0

    # ------------------------------------------------------------------------------------------- plans
    def _canonical(self, ids: list[list[int]], max_new_tokens: int, steps: int, first_only: bool):
        from ragqa_exp.errors import ResourceError

        self.plan = canonical_plan(self.model, self.batch_size, self.max_batch_tokens, self.length_bucket,
                                   max_new_tokens, self.max_prefill_tokens, self.kv_cache)
        for rows, n_real, padded in self.plan.batches([len(x) for x in ids]):
            slice_rows = self.plan.slice_rows(padded)
            if first_only:  # the warm-up: the batch's shapes, its first prefill slice only (the rest are copies)
                n_real = min(n_real, slice_rows)
            try:
                res, dt = self._timed([ids[i] for i in rows], padded, max_new_tokens, steps,
                                      slice_rows if slice_rows < len(rows) else None, n_real)
            except Exception as ex:  # noqa: BLE001  only OOM is handled; everything else propagates
                if not is_oom(ex):
                    raise
                budget, prefill = self.plan.max_batch_tokens, self.plan.max_prefill_tokens
                raise ResourceError(
                    f"out of GPU memory at a batch of {len(rows)} prompts x {padded + max_new_tokens} tokens (prefilled "
                    f"{self.plan.slice_rows(padded)} at a time): lower eval.max_batch_tokens (now "
                    f"{budget if budget else 'no limit'}), eval.max_prefill_tokens (now {prefill or 'the whole batch'}) "
                    f"or eval.batch_size (now {self.plan.max_rows}); eval.batch_plan=canonical keeps its batches, so "
                    "that answers do not depend on free memory"
                ) from None
            yield rows[:n_real], res, dt
            if first_only:
                return

    def _packed(self, ids: list[list[int]], max_new_tokens: int, steps: int, first_only: bool):
        import torch

        from ragqa_exp.errors import ResourceError

        lengths = [len(x) for x in ids]
        remaining = sorted(range(len(ids)), key=lambda i: -lengths[i])
        while remaining:
            batch = token_budget_batch(remaining, lengths, max_new_tokens, self.batch_size, self.max_batch_tokens)
            try:
                res, dt = self._timed([ids[i] for i in batch], None, max_new_tokens, steps)
            except Exception as ex:  # noqa: BLE001  only OOM is handled; everything else propagates
                if not is_oom(ex):
                    raise
                if len(batch) == 1:
                    raise ResourceError(
                        f"out of GPU memory evaluating one prompt of {lengths[batch[0]]} tokens: lower "
                        "eval.max_new_tokens, use a 4-bit quant, or free the GPU"
                    ) from None
                self.oom_retries += 1
                self.batch_limits_changed = True
                self.batch_size = max(1, len(batch) // 2)
                self.max_batch_tokens = max(1, self.max_batch_tokens // 2)
                log.warning("eval: out of memory at a batch of %d prompts; retrying with at most %d (recorded in "
                            "metrics.json: eval_batch_limits_changed)", len(batch), self.batch_size)
                del ex
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            taken = set(batch)
            remaining = [i for i in remaining if i not in taken]
            yield batch, res, dt
            if first_only:
                return

    def _batches(self, prompts: list[str], max_new_tokens: int, steps: int, first_only: bool = False):
        self.tok.padding_side = "left"
        ids = self.tok(prompts, add_special_tokens=True)["input_ids"]
        run = self._canonical if self.batch_plan == "canonical" else self._packed
        return ids, run(ids, max_new_tokens, steps, first_only)

    # -------------------------------------------------------------------------------------------- API
    def warmup(self, prompts: list[str], max_new_tokens: int) -> None:
        """The first batch of the plan, untimed, for a few decode steps (canonical: its first prefill slice, the
        other rows copies: the same shapes for less prefill)."""
        if prompts:
            _, batches = self._batches(prompts, max_new_tokens, min(WARMUP_NEW_TOKENS, max_new_tokens), first_only=True)
            for _ in batches:
                pass

    def generate(self, prompts: list[str], max_new_tokens: int, stop: str = "\n") -> Iterator[tuple[int, Generation]]:
        from tqdm.auto import tqdm

        if stop != "\n":
            raise ValueError("the hf backend stops at newlines only (the task's answers are one line)")
        ids, batches = self._batches(prompts, max_new_tokens, max_new_tokens)
        with tqdm(total=len(prompts), desc="eval", unit="q") as bar:
            for real, (texts, new_lengths, token_ids), dt in batches:
                for i, text, n_new, tids in zip(real, texts, new_lengths, token_ids):
                    yield i, Generation(text=text, seconds=dt / len(real), prompt_tokens=len(ids[i]),
                                        completion_tokens=n_new, token_ids=tids)
                bar.update(len(real))

    def plan_record(self) -> dict:
        """`eval_plan` in metrics.json: the constants that decided every batch's shapes."""
        common = {"batch_plan": self.batch_plan, "attn_implementation": self.attn_implementation,
                  "padding_side": "left", "kv_cache": self.kv_cache, "kv_cache_requested": self.requested_kv_cache,
                  **self.kernels}
        if self.decoders is not None:
            common["decode_graphs_made"] = self.decoders.made  # one per batch shape (CUDA graphs on a GPU)
        if self.batch_plan == "canonical":
            plan = asdict(self.plan) if self.plan else {"length_bucket": self.length_bucket}
            return {**common, **plan, "min_pad_tokens": 1, "fill": "copies, discarded; prefilled only within a slice "
                    "that holds a real row"}
        return {**common, "max_batch_tokens": self.max_batch_tokens, "max_rows": self.batch_size,
                "max_batch_tokens_requested": self.requested_max_batch_tokens,
                "order": "longest first, packed by token budget"}

    def run_facts(self) -> dict:
        return {"eval_plan": self.plan_record(), "eval_oom_retries": self.oom_retries,
                "eval_batch_limits_changed": self.batch_limits_changed,
                "generation_config": settings_record(self.settings) if self.settings else {}}
