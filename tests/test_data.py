"""Loaders (bundled, jsonl, jaqket-hub schema) and their one-line errors; the overlap of the splits."""
import json
import logging
import re

import pytest

from conftest import REPO, run_config
from ragqa_exp.data import UTF8_BOM, Overlap, load_splits, read_jsonl, split_hub_rows
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


GOOD = {"qid": "1", "question": "q?", "answer": "a", "answers": ["a"], "context": ["a b"]}
HUB_ID = "hotchpotch/jaqket_v1_qa_wikija_context"


def _row(**fields):
    return {**GOOD, **fields}


def _raises(fn, line: str):
    """fn() raises a DataError whose one line is exactly `line`."""
    with pytest.raises(DataError) as e:
        fn()
    assert str(e.value) == line
    return e.value


def test_bytes_that_are_not_utf8_are_one_line_naming_line_byte_and_column(tmp_path):
    latin1 = json.dumps(_row(qid="2", question="café?"), ensure_ascii=False)
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(json.dumps(GOOD).encode() + b"\n" + latin1.encode("latin-1") + b"\n")
    _raises(lambda: read_jsonl(p), f"{p}:2: not UTF-8 (undecodable byte 0xe9 at column {latin1.index('é') + 1}); "
                                   "save the file as UTF-8")
    cut = tmp_path / "cut.jsonl"  # a multi-byte character cut off after two of its three bytes
    cut.write_bytes(b'{"qid": "1", "question": "' + "山".encode()[:2] + b'"}\n')
    _raises(lambda: read_jsonl(cut), f"{cut}:1: not UTF-8 (undecodable byte 0xe5 at column 27); save the file as UTF-8")


def test_a_utf8_bom_at_the_start_is_accepted(tmp_path):
    """Editors on Windows save "UTF-8" with a BOM: read as utf-8-sig. Only at the start: elsewhere it is a
    character inside a line, and that line is malformed JSON."""
    plain = _write(tmp_path / "plain.jsonl", [json.dumps(GOOD, ensure_ascii=False), json.dumps(_row(qid="2"))])
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(UTF8_BOM + plain.read_bytes())
    assert read_jsonl(bom) == read_jsonl(plain) and len(read_jsonl(bom)) == 2
    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes(UTF8_BOM + plain.read_bytes().replace(b"\n", b"\r\n"))
    assert read_jsonl(crlf) == read_jsonl(plain)
    inside = tmp_path / "inside.jsonl"
    inside.write_bytes(plain.read_bytes() + UTF8_BOM + json.dumps(_row(qid="3")).encode())
    with pytest.raises(DataError, match=rf"^{re.escape(str(inside))}:3: malformed JSON \(Unexpected UTF-8 BOM"):
        read_jsonl(inside)


def test_a_repeated_qid_names_the_file_both_lines_and_the_fix(tmp_path):
    p = _write(tmp_path / "dup.jsonl", [json.dumps(GOOD), "", json.dumps(_row(qid="2")), json.dumps(_row(question="other?"))])
    _raises(lambda: read_jsonl(p), f"{p}:4: qid '1' repeats line 1; give every row its own qid (answers are paired by qid)")


BAD_ROWS = [  # (fields changed in a valid row, the error after "<file>:<line>: ")
    ({"question": ""}, "empty 'question'; write the question or remove that row"),
    ({"question": " \u3000\t"}, "empty 'question'; write the question or remove that row"),
    ({"qid": " "}, "empty 'qid'; write the qid or remove that row"),
    ({"answer": ""}, "empty 'answer'; write the answer or remove that row"),
    ({"context": []}, "empty 'context' (no passage to read the answer from); give the row at least one passage or "
                      "remove it (closed-book rows are not supported)"),
    ({"context": ["", " "]}, "empty 'context' (no passage to read the answer from); give the row at least one passage "
                             "or remove it (closed-book rows are not supported)"),
    ({"answers": ["a", 1]}, "'answers' must be a list of strings"),
    ({"context": ["a b", None]}, "'context' must be a list of strings"),
    ({"qid": 7}, "field 'qid' must be str, got int"),
    ({"question": "q\ud800?"}, "question holds a lone surrogate \\ud800 (a broken \\u escape); fix that string"),
    ({"context": ["a", "b\udfff"]}, "context[1] holds a lone surrogate \\udfff (a broken \\u escape); fix that string"),
]


@pytest.mark.parametrize("fields,error", BAD_ROWS, ids=[json.dumps(f) for f, _ in BAD_ROWS])
def test_bad_row_is_one_line_with_file_and_line_in_files_and_hub_rows(tmp_path, fields, error):
    p = _write(tmp_path / "v.jsonl", [json.dumps(_row(qid="0")), json.dumps(_row(**fields))])  # \ud800: JSON's escape
    _raises(lambda: read_jsonl(p), f"{p}:2: {error}")
    hub = {"train": [_row(qid="0")], "validation": [_row(qid="9"), _row(**fields)]}
    _raises(lambda: split_hub_rows(hub, run_config(["data=jaqket", "data.resplit=false"]).data),
            f"{HUB_ID}[validation][1]: {error}")


def test_hub_rows_with_a_repeated_qid_are_one_line_naming_both_rows():
    hub = json.loads(FIXTURE.read_text(encoding="utf-8"))
    cfg = run_config(["data=jaqket"]).data
    same_split = {**hub, "train": hub["train"] + [dict(hub["train"][0], question="別の問題?")]}
    _raises(lambda: split_hub_rows(same_split, cfg), f"{HUB_ID}[train][3]: qid 'QA20CAPR-0001' repeats {HUB_ID}[train][0]; "
                                                     "give every row its own qid (answers are paired by qid)")
    # the re-split brings a test question of the hub's train split together with the same qid from validation
    moved = {**hub, "train": hub["train"] + [dict(hub["validation"][0])]}
    _raises(lambda: split_hub_rows(moved, cfg), f"{HUB_ID}[validation][0]: qid 'QA20CAPR-0003' repeats {HUB_ID}[train][3]; "
                                                "give every row its own qid (answers are paired by qid)")


# --- overlap between training and validation -------------------------------------------------------------------

def _rows(n: int, prefix: str) -> list[dict]:
    return [_row(qid=f"{prefix}{i}", question=f"{prefix}の問題{i}は?") for i in range(n)]


def _jsonl_config(tr, va, *extra):
    return run_config(["data=jsonl", f"data.train_path={tr}", f"data.validation_path={va}", *extra]).data


def test_the_training_file_given_as_validation_file_stops_the_job(tmp_path):
    tr = _write(tmp_path / "train.jsonl", [json.dumps(r, ensure_ascii=False) for r in _rows(50, "t")])
    _raises(lambda: load_splits(_jsonl_config(tr, tr)),
            f"data: 50 of 50 validation rows (100.0%) are also training rows (by qid: 50, by normalized question: 50; "
            f"e.g. qid 't0'): validation {tr}, train {tr}; use disjoint files, or set data.allow_overlap=true if this "
            "is intended")
    allowed = load_splits(_jsonl_config(tr, tr, "data.allow_overlap=true"))
    assert allowed.overlap == Overlap(qid=50, question=50, rows=50, example="t0")


def test_overlap_is_counted_by_qid_and_by_normalized_question(tmp_path, caplog):
    """Rows are counted once whichever way they overlap; questions are compared as metrics.normalize reads them
    (NFKC, no whitespace or brackets); more than 1% of validation stops the job, 1% is logged."""
    train = _rows(200, "t") + [_row(qid="t-fuji", question="「富士山」の高さは?")]
    va = _rows(98, "v")
    same_qid = _row(qid="t5", question="新しい問題?")  # a training qid with another question
    same_question = _row(qid="v-fuji", question="『富士山』 の高さは？")  # another qid, the same question normalized
    tr = _write(tmp_path / "train.jsonl", [json.dumps(r, ensure_ascii=False) for r in train])
    both = _write(tmp_path / "both.jsonl", [json.dumps(r, ensure_ascii=False) for r in va + [same_qid, same_question]])
    _raises(lambda: load_splits(_jsonl_config(tr, both)),
            f"data: 2 of 100 validation rows (2.0%) are also training rows (by qid: 1, by normalized question: 1; "
            f"e.g. qid 't5'): validation {both}, train {tr}; use disjoint files, or set data.allow_overlap=true if this "
            "is intended")
    one = _write(tmp_path / "one.jsonl", [json.dumps(r, ensure_ascii=False) for r in va + [_row(qid="v98"), same_question]])
    with caplog.at_level(logging.WARNING, logger="ragqa_exp.data"):
        splits = load_splits(_jsonl_config(tr, one))  # 1 of 100: not more than 1%
    assert splits.overlap == Overlap(qid=0, question=1, rows=1, example="v-fuji")
    assert "1 of 100 validation rows (1.0%) are also training rows" in caplog.text
    disjoint = _write(tmp_path / "disjoint.jsonl", [json.dumps(r, ensure_ascii=False) for r in va])
    assert load_splits(_jsonl_config(tr, disjoint)).overlap == Overlap()


def test_the_hub_resplit_is_checked_for_overlap(monkeypatch):
    import datasets

    hub = json.loads(FIXTURE.read_text(encoding="utf-8"))
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id: hub)
    splits = load_splits(run_config(["data=jaqket"]).data)
    assert splits.overlap == Overlap() and len(splits.validation) == 2
    hub["train"].append({**hub["validation"][0], "qid": "QA20CAPR-9999", "section": "開発データ問題 (dev1)"})
    with pytest.raises(DataError, match=rf"^data: 1 of 2 validation rows \(50.0%\) .* e.g. qid 'QA20CAPR-0003'\): "
                                        rf"validation {HUB_ID} \(validation\), train {HUB_ID} \(train\); "):
        load_splits(run_config(["data=jaqket"]).data)
