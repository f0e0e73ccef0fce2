"""Generation backends: what turns prompts into answers (the lm-evaluation-harness model-registry pattern).

A backend is one class with `@register_backend("<name>")` in a module of this package, chosen with
`eval.backend=<name>`. Evaluation, metrics, predictions and wandb logging do not care which one ran.
Modules import heavy libraries inside functions: this package is imported when the config is checked.
"""
from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar, Iterator, Optional

_REGISTRY: dict[str, type["GenerationBackend"]] = {}


@dataclass
class Generation:
    """One prompt's answer. `seconds`: this item's share of the time (a batch's time split over its items,
    or one request's time). A failed item has `error` set and is scored wrong, never dropped."""

    text: str
    seconds: float
    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None
    error: Optional[str] = None
    token_ids: Optional[list[int]] = None  # the generated token ids (local backends), up to the stop token


@dataclass
class LoadInfo:
    """How the backend runs the model: reported in metrics.json (quant_kernel, quant_bits, ...)."""

    kernel: Optional[str] = None
    bits: Optional[int] = None
    group_size: Optional[int] = None
    kernel_fallback_reason: Optional[str] = None
    extra: dict = field(default_factory=dict)


class GenerationBackend(ABC):
    name: ClassVar[str]
    info: LoadInfo
    # what Generation.seconds is: "batch_share" (a batch's time over its questions: throughput) or "request"
    # (one request's wall time, as a client sees it); metrics.json `latency_kind`
    latency_kind: ClassVar[str] = "request"
    # True where an answer could depend on the other prompts evaluated with it (batched local generation):
    # the eval stage then re-evaluates a few questions in another batch composition (the noise floor)
    batches_prompts: ClassVar[bool] = False
    tokenizer: Any = None  # the model's tokenizer where the backend loaded one (the eval prompts are fitted with it)

    @classmethod
    @abstractmethod
    def load(cls, cfg: Any, model_dir: Optional[str]) -> "GenerationBackend":
        """Build the backend for RunConfig `cfg`; `model_dir` is the model or quantized artifact (None for APIs)."""

    @abstractmethod
    def generate(self, prompts: list[str], max_new_tokens: int, stop: str = "\n") -> Iterator[tuple[int, Generation]]:
        """Greedy answers, yielded as they finish as (index into prompts, Generation); each index once."""

    def warmup(self, prompts: list[str], max_new_tokens: int) -> None:  # noqa: B027  optional
        """Run once, untimed, before the timed generation (kernel JIT, allocator, autotuning)."""

    def run_facts(self) -> dict:
        """Facts of how the answers were generated, merged into metrics.json (eval_plan, generation_config, ...)."""
        return {}

    def close(self) -> None:  # noqa: B027  optional
        """Release what the backend holds (clients, threads)."""


def register_backend(name: str):
    def deco(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


@lru_cache(maxsize=None)
def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def backend_names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get_backend(name: str) -> type[GenerationBackend]:
    _discover()
    return _REGISTRY[name]
