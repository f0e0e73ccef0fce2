"""The floor of the exact eval at 7B shapes (issue 19): what the eval's own canonical plan must compute, priced at the
rates a GPU profile measured. No GPU needed: the plan comes from the prompts' lengths (the 7B-shapes tokenizer is
character-level: a prompt's tokens are its characters and a BOS), the rates from `profile_eval.py`'s JSON.

- prefill: the tokens the plan prefills (each batch's slices up to the one holding its last real row, `padded - 1`
  tokens a row: prefill.prefill_slices), against the prompts' own;
- GEMM and masked attention: the profile's `prefill` milliseconds per prefilled token of its batch, times those tokens
  (the attention kernel is the one the answers are made with; the GEMMs run near cuBLAS's best);
- decode: every step reads the weights and the filled KV cache of its batch once (14 batches x 16 steps at the
  defaults, the first on the prompt's last token), at the card's memory bandwidth.

Everything else (norms, RoPE, copies, host gaps) counted free: a floor, not a forecast.

  python benchmarks/exact_floor.py benchmarks/results/h100_2026-12-07_session21/profile_7b_none_pieces_32k.json --out floor.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from plan_padding import plan_tokens, prompt_lengths  # noqa: E402

BANDWIDTH_TB_S = {"H100 (3.35 TB/s)": 3.35, "H200 (4.8 TB/s)": 4.8}


def prefilled_tokens(plan, lengths: list[int]) -> int:
    """The tokens the eval's prefill forwards take under `plan` (a CanonicalPlan): plan_padding.py's prefilled rows
    (each batch's slices up to the one holding its last real row) at `padded - 1` tokens each (prefill.prefill_slices:
    a row's last token is the first decode step's)."""
    t = plan_tokens(plan, lengths)
    return t["computed_tokens"] - t["prefilled_rows"]


def floor(profile: dict, lengths: list[int], max_batch_tokens: int = 65536, max_prefill_tokens: int = 16384,
          max_new_tokens: int = 16, length_bucket: int = 64, max_rows: int = 256, layers: int = 32, hidden: int = 4096,
          weight_bytes: float = 6.74e9 * 2) -> dict:
    from ragqa_exp.backends.hf import CanonicalPlan

    plan = CanonicalPlan(length_bucket=length_bucket, max_batch_tokens=max_batch_tokens, max_rows=max_rows,
                         max_new_tokens=max_new_tokens, max_prefill_tokens=max_prefill_tokens)
    batches = plan.batches(lengths)
    prefilled, padding, decode_bytes = prefilled_tokens(plan, lengths), 0, 0
    for rows, n_real, padded in batches:
        padding += sum(padded - lengths[i] for i in rows[:n_real])
        for step in range(max_new_tokens):  # a step per new token, the first on the prompt's last token; the KV
            # cache read is its filled part only (the masked kernel reads the whole static cache: a floor)
            decode_bytes += weight_bytes + len(rows) * (padded + step) * layers * 2 * hidden * 2
    real = sum(n - 1 for n in lengths)
    batch = profile["batch"]
    per_token_ms = {k: profile["prefill"]["profile"]["by_category_ms"][k] / (batch["rows"] * batch["padded_length"])
                    for k in ("GEMM", "attention")}
    gemm_s, attention_s = (per_token_ms[k] * prefilled / 1000 for k in ("GEMM", "attention"))
    decode = {card: round(decode_bytes / (bw * 1e12), 2) for card, bw in BANDWIDTH_TB_S.items()}
    return {"profile_device": profile.get("device"), "prompts": len(lengths), "batches": len(batches),
            "prompt_prefix_tokens": real, "prefilled_tokens": prefilled, "extra_fraction": round(prefilled / real - 1, 4),
            "padding_in_real_rows_fraction": round(padding / real, 4),
            "gemm_s": round(gemm_s, 2), "masked_attention_s": round(attention_s, 2),
            "decode_steps": len(batches) * max_new_tokens, "decode_bytes_TB": round(decode_bytes / 1e12, 2),
            "decode_floor_s": decode,
            "floor_s": {card: round(gemm_s + attention_s + d, 1) for card, d in decode.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", type=Path, help="profile_eval.py's JSON (its `prefill` piece and `batch`)")
    ap.add_argument("--prompts", type=int, default=980)
    ap.add_argument("--buckets", default="64,32,16", help="eval.length_bucket values besides the default's 64")
    ap.add_argument("--prefills", default="16384,8192", help="eval.max_prefill_tokens values (16384: a GPU's default)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    profile, lengths = json.loads(a.profile.read_text(encoding="utf-8")), prompt_lengths(a.prompts)
    res = floor(profile, lengths)  # the defaults: bucket 64, 65,536 tokens a batch, slices of 16,384
    res["profile"] = str(a.profile)
    res["other_plans"] = [{"length_bucket": b, "max_prefill_tokens": p, **floor(profile, lengths, length_bucket=b,
                                                                                max_prefill_tokens=p)}
                          for b in map(int, a.buckets.split(",")) for p in map(int, a.prefills.split(","))]
    for r in res["other_plans"]:
        r.pop("profile_device")
        print(f"bucket {r['length_bucket']}, prefill slices of {r['max_prefill_tokens']}: {r['prefilled_tokens']:,} tokens "
              f"prefilled (+{r['extra_fraction']:.1%}), floor {r['floor_s']}", flush=True)
    text = json.dumps(res, indent=1)
    print(json.dumps({k: v for k, v in res.items() if k != "other_plans"}, indent=1))
    if a.out:
        a.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
