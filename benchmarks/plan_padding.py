"""Where the canonical plan's prefill tokens go (issue 19: "measure the padding fraction first"), by arithmetic on
CPU: no model, only the tokenizer. The eval_speed.py prompts (the bundled validation set repeated to --prompts,
tokenized as model=llama2_7b_shapes tokenizes them) planned as the hf backend plans them (CanonicalPlan), for
several length buckets, token budgets and prefill budgets (`eval.max_prefill_tokens`: a batch prefilled in slices of
rows, only the slices holding a real question): prompt tokens prefilled, and their shares that are the questions'
own, padding to the bucket, and the copies that fill each bucket's last batch (decoded rows are listed too).

  python benchmarks/plan_padding.py --out benchmarks/results/plan_padding_7b.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def plan_tokens(plan, lens: list[int]) -> dict:
    """Prompt tokens the plan prefills for `lens`, split into the questions' own, padding and fill copies."""
    from ragqa_exp.backends.prefill import prefilled_rows

    batches = plan.batches(lens)
    prefilled = [prefilled_rows(real, plan.slice_rows(padded)) for _, real, padded in batches]
    computed = sum(n * padded for n, (_, _, padded) in zip(prefilled, batches))
    fill = sum((n - real) * padded for n, (_, real, padded) in zip(prefilled, batches))
    pad = sum(padded - lens[i] for rows, real, padded in batches for i in rows[:real])
    return {"batches": len(batches), "rows": sum(len(rows) for rows, _, _ in batches),
            "fill_rows": sum(len(rows) - real for rows, real, _ in batches), "prefilled_rows": sum(prefilled),
            "prefilled_fill_rows": sum(n - real for n, (_, real, _) in zip(prefilled, batches)), "computed_tokens": computed,
            "own": round(sum(lens) / computed, 4), "padding": round(pad / computed, 4), "fill": round(fill / computed, 4)}


def prompt_lengths(n_prompts: int) -> list[int]:
    """Token counts of eval_speed.py's prompts (the bundled validation set repeated to `n_prompts`), as
    model=llama2_7b_shapes's character-level tokenizer makes them."""
    from ragqa_exp.config_store import validate_overrides
    from ragqa_exp.data import format_prompt, load_splits
    from ragqa_exp.random_model import char_tokenizer

    cfg = validate_overrides(["model=llama2_7b_shapes"])
    rows = load_splits(cfg.data).validation
    rows = (rows * (n_prompts // len(rows) + 1))[:n_prompts]
    prompts = [format_prompt(r["question"], r["context"], cfg.data.max_passages) for r in rows]
    return [len(ids) for ids in char_tokenizer(cfg.model.init.vocab_size)(prompts, add_special_tokens=True)["input_ids"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=980)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--buckets", default="64,32,16")
    ap.add_argument("--budgets", default="65536,32768,16384")
    ap.add_argument("--prefills", default="none,16384,8192", help="eval.max_prefill_tokens values (none: whole batch)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    from ragqa_exp.backends.hf import CanonicalPlan

    lens = prompt_lengths(a.prompts)
    res = {"prompts": len(lens), "prompt_tokens": sum(lens), "mean": round(sum(lens) / len(lens), 2),
           "min": min(lens), "max": max(lens), "max_new_tokens": a.max_new_tokens, "plans": []}
    print(f"{len(lens)} prompts, {sum(lens)} tokens (mean {res['mean']}, {res['min']}-{res['max']})")
    print("| length bucket | token budget | prefill budget | batches | rows decoded (fill) | rows prefilled (fill) | "
          "prompt tokens prefilled | own | padding | fill |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for bucket in map(int, a.buckets.split(",")):
        for budget in map(int, a.budgets.split(",")):
            for prefill in a.prefills.split(","):
                prefill = None if prefill == "none" else int(prefill)
                if prefill is not None and prefill >= budget:
                    continue
                plan = CanonicalPlan(length_bucket=bucket, max_batch_tokens=budget, max_rows=256,
                                     max_new_tokens=a.max_new_tokens, max_prefill_tokens=prefill)
                t = {"length_bucket": bucket, "max_batch_tokens": budget, "max_prefill_tokens": prefill,
                     **plan_tokens(plan, lens)}
                res["plans"].append(t)
                print(f"| {bucket} | {budget} | {prefill or 'whole batch'} | {t['batches']} | {t['rows']} ({t['fill_rows']}) | "
                      f"{t['prefilled_rows']} ({t['prefilled_fill_rows']}) | {t['computed_tokens']:,} | {t['own']:.1%} | "
                      f"{t['padding']:.1%} | {t['fill']:.1%} |")
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
