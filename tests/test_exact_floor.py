"""benchmarks/exact_floor.py counts the tokens the eval prefills as the eval does: checked against the tokens a CPU eval
(the graph loop, prefill in slices) hands the model's prefill forwards."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import exact_floor  # noqa: E402

from test_graph_decode import prompts, tiny_llama  # noqa: E402,F401  (fixtures)


def test_the_floor_counts_the_tokens_the_evals_prefill_forwards_take(tiny_llama, prompts):  # noqa: F811
    from ragqa_exp.backends import LoadInfo
    from ragqa_exp.backends.hf import HFBackend

    model, tok = tiny_llama
    backend = HFBackend(model, tok, 8, None, LoadInfo(kernel="dense-float32"), kv_cache="graph", length_bucket=16,
                        max_prefill_tokens=350)
    fed = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: fed.append(kwargs["input_ids"].shape), with_kwargs=True)
    try:
        dict(backend.generate(prompts, 4))
    finally:
        hook.remove()
    lengths = [len(x) for x in tok(prompts)["input_ids"]]
    prefill = sum(rows * tokens for rows, tokens in fed if tokens > 1)
    assert exact_floor.prefilled_tokens(backend.plan, lengths) == prefill
    # control: the test's plan has fill rows the eval skips (a slice past a batch's last real row), so counting every
    # row of every batch would fail it
    every_row = sum(len(rows) * (padded - 1) for rows, _, padded in backend.plan.batches(lengths))
    assert every_row > prefill
