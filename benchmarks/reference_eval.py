"""The first-wave evaluation loop, kept verbatim as the "old path" that benchmarks measure the fast path
against (fixed-size batches sorted by character length, per-step `stop_strings` checks). Not used by ragqa_exp."""
from __future__ import annotations

import torch


@torch.inference_mode()
def generate_answers_first_wave(model, tok, prompts: list[str], batch_size: int, max_new_tokens: int) -> list[str]:
    """Greedy decoding, left-padded batches of similar length (order of `prompts` is kept)."""
    tok.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    dev = next(model.parameters()).device
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for idx in batches:
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=True).to(dev)
        gen = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
            pad_token_id=tok.pad_token_id, stop_strings=["\n"], tokenizer=tok,
            temperature=None, top_p=None, top_k=None,
        )
        texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for i, text in zip(idx, texts):
            out[i] = text
    return out
