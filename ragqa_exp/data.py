"""Rows of the RAG-QA task and the prompt format.

A row follows the hub schema of `hotchpotch/jaqket_v1_qa_wikija_context`:
`qid`, `question`, `answer`, `answers` (canonical first), `context` (list of "<記事名> <本文>" passages),
`section`; other fields are carried along untouched.

Checks, each a one-line DataError naming the file and line (hub rows: `<hub_id>[<split>][<index>]`): UTF-8
(a BOM at the start is accepted), JSON, one object per line, the fields and their types, a non-empty `qid`,
`question` and `answer`, at least one non-empty passage (a RAG reader: no closed-book rows), a qid once per
file/split. Between the splits: validation rows also in training (by qid, by normalized question) are
counted (`Splits.overlap`), and more than `MAX_OVERLAP` of validation stops the job unless
`data.allow_overlap=true`.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable

from ragqa_exp.config import DataConfig, DataSource
from ragqa_exp.errors import DataError
from ragqa_exp.metrics import normalize

log = logging.getLogger(__name__)

# The reference study's prompt (rinna/youri-7b-instruction's instruction format):
# system line, the question as the instruction, the retrieved passages as the input.
SYSTEM_PROMPT = "以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。"
PROMPT_TEMPLATE = SYSTEM_PROMPT + "\n\n### 指示:\n{question}\n\n### 入力:\n{context}\n\n### 応答:\n"

REQUIRED_FIELDS = {"qid": str, "question": str, "answer": str, "answers": list, "context": list}
BUNDLED_FILES = {"train": "jaqket_style_train.jsonl", "validation": "jaqket_style_validation.jsonl"}
UTF8_BOM = b"\xef\xbb\xbf"
MAX_OVERLAP = 0.01  # share of validation rows that may also be training rows (by qid or question) unflagged
CHECK_ONLY_FIELDS = ("allow_overlap",)  # DataConfig fields that change no row (not in the cache keys)


@dataclass(frozen=True)
class Overlap:
    """Validation rows that are also training rows: by qid, by normalized question (metrics.normalize),
    either way (`rows`), and the qid of the first such row."""
    qid: int = 0
    question: int = 0
    rows: int = 0
    example: str | None = None


@dataclass
class Splits:
    train: list[dict]
    validation: list[dict]
    overlap: Overlap = Overlap()

    def get(self, name: str) -> list[dict]:
        if name not in ("train", "validation"):
            raise DataError(f"eval.split={name!r}: choose train or validation")
        return getattr(self, name)


def format_prompt(question: str, context: Iterable[str], max_passages: int | None = None) -> str:
    passages = list(context)[:max_passages] if max_passages else list(context)
    return PROMPT_TEMPLATE.format(question=question, context="\n".join(passages))


def to_sft_example(row: dict, max_passages: int | None = None) -> dict:
    """A TRL prompt/completion pair: loss is computed on the completion (the answer) only."""
    return {"prompt": format_prompt(row["question"], row["context"], max_passages), "completion": row["answer"]}


def validate_row(row: object, where: str) -> dict:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key, typ in REQUIRED_FIELDS.items():
        if key not in row:
            raise DataError(f"{where}: missing field {key!r} (needs {', '.join(REQUIRED_FIELDS)})")
        if not isinstance(row[key], typ):
            raise DataError(f"{where}: field {key!r} must be {typ.__name__}, got {type(row[key]).__name__}")
    for key in ("qid", "question", "answer"):
        if not row[key].strip():
            raise DataError(f"{where}: empty {key!r}; write the {key} or remove that row")
    for key in ("answers", "context"):
        if not all(isinstance(x, str) for x in row[key]):
            raise DataError(f"{where}: {key!r} must be a list of strings")
    if not any(p.strip() for p in row["context"]):
        raise DataError(f"{where}: empty 'context' (no passage to read the answer from); give the row at least "
                        "one passage or remove it (closed-book rows are not supported)")
    strings = [(k, row[k]) for k in ("qid", "question", "answer")]
    strings += [(f"{k}[{i}]", x) for k in ("answers", "context") for i, x in enumerate(row[k])]
    for key, value in strings:  # JSON's \ud800 escapes decode to lone surrogates: not text, no file can hold them
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as ex:
            raise DataError(f"{where}: {key} holds a lone surrogate \\u{ord(value[ex.start]):04x} (a broken "
                            "\\u escape); fix that string") from None
    return row


def check_unique_qids(rows: list[dict], wheres: list[str], refs: list[str]) -> None:
    """Each qid once: answers are stored and paired by qid (predictions, the report's paired tests), so a
    repeated one would silently drop a row. `wheres`: each row's location; `refs`: how a second row names the
    first (a line number in the same file, or the full location)."""
    first: dict[str, int] = {}
    for i, row in enumerate(rows):
        j = first.setdefault(row["qid"], i)
        if j != i:
            raise DataError(f"{wheres[i]}: qid {row['qid']!r} repeats {refs[j]}; give every row its own qid "
                            "(answers are paired by qid)")


def _decode_line(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as ex:
        column = len(raw[: ex.start].decode("utf-8")) + 1
        raise DataError(f"{where}: not UTF-8 (undecodable byte 0x{raw[ex.start]:02x} at column {column}); "
                        "save the file as UTF-8") from None


def read_jsonl(path: str | Path, name: str = "data file") -> list[dict]:
    """The rows of a JSON Lines file (lines end at \\n, \\r\\n too; blank lines skipped; a UTF-8 BOM at the
    start accepted), every row checked (`validate_row`, each qid once)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{name}: file not found: {path} (check the path, e.g. data.train_path=/abs/path.jsonl)")
    try:
        data = path.read_bytes()
    except OSError as ex:
        raise DataError(f"{name}: cannot read {path} ({ex.strerror or type(ex).__name__}); make it readable") from None
    data = data.removeprefix(UTF8_BOM)
    rows, lines = [], []
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        line = _decode_line(raw, f"{path}:{lineno}")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as ex:
            raise DataError(f"{path}:{lineno}: malformed JSON ({ex.msg}); fix or remove that line") from None
        rows.append(validate_row(obj, f"{path}:{lineno}"))
        lines.append(lineno)
    if not rows:
        raise DataError(f"{path}: no rows (empty dataset); point {name} at a JSON Lines file with at least one row")
    check_unique_qids(rows, [f"{path}:{n}" for n in lines], [f"line {n}" for n in lines])
    return rows


def _bundled_path(split: str) -> Path:
    return Path(str(resources.files("ragqa_exp").joinpath("resources", BUNDLED_FILES[split])))


def _load_hub(cfg: DataConfig) -> Splits:
    try:
        import datasets
    except ImportError as ex:  # pragma: no cover - datasets is a core dependency
        raise DataError(f"data=jaqket needs the `datasets` package: pip install datasets ({ex})") from None
    try:
        ds = datasets.load_dataset(cfg.hub_id)
    except Exception as ex:
        raise DataError(
            f"data.hub_id={cfg.hub_id!r}: could not load from the hub ({type(ex).__name__}: {str(ex).splitlines()[0][:200]}); "
            "check the network/HF_TOKEN or use data=jsonl with local files"
        ) from None
    return split_hub_rows({name: [dict(r) for r in ds[name]] for name in ds}, cfg)


def split_hub_rows(splits: dict[str, list[dict]], cfg: DataConfig) -> Splits:
    """The hub's splits → train/validation. With `resplit`, validation = rows whose `section` is one of
    `validation_sections` (the JAQKET test sections), train = all other rows of every split."""
    where = {id(row): f"{cfg.hub_id}[{name}][{i}]" for name, rows in splits.items() for i, row in enumerate(rows)}
    for rows in splits.values():
        for row in rows:
            validate_row(row, where[id(row)])
    if cfg.resplit:
        allrows = [r for rows in splits.values() for r in rows]
        val_sections = set(cfg.validation_sections)
        out = Splits(
            train=[r for r in allrows if r.get("section") not in val_sections],
            validation=[r for r in allrows if r.get("section") in val_sections],
        )
    else:
        out = Splits(train=splits.get("train", []), validation=splits.get("validation", []))
    for rows in (out.train, out.validation):
        locations = [where[id(r)] for r in rows]
        check_unique_qids(rows, locations, locations)
    return out


def overlap(train: list[dict], validation: list[dict]) -> Overlap:
    """Validation rows that are also in training, by qid and by question text as metrics.normalize reads it
    (NFKC, no whitespace, quotes or brackets)."""
    qids = {r["qid"] for r in train}
    questions = {normalize(r["question"]) for r in train}
    by_qid = [r["qid"] in qids for r in validation]
    by_question = [normalize(r["question"]) in questions for r in validation]
    either = [r["qid"] for r, q, t in zip(validation, by_qid, by_question) if q or t]
    return Overlap(qid=sum(by_qid), question=sum(by_question), rows=len(either), example=either[0] if either else None)


def check_overlap(ov: Overlap, n_validation: int, cfg: DataConfig, train_name: str, validation_name: str) -> None:
    """More than MAX_OVERLAP of validation also in training stops the job (the model would be scored on what it
    was trained on), unless `data.allow_overlap=true`; any overlap is logged."""
    if not ov.rows:
        return
    share = ov.rows / n_validation
    what = (f"{ov.rows} of {n_validation} validation rows ({share:.1%}) are also training rows (by qid: {ov.qid}, "
            f"by normalized question: {ov.question}; e.g. qid {ov.example!r}): validation {validation_name}, "
            f"train {train_name}")
    if share > MAX_OVERLAP and not cfg.allow_overlap:
        raise DataError(f"data: {what}; use disjoint files, or set data.allow_overlap=true if this is intended")
    log.warning("data: %s%s", what, " (data.allow_overlap=true)" if cfg.allow_overlap else "")


def rows_identity(rows: list[dict]) -> str:
    """A hash of rows' content, for cache keys: a data file edited in place (same path, same config) gives
    new keys, so the stages that read it run again."""
    from ragqa_exp.cache import stage_key

    return stage_key("rows", {"rows": rows})


def load_splits(cfg: DataConfig) -> Splits:
    """Both splits, every row checked, and their overlap counted (and checked: `check_overlap`)."""
    if cfg.source == DataSource.bundled:
        names = tuple(str(_bundled_path(s)) for s in ("train", "validation"))
        splits = Splits(*(read_jsonl(_bundled_path(s), f"bundled {s} split") for s in ("train", "validation")))
    elif cfg.source == DataSource.jsonl:  # both paths are set (DataConfig checks it)
        names = (cfg.train_path, cfg.validation_path)
        splits = Splits(read_jsonl(cfg.train_path, "data.train_path"), read_jsonl(cfg.validation_path, "data.validation_path"))
    elif cfg.source == DataSource.jaqket:
        names = (f"{cfg.hub_id} (train)", f"{cfg.hub_id} (validation)")
        splits = _load_hub(cfg)
    else:  # pragma: no cover - the enum is checked at compose time
        raise DataError(f"data.source={cfg.source!r}: choose bundled, jaqket or jsonl")
    for name in ("train", "validation"):
        if not splits.get(name):
            raise DataError(f"data: the {name} split is empty; check data.source / data.validation_sections")
    splits.overlap = overlap(splits.train, splits.validation)
    check_overlap(splits.overlap, len(splits.validation), cfg, *names)
    return splits
