"""Build the bundled JAQKET-style dataset from the hand-written fact files.

    python tools/bundled_data/build.py [OUT_DIR]   # default: ragqa_exp/resources/jaqket_style_{train,validation}.jsonl

Each fact entity (tools/bundled_data/facts/*.json, written for this project) has 1-2 passages that mention
its answer and 1-3 questions, each naming the passages that support it. An item = one question, its
supporting passage(s), and distractor passages taken from OTHER entities of the same category in the SAME
split (so no validation passage appears in train), chosen among those sharing the most character bigrams
with the question, never containing the answer. Entities (not questions) are split train/validation per
category, so the splits share no answer entity. Deterministic: fixed seed, sorted inputs.
"""
from __future__ import annotations

import json
import random
import sys
import unicodedata
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent.parent / "ragqa_exp" / "resources"
SEED = 20261128
VALIDATION_FRACTION = 0.2
SOURCE = "ragqa_exp-bundled-v1 (hand-written for ragqa_exp; CC BY-SA 4.0)"


def norm(s: str) -> str:
    return unicodedata.normalize("NFKC", s).replace(" ", "")


def bigrams(s: str) -> set[str]:
    s = norm(s)
    return {s[i : i + 2] for i in range(len(s) - 1)}


def load_entities() -> list[dict]:
    seen, out = set(), []
    for path in sorted((HERE / "facts").glob("*.json")):
        for e in json.loads(path.read_text(encoding="utf-8")):
            if norm(e["answer"]) in seen:
                print(f"skip duplicate answer {e['answer']!r} ({path.name} {e['id']})", file=sys.stderr)
                continue
            seen.add(norm(e["answer"]))
            out.append(e)
    return out


def split_entities(entities: list[dict], rng: random.Random) -> dict[str, list[dict]]:
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for e in entities:
        by_cat[e["category"]].append(e)
    splits: dict[str, list[dict]] = {"train": [], "validation": []}
    for cat in sorted(by_cat):
        group = sorted(by_cat[cat], key=lambda e: e["id"])
        rng.shuffle(group)
        n_val = round(len(group) * VALIDATION_FRACTION)
        splits["validation"] += group[:n_val]
        splits["train"] += group[n_val:]
    return splits


def mentions(passage: str, e: dict) -> bool:
    p = norm(passage)
    return any(norm(a) in p for a in [e["answer"], *e["aliases"]] if a)


def build_items(split: str, entities: list[dict], rng: random.Random) -> list[dict]:
    pool: dict[str, list[tuple[str, str]]] = defaultdict(list)  # category -> (entity id, passage)
    for e in entities:
        for p in e["passages"]:
            pool[e["category"]].append((e["id"], p))
    items = []
    for e in sorted(entities, key=lambda e: e["id"]):
        for q in e["questions"]:
            support = [e["passages"][k] for k in q["support"]]
            # distractors: same category & split, another entity, no mention of this answer
            cands = [p for eid, p in pool[e["category"]] if eid != e["id"] and not mentions(p, e)]
            key = bigrams(q["q"]) | bigrams(" ".join(support))
            cands.sort(key=lambda p: (-len(bigrams(p) & key), p))
            n_total = rng.choice([4, 5])
            n_distract = max(0, n_total - len(support))
            top = cands[: max(n_distract * 3, n_distract)]
            distractors = rng.sample(top, min(n_distract, len(top)))
            context = support + distractors
            rng.shuffle(context)
            items.append({
                "qid": "",
                "question": q["q"],
                "answer": e["answer"],
                "answers": [e["answer"], *[a for a in e["aliases"] if a != e["answer"]]],
                "context": context,
                "section": split,
                "category": e["category"],
                "type": e["type"],
                "entity_id": e["id"],
                "source": SOURCE,
            })
    rng.shuffle(items)
    prefix = "RQT" if split == "train" else "RQV"
    for i, it in enumerate(items, 1):
        it["qid"] = f"{prefix}-{i:05d}"
    return items


def main(out: Path = OUT) -> None:
    rng = random.Random(SEED)
    entities = load_entities()
    splits = split_entities(entities, rng)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation"):
        items = build_items(split, splits[split], rng)
        path = out / f"jaqket_style_{split}.jsonl"
        path.write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items), encoding="utf-8")
        print(f"{split}: {len(splits[split])} entities, {len(items)} items -> {path}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
