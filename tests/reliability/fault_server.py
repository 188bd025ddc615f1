"""FAKE generation server for the fault suite: an OpenAI-compatible HTTP server on 127.0.0.1 that
answers ``POST /v1/chat/completions`` according to a script of faults.

It is a fake only in how it fails: its good answers are *real* generations of the embedded model,
made in-process by genpi's own ``TransformersBackend`` (batch of one, the request's own seed, so an
answer depends only on the request). Identical requests get the identical answer from a small
cache, which is what a seeded server does anyway and keeps a clean run, a faulty run and a resumed
run from paying for the same generation three times.

Faults, taken one per request in arrival order from ``script`` (then ``then`` for every later one):

- ``ok``: a real completion;
- ``500`` / ``502`` / ``503`` / ``429`` (optionally ``"429:2"``: with ``Retry-After: 2``; ``"503:date"``:
  Retry-After as an HTTP date 2 s ahead): that status with a short error body;
- ``400``: a refusal (should not be retried);
- ``sleep``: hold the request ``sleep_s`` (longer than the client's timeout), then answer;
- ``close``: send the headers and half of a real body, then close the connection;
- ``drop``: close the connection without answering;
- ``malformed``: HTTP 200 whose body is not JSON (cut in the middle of the object);
- ``no_choices``: HTTP 200, valid JSON, no ``choices``;
- ``bad_type``: HTTP 200, ``content`` is a number, not text;
- ``empty``: HTTP 200, a well-formed completion with empty content (bad content, not a broken reply);
- ``truncated``: a real completion cut at 3 tokens, ``finish_reason: "length"``;
- ``echo_400`` / ``echo_malformed``: a 400 refusal / a 200 that is not JSON, whose body repeats the request's
  headers (as a debugging proxy does), Authorization included.
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_GEN_LOCK = threading.Lock()  # one generation at a time across all fake servers: they may share one engine
TRANSIENT = ("500", "502", "503", "429", "sleep", "close", "drop", "malformed", "no_choices", "bad_type")
BAD_CONTENT = ("empty", "truncated")


@dataclass
class Seen:
    number: int  # 1-based arrival order
    fault: str
    at: float  # time.monotonic() on arrival
    seed: int | None
    last_message: str
    authorization: str  # the Authorization header as received (the API key belongs there and nowhere else)


class FaultServer:
    """Start with ``with FaultServer(engine) as server:``; point ``BackendConfig.base_url`` at ``server.url``."""

    def __init__(self, engine, script: Iterable[str] = (), then: str = "ok", sleep_s: float = 2.5) -> None:
        self.engine = engine  # a real generation backend (TransformersBackend on the embedded model)
        self.sleep_s = sleep_s
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[str, str, int, int]] = {}
        self.generated = 0  # real generations actually run (cache misses)
        self.set(script, then)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                outer._send_json(self, 200, {"object": "list", "data": [{"id": "embedded", "object": "model"}]})

            def do_POST(self):  # noqa: N802
                try:
                    outer._handle(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) before we answered: that is the point of `sleep`

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    # --- control -----------------------------------------------------------------------------------------
    def set(self, script: Iterable[str] = (), then: str = "ok") -> None:
        """Replace the fault script; the request log is kept (use ``mark()`` to count from here)."""
        with self._lock:
            self._script = deque(script)
            self._then = then

    def mark(self) -> int:
        with self._lock:
            return len(self.seen)

    def faults_since(self, mark: int = 0) -> Counter:
        with self._lock:
            return Counter(s.fault for s in self.seen[mark:])

    def requests_since(self, mark: int = 0) -> int:
        with self._lock:
            return len(self.seen) - mark

    def __enter__(self) -> FaultServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- answering ---------------------------------------------------------------------------------------
    def _next_fault(self, payload: dict, authorization: str = "") -> str:
        with self._lock:
            fault = self._script.popleft() if self._script else self._then
            last = (payload.get("messages") or [{}])[-1].get("content", "")
            self.seen.append(
                Seen(len(self.seen) + 1, fault, time.monotonic(), payload.get("seed"), str(last)[:80], authorization)
            )
            return fault

    def _generate(self, payload: dict, max_tokens: int) -> tuple[str, str, int, int]:
        from schemas.config import SamplingConfig

        key = json.dumps({**payload, "max_tokens": max_tokens}, sort_keys=True)
        with _GEN_LOCK:
            if key not in self._cache:
                sampling = SamplingConfig(
                    temperature=payload.get("temperature", 0.0),
                    top_p=payload.get("top_p", 1.0),
                    max_new_tokens=max_tokens,
                    seed=payload.get("seed") or 0,
                )
                c = self.engine.generate([payload["messages"]], sampling, desc="fault server")[0]
                self._cache[key] = (c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens)
                self.generated += 1
            return self._cache[key]

    @staticmethod
    def _completion(text, finish: str, prompt_tokens: int, completion_tokens: int) -> dict:
        return {
            "id": "chatcmpl-fault",
            "object": "chat.completion",
            "model": "embedded",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    @staticmethod
    def _send_json(handler, status: int, body: dict | bytes, headers: dict | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(data)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        payload = json.loads(h.rfile.read(int(h.headers.get("Content-Length") or 0)) or b"{}")
        fault = self._next_fault(payload, h.headers.get("Authorization", ""))
        code, _, arg = fault.partition(":")
        if code.isdigit():
            headers = {}
            if arg == "date":
                headers["Retry-After"] = email.utils.formatdate(time.time() + 2, usegmt=True)
            elif arg:
                headers["Retry-After"] = arg
            self._send_json(h, int(code), {"error": {"message": f"injected HTTP {code}", "type": "fault"}}, headers)
            return
        if fault == "drop":
            h.close_connection = True
            return
        if fault.startswith("echo_"):
            first = sorted(h.headers.items(), key=lambda kv: kv[0].lower() != "authorization")
            echoed = "; ".join(f"{k}: {v}" for k, v in first)
            if fault == "echo_400":
                self._send_json(h, 400, {"error": {"message": f"bad request; you sent {echoed}", "type": "fault"}})
            else:
                self._send_json(h, 200, f"<html>upstream error; request headers: {echoed}</html>".encode())
            return
        if fault == "malformed":
            self._send_json(h, 200, b'{"id": "chatcmpl-fault", "choices": [{"index": 0, "message": {"role": "assis')
            return
        if fault == "no_choices":
            self._send_json(h, 200, {"id": "chatcmpl-fault", "object": "chat.completion", "usage": {}})
            return
        if fault == "bad_type":
            self._send_json(h, 200, self._completion(42, "stop", 1, 1))
            return
        if fault == "empty":
            self._send_json(h, 200, self._completion("", "stop", 1, 0))
            return
        if fault == "truncated":
            text, _, p, n = self._generate(payload, min(3, int(payload.get("max_tokens", 3))))
            self._send_json(h, 200, self._completion(text, "length", p, n))
            return
        if fault == "sleep":
            time.sleep(self.sleep_s)
        elif fault not in ("ok", "close"):
            raise ValueError(f"fault server: unknown fault {fault!r}")
        text, finish, p, n = self._generate(payload, int(payload.get("max_tokens", 16)))
        body = json.dumps(self._completion(text, finish, p, n)).encode()
        if fault == "close":
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        self._send_json(h, 200, body)
