"""eval.backend=openai: a served model behind an OpenAI-compatible API (OpenAI, vLLM, llama.cpp,
`transformers serve`, ...), asked through the official `openai` client (`pip install -e '.[api]'`).

- The prompt is `data.format_prompt`'s, byte for byte what a local model reads. `model.endpoint=chat` sends
  it whole as ONE user message (no system message: the prompt's first line already is the study's system
  line, and splitting it off would make the API row read a different prompt from the local rows);
  `model.endpoint=completions` sends it as the raw prompt.
- Greedy-equivalent settings: temperature 0, `max_tokens=eval.max_new_tokens`, `stop=["\\n"]`, `seed`.
- `eval.concurrency` requests in flight (threads sharing one client); each item is yielded the moment its
  request finishes, so evaluate() records it in predictions.partial.jsonl and a killed run resumes there.
- Retries with backoff on 408/409/429/5xx, timeouts and lost connections are the client's own
  (`model.max_retries`, `model.request_timeout_s` per attempt; it honours Retry-After). A request that still
  fails, or that the server refuses (400/422: e.g. a prompt over the context length), is a failed item
  (`Generation.error`, scored wrong, listed in predictions), never dropped. A rejected key (401/403) or an
  unknown model or endpoint (404) would fail every item alike, so it stops the job with one line instead.
- `seconds` of an item is its request's wall time, retries included (what a user of the API waits).
- The key is read from the environment variable `model.api_key_env` and never logged or written; error
  texts that echo it are redacted.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Iterator, Optional

from ragqa_exp.backends import Generation, GenerationBackend, LoadInfo, register_backend
from ragqa_exp.config import SERVED_MODEL_AUTO, ModelConfig
from ragqa_exp.errors import ConfigError, DependencyError, SourceError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10.0  # the model-list request of the job's preflight
ERROR_MAX_CHARS = 300  # of a failed item's error text
REDACTED = "<redacted>"
REQUEST_THREAD_PREFIX = "openai-request"


def require_openai() -> Any:
    """The `openai` module, or the one-line error naming the extra that installs it."""
    try:
        import openai
    except ImportError:
        raise DependencyError(
            "model.source=openai needs the openai client, which is not installed: pip install -e '.[api]'"
        ) from None
    return openai


def api_key(m: ModelConfig) -> str:
    return os.environ.get(m.api_key_env or "", "")


def redact(text: str, key: str) -> str:
    return text.replace(key, REDACTED) if key else text


def make_client(m: ModelConfig, timeout: Optional[float] = None, max_retries: Optional[int] = None):
    openai = require_openai()
    for name in ("httpx", "httpx2", "httpcore", "httpcore2"):  # one INFO line per request otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    return openai.OpenAI(
        base_url=m.base_url, api_key=api_key(m),
        timeout=m.request_timeout_s if timeout is None else timeout,
        max_retries=m.max_retries if max_retries is None else max_retries,
    )


def fatal_error(ex: BaseException, m: ModelConfig) -> Optional[Exception]:
    """The one-line error for an answer that every request would get alike (bad key, no such model or
    endpoint), or None for a per-item failure."""
    openai = require_openai()
    status = getattr(ex, "status_code", None)
    if isinstance(ex, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return ConfigError(
            f"model.api_key_env={m.api_key_env}: the server at model.base_url={m.base_url} refused the key "
            f"({status}); export a valid key in {m.api_key_env}"
        )
    if isinstance(ex, openai.NotFoundError):
        return ConfigError(
            f"model.name={m.name!r}: {m.base_url} answered 404 for the {m.endpoint} endpoint; check model.name (the "
            f"served model id), model.base_url (usually ends in /v1) and model.endpoint (chat | completions)"
        )
    return None


def describe(ex: BaseException, key: str) -> str:
    """A failed item's error: type, HTTP status and the server's message, one line, key redacted."""
    status = getattr(ex, "status_code", None)
    text = " ".join(str(ex).split())
    head = f"{type(ex).__name__}" + (f" ({status})" if status is not None else "")
    return redact(f"{head}: {text}", key)[:ERROR_MAX_CHARS]


def served_model_id(m: ModelConfig) -> str:
    """Ask the server for its models (GET {base_url}/models): it must answer and accept the key.
    Returns `model.name`, or with model.name=auto the one model the server lists."""
    openai = require_openai()
    client = make_client(m, timeout=PROBE_TIMEOUT_S, max_retries=1)
    key = api_key(m)
    try:
        ids: Optional[list[str]] = [x.id for x in client.models.list()]
    except openai.APIConnectionError as ex:
        raise SourceError(
            f"model.base_url={m.base_url}: no answer ({describe(ex, key)}); start the server or fix model.base_url"
        ) from None
    except openai.APIStatusError as ex:
        err = fatal_error(ex, m) if not isinstance(ex, openai.NotFoundError) else None
        if err is not None:
            raise err from None
        ids = None  # a server without a model list: the first request will tell
    finally:
        client.close()
    if m.name == SERVED_MODEL_AUTO:
        if not ids or len(ids) != 1:
            listed = "no model list" if ids is None else f"{len(ids)} models ({', '.join(ids[:8])}{', ...' if len(ids) > 8 else ''})"
            raise ConfigError(
                f"model.name=auto: {m.base_url} has {listed}, not exactly one; set model.name=<the served model id>"
            )
        log.info("model.name=auto: %s serves %s", m.base_url, ids[0])
        return ids[0]
    if ids is not None and m.name not in ids:
        log.warning("model.name=%s is not among the %d models %s lists (%s); requests may fail with 404",
                    m.name, len(ids), m.base_url, ", ".join(ids[:8]))
    return m.name


@register_backend("openai")
class OpenAIBackend(GenerationBackend):
    def __init__(self, m: ModelConfig, client, concurrency: int, seed: Optional[int]) -> None:
        self.m, self.client, self.concurrency, self.seed = m, client, concurrency, seed
        self.key = api_key(m)
        self.info = LoadInfo(kernel=f"api:{m.endpoint}")

    @classmethod
    def load(cls, cfg, model_dir: Optional[str] = None) -> "OpenAIBackend":
        if model_dir is not None:
            raise ValueError("the openai backend evaluates a served model; it takes no model_dir")
        return cls(cfg.model, make_client(cfg.model), cfg.eval.concurrency, cfg.seed)

    def _request(self, prompt: str, max_new_tokens: int, stop: str):
        common = dict(model=self.m.name, temperature=0, max_tokens=max_new_tokens, stop=[stop], seed=self.seed)
        if self.m.endpoint == "chat":
            return self.client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **common)
        return self.client.completions.create(prompt=prompt, **common)

    def _ask(self, prompt: str, max_new_tokens: int, stop: str) -> Generation:
        openai = require_openai()
        t0 = time.perf_counter()
        try:
            resp = self._request(prompt, max_new_tokens, stop)
        except openai.APIError as ex:
            dt = time.perf_counter() - t0
            err = fatal_error(ex, self.m)
            if err is not None:
                raise err from None
            return Generation(text="", seconds=dt, error=describe(ex, self.key))
        dt = time.perf_counter() - t0
        usage = getattr(resp, "usage", None)
        tokens = dict(prompt_tokens=getattr(usage, "prompt_tokens", None),
                      completion_tokens=getattr(usage, "completion_tokens", None))
        if not resp.choices:
            return Generation(text="", seconds=dt, error="the server returned no choices", **tokens)
        choice = resp.choices[0]
        text = choice.message.content if self.m.endpoint == "chat" else choice.text
        return Generation(text=text or "", seconds=dt, **tokens)

    def generate(self, prompts: list[str], max_new_tokens: int, stop: str = "\n") -> Iterator[tuple[int, Generation]]:
        from tqdm.auto import tqdm

        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=REQUEST_THREAD_PREFIX)
        try:
            futures = {pool.submit(self._ask, p, max_new_tokens, stop): i for i, p in enumerate(prompts)}
            with tqdm(total=len(prompts), desc="eval", unit="q") as bar:
                for fut in as_completed(futures):
                    yield futures[fut], fut.result()
                    bar.update(1)
        finally:  # also when the consumer stops early: queued requests are never sent
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self.client.close()
