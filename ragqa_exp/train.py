"""Stage 1: LoRA supervised fine-tuning with TRL's SFTTrainer (completion-only loss, NEFTune),
then merge the adapter into the base weights (base + LoRA → merge; quantization comes after).

Runs in a process of its own (the job process waits for it), so nothing it allocated stays behind for the
quantize and evaluate measurements. Loss curves go to wandb from the job process, replayed from the
trainer's log history (the same way for a fresh and a cached training stage)."""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ragqa_exp.cache import stage_key
from ragqa_exp.config import RunConfig, to_plain
from ragqa_exp.data import to_sft_example
from ragqa_exp.fsutil import atomic_dir, write_json_atomic
from ragqa_exp.models import device, load_model, load_tokenizer, resolve_dtype

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


RESULT_FILE = "train_result.json"  # written last into a train cache entry


@dataclass
class TrainResult:
    train_seconds: float | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    log_history: list[dict] = field(default_factory=list)
    key: str | None = None


def train_key(cfg: RunConfig, base_id: str, train_rows_id: str) -> str:
    """Hash of what determines the trained model: model, lora, neftune, data, train, seed, the base model's
    identity (package version / hub revision / local files) and the training rows' content
    (`data.rows_identity`) — not quant, calib_data, eval or wandb."""
    plain = to_plain(cfg)
    parts = {k: plain[k] for k in ("model", "lora", "neftune", "data", "train", "seed")}
    parts.update(base=base_id, train_rows=train_rows_id)
    return stage_key("train", parts)


def read_result(entry: Path) -> TrainResult:
    return TrainResult(**json.loads((entry / RESULT_FILE).read_text(encoding="utf-8")))


def _sft_config(cfg: RunConfig, out: Path, has_eval: bool):
    import torch
    from trl import SFTConfig

    t = cfg.train
    dtype = resolve_dtype(cfg.model.dtype)  # mixed precision: fp32 master weights on CPU, autocast to dtype
    alpha = cfg.neftune.alpha or None  # 0 and null both turn NEFTune off
    return SFTConfig(
        output_dir=str(out),
        max_steps=t.max_steps,
        num_train_epochs=t.num_train_epochs,
        learning_rate=t.learning_rate,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.eval_steps if has_eval else None,
        save_strategy="no",
        report_to="none",  # wandb is fed from the job process (tracking.py)
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        gradient_checkpointing=t.gradient_checkpointing,
        max_length=t.max_length,
        completion_only_loss=True,
        neftune_noise_alpha=alpha,
        use_cpu=device() == "cpu",
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def train(cfg: RunConfig, base_location: str, entry: Path, key: str) -> TrainResult:
    """Train LoRA on `base_location`, merge, and publish cache entry `entry` (adapter/, merged/,
    train_result.json written last). Runs in its own process (ragqa_exp.isolation)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig as PeftLoraConfig
    from transformers import set_seed
    from trl import SFTTrainer

    from ragqa_exp.data import load_splits
    from ragqa_exp.sparse_head import SparseHeadSFTTrainer

    set_seed(cfg.seed)
    splits = load_splits(cfg.data)
    rows = splits.train[: cfg.train.limit] if cfg.train.limit else splits.train
    examples = [to_sft_example(r, cfg.data.max_passages) for r in rows]
    n_eval = min(cfg.train.eval_holdout, len(examples) // 5)
    train_ds = Dataset.from_list(examples[n_eval:])
    eval_ds = Dataset.from_list(examples[:n_eval]) if n_eval else None

    # GPU: weights in bf16/fp16; CPU: fp32 weights, autocast to bf16 where the CPU has it (SFTConfig.bf16)
    dtype = resolve_dtype(cfg.model.dtype) if device() == "cuda" else torch.float32
    tok = load_tokenizer(base_location, cfg.model)
    model = load_model(base_location, dtype, cfg.model)
    lora = cfg.lora
    peft_cfg = PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules), bias=lora.bias, task_type="CAUSAL_LM",
    )
    trainer_cls = SparseHeadSFTTrainer if cfg.train.sparse_lm_head else SFTTrainer
    with atomic_dir(entry) as tmp:
        trainer = trainer_cls(
            model=model, args=_sft_config(cfg, tmp / "trainer", eval_ds is not None),
            train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tok, peft_config=peft_cfg,
        )
        t0 = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - t0
        eval_loss = trainer.evaluate()["eval_loss"] if eval_ds is not None else None
        history = trainer.state.log_history
        trainer.model.save_pretrained(tmp / "adapter")
        del trainer, model
        merge_adapter(base_location, tmp / "adapter", tmp / "merged", resolve_dtype(cfg.train.merge_dtype), cfg)
        losses = [h["loss"] for h in history if "loss" in h]
        res = TrainResult(
            train_seconds=round(train_seconds, 3), train_loss=losses[-1] if losses else None,
            eval_loss=eval_loss, log_history=history, key=key,
        )
        write_json_atomic(tmp / RESULT_FILE, dataclasses.asdict(res))
    return res


def merge_adapter(base_location: str, adapter_dir: Path, merged_dir: Path, dtype: torch.dtype, cfg: RunConfig) -> None:
    """Base weights (full precision) + LoRA → one plain model the quant stage can load."""
    from peft import PeftModel

    base = load_model(base_location, dtype, cfg.model)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(merged_dir)
    load_tokenizer(base_location, cfg.model).save_pretrained(merged_dir)
