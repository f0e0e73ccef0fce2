"""The prompt a local model sees, fitted to `train.max_length` tokens — the same rule in training and evaluation.

TRL cuts a sequence longer than `max_length` at its end (`truncation_mode="keep_start"`), which is where the
answer is: a long row would train on no answer. So rows are fitted before they reach TRL, from the prompt side:

    tokens(prompt + tail) + room <= train.max_length

where, in training, `tail` is the answer plus EOS (what TRL appends and tokenizes with the prompt) and room 0;
in evaluation, `tail` is empty and room is `eval.max_new_tokens` (the longest answer generated). A prompt that
does not fit loses its trailing passages (down to one), then the end of that passage's text; a row whose
question and answer alone do not fit is refused (DataError naming the row and `train.max_length`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ragqa_exp.data import format_prompt
from ragqa_exp.errors import DataError


@dataclass
class Fitted:
    prompt: str
    shortened: bool  # passages dropped or cut


def _largest(lo: int, hi: int, ok: Callable[[int], bool]) -> int | None:
    """The largest n in [lo, hi] with ok(n) (ok is monotone: true up to some n), or None."""
    if not ok(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return lo


def fit_prompt(count_tokens: Callable[[str], int], row: dict, max_passages: int | None, max_length: int,
               tail: str = "", room: int = 0, where: str = "") -> Fitted:
    """`row`'s prompt with as many of its first `max_passages` passages (and as much of the last kept one's
    text) as keep `count_tokens(prompt + tail) + room <= max_length`."""
    passages = list(row["context"])[:max_passages] if max_passages else list(row["context"])
    question = row["question"]

    def fits(ps: list[str]) -> bool:
        return count_tokens(format_prompt(question, ps) + tail) + room <= max_length

    if fits(passages):
        return Fitted(format_prompt(question, passages), False)
    keep = _largest(1, len(passages), lambda k: fits(passages[:k])) if passages else None
    if keep is not None:
        return Fitted(format_prompt(question, passages[:keep]), True)
    first = passages[0] if passages else ""
    chars = _largest(0, len(first), lambda c: fits([first[:c]]))
    if chars is None:
        need = count_tokens(format_prompt(question, [""]) + tail) + room
        raise DataError(
            f"{where or 'row'} qid={row.get('qid')!r}: its question and answer alone take {need} tokens "
            f"(with the prompt template{', the answer room' if room else ''}), more than train.max_length={max_length}; "
            "raise train.max_length or remove the row"
        )
    return Fitted(format_prompt(question, [first[:chars]]), True)


def token_counter(tokenizer: Any) -> Callable[[str], int]:
    """Tokens of a text as TRL and the backends tokenize it (with the tokenizer's special tokens, e.g. BOS)."""
    return lambda text: len(tokenizer(text)["input_ids"])


def sft_examples(tokenizer: Any, rows: list[dict], max_passages: int | None, max_length: int,
                 where: str = "training row") -> tuple[list[dict], int]:
    """TRL prompt/completion pairs (loss on the completion, the answer) that fit `max_length` whole, and how
    many rows were shortened to fit."""
    count = token_counter(tokenizer)
    eos = tokenizer.eos_token or ""
    out, shortened = [], 0
    for row in rows:
        fitted = fit_prompt(count, row, max_passages, max_length, tail=row["answer"] + eos, where=where)
        shortened += fitted.shortened
        out.append({"prompt": fitted.prompt, "completion": row["answer"]})
    return out, shortened


def eval_prompter(cfg: Any, model_dir: str | None, tokenizer: Any = None) -> Callable[[list[dict]], list[str]]:
    """rows -> their evaluation prompts under the training rule (room: `eval.max_new_tokens`), with the
    evaluated model's tokenizer (`tokenizer`, or loaded from `model_dir`: a Gemma 3 tokenizer takes ~3.5 s of
    CPU to load). An API model (no local tokenizer) gets the prompts unfitted."""
    if cfg.model.is_api or model_dir is None:
        return lambda rows: [format_prompt(r["question"], r["context"], cfg.data.max_passages) for r in rows]
    if tokenizer is None:
        from ragqa_exp.loading import load_tokenizer

        tokenizer = load_tokenizer(model_dir, cfg.model)
    count = token_counter(tokenizer)
    return lambda rows: [fit_prompt(count, r, cfg.data.max_passages, cfg.train.max_length,
                                    room=cfg.eval.max_new_tokens, where="evaluation row").prompt for r in rows]
