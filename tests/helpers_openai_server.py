"""A scripted OpenAI-compatible HTTP server on 127.0.0.1 for tests of the API backend.

It speaks the wire format of `GET /v1/models`, `POST /v1/chat/completions` and `POST /v1/completions`
(the JSON that the real `openai` client parses), answers each question with the reply the test scripted
for it, and injects faults per question and attempt: a 429 (with Retry-After), a 500, a reply slower than
the client's timeout, a request held until the test releases it, a 400 whose message echoes the request's
Authorization header (to check that the key is redacted). Every request is logged (path, question, status,
body) so tests count what was asked. Bounded: port 0 on loopback only, at most `max_requests` requests
(then 503 with `x-should-retry: false`), every sleep or hold at most a few seconds; `with` stops it.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

# what the server does at one attempt of one question
OK, RATE_LIMIT, SERVER_ERROR, SLOW, HOLD, ECHO_KEY_400 = "ok", "429", "500", "slow", "hold", "400-echo-key"
HOLD_MAX_S = 10.0


def question_of(prompt: str) -> str:
    """The question inside a ragqa_exp prompt (`### 指示:\\n<question>\\n\\n### 入力:`)."""
    return prompt.split("### 指示:\n", 1)[-1].split("\n\n### 入力:", 1)[0]


@dataclass
class Logged:
    path: str
    question: Optional[str]
    status: int
    body: dict


@dataclass
class Script:
    replies: dict[str, str]  # question -> the text the model "generates" (cut at the request's stop strings)
    faults: dict[str, list[str]] = field(default_factory=dict)  # question -> action per attempt (then OK)
    always_fail: set[str] = field(default_factory=set)  # questions answered 500 at every attempt


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that hung up (its timeout, its close) is expected here; anything else is printed."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class FakeOpenAIServer:
    def __init__(self, script: Script, api_key: str, model_id: str = "fake-served-model",
                 slow_s: float = 2.0, max_requests: int = 400) -> None:
        self.script, self.api_key, self.model_id = script, api_key, model_id
        self.slow_s, self.max_requests = slow_s, max_requests
        self.log: list[Logged] = []
        self.release = threading.Event()  # lets HOLD requests answer
        self.held = threading.Event()  # set when a HOLD request has arrived
        self.held_answered = threading.Event()  # set once a HOLD request has been answered
        self._lock = threading.Lock()
        self._attempts: dict[str, int] = {}
        self._httpd = _QuietServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    # ------------------------------------------------------------ what tests read

    def asked(self, path: str = "/v1/chat/completions") -> list[str]:
        """The question of every generation request to `path`, in arrival order (retries included)."""
        with self._lock:
            return [e.question for e in self.log if e.path == path]

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    # ------------------------------------------------------------ serving

    def _next_action(self, question: str) -> str:
        with self._lock:
            n = self._attempts.get(question, 0)
            self._attempts[question] = n + 1
        if question in self.script.always_fail:
            return SERVER_ERROR
        plan = self.script.faults.get(question, [])
        return plan[n] if n < len(plan) else OK

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes

            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, payload: dict, headers: Optional[dict] = None) -> None:
                data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
                    pass

            def _error(self, status: int, message: str, headers: Optional[dict] = None) -> None:
                self._send(status, {"error": {"message": message, "type": "test_error", "code": status}}, headers)

            def _record(self, question: Optional[str], status: int, body: dict) -> bool:
                with server._lock:
                    if len(server.log) >= server.max_requests:
                        return False
                    server.log.append(Logged(self.path, question, status, body))
                    return True

            def _authorized(self) -> bool:
                return self.headers.get("Authorization") == f"Bearer {server.api_key}"

            def do_GET(self) -> None:  # noqa: N802
                if not self._record(None, 200, {}):
                    return self._error(503, "request budget of the test server spent", {"x-should-retry": "false"})
                if self.path != "/v1/models":
                    return self._error(404, f"no route {self.path}")
                if not self._authorized():
                    return self._error(401, "invalid api key")
                self._send(200, {"object": "list", "data": [
                    {"id": server.model_id, "object": "model", "created": 0, "owned_by": "test"}]})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                chat = self.path == "/v1/chat/completions"
                if not chat and self.path != "/v1/completions":
                    self._record(None, 404, body)
                    return self._error(404, f"no route {self.path}")
                prompt = body["messages"][-1]["content"] if chat else body["prompt"]
                question = question_of(prompt)
                if not self._authorized():
                    self._record(question, 401, body)
                    return self._error(401, "invalid api key")
                if body.get("model") != server.model_id:
                    self._record(question, 404, body)
                    return self._error(404, f"The model `{body.get('model')}` does not exist.")
                action = server._next_action(question)
                status = {RATE_LIMIT: 429, SERVER_ERROR: 500, ECHO_KEY_400: 400}.get(action, 200)
                if not self._record(question, status, body):
                    return self._error(503, "request budget of the test server spent", {"x-should-retry": "false"})
                if action == RATE_LIMIT:
                    return self._error(429, "rate limit reached", {"retry-after-ms": "20"})
                if action == SERVER_ERROR:
                    return self._error(500, "internal error")
                if action == ECHO_KEY_400:
                    return self._error(400, f"bad request from {self.headers.get('Authorization')}")
                if action == SLOW:
                    time.sleep(server.slow_s)
                if action == HOLD:
                    server.held.set()
                    server.release.wait(HOLD_MAX_S)
                text = server.script.replies.get(question, "わかりません")
                for s in body.get("stop") or []:
                    text = text.split(s, 1)[0]
                text = text[: int(body.get("max_tokens") or len(text))]
                usage = {"prompt_tokens": len(prompt), "completion_tokens": len(text),
                         "total_tokens": len(prompt) + len(text)}
                if chat:
                    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    obj = "chat.completion"
                else:
                    choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
                    obj = "text_completion"
                self._send(200, {"id": "cmpl-test", "object": obj, "created": 0, "model": server.model_id,
                                 "choices": [choice], "usage": usage})
                if action == HOLD:
                    server.held_answered.set()

        return Handler
