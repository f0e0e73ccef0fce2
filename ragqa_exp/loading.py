"""Loading a model directory or hub id with transformers: the tokenizer (pad = eos where it has none) and
the causal LM (a hub model at its `model.revision`, with its `trust_remote_code`); saving a tokenizer so that
it loads fast."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragqa_exp.config import ModelConfig, ModelSource
from ragqa_exp.fsutil import write_json_atomic

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


def save_tokenizer(tok, out_dir: str | Path, **config_updates: Any) -> None:
    """`tok.save_pretrained(out_dir)`, with its added tokens kept in tokenizer_config.json (`added_tokens_decoder`,
    as transformers writes it for a slow tokenizer and as hub repos saved before transformers 5 hold it), and
    `config_updates` set there too. Transformers 5 leaves the added tokens out for a tokenizers-backed class, and
    its loader then parses the whole tokenizer.json in Python only to find them again: ~1 s of every load of Gemma
    3's 33 MB tokenizer.json, in every stage process. The tokens are the same (`tok.added_tokens_decoder`, loaded
    back as from tokenizer.json's `added_tokens`)."""
    tok.save_pretrained(out_dir)
    path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if "added_tokens_decoder" in config and not config_updates:
        return
    config.setdefault("added_tokens_decoder", {str(i): t.__getstate__() for i, t in tok.added_tokens_decoder.items()})
    config.update(config_updates)
    write_json_atomic(path, config)
