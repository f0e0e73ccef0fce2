"""Calibration text for GPTQ/AWQ, chosen by `calib_data.source`."""
from __future__ import annotations

import random

from ragqa_exp.config import CalibDataConfig, CalibSource
from ragqa_exp.data import format_prompt


def calibration_texts(cfg: CalibDataConfig, train_rows: list[dict], max_passages: int | None = None) -> list[str]:
    """`train`: SFT prompts with their answers; `context`: the retrieved passages alone.
    `n_samples` texts drawn with `seed` (token truncation to `max_length` is the quantizer's job)."""
    if cfg.source == CalibSource.train:
        texts = [format_prompt(r["question"], r["context"], max_passages) + r["answer"] for r in train_rows]
    else:
        texts = ["\n".join(r["context"][:max_passages] if max_passages else r["context"]) for r in train_rows]
    rng = random.Random(cfg.seed)
    rng.shuffle(texts)
    return texts[: cfg.n_samples]
