"""Loading a model directory or hub id with transformers: the tokenizer (pad = eos where it has none) and
the causal LM (a hub model at its `model.revision`, with its `trust_remote_code`)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ragqa_exp.config import ModelConfig, ModelSource

if TYPE_CHECKING:
    import torch


def load_tokenizer(path: str, cfg: ModelConfig | None = None):
    from transformers import AutoTokenizer

    kw = {}
    if cfg is not None and cfg.source == ModelSource.hub:
        kw = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    tok = AutoTokenizer.from_pretrained(path, **kw)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, dtype: torch.dtype, cfg: ModelConfig | None = None, **kwargs):
    from transformers import AutoModelForCausalLM

    if cfg is not None and cfg.source == ModelSource.hub:
        kwargs.setdefault("revision", cfg.revision)
        kwargs.setdefault("trust_remote_code", cfg.trust_remote_code)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
