"""Stage 3: batched greedy generation over the evaluation split, then the answer metrics."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ragqa_exp.config import EvalConfig
from ragqa_exp.data import format_prompt
from ragqa_exp.measure import LatencyReport, LatencyTracker
from ragqa_exp.metrics import aggregate, clean_prediction, match


@dataclass
class EvalResult:
    metrics: dict
    predictions: list[dict]
    latency: LatencyReport


@torch.inference_mode()
def generate_answers(model, tok, prompts: list[str], cfg: EvalConfig, tracker: LatencyTracker) -> list[str]:
    """Greedy decoding, left-padded batches of similar length (order of `prompts` is kept)."""
    tok.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    dev = next(model.parameters()).device
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    for idx in tqdm(batches, desc="eval", unit="batch"):
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=True).to(dev)
        with tracker.track(len(idx)):
            gen = model.generate(
                **enc, max_new_tokens=cfg.max_new_tokens, do_sample=False, num_beams=1,
                pad_token_id=tok.pad_token_id, stop_strings=["\n"], tokenizer=tok,
                temperature=None, top_p=None, top_k=None,
            )
        texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for i, text in zip(idx, texts):
            out[i] = text
    return out


def evaluate(model, tok, rows: list[dict], cfg: EvalConfig, max_passages: int | None = None) -> EvalResult:
    rows = rows[: cfg.limit] if cfg.limit else rows
    prompts = [format_prompt(r["question"], r["context"], max_passages) for r in rows]
    tracker = LatencyTracker()
    raw = generate_answers(model, tok, prompts, cfg, tracker)
    preds, scores = [], []
    for row, text in zip(rows, raw):
        pred = clean_prediction(text)
        s = match(pred, row["answer"], row.get("answers"))
        scores.append(s)
        preds.append({
            "qid": row["qid"], "question": row["question"], "answer": row["answer"], "pred": pred,
            "exact": s["exact"], "partial": s["partial"],
            "exact_normalized": s["exact_normalized"], "partial_normalized": s["partial_normalized"],
            "raw": text,
        })
    lat = tracker.report()
    metrics = aggregate(scores)
    metrics.update({
        "eval_seconds": lat.total_seconds, "latency_ms_p50": lat.p50_ms,
        "latency_ms_p95": lat.p95_ms, "latency_ms_mean": lat.mean_ms,
    })
    return EvalResult(metrics=metrics, predictions=preds, latency=lat)
