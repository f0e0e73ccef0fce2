"""Validate one hand-written fact file (tools/bundled_data/facts/<name>.json).

Usage: python tools/bundled_data/check_facts.py tools/bundled_data/facts/geography.json [...]
Prints one line per problem and a summary; exits 1 when any problem is found.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

CATEGORIES = {
    "geography", "history", "science", "technology", "literature", "arts",
    "music", "anime", "sports", "food", "politics", "economy",
}
TYPES = {"person", "place", "work", "organisation", "thing", "event"}


def check_entity(e: dict, where: str) -> list[str]:
    errs = []
    for key in ("id", "category", "type", "answer", "aliases", "passages", "questions"):
        if key not in e:
            errs.append(f"{where}: missing key {key!r}")
    if errs:
        return errs
    if e["category"] not in CATEGORIES:
        errs.append(f"{where}: category {e['category']!r} not in {sorted(CATEGORIES)}")
    if e["type"] not in TYPES:
        errs.append(f"{where}: type {e['type']!r} not in {sorted(TYPES)}")
    ans = e["answer"]
    if not isinstance(ans, str) or not ans or ans != ans.strip():
        errs.append(f"{where}: bad answer {ans!r}")
    if not isinstance(e["aliases"], list) or not all(isinstance(a, str) and a for a in e["aliases"]):
        errs.append(f"{where}: aliases must be a list of non-empty strings")
    ps = e["passages"]
    if not isinstance(ps, list) or not 1 <= len(ps) <= 2:
        errs.append(f"{where}: passages must be a list of 1 or 2 strings")
        return errs
    for i, p in enumerate(ps):
        if not isinstance(p, str) or " " not in p:
            errs.append(f"{where}: passage {i} must be '<記事名> <本文>' (one half-width space after the title)")
            continue
        title, body = p.split(" ", 1)
        if not 60 <= len(body) <= 200:
            errs.append(f"{where}: passage {i} body has {len(body)} chars (need 60-200)")
        if "\n" in p:
            errs.append(f"{where}: passage {i} contains a newline")
    if ps and isinstance(ps[0], str) and " " in ps[0]:
        body0 = ps[0].split(" ", 1)[1]
        if ans not in body0:
            errs.append(f"{where}: answer {ans!r} does not occur verbatim in the BODY of passage 0")
    qs = e["questions"]
    if not isinstance(qs, list) or not 1 <= len(qs) <= 3:
        errs.append(f"{where}: questions must be a list of 1-3 objects")
        return errs
    for j, q in enumerate(qs):
        if not isinstance(q, dict) or "q" not in q or "support" not in q:
            errs.append(f"{where}: question {j} must be {{'q': str, 'support': [passage indices]}}")
            continue
        text = q["q"]
        if ans in text or any(a in text for a in e["aliases"]):
            errs.append(f"{where}: question {j} gives the answer away")
        if not (text.endswith("?") or text.endswith("？")):
            errs.append(f"{where}: question {j} should end with '?'")
        sup = q["support"]
        if not sup or not all(isinstance(k, int) and 0 <= k < len(ps) for k in sup):
            errs.append(f"{where}: question {j} support {sup!r} must index passages")
        elif not any(ans in ps[k] for k in sup):
            errs.append(f"{where}: question {j}: answer not in any supporting passage")
    return errs


def main(paths: list[str]) -> int:
    n_err = n_ent = n_q = 0
    seen_ans: dict[str, str] = {}
    seen_q: set[str] = set()
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as ex:
            print(f"{path}: invalid JSON: {ex}")
            n_err += 1
            continue
        for k, e in enumerate(data):
            where = f"{path}#{k}({e.get('id', '?')})"
            errs = check_entity(e, where)
            a = e.get("answer")
            if a in seen_ans:
                errs.append(f"{where}: answer {a!r} duplicates {seen_ans[a]}")
            seen_ans[a] = where
            for q in e.get("questions", []):
                t = q.get("q") if isinstance(q, dict) else None
                if t in seen_q:
                    errs.append(f"{where}: duplicate question {t!r}")
                seen_q.add(t)
                n_q += 1
            for m in errs:
                print(m)
            n_err += len(errs)
            n_ent += 1
    print(f"{n_ent} entities, {n_q} questions, {n_err} problems")
    return 1 if n_err else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
