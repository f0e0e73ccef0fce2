"""Answer metrics.

- `exact`: prediction == the canonical `answer`; `partial`: `answer` occurs inside the prediction
  (the reference study's two numbers, comparable with it).
- `exact_normalized` / `partial_normalized`: the same after `normalize` (NFKC, no whitespace, no
  quote/bracket marks) on both sides, and against every accepted form in `answers` (canonical + aliases).
"""
from __future__ import annotations

import re
import unicodedata

# Brackets and quotes that wrap an answer without being part of it: 「」『』 ""'' “” ‘’
_STRIP_CHARS = "「」『』\"'“”‘’"
_STRIP_RE = re.compile("[" + re.escape(_STRIP_CHARS) + r"\s]")


def normalize(text: str) -> str:
    return _STRIP_RE.sub("", unicodedata.normalize("NFKC", text))


def clean_prediction(generated: str) -> str:
    """The answer is the generated text up to the first newline (EOS is cut by the tokenizer)."""
    return generated.strip().split("\n", 1)[0].strip()


def match(pred: str, answer: str, answers: list[str] | None = None) -> dict[str, bool]:
    """Scores one prediction. `answers`: all accepted forms (defaults to [answer])."""
    answers = [a for a in (answers or []) if a] + [answer]
    npred = normalize(pred)
    return {
        "exact": pred == answer,
        "partial": bool(answer) and answer in pred,
        "exact_normalized": any(npred == normalize(a) for a in answers),
        "partial_normalized": any(normalize(a) and normalize(a) in npred for a in answers),
    }


def aggregate(scores: list[dict[str, bool]]) -> dict[str, float | int]:
    n = len(scores)
    out: dict[str, float | int] = {"n": n}
    for key in ("exact", "partial", "exact_normalized", "partial_normalized"):
        out[key.replace("exact", "exact_match").replace("partial", "partial_match")] = (
            round(sum(s[key] for s in scores) / n, 4) if n else 0.0
        )
    return out
