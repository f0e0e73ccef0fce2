"""Mean negative log-likelihood of reference answers given their prompts, on any causal LM (dense, merged,
quantized): the loss training minimises — answer tokens only, prompt tokens masked — computed by the
training loss itself (`sparse_head.completion_loss`). A quantized model that keeps the function of its
source scores about the same; a broken one scores far higher (benchmarks/QUANT_NOTES.md)."""
from __future__ import annotations

from typing import Sequence

from ragqa_exp.sparse_head import IGNORE, completion_loss


def completion_batch(tok, prompts: Sequence[str], answers: Sequence[str]) -> dict:
    """Right-padded `input_ids`, `attention_mask` and `labels` (IGNORE except on the answer tokens) of
    prompt + answer pairs; the answer is tokenized on its own, as TRL tokenizes a completion."""
    import torch

    seqs, labels = [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        p = tok(prompt, add_special_tokens=True)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"]
        seqs.append(p + a)
        labels.append([IGNORE] * len(p) + a)
    width = max(len(s) for s in seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def padded(rows, fill):
        return torch.tensor([r + [fill] * (width - len(r)) for r in rows])

    return {"input_ids": padded(seqs, pad), "attention_mask": padded([[1] * len(s) for s in seqs], 0),
            "labels": padded(labels, IGNORE)}


def answer_nll(model, tok, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 8) -> float:
    """Mean NLL per answer token (nats) over all pairs, in batches of `batch_size`."""
    import torch

    dev = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            batch = completion_batch(tok, prompts[i : i + batch_size], answers[i : i + batch_size])
            batch = {k: v.to(dev) for k, v in batch.items()}
            n = int((batch["labels"][:, 1:] != IGNORE).sum())
            total += float(completion_loss(model, batch)) * n
            count += n
    return total / count
