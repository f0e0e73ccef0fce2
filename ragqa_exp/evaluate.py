"""Stage 3: answers from a generation backend over the evaluation split, scored; progress kept on disk.

Each answered item is appended to `<job>/predictions.partial.jsonl` as it comes; a re-run of a killed job
asks the backend only for the items missing there (and those that failed there), then writes `predictions.jsonl` (atomically) over all
of them and removes the partial file.
"""
from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ragqa_exp import faults
from ragqa_exp.backends import Generation, GenerationBackend
from ragqa_exp.config import EvalConfig
from ragqa_exp.data import format_prompt
from ragqa_exp.fingerprint import FRESH, PARTIAL_FINGERPRINT, PARTIAL_PLAN, FingerprintMismatch, differences
from ragqa_exp.fsutil import disk_space_guard, write_json_atomic, write_jsonl_atomic
from ragqa_exp.measure import gpu_identity, percentile
from ragqa_exp.metrics import aggregate, clean_prediction, match

log = logging.getLogger(__name__)
PARTIAL = "predictions.partial.jsonl"
PREDICTION_BYTES = 8192  # a predictions line, generously (twice: the partial file and predictions.jsonl)


@dataclass
class EvalResult:
    metrics: dict
    predictions: list[dict]


def score(row: dict, gen: Generation) -> dict:
    pred = "" if gen.error else clean_prediction(gen.text)
    s = match(pred, row["answer"], row.get("answers"))
    out = {
        "qid": row["qid"], "question": row["question"], "answer": row["answer"], "pred": pred, **s,
        "raw": gen.text, "latency_ms": round(gen.seconds * 1000, 3),
        "prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
    }
    if gen.error:
        out.update(failed=True, error=gen.error)
    return out


def read_partial(path: Path) -> dict[str, dict]:
    """Rows already answered by an earlier (killed) run; a torn last line is ignored. A failed item (a
    request that still failed after its retries) is no answer: the resumed run asks it again."""
    done: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not row.get("failed"):
                done[row["qid"]] = row
    return done


def speed(preds: list[dict], generation_seconds: float) -> dict:
    """Throughput of the items generated in this run (not those resumed from an earlier one), over the timed
    generation (after the warm-up): questions per second and completion tokens per second."""
    if not preds or generation_seconds <= 0:
        return {"items_per_second": None, "tokens_per_second": None}
    tokens = [p.get("completion_tokens") for p in preds]
    return {"items_per_second": round(len(preds) / generation_seconds, 4),
            "tokens_per_second": round(sum(tokens) / generation_seconds, 2) if None not in tokens else None}


def noise_check(backend: GenerationBackend, rows: list[dict], preds: dict[str, dict], cfg: EvalConfig,
                max_passages: Optional[int]) -> dict:
    """The noise floor: the first `eval.noise_check_items` questions evaluated again, alone and in reverse
    order (other batch-mates, another fill), and how many raw answers differ from the run's. Only for
    backends that batch prompts (an API is not asked twice)."""
    n = min(cfg.noise_check_items, len(rows)) if backend.batches_prompts else 0
    if not n:
        return {"eval_noise_checked": 0 if backend.batches_prompts else None, "eval_noise_changed": None}
    subset = list(reversed(rows[:n]))
    again = dict(backend.generate(build_prompts(subset, max_passages), cfg.max_new_tokens, stop="\n"))
    changed = [r["qid"] for i, r in enumerate(subset) if again[i].text != preds[r["qid"]]["raw"]]
    if changed:
        log.warning("eval: %d of %d answers changed when re-evaluated in another batch composition (e.g. %s): on "
                    "this device answers are not reproducible (eval.batch_plan=%s, eval.deterministic=%s: the canonical "
                    "plan keeps them, on a GPU with eval.deterministic=true, unless the quant kernel itself depends on "
                    "the batch, as GPTQ/AWQ on Marlin (quant.backend=marlin) and LLM.int8 (unless quant.int8_threshold=0) do; see "
                    "benchmarks/H200_BATCH_PLAN.md); the report prints this noise under its table",
                    len(changed), n, changed[0], cfg.batch_plan, str(cfg.deterministic).lower())
    return {"eval_noise_checked": n, "eval_noise_changed": len(changed)}


def build_prompts(rows: list[dict], max_passages: Optional[int]) -> list[str]:
    return [format_prompt(r["question"], r["context"], max_passages) for r in rows]


def summarize(preds: list[dict], wall_seconds: float) -> dict:
    lat = [p["latency_ms"] for p in preds if p.get("latency_ms") is not None]
    failed = sum(bool(p.get("failed")) for p in preds)
    tokens = lambda k: sum(p.get(k) or 0 for p in preds) if any(p.get(k) is not None for p in preds) else None  # noqa: E731
    return {
        **aggregate(preds),
        "n_failed": failed,
        "eval_seconds": round(wall_seconds, 4),
        "latency_ms_p50": round(percentile(lat, 0.5), 3) if lat else None,
        "latency_ms_p95": round(percentile(lat, 0.95), 3) if lat else None,
        "latency_ms_mean": round(statistics.fmean(lat), 3) if lat else None,
        "prompt_tokens": tokens("prompt_tokens"),
        "completion_tokens": tokens("completion_tokens"),
    }


PER_RUN_PLAN = ("decode_graphs_made",)  # eval_plan counts, not choices
PER_RUN_PACKED = ("max_batch_tokens", "max_rows")  # batch_plan=packed: sized by the free memory of the moment


def plan_choices(backend: GenerationBackend) -> dict:
    """The eval plan's choices (what `auto` resolved to, the kernels, a canonical plan's constants), taken after the
    warm-up: what the partial answers must share with the rest of a resumed run's."""
    plan = dict(backend.run_facts().get("eval_plan") or {})
    drop = PER_RUN_PLAN + (PER_RUN_PACKED if plan.get("batch_plan") == "packed" else ())
    return {k: v for k, v in plan.items() if k not in drop}


def check_resumed_plan(job_dir: Path, done: dict, plan: dict, fresh: bool) -> dict:
    """Partial answers resume only under the eval plan they ran under (recorded beside them, PARTIAL_PLAN): `auto`
    may resolve otherwise after an upgrade or on another machine (eval.kv_cache, eval.elementwise). On a
    difference: one line, or with `fresh` (skip_existing=false) the partial answers dropped. Returns `done`."""
    recorded_file = job_dir / PARTIAL_PLAN
    if done:
        try:
            recorded = json.loads(recorded_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = None  # written before this check existed, or torn: nothing to hold the answers to
        if isinstance(recorded, dict) and recorded != plan:
            what = f"{job_dir / PARTIAL} was answered under another eval plan: {differences(recorded, plan)}"
            if not fresh:
                raise FingerprintMismatch(f"{what}; to run it fresh: {FRESH}")
            log.info("%s; skip_existing=false: starting the evaluation afresh", what)
            (job_dir / PARTIAL).unlink(missing_ok=True)
            done = {}
    write_json_atomic(recorded_file, plan)
    return done


def evaluate(backend: GenerationBackend, rows: list[dict], cfg: EvalConfig, max_passages: Optional[int] = None,
             job_dir: Optional[Path] = None, prompts_of: Optional[Callable[[list[dict]], list[str]]] = None,
             fresh: bool = False) -> EvalResult:
    """`prompts_of`: rows -> prompts (prompting.eval_prompter: fitted to train.max_length); default: unfitted.
    `fresh`: partial answers made under another eval plan are dropped (skip_existing=false), not an error."""
    rows = rows[: cfg.limit] if cfg.limit else rows
    prompts_of = prompts_of or (lambda rs: build_prompts(rs, max_passages))
    partial = Path(job_dir) / PARTIAL if job_dir is not None else None
    done = read_partial(partial) if partial is not None else {}
    todo = [r for r in rows if r["qid"] not in done]
    prompts = prompts_of(todo)
    backend.warmup(prompts, cfg.max_new_tokens)  # untimed: kernel JIT, allocator
    if job_dir is not None and todo:
        kept = check_resumed_plan(Path(job_dir), done, plan_choices(backend), fresh)
        if len(kept) < len(done):  # answered under another plan, and skip_existing=false: all of them afresh
            done, todo = kept, list(rows)
            prompts = prompts_of(todo)
    if done:
        log.info("eval: resuming, %d of %d items already answered in %s; generating the other %d",
                 len(rows) - len(todo), len(rows), partial, len(todo))
    t0 = time.perf_counter()
    fh = partial.open("a", encoding="utf-8") if partial is not None else None
    try:
        for n, (i, gen) in enumerate(backend.generate(prompts, cfg.max_new_tokens, stop="\n"), 1):
            row = score(todo[i], gen)
            done[row["qid"]] = row
            if fh is not None:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                fh.flush()
                faults.after_eval_answer(n)
    finally:
        if fh is not None:
            fh.close()
    wall = time.perf_counter() - t0
    missing = [r["qid"] for r in rows if r["qid"] not in done]
    if missing:
        raise RuntimeError(f"backend {backend.name} returned no answer for {len(missing)} items (e.g. {missing[0]})")
    preds = [done[r["qid"]] for r in rows]
    metrics = {**summarize(preds, wall), "eval_resumed_items": len(rows) - len(todo),
               **speed([done[r["qid"]] for r in todo], wall), "latency_kind": backend.latency_kind,
               **noise_check(backend, rows, done, cfg, max_passages), **backend.run_facts()}
    if metrics["n_failed"]:
        first = next(p for p in preds if p.get("failed"))
        log.warning("eval: %d of %d items failed and are scored wrong (errors in predictions.jsonl), e.g. %s: %s",
                    metrics["n_failed"], len(preds), first["qid"], first["error"])
    if job_dir is not None:
        write_jsonl_atomic(Path(job_dir) / "predictions.jsonl", preds)
        partial.unlink(missing_ok=True)
        (Path(job_dir) / PARTIAL_FINGERPRINT).unlink(missing_ok=True)  # its partial predictions are gone
        (Path(job_dir) / PARTIAL_PLAN).unlink(missing_ok=True)
    return EvalResult(metrics=metrics, predictions=preds)


@dataclass
class EvalStageResult:
    metrics: dict
    info: Any  # backends.LoadInfo
    load_memory: Any  # measure.MemoryReport
    eval_memory: Any
    pid: int
    device: str
    gpu: dict


def eval_stage(cfg, model_dir: Optional[str], job_dir: str) -> EvalStageResult:
    """Load the model on its backend and evaluate it; runs in its own process (ragqa_exp.isolation), so
    the memory measured here is this stage's alone. Writes predictions.jsonl into `job_dir`."""
    import os

    from ragqa_exp.backends import get_backend
    from ragqa_exp.data import load_splits
    from ragqa_exp.measure import MemoryTracker
    from ragqa_exp.runtime import device, seed_all
    from ragqa_exp.prompting import eval_prompter

    seed_all(cfg.seed)
    rows = load_splits(cfg.data).get(cfg.eval.split)
    with MemoryTracker() as load_mem:
        backend = get_backend(cfg.eval.backend).load(cfg, model_dir)
    try:
        # the training rule (prompting.py), with the model's tokenizer (the backend's, where it loaded one)
        prompts_of = eval_prompter(cfg, model_dir, backend.tokenizer)
        with MemoryTracker() as eval_mem, disk_space_guard(job_dir, "the predictions", "hydra.run.dir / hydra.sweep.dir",
                                                           need=len(rows) * PREDICTION_BYTES):
            ev = evaluate(backend, rows, cfg.eval, cfg.data.max_passages, Path(job_dir), prompts_of,
                          fresh=not cfg.skip_existing)
    finally:
        backend.close()
    return EvalStageResult(metrics=ev.metrics, info=backend.info, load_memory=load_mem.report,
                           eval_memory=eval_mem.report, pid=os.getpid(), device=device(), gpu=gpu_identity())
