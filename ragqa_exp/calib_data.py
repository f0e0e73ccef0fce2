"""Calibration text for GPTQ/AWQ, chosen by `calib_data.source`."""
from __future__ import annotations

import logging
import random

from ragqa_exp.config import CalibDataConfig, CalibSource
from ragqa_exp.data import format_prompt

log = logging.getLogger(__name__)


def calibration_texts(cfg: CalibDataConfig, train_rows: list[dict], max_passages: int | None = None) -> list[str]:
    """`train`: SFT prompts with their answers; `context`: the retrieved passages alone.
    `n_samples` texts drawn with `seed` (token truncation to `max_length` is the quantizer's job). Asking for
    more texts than there are training rows calibrates on all of them, with a warning (not an error: the
    default of 128 must work with a small data file); metrics.json's `quant_calib_texts` says how many."""
    if cfg.source == CalibSource.train:
        texts = [format_prompt(r["question"], r["context"], max_passages) + r["answer"] for r in train_rows]
    else:
        texts = ["\n".join(r["context"][:max_passages] if max_passages else r["context"]) for r in train_rows]
    if cfg.n_samples > len(texts):
        log.warning("calib_data.n_samples=%d, but the training split has %d rows: calibrating on all %d",
                    cfg.n_samples, len(texts), len(texts))
    rng = random.Random(cfg.seed)
    rng.shuffle(texts)
    return texts[: cfg.n_samples]
