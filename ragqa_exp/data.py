"""Rows of the RAG-QA task and the prompt format.

A row follows the hub schema of `hotchpotch/jaqket_v1_qa_wikija_context`:
`qid`, `question`, `answer`, `answers` (canonical first), `context` (list of "<記事名> <本文>" passages),
`section`; other fields are carried along untouched.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable

from ragqa_exp.config import DataConfig, DataSource
from ragqa_exp.errors import DataError

# The reference study's prompt (rinna/youri-7b-instruction's instruction format):
# system line, the question as the instruction, the retrieved passages as the input.
SYSTEM_PROMPT = "以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。"
PROMPT_TEMPLATE = SYSTEM_PROMPT + "\n\n### 指示:\n{question}\n\n### 入力:\n{context}\n\n### 応答:\n"

REQUIRED_FIELDS = {"qid": str, "question": str, "answer": str, "answers": list, "context": list}
BUNDLED_FILES = {"train": "jaqket_style_train.jsonl", "validation": "jaqket_style_validation.jsonl"}


@dataclass
class Splits:
    train: list[dict]
    validation: list[dict]

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
    if not row["answer"].strip():
        raise DataError(f"{where}: empty 'answer'")
    if not all(isinstance(p, str) for p in row["context"]):
        raise DataError(f"{where}: 'context' must be a list of strings")
    row["qid"] = str(row["qid"])
    return row


def read_jsonl(path: str | Path, name: str = "data file") -> list[dict]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{name}: file not found: {path} (check the path, e.g. data.train_path=/abs/path.jsonl)")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as ex:
                raise DataError(f"{path}:{lineno}: malformed JSON ({ex.msg}); fix or remove that line") from None
            rows.append(validate_row(obj, f"{path}:{lineno}"))
    if not rows:
        raise DataError(f"{path}: no rows (empty dataset); point {name} at a JSON Lines file with at least one row")
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
    for name, rows in splits.items():
        for i, row in enumerate(rows):
            validate_row(row, f"{cfg.hub_id}[{name}][{i}]")
    if cfg.resplit:
        allrows = [r for rows in splits.values() for r in rows]
        val_sections = set(cfg.validation_sections)
        return Splits(
            train=[r for r in allrows if r.get("section") not in val_sections],
            validation=[r for r in allrows if r.get("section") in val_sections],
        )
    return Splits(train=splits.get("train", []), validation=splits.get("validation", []))


def rows_identity(rows: list[dict]) -> str:
    """A hash of rows' content, for cache keys: a data file edited in place (same path, same config) gives
    new keys, so the stages that read it run again."""
    from ragqa_exp.cache import stage_key

    return stage_key("rows", {"rows": rows})


def load_splits(cfg: DataConfig) -> Splits:
    if cfg.source == DataSource.bundled:
        splits = Splits(*(read_jsonl(_bundled_path(s), f"bundled {s} split") for s in ("train", "validation")))
    elif cfg.source == DataSource.jsonl:  # both paths are set (DataConfig checks it)
        splits = Splits(read_jsonl(cfg.train_path, "data.train_path"), read_jsonl(cfg.validation_path, "data.validation_path"))
    elif cfg.source == DataSource.jaqket:
        splits = _load_hub(cfg)
    else:  # pragma: no cover - the enum is checked at compose time
        raise DataError(f"data.source={cfg.source!r}: choose bundled, jaqket or jsonl")
    for name in ("train", "validation"):
        if not splits.get(name):
            raise DataError(f"data: the {name} split is empty; check data.source / data.validation_sections")
    return splits
