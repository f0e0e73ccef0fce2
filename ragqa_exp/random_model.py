"""`model.source=random_init`: a Llama-architecture model with random weights of given shapes and a
character-level tokenizer of the same vocabulary size, built offline (model=llama2_7b_shapes: Llama-2-7B /
rinna/youri-7b shapes). For systems benchmarks only: it answers nothing correctly.

The tokenizer maps each character of the bundled dataset to one token (byte fallback for any other
character), so a study-style Japanese prompt is about as many tokens as Llama-2's tokenizer makes of it
(one per character or more); unused ids pad the vocabulary to `vocab_size`.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

log = logging.getLogger(__name__)
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def char_tokenizer(vocab_size: int):
    """A fast tokenizer: specials, 256 byte tokens, the dataset's characters by frequency, then `<unused_N>`."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    from ragqa_exp.data import BUNDLED_FILES, _bundled_path

    counts: Counter = Counter()
    for split in BUNDLED_FILES:
        for line in _bundled_path(split).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            counts.update(row["question"] + row["answer"] + "".join(row["context"]))
    counts.update("\n#:")  # the prompt template's own characters
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch, _ in counts.most_common():
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(ch, len(vocab))
    for i in range(vocab_size - len(vocab)):
        vocab[f"<unused_{i}>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tk.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", add_bos_token=True)


def random_model_bytes(init) -> int:
    """Size of the saved bf16 weights of a random model with `init`'s shapes (untied embeddings)."""
    h, kv = init.hidden_size, init.hidden_size // init.num_attention_heads * init.num_key_value_heads
    layer = 2 * h * h + 2 * h * kv + 3 * h * init.intermediate_size + 2 * h
    return 2 * (2 * init.vocab_size * h + init.num_hidden_layers * layer + h)


def build_random_model(init, out_dir: Path) -> None:
    """Random bf16 weights with `init`'s shapes (model.init.*), saved with the tokenizer into `out_dir`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer(init.vocab_size)
    config = LlamaConfig(
        hidden_size=init.hidden_size, intermediate_size=init.intermediate_size,
        num_hidden_layers=init.num_hidden_layers, num_attention_heads=init.num_attention_heads,
        num_key_value_heads=init.num_key_value_heads, vocab_size=init.vocab_size,
        max_position_embeddings=init.max_position_embeddings, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # initialising 7B on a GPU takes seconds
    torch.manual_seed(init.seed)
    log.info("building a random-weight model (%d layers, hidden %d) in %s", init.num_hidden_layers, init.hidden_size, out_dir)
    with torch.device(dev):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    (Path(out_dir) / "RANDOM_WEIGHTS.txt").write_text(
        "Random weights (ragqa_exp model.source=random_init): for speed and memory measurements only.\n", encoding="utf-8")
