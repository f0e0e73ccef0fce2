"""Issue 19's targets against measured runs: one markdown row per `eval_speed.py` variant (ours, transformers'
`generate_batch`) or `vllm_speed.py` run, with the card, the seconds, the target, the ratio to it, and the speed-up
over the issue's own figure of 2026-12-04 (an H200, the packed plan, transformers' dynamic cache).

    python benchmarks/target_table.py RESULT.json [RESULT.json ...] [--out TABLE.md]

A target holds for one workload only: 7B shapes (`model=llama2_7b_shapes`), 980 prompts and 16 new tokens, or the
embedded model's 360 questions at the eval's 32 new tokens. A run of another size gets its seconds and no ratio.
Rows are only as comparable as their cards: the card is printed in every row.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

# (workload, quant) -> seconds: the issue's targets (on an H200)
TARGETS_S = {("7b", "none"): 15.0, ("7b", "bnb"): 16.0, ("7b", "gptq"): 16.0, ("7b", "awq"): 16.0,
             ("embedded", "none"): 3.0}
# the issue's table, 2026-12-04, H200 (AWQ at 7B and the embedded model were not run then)
ISSUE_S = {("7b", "none"): 25.28, ("7b", "bnb"): 28.04, ("7b", "gptq"): 40.08}
SIZES = {"7b": (980, 16), "embedded": (360, 32)}  # (prompts, new tokens) a target is for


def workload(run: dict) -> Optional[str]:
    """"7b", "embedded" (no model override: the default model) or None (another model: no target)."""
    models = [o.split("=", 1)[1] for o in run.get("overrides") or [] if o.startswith("model=")]
    if not models:
        return "embedded"
    return "7b" if models[-1] == "llama2_7b_shapes" else None


def ratio(a: Optional[float], b: Optional[float]) -> str:
    return "–" if a is None or b is None else f"{a / b:.2f}x"


def rows(path: Path) -> list[dict]:
    """The rows of one result file: its variants (eval_speed.py) or its one run (vllm_speed.py)."""
    run = json.loads(path.read_text(encoding="utf-8"))
    work, quant = workload(run), run.get("quant", "none")
    sized = work is not None and (run.get("n_prompts"), run.get("max_new_tokens")) == SIZES[work]
    key = (work, quant) if sized else None
    base = {"card": run.get("device", "?"), "size": f"{run.get('n_prompts')} x {run.get('max_new_tokens')}",
            "target": TARGETS_S.get(key), "issue": ISSUE_S.get(key), "file": f"{path.parent.name}/{path.name}"}
    if "variants" not in run:  # vllm_speed.py
        what = f"vLLM {run.get('vllm', '?')}" + (", batch invariant" if run.get("batch_invariant") else "")
        return [{**base, "what": what, "s": run.get("eval_seconds_median"), "equal": "(other weights)"}]
    out = []
    for name, v in run["variants"].items():
        kind = name.split(":", 1)[0]
        what = f"transformers generate_batch ({name})" if kind == "continuous" else f"ours, {quant}, {name}"
        warm = run.get("warmup_prompts", {}).get(name)
        if warm is not None and warm != run.get("n_prompts"):  # its untimed pass on a subset (eval_speed.py)
            what += f", warmed up on {warm} prompts"
        equal = v.get("token_ids_equal_to_first_variant")
        out.append({**base, "what": what, "s": v.get("eval_seconds_median"),
                    "equal": v.get("error") or ("–" if equal is None else f"{equal}/{run.get('n_prompts')}")})
    return out


def table(paths: list[Path]) -> str:
    lines = ["| what | card | prompts x new tokens | s | target s | x target | 2026-12-04 s (H200) | speed-up over it "
             "| token ids equal to the file's first row | file |", "|---|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        for r in rows(path):
            s = "–" if r["s"] is None else f"{r['s']:.2f}"
            lines.append(f"| {r['what']} | {r['card']} | {r['size']} | {s} | {r['target'] or '–'} | {ratio(r['s'], r['target'])} "
                         f"| {r['issue'] or '–'} | {ratio(r['issue'], r['s'])} | {r['equal']} | {r['file']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    text = table(a.results)
    if a.out:
        a.out.write_text(text, encoding="utf-8")
    print(text, end="")


if __name__ == "__main__":
    main()
