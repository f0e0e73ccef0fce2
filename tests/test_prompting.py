"""Training never cuts the answer: rows longer than train.max_length lose passages from the prompt side before
they reach TRL (ragqa_exp/prompting.py), and evaluation fits its prompts by the same rule. Real tokenizer of the
embedded model; the bundled rows are 321-574 tokens, so train.max_length=160 shortens every one of them."""
from __future__ import annotations

import json

import pytest

from ragqa_exp.data import format_prompt, load_splits
from ragqa_exp.errors import DataError
from ragqa_exp.prompting import eval_prompter, fit_prompt, sft_examples, token_counter

MAX_LENGTH = 160


@pytest.fixture(scope="module")
def tok(base_model_dir):
    from ragqa_exp.loading import load_tokenizer

    return load_tokenizer(str(base_model_dir))


@pytest.fixture(scope="module")
def rows():
    from ragqa_exp.config import DataConfig

    short = {"qid": "short", "question": "日本一高い山は?", "answer": "富士山", "answers": ["富士山"],
             "context": ["富士山 日本最高峰の山。"]}
    return [*load_splits(DataConfig()).train[:6], short]


def _too_long(tok, row) -> bool:
    """The unfitted row (what train.py handed TRL before) is longer than MAX_LENGTH."""
    return len(tok(format_prompt(row["question"], row["context"], 5) + row["answer"] + tok.eos_token)["input_ids"]) > MAX_LENGTH


def test_long_rows_lose_passages_not_the_answer(tok, rows):
    examples, shortened = sft_examples(tok, rows, 5, MAX_LENGTH)
    assert shortened == sum(_too_long(tok, r) for r in rows) == len(rows) - 1  # all but the short row
    count = token_counter(tok)
    for row, ex in zip(rows, examples):
        assert ex["completion"] == row["answer"]
        assert count(ex["prompt"] + ex["completion"] + tok.eos_token) <= MAX_LENGTH
        assert f"### 指示:\n{row['question']}\n" in ex["prompt"] and ex["prompt"].endswith("### 応答:\n")
    assert examples[-1]["prompt"] == format_prompt(rows[-1]["question"], rows[-1]["context"])  # fits: untouched
    # as much as fits is kept, from the start: one more passage (or character of the cut one) would not fit
    for row, ex in zip(rows[:-1], examples):
        ps = row["context"][:5]
        kept = ex["prompt"].split("### 入力:\n", 1)[1].rsplit("\n\n### 応答:", 1)[0]
        assert "\n".join(ps).startswith(kept)
        k = kept.count("\n") + 1
        more = ps[:k + 1] if kept == "\n".join(ps[:k]) else [ps[0][:len(kept) + 1]]
        assert count(format_prompt(row["question"], more) + row["answer"] + tok.eos_token) > MAX_LENGTH


def test_a_row_whose_question_and_answer_do_not_fit_is_refused_by_name(tok):
    row = {"qid": "q-long", "question": "長い質問" * 200, "answer": "答え", "answers": ["答え"], "context": ["本文"]}
    with pytest.raises(DataError, match=r"training row qid='q-long'.*train\.max_length=160"):
        sft_examples(tok, [row], 5, MAX_LENGTH)


def test_evaluation_fits_prompts_by_the_same_rule(tok, rows, base_model_dir):
    from conftest import run_config

    cfg = run_config([f"train.max_length={MAX_LENGTH}", "eval.max_new_tokens=16"])
    prompts = eval_prompter(cfg, str(base_model_dir))(rows)
    count = token_counter(tok)
    assert all(count(p) + 16 <= MAX_LENGTH for p in prompts)
    assert prompts == [fit_prompt(count, r, 5, MAX_LENGTH, room=16).prompt for r in rows]
    assert prompts[-1] == format_prompt(rows[-1]["question"], rows[-1]["context"])


@pytest.mark.slow
def test_the_answer_tokens_reach_the_training_labels(tok, rows, base_model_dir):
    """What TRL's SFTTrainer makes of the examples train.py hands it: every row's labels end with its whole
    answer (+EOS). Control: the unfitted rows lose their answers (TRL keeps the start, then drops rows left
    without any label)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from ragqa_exp.loading import load_model

    model = load_model(str(base_model_dir), torch.float32)
    args = dict(output_dir="/tmp/unused", max_length=MAX_LENGTH, completion_only_loss=True, report_to="none",
                use_cpu=True, per_device_train_batch_size=1)

    def answers_in_labels(examples: list[dict]) -> list[str]:
        trainer = SFTTrainer(model=model, args=SFTConfig(**args), train_dataset=Dataset.from_list(examples),
                             processing_class=tok)
        out = []
        for item in trainer.train_dataset:
            labels = trainer.data_collator([item])["labels"][0]
            out.append(tok.decode(labels[labels != -100]))
        return out

    fitted, _ = sft_examples(tok, rows, 5, MAX_LENGTH)
    assert answers_in_labels(fitted) == [r["answer"] + tok.eos_token for r in rows]
    unfitted = [{"prompt": format_prompt(r["question"], r["context"], 5), "completion": r["answer"]} for r in rows]
    got = answers_in_labels(unfitted)
    assert json.dumps(got, ensure_ascii=False) != json.dumps([r["answer"] + tok.eos_token for r in rows], ensure_ascii=False)
    assert sum(a in got for a in (r["answer"] + tok.eos_token for r in rows)) == 1  # only the short row keeps it
