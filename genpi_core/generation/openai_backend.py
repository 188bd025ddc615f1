"""Generation through any OpenAI-compatible server (`vllm serve`, `transformers serve`, hosted APIs).

Bounded concurrency (a thread pool of ``max_concurrency``) and a timeout per request. Several base
URLs (replicas of `vllm serve`) share the load: request i goes to replica i mod n. The API key is read
from the env var named in the config and sent only in the Authorization header; it never appears in
logs, errors or manifests (configs store the env var's *name*).

What is retried (up to ``max_retries`` times, the same seeded request each time, so a retried
answer is the answer the first try would have given):

- connection errors, timeouts, a connection closed mid-reply, HTTP 408/409/429/5xx;
- an HTTP 200 whose body is not a chat completion (not JSON, no ``choices``, no text). That is a
  broken *reply*, most often a proxy or an overloaded server cutting it short, not a statement about
  the content, and a retry usually gets a good one. A 4xx other than 408/409/429 is a refusal that
  would repeat, so it fails at once.

A well-formed reply with bad *content* (empty text, cut at the length cap) is returned as it is,
``finish_reason`` included: the stage quarantines it with its reason, so nothing is silently dropped.

Waiting: exponential backoff (0.5 s doubling, capped at 30 s, with jitter so that concurrent requests
do not retry in lock-step); a ``Retry-After`` header is honoured (capped at 60 s). A replica that
failed is skipped for a while (its Retry-After, else 10 s) as long as another one is healthy, and a
retry that moves to such a healthy replica does not wait. When a request runs out of attempts the
whole batch stops (queued requests are cancelled, waiting ones abort) and the error names the
server(s), the request, its attempts, how many of the batch had finished and the requests sent.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

import httpx
from tqdm.auto import tqdm

from genpi_core.generation.base import ClosesOnExit, Completion, GenerationError, Message
from schemas.config import BackendConfig, ModelConfig, SamplingConfig

log = logging.getLogger(__name__)
_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
_BACKOFF_BASE_S = 0.5
_BACKOFF_CAP_S = 30.0
_RETRY_AFTER_CAP_S = 60.0
_REPLICA_COOLDOWN_S = 10.0


class _Malformed(ValueError):
    """An HTTP 200 whose body is not a usable chat completion."""


class _Aborted(Exception):
    """Another request of the batch failed for good; this one stopped waiting."""


def retry_after_s(value: str | None) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_s(attempt: int, rng: random.Random | None = None) -> float:
    """Wait before retry number ``attempt`` (1, 2, ...): 0.5 s doubling, capped at 30 s, times a jitter in [0.5, 1]."""
    jitter = (rng or random).uniform(0.5, 1.0)
    return min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** (attempt - 1)) * jitter


class OpenAIBackend(ClosesOnExit):
    def __init__(self, model: ModelConfig, backend: BackendConfig) -> None:
        assert backend.base_url is not None
        urls = [backend.base_url] if isinstance(backend.base_url, str) else list(backend.base_url)
        self.base_urls = [u.rstrip("/") for u in urls]
        self.served_model = backend.served_model or model.name_or_path
        self.name = f"openai:{','.join(self.base_urls)}:{self.served_model}"
        self.requests_per_url = {u: 0 for u in self.base_urls}
        self._count_lock = threading.Lock()
        self._down_until = {u: 0.0 for u in self.base_urls}  # monotonic time until which a failed replica is skipped
        self.max_concurrency = backend.max_concurrency
        self.max_retries = backend.max_retries
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(backend.api_key_env)
        self._secret = key or None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(headers=headers, timeout=backend.timeout_s)

    def _quote(self, text: str, limit: int) -> str:
        """A server's reply body for an error message, key removed first: a proxy or debugging server may echo
        the request's headers back, and the message goes to logs, Prefect and the terminal."""
        if self._secret:
            text = text.replace(self._secret, "[redacted]")
        return text[:limit]

    def _payload(self, messages: Sequence[Message], sampling: SamplingConfig, seed: int) -> dict:
        return {
            "model": self.served_model,
            "messages": list(messages),
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": seed,
        }

    def _choose(self, index: int, attempt: int) -> str:
        """Replica for this attempt: round-robin from ``index + attempt``, skipping replicas that just failed."""
        n = len(self.base_urls)
        order = [self.base_urls[(index + attempt + k) % n] for k in range(n)]
        now = time.monotonic()
        with self._count_lock:
            healthy = [u for u in order if self._down_until[u] <= now]
        return (healthy or order)[0]

    def _mark_down(self, base: str, seconds: float) -> None:
        if len(self.base_urls) > 1:
            with self._count_lock:
                self._down_until[base] = max(self._down_until[base], time.monotonic() + seconds)

    def _request(
        self, index: int, messages: Sequence[Message], sampling: SamplingConfig, abort: threading.Event
    ) -> Completion:
        last_error = "no attempt made"
        failed: str | None = None  # the replica the previous attempt failed on
        asked_wait = 0.0  # its Retry-After, if it sent one
        for attempt in range(self.max_retries + 1):
            base = self._choose(index, attempt)
            if attempt:
                delay = 0.0 if base != failed and self._down_until[base] <= time.monotonic() else backoff_s(attempt)
                if base == failed:
                    delay = max(delay, asked_wait)
                if abort.wait(delay):
                    raise _Aborted()
            if abort.is_set():
                raise _Aborted()
            url = f"{base}/chat/completions"
            with self._count_lock:
                self.requests_per_url[base] += 1
            started = time.perf_counter()
            failed, asked_wait = base, 0.0
            try:
                response = self._client.post(url, json=self._payload(messages, sampling, sampling.seed + index))
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                self._mark_down(base, _REPLICA_COOLDOWN_S)
                log.warning(
                    "request %d to %s failed (%s); attempt %d/%d",
                    index,
                    url,
                    last_error,
                    attempt + 1,
                    self.max_retries + 1,
                )
                continue
            if response.status_code in _RETRY_STATUS:
                asked = retry_after_s(response.headers.get("retry-after"))
                asked_wait = min(asked, _RETRY_AFTER_CAP_S) if asked is not None else 0.0
                last_error = f"HTTP {response.status_code}" + (
                    f" (Retry-After {asked:.0f} s)" if asked is not None else ""
                )
                self._mark_down(base, asked_wait or _REPLICA_COOLDOWN_S)
                log.warning(
                    "request %d to %s got %s; attempt %d/%d", index, url, last_error, attempt + 1, self.max_retries + 1
                )
                continue
            if response.status_code != 200:
                raise GenerationError(
                    f"{url}: request {index} refused with HTTP {response.status_code}: {self._quote(response.text, 300)}"
                )
            try:
                return self._parse(response, time.perf_counter() - started)
            except _Malformed as exc:
                last_error = (
                    f"malformed response from {url} ({self._quote(str(exc), 200)}): {self._quote(response.text, 200)!r}"
                )
                self._mark_down(base, _REPLICA_COOLDOWN_S)
                log.warning(
                    "request %d to %s: %s; attempt %d/%d", index, url, last_error, attempt + 1, self.max_retries + 1
                )
        raise GenerationError(self._failure(index, last_error))

    def _failure(self, index: int, last_error: str) -> str:
        servers = ", ".join(self.base_urls)
        with self._count_lock:
            sent = ", ".join(f"{u}: {n}" for u, n in self.requests_per_url.items())
        return f"{servers}: request {index} failed after {self.max_retries + 1} attempts (last error: {last_error}); requests sent so far: {sent}"

    @staticmethod
    def _parse(response: httpx.Response, seconds: float) -> Completion:
        try:
            body = response.json()
            choice = body["choices"][0]
            text = choice["message"]["content"]
            usage = body.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
            finish = choice.get("finish_reason")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise _Malformed(f"{type(exc).__name__}: {exc}") from exc
        if text is not None and not isinstance(text, str):
            raise _Malformed(f"message content is a {type(text).__name__}, not text")
        return Completion(
            text=(text or "").strip(),
            finish_reason="length" if finish == "length" else "stop",
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=seconds,
        )

    def generate(
        self, conversations: Sequence[Sequence[Message]], sampling: SamplingConfig, desc: str = "generate"
    ) -> list[Completion]:
        abort = threading.Event()
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency)
        try:
            futures = [pool.submit(self._request, i, c, sampling, abort) for i, c in enumerate(conversations)]
            for future in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="req", leave=False):
                exc = future.exception()
                if exc is None:
                    continue
                abort.set()  # the batch is lost anyway: stop the others instead of retrying them for minutes
                if not isinstance(exc, GenerationError):
                    raise exc
                finished = sum(1 for f in futures if f.done() and not f.cancelled() and f.exception() is None)
                raise GenerationError(
                    f"{exc}; {finished} of {len(futures)} requests of this batch had finished"
                ) from exc
            return [f.result() for f in futures]
        finally:
            abort.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self._client.close()
