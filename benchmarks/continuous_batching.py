"""transformers' own continuous batching (`model.generate_batch`, paged KV cache) as an eval_speed.py variant, the
peer row issue 19 asks for: the same prompts, the same greedy settings and stop ids as the hf backend, answers cut
at the first stop token as the backend cuts them, so token ids compare with the backend's.

Variant syntax: `continuous` (transformers' defaults) or `continuous:key=value:...`, each key a field of
`transformers.ContinuousBatchingConfig` (e.g. `continuous:max_batch_tokens=16384:use_cuda_graph=True:
default_compile_level=1:allow_block_sharing=False`); values are Python literals.
"""
from __future__ import annotations

import ast
from types import SimpleNamespace


def settings(flags: list[str]) -> dict:
    """`key=value` flags as ContinuousBatchingConfig keyword arguments (other flags: ignored here)."""
    out = {}
    for flag in flags:
        if "=" in flag:
            key, value = flag.split("=", 1)
            out[key] = ast.literal_eval(value)
    return out


def generate(backend, prompts: list[str], max_new_tokens: int, config: dict) -> list[tuple[int, SimpleNamespace]]:
    """(index, answer) per prompt, sorted, as `backend.generate` gives them: `.token_ids` up to and including the first
    stop token, `.text`, `.completion_tokens`; `.seconds` is the whole call's time over the prompts (a batch share)."""
    import time

    import torch
    from transformers import ContinuousBatchingConfig

    from ragqa_exp.backends.hf import generated_ids, generation_config, greedy_settings

    tok, model = backend.tok, backend.model
    ids = tok(prompts, add_special_tokens=True)["input_ids"]  # as the hf backend tokenizes them
    gen_cfg = generation_config(greedy_settings(backend.stop_ids, tok.pad_token_id, max_new_tokens, "dynamic"))
    t = time.perf_counter()
    with torch.inference_mode():
        results = model.generate_batch(inputs=ids, generation_config=gen_cfg,
                                       continuous_batching_config=ContinuousBatchingConfig(**config))
    share = (time.perf_counter() - t) / len(prompts)
    stops = set(backend.stop_ids)
    out = []
    for i, result in enumerate(results.values()):  # in the order of the inputs
        new = generated_ids(torch.tensor(result.generated_tokens[:max_new_tokens]), stops)
        out.append((i, SimpleNamespace(token_ids=new, text=tok.decode(new, skip_special_tokens=True),
                                       completion_tokens=len(new), seconds=share)))
    if len(out) != len(prompts):
        raise RuntimeError(f"generate_batch returned {len(out)} answers for {len(prompts)} prompts")
    return out
