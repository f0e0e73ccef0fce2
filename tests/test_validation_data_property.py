"""Property (issue 20): whatever a user's data file holds, the loader either returns every row of it (none lost,
none changed) or stops with one DataError line naming the file and a bad line — never another exception.

Files are built from valid rows by random mutations whose outcome is known by construction (the oracle does
not ask the loader): wrong types, missing fields, empty strings and lists, non-string list items, repeated
qids, bytes that are not UTF-8, lone surrogate escapes, non-object and malformed lines — and changes that keep
a file valid: a BOM, CRLF line ends, blank lines, padded strings, extra fields. `load_splits` gets the same
mutations in the validation file, plus rows that are also training rows (by qid / by question), which must
stop the job naming both files. The CLI's side (one stderr line, exit 2): tests/test_bad_input_cli.py.

Negative controls: `check` must reject loaders with the faults this property is for (a repeated qid silently
dropped, a UnicodeDecodeError escaping, an overlap let through)."""
from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from conftest import run_config
from ragqa_exp.data import REQUIRED_FIELDS, UTF8_BOM, load_splits, read_jsonl
from ragqa_exp.errors import DataError

VALID_KINDS = ("keep", "keep", "pad", "extra_field")
INVALID_KINDS = ("wrong_type", "missing", "empty", "bad_item", "dup", "bad_bytes", "surrogate", "not_object",
                 "malformed")
OVERLAP_KINDS = ("overlap_qid", "overlap_question")
WRONG_VALUES = {str: [1, 1.5, None, True, [], {}, ["x"]], list: [1, None, "a b", {}, True]}
BLANKS = [b"", b" ", b"\t", "\u3000".encode(), b"\r"]
BAD_BYTES = [b"\xff", b"\xc3", b"\x80", b"\xed\xa0\x80", b"\xfe\xff"]
TRAIN = [{"qid": f"t{i}", "question": f"training question {i}?", "answer": "a", "answers": ["a"],
          "context": ["a passage"]} for i in range(3)]

# strings with at least one visible character (no surrogates: st.characters leaves them out by default)
TEXT = st.text(min_size=1, max_size=10).filter(lambda s: s.strip())


@dataclass
class DataFile:
    lines: list[bytes] = field(default_factory=list)  # without their line ends
    bad: set[int] = field(default_factory=set)  # 1-based numbers of the lines that must fail
    rows: list[dict] = field(default_factory=list)  # what a loader returns when `bad` is empty
    overlap: bool = False  # a row is also a training row
    bom: bool = False
    crlf: bool = False

    def write(self, path: Path) -> Path:
        end = b"\r\n" if self.crlf else b"\n"
        path.write_bytes((UTF8_BOM if self.bom else b"") + end.join(self.lines) + end)
        return path


@st.composite
def valid_rows(draw, i: int) -> dict:
    row = {"qid": f"q{i}:{draw(TEXT)}", "question": "V" + draw(TEXT), "answer": draw(TEXT),
           "answers": draw(st.lists(TEXT, max_size=2)), "context": draw(st.lists(TEXT, min_size=1, max_size=3))}
    return row


def mutate(draw, kind: str, row: dict, earlier_qids: list[str]) -> tuple[bytes, bool]:
    """The line for `row` mutated by `kind`, and whether it is still a valid row (`row` is updated to what a
    loader must return for it)."""
    ascii_only = draw(st.booleans())
    ok = True
    if kind == "pad":
        row["question"] = draw(st.sampled_from([" ", "\u3000", "\t"])) + row["question"] + " "
    elif kind == "extra_field":
        row[draw(st.sampled_from(["section", "note", "score"]))] = draw(st.one_of(TEXT, st.integers(), st.none()))
    elif kind == "wrong_type":
        key = draw(st.sampled_from(sorted(REQUIRED_FIELDS)))
        row[key], ok = draw(st.sampled_from(WRONG_VALUES[REQUIRED_FIELDS[key]])), False
    elif kind == "missing":
        del row[draw(st.sampled_from(sorted(REQUIRED_FIELDS)))]
        ok = False
    elif kind == "empty":
        key = draw(st.sampled_from(["qid", "question", "answer", "context"]))
        blank = draw(st.sampled_from(["", " ", "\t\u3000"]))
        row[key], ok = ([blank] * draw(st.integers(0, 2)) if key == "context" else blank), False
    elif kind == "bad_item":
        key = draw(st.sampled_from(["answers", "context"]))
        row[key] = [*row[key], draw(st.sampled_from([1, None, ["x"], {}]))]
        ok = False
    elif kind == "dup" and earlier_qids:
        row["qid"], ok = draw(st.sampled_from(earlier_qids)), False
    elif kind == "surrogate":
        row["question"] += draw(st.sampled_from(["\ud800", "\udfff"]))
        ascii_only, ok = True, False  # written as JSON's \ud800 escape
    elif kind == "overlap_qid":  # two of them may pick the same training qid: a repeated qid, then
        row["qid"] = draw(st.sampled_from(TRAIN))["qid"]
        ok = False if row["qid"] in earlier_qids else None
    elif kind == "overlap_question":
        row["question"], ok = draw(st.sampled_from(TRAIN))["question"], None
    raw = json.dumps(row, ensure_ascii=ascii_only).encode("utf-8")
    if kind == "bad_bytes":
        at = draw(st.integers(0, len(raw)))
        raw, ok = raw[:at] + draw(st.sampled_from(BAD_BYTES)) + raw[at:], False
    elif kind == "not_object":
        raw = json.dumps(draw(st.sampled_from([[row], 1, "text", None, True]))).encode()
        ok = False
    elif kind == "malformed":
        raw, ok = draw(st.sampled_from([raw[:-1], raw + b"x", raw.replace(b":", b"=", 1)])), False
    return raw, ok


@st.composite
def data_files(draw, fault: str | None) -> DataFile:
    """1-6 rows; one or two of them mutated by `fault` (none: a valid file), the others by changes that keep
    them valid, so that each fault is found by itself."""
    f = DataFile(bom=draw(st.booleans()), crlf=draw(st.booleans()))
    qids: list[str] = []
    n = draw(st.integers(1, 6))
    faulty = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=2, unique=True)) if fault else []
    for i in range(n):
        f.lines += [draw(st.sampled_from(BLANKS)) for _ in range(draw(st.integers(0, 1)))]
        row = draw(valid_rows(i))
        kind = fault if i in faulty else draw(st.sampled_from(VALID_KINDS))
        raw, ok = mutate(draw, kind, row, qids)
        f.lines.append(raw)
        qids.append(row.get("qid"))
        if ok is False:
            f.bad.add(len(f.lines))
        else:
            f.rows.append(json.loads(json.dumps(row)))
            f.overlap |= ok is None
    return f


def check(load: Callable[[Path], list[dict]], f: DataFile, path: Path, also_named: tuple[Path, ...] = ()) -> str:
    """`load(path)` returns exactly `f.rows`, or raises one DataError line naming the file and a bad line (an
    overlap: both files); anything else is an AssertionError. Returns what happened (for `event`)."""
    expect_error = bool(f.bad) or f.overlap
    try:
        rows = load(path)
    except DataError as ex:
        line = str(ex)
        assert expect_error, f"a valid file was refused: {line}"
        assert "\n" not in line and line.strip() == line, f"not one line: {line!r}"
        if f.bad:
            assert any(line.startswith(f"{path}:{n}: ") for n in f.bad), f"names no bad line {sorted(f.bad)}: {line}"
        else:
            assert all(str(p) in line for p in (path, *also_named)) and "data.allow_overlap=true" in line, line
        return "refused"
    except Exception as ex:  # noqa: BLE001  the property is about which exceptions come out
        raise AssertionError(f"{type(ex).__name__} escaped (a traceback for the user): {ex}") from ex
    assert not expect_error, f"accepted a file with bad lines {sorted(f.bad)} (overlap: {f.overlap})"
    assert len(rows) == len(f.rows), f"{len(f.rows)} valid rows written, {len(rows)} returned: rows were lost"
    assert rows == f.rows, "rows changed on the way in"
    return "accepted"


@lru_cache(maxsize=1)
def _jsonl_data_config():
    return run_config(["data=jsonl", "data.train_path=train.jsonl", "data.validation_path=validation.jsonl"]).data


PROPERTY = settings(max_examples=50, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("fault", [None, *INVALID_KINDS])
@PROPERTY
@given(data=st.data())
def test_read_jsonl_keeps_every_valid_row_or_stops_with_one_line_naming_file_and_line(fault, data):
    f = data.draw(data_files(fault), label="file")
    with tempfile.TemporaryDirectory() as tmp:
        path = f.write(Path(tmp) / "data.jsonl")
        event(check(read_jsonl, f, path))


@pytest.mark.parametrize("fault", [None, *INVALID_KINDS, *OVERLAP_KINDS])
@PROPERTY
@given(data=st.data())
def test_load_splits_checks_the_validation_file_and_its_overlap_with_training(fault, data):
    f = data.draw(data_files(fault), label="validation file")
    with tempfile.TemporaryDirectory() as tmp:
        train = DataFile(lines=[json.dumps(r).encode() for r in TRAIN], rows=TRAIN).write(Path(tmp) / "train.jsonl")
        path = f.write(Path(tmp) / "validation.jsonl")
        cfg = dataclasses.replace(_jsonl_data_config(), train_path=str(train), validation_path=str(path))
        event(check(lambda p: load_splits(cfg).validation, f, path, also_named=(train,)))


# --- negative controls: `check` catches the faults the property is about ------------------------------------------

def _file(*rows: dict, bad: set[int] = frozenset(), lines: list[bytes] | None = None) -> DataFile:
    return DataFile(lines=lines or [json.dumps(r).encode() for r in rows], bad=set(bad), rows=[r for r in rows])


def test_check_rejects_a_loader_that_drops_a_repeated_qid(tmp_path):
    """What the report did before issue 20: rows paired by qid, so the second of two rows was silently lost."""
    a, b = dict(TRAIN[0]), {**TRAIN[1], "qid": TRAIN[0]["qid"]}
    f = _file(a, bad={2}, lines=[json.dumps(a).encode(), json.dumps(b).encode()])
    path = f.write(tmp_path / "dup.jsonl")

    def by_qid(p: Path) -> list[dict]:
        return list({r["qid"]: r for r in (json.loads(x) for x in p.read_text().splitlines())}.values())

    with pytest.raises(AssertionError, match="accepted a file with bad lines"):
        check(by_qid, f, path)
    check(read_jsonl, f, path)


def test_check_rejects_a_loader_that_lets_a_decode_error_escape(tmp_path):
    f = _file(lines=[json.dumps(TRAIN[0]).encode() + b"\xff"], bad={1})
    path = f.write(tmp_path / "bytes.jsonl")
    with pytest.raises(AssertionError, match="UnicodeDecodeError escaped"):
        check(lambda p: [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines()], f, path)
    check(read_jsonl, f, path)


def test_check_rejects_a_loader_that_lets_an_overlap_through(tmp_path):
    f = _file(TRAIN[0])
    f.overlap = True
    path = f.write(tmp_path / "overlap.jsonl")
    with pytest.raises(AssertionError, match="accepted a file"):
        check(read_jsonl, f, path)  # read_jsonl alone does not compare with training: load_splits does
