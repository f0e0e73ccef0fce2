"""Stage 1: LoRA supervised fine-tuning with TRL's SFTTrainer (completion-only loss, NEFTune),
then merge the adapter into the base weights (base + LoRA → merge; quantization comes after).

Runs in a process of its own (the job process waits for it), so nothing it allocated stays behind for the
quantize and evaluate measurements. Loss curves go to wandb from the job process, replayed from the
trainer's log history (the same way for a fresh and a cached training stage).

It builds the train cache entry in the entry's build dir (cache.partial_dir), with a Trainer checkpoint every
`train.save_steps` steps in `trainer/`; a run killed part-way is resumed from its last checkpoint by the next
run of the same config (checkpoints.py), which records the step in `resumed_from_step`."""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ragqa_exp.config import RunConfig, to_plain
from ragqa_exp.data import CHECK_ONLY_FIELDS
from ragqa_exp.fsutil import disk_space_guard, write_json_atomic
from ragqa_exp.loading import load_model, load_tokenizer, save_tokenizer
from ragqa_exp.runtime import device, resolve_dtype, seed_all

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


RESULT_FILE = "train_result.json"  # written last into a train cache entry
CHECKPOINTS = "trainer"  # Trainer checkpoints, in the entry's build dir only (removed before publishing)
OUTPUTS = ("adapter", "merged", RESULT_FILE)
RUN_ONLY_FIELDS = ("save_steps",)  # train options that do not change the trained model (not in the key)
EVAL_ONLY_DATA_FIELDS = ("validation_path",)  # data options read by evaluation only (not in train or quant keys)


@dataclass
class TrainResult:
    train_seconds: float | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    log_history: list[dict] = field(default_factory=list)
    key: str | None = None
    rows_shortened: int | None = None  # training rows whose prompt lost passages to fit train.max_length (prompting.py)
    resumed_from_step: int = 0  # the checkpoint a killed run left, this one went on from (0: not resumed)


def train_key_parts(cfg: RunConfig, base_id: str, train_rows_id: str, settings: dict | None = None) -> dict:
    """What determines the trained model: model, lora, neftune, data, train (less how often it checkpoints),
    seed, the base model's identity (package version / hub revision / local files), the training rows'
    content (`data.rows_identity`) and what `auto` resolved to where it is built (`settings`:
    runtime.build_settings: device class, model.dtype, train.merge_dtype) — not quant, calib_data, eval or wandb."""
    plain = to_plain(cfg)
    parts = {k: plain[k] for k in ("model", "lora", "neftune", "data", "train", "seed")}
    parts["train"] = {k: v for k, v in parts["train"].items() if k not in RUN_ONLY_FIELDS}
    parts["data"] = training_data_parts(plain["data"])  # one trained model, many question sets
    parts.update(base=base_id, train_rows=train_rows_id)
    if settings is not None:
        parts["resolved"] = {k: settings[k] for k in TRAIN_SETTINGS if k in settings}
    return parts


TRAIN_SETTINGS = ("device", "model.dtype", "train.merge_dtype")  # the resolved settings the train key holds


def training_data_parts(data: dict) -> dict:
    """The `data` section less what evaluation alone reads and check-only flags (for the train and quant keys)."""
    return {k: v for k, v in data.items() if k not in EVAL_ONLY_DATA_FIELDS and k not in CHECK_ONLY_FIELDS}


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
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or None,
        save_total_limit=1,  # the newest; it is written whole before the older one is removed
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


def train(cfg: RunConfig, base_location: str, work: Path, key: str) -> TrainResult:
    """Train LoRA on `base_location`, merge, and write the train cache entry into its build dir `work`
    (adapter/, merged/, train_result.json last), resuming from the last checkpoint a killed run left in
    `work/trainer`. Runs in its own process (ragqa_exp.isolation); pipeline publishes `work`."""
    from ragqa_exp.lora_targets import check_target_modules

    check_target_modules(cfg.lora, cfg.model, base_location)  # first: before peft, the rows or any weights load
    import torch
    from datasets import Dataset
    from peft import LoraConfig as PeftLoraConfig
    from trl import SFTTrainer

    from ragqa_exp import faults
    from ragqa_exp.checkpoints import StopAndSave, checkpoint_step, last_checkpoint
    from ragqa_exp.data import load_splits
    from ragqa_exp.prompting import sft_examples
    from ragqa_exp.sparse_head import SparseHeadSFTTrainer

    stop = StopAndSave(save_at_end=bool(cfg.train.save_steps))
    seed_all(cfg.seed)
    splits = load_splits(cfg.data)
    rows = splits.train[: cfg.train.limit] if cfg.train.limit else splits.train
    tok = load_tokenizer(base_location, cfg.model)
    discard_outputs(work)  # a run killed while merging left them half-written
    with disk_space_guard(work, "the trained model's tokenizer", "cache_dir", cleanup=lambda: discard_outputs(work)):
        save_tokenizer(tok, work / "merged")  # the merged model's tokenizer: as loaded, before anything uses it
    # fitted from the prompt side: TRL's truncation (keep_start) would cut the answer
    examples, shortened = sft_examples(tok, rows, cfg.data.max_passages, cfg.train.max_length)
    if shortened:
        log.info("train: %d of %d rows lost passages to fit train.max_length=%d", shortened, len(rows), cfg.train.max_length)
    n_eval = min(cfg.train.eval_holdout, len(examples) // 5)
    train_ds = Dataset.from_list(examples[n_eval:])
    eval_ds = Dataset.from_list(examples[:n_eval]) if n_eval else None

    ckpt_dir = work / CHECKPOINTS
    resume = last_checkpoint(ckpt_dir)
    if resume is not None:
        log.info("train: resuming from %s (step %d)", resume, checkpoint_step(resume))

    # GPU: weights in bf16/fp16; CPU: fp32 weights, autocast to bf16 where the CPU has it (SFTConfig.bf16)
    dtype = resolve_dtype(cfg.model.dtype) if device() == "cuda" else torch.float32
    model = load_model(base_location, dtype, cfg.model)
    lora = cfg.lora
    peft_cfg = PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules), bias=lora.bias, task_type="CAUSAL_LM",
    )
    trainer_cls = SparseHeadSFTTrainer if cfg.train.sparse_lm_head else SFTTrainer
    trainer = trainer_cls(
        model=model, args=_sft_config(cfg, ckpt_dir, eval_ds is not None),
        train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tok, peft_config=peft_cfg,
        callbacks=[*faults.train_callbacks(lambda: stop.signum is not None), stop],
    )
    need = entry_bytes(trainer.model, base_location, cfg)
    with disk_space_guard(work, "the training checkpoints and the trained model", "cache_dir", need=need,
                          cleanup=lambda: (discard_outputs(work), last_checkpoint(ckpt_dir))):
        t0 = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
        train_seconds = time.perf_counter() - t0
        stop.exit_if_stopped(ckpt_dir)
        eval_loss = trainer.evaluate()["eval_loss"] if eval_ds is not None else None
        history = trainer.state.log_history
        trainer.model.save_pretrained(work / "adapter")
        del trainer, model
        merge_adapter(base_location, work / "adapter", work / "merged", resolve_dtype(cfg.train.merge_dtype), cfg)
        losses = [h["loss"] for h in history if "loss" in h]
        res = TrainResult(
            train_seconds=round(train_seconds, 3), train_loss=losses[-1] if losses else None,
            eval_loss=eval_loss, log_history=history, key=key, rows_shortened=shortened,
            resumed_from_step=checkpoint_step(resume) if resume is not None else 0,
        )
        write_json_atomic(work / RESULT_FILE, dataclasses.asdict(res))
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # the published entry needs no optimizer state
    return res


def discard_outputs(work: Path) -> None:
    """Remove the entry's outputs from its build dir (not the checkpoints)."""
    for name in OUTPUTS:
        p = work / name
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def entry_bytes(peft_model, base_location: str, cfg: RunConfig) -> int:
    """What training writes, at most: the merged model, the adapter and two checkpoints (the newest is
    written before the older is removed: adapter + Adam moments + tokenizer files each)."""
    import torch

    total = sum(p.numel() for p in peft_model.parameters())
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    merge_bytes = torch.finfo(resolve_dtype(cfg.train.merge_dtype)).bits // 8
    extras = sum(f.stat().st_size for f in Path(base_location).glob("*") if f.is_file() and f.suffix == ".json")
    checkpoint = trainable * 12 + extras
    return (total - trainable) * merge_bytes + extras + trainable * 4 + (2 * checkpoint if cfg.train.save_steps else 0)


def merge_adapter(base_location: str, adapter_dir: Path, merged_dir: Path, dtype: torch.dtype, cfg: RunConfig) -> None:
    """Base weights (full precision) + LoRA → one plain model the quant stage can load (into `merged_dir`, which
    already holds the tokenizer)."""
    from peft import PeftModel

    base = load_model(base_location, dtype, cfg.model)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(merged_dir)
