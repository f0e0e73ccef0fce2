"""The bundled JAQKET-style dataset, validated whole (issue: bundled dataset + data card)."""
import json
import re
import subprocess
import sys
import unicodedata
from collections import Counter

import pytest

from conftest import REPO, run_config
from ragqa_exp.data import BUNDLED_FILES, Overlap, _bundled_path, load_splits

FIELDS = {"qid": str, "question": str, "answer": str, "answers": list, "context": list, "section": str}
TRICKY = re.compile(r"[・＝=『』「」ー。\uFF01-\uFF5E]")  # dot, equals, brackets, long vowel, 。, full-width ASCII


def load(split):
    return [json.loads(line) for line in _bundled_path(split).read_text(encoding="utf-8").splitlines()]


def norm(s):
    return unicodedata.normalize("NFKC", s).replace(" ", "")


@pytest.fixture(scope="module")
def splits():
    return {s: load(s) for s in BUNDLED_FILES}


def test_schema_and_counts(splits):
    assert len(splits["train"]) >= 1200 and len(splits["validation"]) >= 300
    for split, rows in splits.items():
        for r in rows:
            for k, t in FIELDS.items():
                assert isinstance(r[k], t), (r["qid"], k)
            assert r["section"] == split
            assert r["answers"][0] == r["answer"]
            assert 4 <= len(r["context"]) <= 5, r["qid"]
            for p in r["context"]:
                title, body = p.split(" ", 1)
                assert title and 60 <= len(body) <= 200, (r["qid"], p)
            assert r["question"].endswith("?") and r["answer"] not in r["question"]


def test_answer_occurs_verbatim_in_one_or_two_passages(splits):
    positions = Counter()
    for rows in splits.values():
        for r in rows:
            support = [i for i, p in enumerate(r["context"]) if r["answer"] in p]
            assert 1 <= len(support) <= 2, r["qid"]
            positions[support[0]] += 1
    assert len(positions) >= 4  # the supporting passage is not always in the same place


def test_no_leakage_between_train_and_validation(splits):
    train_answers = {norm(a) for r in splits["train"] for a in r["answers"]}
    val_answers = {norm(r["answer"]) for r in splits["validation"]}
    assert not train_answers & val_answers
    train_passages = {p for r in splits["train"] for p in r["context"]}
    assert not {p for r in splits["validation"] for p in r["context"]} & train_passages


def test_the_loaders_overlap_check_finds_none():
    """What a job counts into metrics.json (data_overlap_qid / data_overlap_question) is 0 for the bundled data."""
    assert load_splits(run_config().data).overlap == Overlap()


def test_no_duplicate_questions_or_qids(splits):
    rows = splits["train"] + splits["validation"]
    assert len({r["question"] for r in rows}) == len(rows)
    assert len({r["qid"] for r in rows}) == len(rows)


def test_breadth_and_tricky_answers(splits):
    rows = splits["train"] + splits["validation"]
    cats = Counter(r["category"] for r in rows)
    assert {"geography", "history", "science", "technology", "literature", "arts", "music", "anime",
            "sports", "food", "politics", "economy"} <= set(cats)
    assert {"person", "place", "work", "organisation", "thing", "event"} <= {r["type"] for r in rows}
    answers = {r["answer"] for r in rows}
    assert sum(bool(TRICKY.search(a)) for a in answers) / len(answers) >= 0.10


def test_build_is_reproducible(tmp_path):
    """The generator rebuilds byte-identical files from the committed fact tables."""
    out = subprocess.run([sys.executable, str(REPO / "tools" / "bundled_data" / "build.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True)
    assert "validation:" in out.stdout
    for split, name in BUNDLED_FILES.items():
        assert (tmp_path / name).read_bytes() == _bundled_path(split).read_bytes(), split
