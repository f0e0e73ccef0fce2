"""benchmarks/target_table.py: issue 19's targets against result files, on committed results and made-up ones."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import target_table  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def test_committed_runs_get_their_targets_and_the_issues_figures():
    rows = {r["what"]: r for r in target_table.rows(RESULTS / "h100_2026-12-07_session19" / "compiled_none_7b_980.json")}
    compiled = rows["ours, none, graph:compiled"]
    assert (compiled["card"], compiled["size"], compiled["target"], compiled["issue"]) == (
        "NVIDIA H100 80GB HBM3", "980 x 16", 15.0, 25.28)
    assert target_table.ratio(compiled["s"], compiled["target"]) == "1.75x" and compiled["equal"] == "980/980"
    (vllm,) = target_table.rows(RESULTS / "h200_2026-12-06_session10" / "vllm_7b_980_batch_invariant.json")
    assert vllm["what"] == "vLLM 0.26.0, batch invariant" and vllm["card"] == "NVIDIA H200"
    assert target_table.ratio(vllm["s"], vllm["target"]) == "1.33x"
    awq = target_table.rows(RESULTS / "h200_2026-12-06_session10" / "split_awq_7b_980_new_16.json")[0]
    assert (awq["target"], awq["issue"]) == (16.0, None)  # 4-bit target; AWQ was not in the issue's table
    embedded = target_table.rows(RESULTS / "h100_2026-12-07_session18" / "eval_embedded.json")
    assert {r["target"] for r in embedded} == {3.0}
    text = target_table.table([RESULTS / "h100_2026-12-07_session19" / "compiled_none_7b_980.json"])
    assert "| ours, none, graph:compiled | NVIDIA H100 80GB HBM3 | 980 x 16 | 26.29 | 15.0 | 1.75x | 25.28 | 0.96x |" in text


def test_a_run_of_another_size_or_model_gets_no_ratio(tmp_path):
    """Control: the same seconds, but 490 prompts, or another model, or the prefill alone (1 new token): no target."""
    made = {"quant": "none", "overrides": ["model=llama2_7b_shapes"], "n_prompts": 980, "max_new_tokens": 16,
            "device": "X", "variants": {"graph": {"eval_seconds_median": 30.0, "token_ids_equal_to_first_variant": 980},
                                        "continuous": {"error": "ValueError: no"}}}
    for name, change in [("same", {}), ("half", {"n_prompts": 490}), ("model", {"overrides": ["model=qwen"]}),
                         ("prefill", {"max_new_tokens": 1})]:
        (tmp_path / f"{name}.json").write_text(json.dumps({**made, **change}))
    targets = {name: [r["target"] for r in target_table.rows(tmp_path / f"{name}.json")] for name in
               ("same", "half", "model", "prefill")}
    assert targets == {"same": [15.0, 15.0], "half": [None, None], "model": [None, None], "prefill": [None, None]}
    same = target_table.rows(tmp_path / "same.json")
    assert same[1]["what"] == "transformers generate_batch (continuous)" and same[1]["s"] is None
    assert same[1]["equal"] == "ValueError: no"
    assert "| – | 15.0 | – |" in target_table.table([tmp_path / "same.json"])  # a run that failed: no seconds, no ratio


def test_a_peer_warmed_up_on_fewer_prompts_than_it_ran_says_so(tmp_path):
    """generate_batch's untimed pass on a subset (eval_speed.py --continuous-warmup-prompts) is named in its row; a
    full warm-up pass (the control) adds nothing."""
    made = {"quant": "none", "overrides": ["model=llama2_7b_shapes"], "n_prompts": 980, "max_new_tokens": 16,
            "device": "X", "variants": {"continuous": {"eval_seconds_median": 300.0}}}
    for name, warm in [("part", 64), ("full", 980)]:
        (tmp_path / f"{name}.json").write_text(json.dumps({**made, "warmup_prompts": {"continuous": warm}}))
    assert target_table.rows(tmp_path / "part.json")[0]["what"] == \
        "transformers generate_batch (continuous), warmed up on 64 prompts"
    assert target_table.rows(tmp_path / "full.json")[0]["what"] == "transformers generate_batch (continuous)"
