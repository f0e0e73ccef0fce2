"""The training stage's numbers, on the embedded model (CPU, float32):
- the merged model `train.merge_adapter` hands to the quant stage computes what base + adapter computes
  (`PeftModel`), for an adapter with non-zero weights;
- the sparse LM-head loss (`train.sparse_lm_head=true`, the default) is TRL's default loss on the same batch.
"""
from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from conftest import run_config
from helpers_quant import fidelity_rows
from ragqa_exp.loading import load_model, load_tokenizer

pytestmark = [pytest.mark.fidelity, pytest.mark.slow]

KEEP = 32  # logits compared at the last KEEP positions of each prompt (each depends on every earlier one)


def _logits(model, tok, prompts: list[str]) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(**tok([p], return_tensors="pt"), logits_to_keep=KEEP).logits.float() for p in prompts])


@pytest.fixture(scope="module")
def random_adapter(base_model_dir, tmp_path_factory):
    """A LoRA adapter of the default `lora` config (r=32, alpha=16, q_proj/v_proj) with random A and B."""
    from peft import LoraConfig, get_peft_model

    cfg = run_config()
    torch.manual_seed(0)
    model = get_peft_model(load_model(str(base_model_dir), torch.float32, cfg.model), LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # zero after init (LoRA starts as the identity); a trained adapter's B is not
            torch.nn.init.normal_(p, std=0.02)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(out)
    return out


def test_merged_model_computes_base_plus_adapter(base_model_dir, random_adapter, tmp_path):
    from peft import PeftModel

    from ragqa_exp.train import merge_adapter

    cfg = run_config()
    tok = load_tokenizer(str(base_model_dir))
    prompts = fidelity_rows(2)[0]
    base = load_model(str(base_model_dir), torch.float32, cfg.model).eval()
    without = _logits(base, tok, prompts)
    with_adapter = _logits(PeftModel.from_pretrained(base, str(random_adapter)).eval(), tok, prompts)
    del base
    merge_adapter(str(base_model_dir), random_adapter, tmp_path / "merged", torch.float32, cfg)
    merged = _logits(load_model(str(tmp_path / "merged"), torch.float32, cfg.model).eval(), tok, prompts)
    effect = (with_adapter - without).abs().max().item()
    print(f"adapter effect on logits (max |diff|): {effect:.3f}; merged vs PeftModel: "
          f"{(merged - with_adapter).abs().max().item():.2e}")
    assert effect > 1.0  # the adapter matters, so a merge that drops it fails below
    assert_close(merged, with_adapter, rtol=1e-4, atol=2e-3)


def test_sparse_head_loss_equals_trl_default_loss(base_model_dir, tmp_path):
    """Same model, same collated batch (two padded rows of different lengths): TRL's `compute_loss` (logits at
    every position, HF's shifted cross-entropy) vs `sparse_head.completion_loss`, with and without
    `num_items_in_batch` (training passes it). TRL 1.x takes its loss from a fused, chunked LM head whose
    float32 sums run in another order: the two agree to ~5e-5 relative (measured), not to the last bit."""
    from datasets import Dataset
    from trl import SFTTrainer

    from ragqa_exp.data import load_splits, to_sft_example
    from ragqa_exp.sparse_head import IGNORE, completion_loss
    from ragqa_exp.train import _sft_config

    cfg = run_config(["train.per_device_train_batch_size=2"])
    tok = load_tokenizer(str(base_model_dir))
    model = load_model(str(base_model_dir), torch.float32, cfg.model)
    rows = load_splits(cfg.data).train[:2]
    ds = Dataset.from_list([to_sft_example(r, max_passages=n) for r, n in zip(rows, (1, 2))])
    trainer = SFTTrainer(model=model, args=_sft_config(cfg, tmp_path, has_eval=False), train_dataset=ds,
                         processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["attention_mask"].sum(1).unique().numel() == 2  # padded: two lengths
    n_answer = int((batch["labels"] != IGNORE).sum())
    assert 0 < n_answer < batch["attention_mask"].sum() // 10  # completion-only: the answer, not the prompt
    model.eval()
    with torch.inference_mode():
        for n_items in (None, n_answer):
            trl = trainer.compute_loss(model, dict(batch), num_items_in_batch=n_items)
            sparse = completion_loss(model, dict(batch), num_items_in_batch=n_items)
            print(f"num_items_in_batch={n_items}: TRL {trl.item():.6f}, sparse head {sparse.item():.6f}")
            assert_close(sparse, trl, rtol=2e-4, atol=0)
