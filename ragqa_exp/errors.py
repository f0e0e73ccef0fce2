"""Errors a user can fix. Each carries a one-line message that names the key/file and the fix;
the entrypoint prints it without a traceback."""
from __future__ import annotations

from dataclasses import Field, field, fields
from typing import Any, Callable, Iterable, Union

from ragqa_exp.diskspace import free_bytes, human_bytes


class RagqaError(Exception):
    """Bad input or environment: printed as one line, exit status 2 (a sweep records it and goes on)."""


class ConfigError(RagqaError):
    pass


class DataError(RagqaError):
    pass


class DependencyError(RagqaError):
    pass


class ResourceError(RagqaError):
    """No GPU for a GPU-only method, out of memory, ..."""


class SourceError(RagqaError):
    """A model, dataset, cache or output location that does not exist, is not reachable or not writable."""


class DiskFullError(ResourceError):
    """A write failed for lack of space: names the path, the space needed and the space free."""


class UserAbort(BaseException):
    """Carries a RagqaError past code that turns every Exception into a warning (Hydra's callbacks) to the
    entrypoint, which prints it as one line and exits 2."""

    def __init__(self, error: RagqaError) -> None:
        super().__init__(str(error))
        self.error = error


def invalid(key: str, value: Any, allowed: str) -> ConfigError:
    """`key=value` is not allowed: one line naming the key, the value and what is allowed."""
    return ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise invalid(key, value, allowed)


def check_choice(key: str, value: Any, choices: Iterable[Any]) -> None:
    choices = list(choices)
    check(value in choices, key, value, "choose one of " + ", ".join(map(str, choices)))


def check_int(key: str, value: Any, minimum: int = 1, sentinels: tuple = (), maximum: int | None = None) -> None:
    """An integer in [minimum, maximum] (no upper bound by default), or one of the documented sentinels
    (e.g. -1, None)."""
    if value in sentinels and not isinstance(value, bool):
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    ok = ok and (maximum is None or value <= maximum)
    extra = " (or " + " / ".join("null" if s is None else str(s) for s in sentinels) + ")" if sentinels else ""
    bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
    check(ok, key, value, f"use an integer {bounds}{extra}")


def check_number(key: str, value: Any, low: float = 0.0, high: float | None = None, low_open: bool = False,
                 high_open: bool = True, allow_none: bool = False) -> None:
    """A finite number in the range [low, high) (by default: >= low)."""
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")
    if ok:
        ok = (value > low if low_open else value >= low) and (
            high is None or (value < high if high_open else value <= high))
    lo = f"{'>' if low_open else '>='} {low:g}"
    hi = "" if high is None else f" and {'<' if high_open else '<='} {high:g}"
    check(ok, key, value, f"use a number {lo}{hi}" + (" (or null)" if allow_none else ""))


Choices = Union[Iterable[Any], Callable[[], Iterable[Any]]]


def choice(default: Any, choices: Choices) -> Any:
    """A dataclass field whose value must be one of `choices` (or of what a zero-argument callable returns,
    for sets known only at run time such as registered backends). `check_choices` checks every such field of
    a config; the tests read the same declaration to draw valid and invalid values."""
    return field(default=default, metadata={"choices": choices})


def choices_of(f: Field) -> list | None:
    """The allowed values a field declares with `choice(...)`, or None."""
    allowed = f.metadata.get("choices")
    if allowed is None:
        return None
    return list(allowed() if callable(allowed) else allowed)


def check_choices(cfg: Any, prefix: str) -> None:
    """Every `choice(...)` field of dataclass instance `cfg` holds one of its values (keys `<prefix>.<field>`)."""
    for f in fields(cfg):
        allowed = choices_of(f)
        if allowed is not None:
            check_choice(f"{prefix}.{f.name}", getattr(cfg, f.name), allowed)


def one_line(ex: BaseException) -> str:
    """An exception (and its causes) as one line, without Hydra's search-path and traceback hints."""
    import re

    texts, seen = [], set()
    while ex is not None and id(ex) not in seen:
        seen.add(id(ex))
        texts.append(str(ex))
        ex = ex.__cause__ or (None if ex.__suppress_context__ else ex.__context__)  # `raise ... from None` ends it
    parts: list[str] = []
    options: list[str] | None = None
    for line in (ln.strip() for t in texts for ln in t.splitlines()):
        if not line or line.startswith(("Config search path", "provider=", "Set the environment variable HYDRA_FULL_ERROR")):
            continue
        if line.startswith(("full_key:", "object_type=", "reference_type=")) or "$VALUE" in line or line in parts:
            continue
        if re.fullmatch(r"'[^'\s]*'", line):  # OmegaConf's bare repr of the bad value, already named
            continue
        if line.startswith("Available options in"):
            options = []
            parts.append(line.rstrip(":").replace("Available", "available") + ":")
        elif options is not None and " " not in line:
            options.append(line)
            parts[-1] = parts[-1].split(":")[0] + ": " + ", ".join(options)
        else:
            options = None
            parts.append(line)
    return "; ".join(p.rstrip(".;") for p in parts) or type(ex).__name__


OOM_HINT = ("out of GPU memory: lower eval.batch_size / eval.max_batch_tokens / train.per_device_train_batch_size, "
            "set train.gradient_checkpointing=true, or pick a 4-bit quant")


DISK_FULL_ERRNOS = (28, 122)  # ENOSPC, EDQUOT
DISK_FULL_TEXTS = ("no space left on device", "disk quota exceeded", "os error 28", "storagefull")


def is_disk_full(ex: BaseException) -> bool:
    """An exception (or one of its causes) says the disk is full: an OSError with ENOSPC/EDQUOT, or a
    library's own error that quotes it (safetensors: `I/O error: No space left on device (os error 28)`)."""
    seen = set()
    while ex is not None and id(ex) not in seen:
        seen.add(id(ex))
        if isinstance(ex, OSError) and ex.errno in DISK_FULL_ERRNOS:
            return True
        if any(t in str(ex).lower() for t in DISK_FULL_TEXTS):
            return True
        ex = ex.__cause__ or ex.__context__
    return False


def disk_full_error(path: Any, what: str, need: int | None, setting: str) -> DiskFullError:
    """The one line for a write to `path` that failed for lack of space: the space needed and free, the fix."""
    free = free_bytes(path)
    needs = f"needs up to {human_bytes(need)}" if need else "needs more space"
    has = f"{human_bytes(free)} free there" if free is not None else "free space unknown"
    return DiskFullError(f"no space left on device writing {what} to {path or 'an unknown path'}: {needs}, {has}; "
                         f"free some space or point {setting} at a bigger disk")


def user_error(ex: BaseException) -> RagqaError | None:
    """The one-line, fixable form of an exception, or None for a bug (which keeps its traceback)."""
    import sys

    if isinstance(ex, RagqaError):
        return ex
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(ex, torch.cuda.OutOfMemoryError):
        return ResourceError(OOM_HINT)
    if is_disk_full(ex):  # a write outside the stages' guarded ones (fsutil.disk_space_guard)
        return disk_full_error(getattr(ex, "filename", None), "a file", None, "cache_dir / hydra.run.dir")
    return None
