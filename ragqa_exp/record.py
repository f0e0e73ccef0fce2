"""metrics.json as one typed record: its field names are the stable names that the report, dashboards and
tests read (DESIGN.md lists them). Method facts are added as `quant_<name>` (quant_format, quant_dtype, ...)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from ragqa_exp.config import ModelSource


@dataclass
class JobRecord:
    # answers (vs the canonical answer: the study's numbers; normalized: NFKC, aliases)
    exact_match: float
    partial_match: float
    exact_match_normalized: float
    partial_match_normalized: float
    n: int
    n_failed: int = 0  # items the backend could not answer (counted wrong)
    # speed (eval stage only; per-question latency is the item's share of its batch or request)
    eval_seconds: Optional[float] = None
    eval_resumed_items: int = 0  # items taken from an interrupted earlier run (eval_seconds excludes them)
    latency_ms_p50: Optional[float] = None
    latency_ms_p95: Optional[float] = None
    latency_ms_mean: Optional[float] = None
    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None
    latency_kind: Optional[str] = None  # batch_share (hf: batch time / its questions) | request (API: one request's wall time)
    items_per_second: Optional[float] = None  # questions generated in this run / timed generation seconds (after warm-up)
    tokens_per_second: Optional[float] = None  # completion tokens / the same seconds
    # how the answers were generated (hf backend): batch plan, explicit greedy config, out-of-memory retries
    eval_plan: dict = field(default_factory=dict)  # the constants that decided every batch's shapes
    generation_config: dict = field(default_factory=dict)  # every generation setting, built by us (none inherited)
    eval_oom_retries: int = 0  # packed plan: batches retried smaller after a CUDA out-of-memory
    eval_batch_limits_changed: bool = False  # packed plan: the batch limits were lowered part-way (answers may differ)
    eval_noise_checked: Optional[int] = None  # questions re-evaluated in another batch composition (None: API)
    eval_noise_changed: Optional[int] = None  # of those, answers that differed (canonical plan: 0)
    # memory of the eval stage's own process (NVML per process + descendants; torch allocator peaks)
    gpu_mem_load_mib: Optional[float] = None
    gpu_mem_peak_mib: Optional[float] = None
    torch_peak_allocated_mib: Optional[float] = None
    torch_peak_reserved_mib: Optional[float] = None
    rss_peak_mib: Optional[float] = None
    gpu_mem_unavailable_reason: Optional[str] = None
    # the model as evaluated (bits, group size and kernel read from the loaded layers / saved artifact)
    quant: str = "none"
    quant_bits: Optional[int] = None
    quant_group_size: Optional[int] = None
    quant_kernel: Optional[str] = None
    quant_kernel_fallback_reason: Optional[str] = None
    quant_seconds: Optional[float] = None
    model_size_mib: Optional[float] = None
    quant_artifact_dir: Optional[str] = None
    quant_key: Optional[str] = None
    quant_calib_texts: Optional[int] = None  # calibration texts the quantizer got (GPTQ/AWQ; null: no calibration)
    quant_calib_tokens: Optional[int] = None  # their tokens, after truncation to calib_data.max_length
    # data: validation rows that are also training rows (by qid / by normalized question; data.overlap)
    data_overlap_qid: Optional[int] = None
    data_overlap_question: Optional[int] = None
    # training
    train_seconds: Optional[float] = None
    train_loss: Optional[float] = None
    eval_loss: Optional[float] = None
    train_key: Optional[str] = None
    train_resumed_from_step: int = 0  # the checkpoint step a killed training went on from (train_seconds excludes before it)
    train_rows_shortened: Optional[int] = None  # training rows whose prompt lost passages to fit train.max_length
    reused: list = field(default_factory=list)  # stages taken from the cache: "train", "quantize"
    # what determines the job (fingerprint.py) and the cache entries it used: per stage key, dir, resolved
    # dtype/device, versions of the libraries that built it
    fingerprint: Optional[str] = None
    fingerprint_parts: dict = field(default_factory=dict)
    cache_entries: dict = field(default_factory=dict)
    # where and what
    model: Optional[str] = None
    model_source: Optional[str] = None  # hub | embedded_gguf | random_init | openai (an API model, served elsewhere)
    eval_split: Optional[str] = None
    eval_backend: Optional[str] = None
    device: Optional[str] = None
    gpu_name: Optional[str] = None  # the GPU the eval stage ran on (torch's device 0 of its CUDA_VISIBLE_DEVICES)
    gpu_uuid: Optional[str] = None
    cuda_visible_devices: Optional[str] = None
    pid: Optional[int] = None  # the eval stage's process
    seed: Optional[int] = None
    versions: dict = field(default_factory=dict)
    wandb_mode: Optional[str] = None
    wandb_run_dir: Optional[str] = None
    wandb_group: Optional[str] = None
    mismatch_rows_logged: int = 0
    quant_extra: dict = field(default_factory=dict)  # written flat as quant_<key>

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        extra = out.pop("quant_extra")
        out.update({f"quant_{k}": v for k, v in extra.items() if f"quant_{k}" not in out})
        return out


FIELDS = tuple(f.name for f in dataclasses.fields(JobRecord) if f.name != "quant_extra")


def is_api_model(record: Mapping[str, Any]) -> bool:
    """A metrics.json (or report row) of an API model: served elsewhere, never trained, quantized or
    memory-measured here."""
    return record.get("model_source") == ModelSource.openai.value
