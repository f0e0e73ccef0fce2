"""Loaders (bundled, jsonl, jaqket-hub schema) and their one-line errors."""
import json

import pytest

from conftest import REPO, run_config
from ragqa_exp.data import load_splits, read_jsonl, split_hub_rows
from ragqa_exp.errors import ConfigError, DataError

FIXTURE = REPO / "tests" / "fixtures" / "jaqket_hub_schema.json"


def test_jaqket_loader_resplits_by_section():
    hub = json.loads(FIXTURE.read_text(encoding="utf-8"))
    cfg = run_config(["data=jaqket"]).data
    s = split_hub_rows(hub, cfg)
    # validation = the two JAQKET test sections, wherever the hub put them; the rest is train
    assert sorted(r["qid"] for r in s.validation) == ["QA20CAPR-0002", "QA20CAPR-0003"]
    assert sorted(r["qid"] for r in s.train) == ["QA20CAPR-0001", "QA20CAPR-0004"]
    keep = split_hub_rows(hub, run_config(["data=jaqket", "data.resplit=false"]).data)
    assert [r["qid"] for r in keep.validation] == ["QA20CAPR-0003"] and len(keep.train) == 3
    assert s.train[0]["competition"] == "第1回AI王"  # extra hub fields carried along


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_loader(tmp_path):
    hub = json.loads(FIXTURE.read_text(encoding="utf-8"))
    tr = _write(tmp_path / "t.jsonl", [json.dumps(r, ensure_ascii=False) for r in hub["train"]])
    va = _write(tmp_path / "v.jsonl", [json.dumps(r, ensure_ascii=False) for r in hub["validation"]])
    s = load_splits(run_config(["data=jsonl", f"data.train_path={tr}", f"data.validation_path={va}"]).data)
    assert len(s.train) == 3 and s.validation[0]["answer"] == "信濃川"


def test_jsonl_errors_are_one_line_with_file_and_line(tmp_path):
    good = json.dumps({"qid": "1", "question": "q?", "answer": "a", "answers": ["a"], "context": ["a b"]})
    bad = _write(tmp_path / "bad.jsonl", [good, "{not json"])
    with pytest.raises(DataError, match=rf"^{bad}:2: malformed JSON"):
        read_jsonl(bad)
    missing_field = _write(tmp_path / "mf.jsonl", [json.dumps({"qid": "1", "question": "q"})])
    with pytest.raises(DataError, match=rf"{missing_field}:1: missing field 'answer'"):
        read_jsonl(missing_field)
    wrong_type = _write(tmp_path / "wt.jsonl", [good.replace('["a b"]', '"a b"')])
    with pytest.raises(DataError, match=r":1: field 'context' must be list"):
        read_jsonl(wrong_type)
    empty = _write(tmp_path / "empty.jsonl", [""])
    with pytest.raises(DataError, match="no rows"):
        read_jsonl(empty)
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(ConfigError, match=r"data.train_path is not set"):
        run_config(["data=jsonl"])
    with pytest.raises(DataError) as e:
        read_jsonl(bad)
    assert "\n" not in str(e.value)


def test_bundled_loads():
    s = load_splits(run_config().data)
    assert len(s.train) >= 1200 and len(s.validation) >= 300
