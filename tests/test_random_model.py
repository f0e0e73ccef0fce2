"""model=llama2_7b_shapes: random weights of given shapes and a character-level tokenizer of that vocabulary,
built offline; train, every quant method and eval run on it like on any model (tiny shapes on CPU)."""
from __future__ import annotations

import json
import statistics

import pytest

from conftest import cli, run_config
from ragqa_exp.random_model import char_tokenizer

TINY_LLAMA = ["model=llama2_7b_shapes", "model.init.hidden_size=256", "model.init.intermediate_size=512",
              "model.init.num_hidden_layers=2", "model.init.num_attention_heads=4", "model.init.num_key_value_heads=4"]


def test_default_shapes_are_llama2_7b():
    init = run_config(["model=llama2_7b_shapes"]).model.init
    assert (init.hidden_size, init.intermediate_size, init.num_hidden_layers, init.num_attention_heads,
            init.num_key_value_heads, init.vocab_size) == (4096, 11008, 32, 32, 32, 32000)


def test_char_tokenizer_has_the_vocab_size_and_study_length_prompts():
    from ragqa_exp.data import BUNDLED_FILES, format_prompt, load_splits

    tok = char_tokenizer(32000)
    assert len(tok) == 32000 and set(BUNDLED_FILES)
    rows = load_splits(run_config().data).validation
    prompt = format_prompt(rows[0]["question"], rows[0]["context"], 5)
    ids = tok(prompt).input_ids
    assert ids[0] == tok.bos_token_id and tok.decode(ids, skip_special_tokens=True) == prompt
    assert len(ids) == len(prompt) + 1  # one token per character (+ BOS)
    mean = statistics.fmean(len(tok(format_prompt(r["question"], r["context"], 5)).input_ids) for r in rows)
    assert 550 < mean < 800  # the study's prompts are ~700 tokens
    rare = "𠮷"  # not in the data: byte fallback, still round-trips
    assert tok.decode(tok(rare, add_special_tokens=False).input_ids) == rare


@pytest.mark.slow
def test_train_quantize_eval_every_method_on_a_tiny_random_llama(tmp_path):
    sweep = tmp_path / "s"
    r = cli("-m", "quant=none,bnb,gptq,awq", *TINY_LLAMA, "experiment=tiny", "eval.limit=4", "wandb.mode=disabled",
            f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads((j / "metrics.json").read_text()) for j in sorted(sweep.iterdir()) if (j / "metrics.json").exists()]
    assert [m["quant"] for m in rows] == ["none", "bnb", "gptq", "awq"]
    assert len({m["train_key"] for m in rows}) == 1 and rows[0]["train_loss"] > 0
    for m in rows[1:]:
        assert m["quant_bits"] == 4 and m["quant_kernel"] and "train" in m["reused"]
