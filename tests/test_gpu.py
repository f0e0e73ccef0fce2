"""GPU paths (marked `gpu`: skipped without CUDA; run on the GPU machine, see benchmarks/README.md).

A tiny random-weight Llama (`model=llama2_7b_shapes` with small `model.init.*`) goes through the real CLI
with every quant method: each job's eval runs in its own process on the GPU kernel of its method, with
per-process GPU memory; the fast path equals batch-1 greedy decoding in float32."""
from __future__ import annotations

import pytest

from conftest import check_job_dir, cli, run_config

pytestmark = pytest.mark.gpu

TINY_LLAMA = ["model=llama2_7b_shapes", "model.init.hidden_size=256", "model.init.intermediate_size=512",
              "model.init.num_hidden_layers=2", "model.init.num_attention_heads=4", "model.init.num_key_value_heads=4"]
GPU_KERNELS = {"none": "dense-", "bnb": "bitsandbytes-Linear4bit-nf4-cuda", "gptq": "TorchLinear", "awq": "AwqTorchLinear"}


def test_every_method_runs_on_its_gpu_kernel_in_its_own_process(tmp_path):
    sweep = tmp_path / "s"
    r = cli("-m", "quant=none,bnb,gptq,awq", *TINY_LLAMA, "experiment=tiny", "eval.limit=16", "wandb.mode=disabled",
            f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    rows = [json.loads((j / "metrics.json").read_text()) for j in sorted(sweep.iterdir()) if (j / "metrics.json").exists()]
    assert [m["quant"] for m in rows] == ["none", "bnb", "gptq", "awq"]
    assert len({m["pid"] for m in rows}) == 4
    for m in rows:
        assert m["device"] == "cuda" and m["gpu_uuid"]
        assert m["gpu_mem_load_mib"] > 0 and m["gpu_mem_peak_mib"] >= m["gpu_mem_load_mib"] * 0.5
        assert m["torch_peak_allocated_mib"] > 0
        assert GPU_KERNELS[m["quant"]] in m["quant_kernel"], m["quant_kernel"]
        assert m["quant_kernel_fallback_reason"] is None
        assert m["n"] == 16 and m["n_failed"] == 0


def test_fast_path_equals_batch1_greedy_in_float32(tmp_path):
    from ragqa_exp.backends.hf import CANONICAL_GPU_BATCH_TOKENS, HFBackend
    from ragqa_exp.data import format_prompt, load_splits
    from ragqa_exp.base_model import build_base

    cfg = run_config([*TINY_LLAMA, "model.dtype=float32"])
    model_dir = build_base(cfg.model, tmp_path / "cache")
    backend = HFBackend.load(cfg, model_dir)
    rows = load_splits(cfg.data).validation[:48]
    prompts = [format_prompt(r["question"], r["context"], 5) for r in rows]
    fast = dict(backend.generate(prompts, 12))
    one = dict(HFBackend(backend.model, backend.tok, 1, None, backend.info).generate(prompts, 12))
    assert [fast[i].text for i in range(len(prompts))] == [one[i].text for i in range(len(prompts))]
    # the canonical plan's GPU budget (a constant, not free memory) holds every prompt's bucket in one batch
    longest = max(len(x) for x in backend.tok(prompts)["input_ids"])
    assert backend.plan.max_batch_tokens == CANONICAL_GPU_BATCH_TOKENS
    assert backend.plan.rows(backend.plan.padded_length(longest)) >= 48
