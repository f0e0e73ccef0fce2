"""Calibration records what it used (issue 20): how many texts and tokens went into GPTQ/AWQ
(`quant_calib_texts`, `quant_calib_tokens` in metrics.json); asking for more texts than there are training rows
calibrates on all of them and says so in the log."""
from __future__ import annotations

import json
import logging

import pytest

from conftest import cli, run_config
from ragqa_exp.calib_data import calibration_texts
from ragqa_exp.config_store import validate_overrides
from ragqa_exp.errors import ConfigError

ROWS = [{"qid": str(i), "question": f"問題{i}は?", "answer": f"答え{i}", "answers": [f"答え{i}"],
         "context": [f"記事{i} 本文{i}。", "別の記事 本文。"]} for i in range(5)]


def test_more_samples_than_rows_calibrates_on_all_of_them_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="ragqa_exp.calib_data"):
        texts = calibration_texts(run_config(["calib_data.n_samples=100000"]).calib_data, ROWS)
    assert sorted(texts) == sorted(t for t in calibration_texts(run_config(["calib_data.n_samples=5"]).calib_data, ROWS))
    assert len(texts) == 5
    assert caplog.messages == ["calib_data.n_samples=100000, but the training split has 5 rows: calibrating on all 5"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ragqa_exp.calib_data"):
        assert len(calibration_texts(run_config(["calib_data.n_samples=2"]).calib_data, ROWS)) == 2
    assert caplog.messages == []


def test_the_samples_counted_are_the_samples_gptqmodel_uses(base_model_dir, caplog):
    """Texts of CALIB_MIN_TOKENS tokens or fewer (after truncation) would be dropped inside gptqmodel without
    our count knowing: they are left out before counting, with a warning; none left is one line."""
    from ragqa_exp.loading import load_tokenizer
    from ragqa_exp.quantize._gptqmodel import CALIB_MIN_TOKENS, calibration_dataset

    tok = load_tokenizer(str(base_model_dir))
    long_texts = calibration_texts(run_config(["calib_data.n_samples=5"]).calib_data, ROWS)
    with caplog.at_level(logging.WARNING, logger="ragqa_exp.quantize._gptqmodel"):
        rows = calibration_dataset([*long_texts, "短い", "a b"], tok, 32, "gptq")
    assert len(rows) == len(long_texts) and all(CALIB_MIN_TOKENS < len(r["input_ids"]) <= 32 for r in rows)
    assert caplog.messages == [f"calibration: 2 of 7 texts have {CALIB_MIN_TOKENS} tokens or fewer and are left out "
                               "(gptqmodel's minimum)"]
    with pytest.raises(ConfigError, match=rf"^quant=awq: every calibration text has {CALIB_MIN_TOKENS} tokens or fewer"):
        calibration_dataset(["短い"], tok, 32, "awq")
    # calib_data.max_length can not ask for less than gptqmodel keeps
    with pytest.raises(ConfigError, match=rf"^calib_data.max_length={CALIB_MIN_TOKENS} is not allowed"):
        validate_overrides([f"calib_data.max_length={CALIB_MIN_TOKENS}"])
    assert validate_overrides([f"calib_data.max_length={CALIB_MIN_TOKENS + 1}"]).calib_data.max_length == CALIB_MIN_TOKENS + 1


@pytest.mark.slow
def test_metrics_record_the_calibration_texts_and_tokens_used(tmp_path):
    """The issue's row `quant=gptq calib_data.n_samples=100000` on a 12-row training file: a warning, and
    metrics.json says 12 texts and their tokens (a tiny random model with a character tokenizer: each
    prompt is cut to calib_data.max_length=16 tokens)."""
    from conftest import TINY_RANDOM_MODEL

    def write(name, rows):
        (tmp_path / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return tmp_path / name

    train = write("train.jsonl", [{**ROWS[0], "qid": f"t{i}", "question": f"訓練の問題{i}は?"} for i in range(12)])
    val = write("validation.jsonl", [{**ROWS[0], "qid": f"v{i}", "question": f"検証の問題{i}は?"} for i in range(2)])
    job = tmp_path / "job"
    r = cli("quant=gptq", "quant.group_size=32", "quant.device=cpu", "calib_data.n_samples=100000",
            "calib_data.max_length=16", "train.enabled=false", "eval.limit=2", *TINY_RANDOM_MODEL, "data=jsonl",
            f"data.train_path={train}", f"data.validation_path={val}", f"cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={job}", "wandb.mode=disabled")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "calib_data.n_samples=100000, but the training split has 12 rows: calibrating on all 12" in r.stderr
    metrics = json.loads((job / "metrics.json").read_text(encoding="utf-8"))
    assert (metrics["quant_calib_texts"], metrics["quant_calib_tokens"]) == (12, 12 * 16)
    assert "quant_calib_samples" not in metrics  # one name for one number
    assert (metrics["data_overlap_qid"], metrics["data_overlap_question"]) == (0, 0)
