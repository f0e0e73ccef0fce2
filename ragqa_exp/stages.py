"""The stages in one shape: base model → train → quantize → evaluate.

Each stage is a `Stage` (torchtune's recipe protocol, optimum-benchmark's `Benchmark.launch`, in small): what
determines it (`key_parts(inp)`, hashed into its key, the one place its key is assembled), how it is built
(`build(cfg, source_dir, work, key)`, a module-level function that `pipeline.run` runs in its own process
through `isolation.run_stage`), and what it hands the next stage (`read(inp, entry, key, built)` → `Handoff`:
the model dir, the metrics.json fields, ...). The pipeline plans the keys and runs the stages with one loop
over `STAGES`.

Base model, train and quantize are cached (`cached=True`): built into `<cache_dir>/<cache_dir_name>/<entry>`
behind `cache.cached_stage` and its lock, read back from that entry. Evaluation is not: it runs for every job
in the job dir (a killed one resumes from its partial predictions), its key is the job's fingerprint (what
determines the results: the config, the resolved settings, the keys of the stages before it, the evaluated
rows, the library versions), and it hands on what it measured (`built`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from ragqa_exp import evaluate, fingerprint, manifest, quantize, train
from ragqa_exp.base_model import BASE_MARKER, base_entry, base_identity, base_key_parts, build_base_into
from ragqa_exp.cache import stage_dir, stage_key
from ragqa_exp.config import RunConfig, to_plain
from ragqa_exp.fsutil import dir_size_mib


@dataclass(frozen=True)
class StageInput:
    """What a stage starts from."""

    cfg: RunConfig
    settings: Optional[dict]  # what `auto` resolved to (runtime.build_settings); None: not in the key
    train_rows_id: str  # the training rows' content (data.rows_identity)
    source_id: str = ""  # what the model it starts from *is*: the base identity, then the train key
    source_dir: Optional[str] = None  # where that model is (None while the keys are planned)
    eval_rows_id: str = ""  # the evaluated rows' content (data.rows_identity)
    keys: Mapping[str, str] = field(default_factory=dict)  # the stages before it: name -> entry name or identity


@dataclass
class Handoff:
    """What a stage hands on: the model the next stage starts from, and what metrics.json records of it."""

    model_dir: str
    record: dict = field(default_factory=dict)  # metrics.json fields
    entry_facts: dict = field(default_factory=dict)  # added to its metrics.json `cache_entries` row
    log_history: Optional[list] = None  # trainer logs, replayed to wandb (train)


@dataclass(frozen=True)
class Stage:
    name: str  # its key in the plan, the fingerprint and metrics.json `cache_entries`
    process: str  # its isolation process's name; its name in metrics.json `reused`
    what: str  # how cache messages name it
    cache_dir_name: str  # entries under <cache_dir>/<cache_dir_name>/; the namespace of its key (cache.stage_key)
    marker: str  # the file written last into an entry (or into the job dir)
    settings: tuple[str, ...]  # the resolved settings its key holds
    applies: Callable[[RunConfig], bool]
    key_parts: Callable[[StageInput], dict]
    build: Callable[[RunConfig, Optional[str], Path, str], Any]  # module-level: run in its own process
    read: Callable[[StageInput, Optional[Path], str, Any], Handoff]  # (input, entry, key, what build returned)
    cached: bool = True  # built once into its cache entry; False: built by every job, in its job dir
    digest: Callable[[str, dict], str] = stage_key  # (cache_dir_name, key parts) -> key
    entry_name: Callable[[StageInput, str], Optional[str]] = lambda inp, key: key  # None: nothing to build
    identity: Callable[[StageInput, str], str] = lambda inp, key: key  # the next stage's `source_id`
    resume: bool = False  # a killed build goes on from what it left (train checkpoints)
    report_reuse: bool = True  # listed in `reused` when taken from the cache
    job_link: Optional[str] = None  # <job_dir>/<job_link> -> its entry

    def key(self, inp: StageInput) -> tuple[str, dict]:
        parts = self.key_parts(inp)
        return self.digest(self.cache_dir_name, parts), parts

    def entry(self, inp: StageInput, key: str) -> Optional[Path]:
        name = self.entry_name(inp, key)
        return None if name is None else stage_dir(inp.cfg.cache_dir, self.cache_dir_name, name)

    def resolved(self, settings: dict) -> dict:
        return {k: settings[k] for k in self.settings if k in settings}


# ------------------------------------------------------------------------------------------------ base model
def build_base(cfg: RunConfig, source_dir: Optional[str], work: Path, key: str) -> None:
    build_base_into(cfg.model, work)


def _read_base(inp: StageInput, entry: Optional[Path], key: str, built: Any = None) -> Handoff:
    return Handoff(model_dir=str(entry) if entry is not None else inp.cfg.model.path,
                   entry_facts={"id": base_identity(inp.cfg.model)})


def _base_entry_name(inp: StageInput, key: str) -> Optional[str]:
    """Embedded and random models are built into `<name>-<key>`; hub and local models load from model.path."""
    entry = base_entry(inp.cfg.model, inp.cfg.cache_dir)
    return None if entry is None else entry.name


BASE = Stage(
    name="base", process="base", what="base model", cache_dir_name="models", marker=BASE_MARKER, settings=(),
    applies=lambda cfg: not cfg.model.is_api,  # an API model is served elsewhere: evaluated only
    key_parts=lambda inp: base_key_parts(inp.cfg.model),
    build=build_base,
    read=_read_base,
    entry_name=_base_entry_name,
    identity=lambda inp, key: base_identity(inp.cfg.model),
    report_reuse=False,  # every job of a sweep shares it: `reused` counts train and quantize
)


# ------------------------------------------------------------------------------------------------ train
def build_train(cfg: RunConfig, source_dir: Optional[str], work: Path, key: str) -> train.TrainResult:
    return train.train(cfg, source_dir, work, key)


def _read_train(inp: StageInput, entry: Optional[Path], key: str, built: Any = None) -> Handoff:
    tr = train.read_result(entry)
    return Handoff(model_dir=str(entry / "merged"), log_history=tr.log_history,
                   record=dict(train_seconds=tr.train_seconds, train_loss=tr.train_loss, eval_loss=tr.eval_loss,
                               train_key=key, train_resumed_from_step=tr.resumed_from_step,
                               train_rows_shortened=tr.rows_shortened))


TRAIN = Stage(
    name="train", process="train", what="train", cache_dir_name="train", marker=train.RESULT_FILE,
    settings=train.TRAIN_SETTINGS,
    applies=lambda cfg: cfg.train.enabled and not cfg.model.is_api,
    key_parts=lambda inp: train.train_key_parts(inp.cfg, inp.source_id, inp.train_rows_id, inp.settings),
    build=build_train,
    read=_read_train,
    resume=True,
)


# ------------------------------------------------------------------------------------------------ quantize
def build_quantized(cfg: RunConfig, source_dir: Optional[str], work: Path, key: str) -> dict:
    return quantize.build_artifact(cfg, source_dir, work)


def _read_quantized(inp: StageInput, entry: Optional[Path], key: str, built: Any = None) -> Handoff:
    facts = json.loads((entry / quantize.RESULT_FILE).read_text(encoding="utf-8"))
    calib_texts = facts.pop("calib_texts", facts.pop("calib_samples", None))  # older entries: calib_samples
    return Handoff(model_dir=str(entry), record=dict(
        quant_seconds=facts.pop("quant_seconds", None), model_size_mib=facts.pop("size_mib", None),
        quant_calib_texts=calib_texts, quant_calib_tokens=facts.pop("calib_tokens", None),
        quant_artifact_dir=str(entry), quant_key=key, quant_extra=facts))


QUANTIZE = Stage(
    name="quant", process="quantize", what="quantize", cache_dir_name="quant", marker=quantize.RESULT_FILE,
    settings=quantize.QUANT_SETTINGS,
    applies=lambda cfg: cfg.quant.produces_artifact and not cfg.model.is_api,
    key_parts=lambda inp: quantize.quant_key_parts(inp.cfg, inp.source_id, inp.train_rows_id, inp.settings),
    build=build_quantized,
    read=_read_quantized,
    job_link="quantized",  # for users who look for the artifact in the job dir
)


# ------------------------------------------------------------------------------------------------ evaluate
def build_eval(cfg: RunConfig, source_dir: Optional[str], work: Path, key: str) -> evaluate.EvalStageResult:
    """`work`: the job dir (predictions.jsonl, the partial predictions of a killed run)."""
    return evaluate.eval_stage(cfg, source_dir, str(work))


def _eval_key_parts(inp: StageInput) -> dict:
    """What determines a job's results: the fingerprint's parts (fingerprint.py)."""
    return fingerprint.parts(to_plain(inp.cfg), inp.settings or {}, dict(inp.keys), inp.eval_rows_id,
                             manifest.library_versions())


def _read_eval(inp: StageInput, entry: Optional[Path], key: str, built: evaluate.EvalStageResult) -> Handoff:
    """The answers' metrics, the eval process's memory, and the model as loaded (bits, kernel)."""
    lm, em, info = built.load_memory, built.eval_memory, built.info
    record = dict(
        **built.metrics,
        gpu_mem_load_mib=lm.gpu_mem_process_mib_end, gpu_mem_peak_mib=em.gpu_mem_process_mib_peak,
        torch_peak_allocated_mib=em.torch_peak_allocated_mib, torch_peak_reserved_mib=em.torch_peak_reserved_mib,
        rss_peak_mib=max(lm.rss_peak_mib, em.rss_peak_mib), gpu_mem_unavailable_reason=em.gpu_unavailable_reason,
        quant_bits=info.bits, quant_group_size=info.group_size, quant_kernel=info.kernel,
        quant_kernel_fallback_reason=info.kernel_fallback_reason, quant_extra=dict(info.extra),
        device=built.device, **built.gpu, pid=built.pid)
    if not inp.cfg.model.is_api and not QUANTIZE.applies(inp.cfg):  # no artifact: the model evaluated as it is
        record["model_size_mib"] = dir_size_mib(inp.source_dir) if Path(inp.source_dir).exists() else None
    return Handoff(model_dir=inp.source_dir, record=record)


EVALUATE = Stage(
    name="eval", process="eval", what="evaluation", cache_dir_name="eval", marker="predictions.jsonl",
    settings=(),  # all of them: its key parts hold every resolved setting
    applies=lambda cfg: True,
    key_parts=_eval_key_parts,
    build=build_eval,
    read=_read_eval,
    cached=False,
    digest=lambda name, parts: fingerprint.digest(parts),  # the job's fingerprint, as metrics.json records it
    entry_name=lambda inp, key: None,
    resume=True,  # from predictions.partial.jsonl, under the same fingerprint (pipeline)
    report_reuse=False,
)

STAGES = (BASE, TRAIN, QUANTIZE, EVALUATE)


def planned(cfg: RunConfig, settings: dict, train_rows_id: str, eval_rows_id: str = ""):
    """(stage, its input, key, key parts, entry) for every stage this config runs, in order; each stage's
    `source_id` is what the one before it is, its `keys` those of the stages before it. `source_dir` is left to
    the caller (known once built)."""
    inp = StageInput(cfg, settings, train_rows_id, eval_rows_id=eval_rows_id)
    for stage in STAGES:
        if not stage.applies(cfg):
            continue
        key, parts = stage.key(inp)
        entry = stage.entry(inp, key)
        yield stage, inp, key, parts, entry
        identity = stage.identity(inp, key)
        inp = replace(inp, source_id=identity, keys={**inp.keys, stage.name: entry.name if entry is not None else identity})


def key_of(stage: Stage, cfg: RunConfig, source_id: str, train_rows_id: str, settings: Optional[dict] = None) -> str:
    """`stage`'s key for `cfg` started from model `source_id` (one stage alone; `planned` chains them)."""
    return stage.key(StageInput(cfg, settings, train_rows_id, source_id))[0]
