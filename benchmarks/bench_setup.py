"""What the evaluation benchmarks start from: the composed config, the hf backend loaded as the eval stage
loads it, the bundled validation prompts tokenized as it tokenizes them (left padding), the canonical plan, and
a batch padded to its bucket on the model's device (profile_eval.py, static_decode.py, invariance_probe.py)."""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def sync() -> None:
    """Wait for the GPU (a no-op on a CPU): what a wall-clock timing of device work needs on both sides."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, reps: int) -> tuple[float, list[float], object]:
    """(median seconds, every run's seconds, the last result) of `reps` synchronized calls after a warm-up."""
    out = fn()
    walls = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        walls.append(time.perf_counter() - t)
    return statistics.median(walls), walls, out


@dataclass
class Loaded:
    cfg: object
    backend: object  # ragqa_exp.backends.hf.HFBackend
    ids: list[list[int]]  # token ids of each prompt

    @property
    def model(self):
        return self.backend.model

    def plan(self, max_new_tokens: int):
        """The canonical plan the backend runs with these settings."""
        from ragqa_exp.backends.hf import canonical_plan

        b = self.backend
        return canonical_plan(b.model, b.batch_size, b.max_batch_tokens, b.length_bucket, max_new_tokens)

    def padded(self, rows: list[int], padded: int):
        """input_ids and attention_mask of `rows`, left-padded to `padded` tokens, on the model's device."""
        tok = self.backend.tok
        return tok.pad({"input_ids": [self.ids[i] for i in rows]}, padding="max_length", max_length=padded,
                       return_tensors="pt").to(next(self.model.parameters()).device)


def load(quant: str, model_dir: str, overrides: list[str], n_prompts: int = 0) -> Loaded:
    """`n_prompts` > 0: the validation prompts repeated to that many."""
    from ragqa_exp.backends.hf import HFBackend
    from ragqa_exp.config_store import validate_overrides
    from ragqa_exp.data import format_prompt, load_splits

    cfg = validate_overrides([f"quant={quant}", *overrides])
    rows = load_splits(cfg.data).validation
    if n_prompts:
        rows = (rows * (n_prompts // len(rows) + 1))[:n_prompts]
    prompts = [format_prompt(r["question"], r["context"], cfg.data.max_passages) for r in rows]
    backend = HFBackend.load(cfg, model_dir)
    backend.tok.padding_side = "left"
    return Loaded(cfg, backend, backend.tok(prompts, add_special_tokens=True)["input_ids"])
