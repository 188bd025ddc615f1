"""Generation through any OpenAI-compatible server (`vllm serve`, `transformers serve`, hosted APIs).

Bounded concurrency (a thread pool of ``max_concurrency``), a timeout per request, and retries
with exponential backoff on connection errors, timeouts, 429 and 5xx. Several base URLs (replicas
of `vllm serve`) share the load: request i goes to replica i mod n, and a retry moves to the next. The API key is read from the
env var named in the config and sent only in the Authorization header; it never appears in logs,
errors or manifests (configs store the env var's *name*).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import httpx
from tqdm.auto import tqdm

from genpi_core.generation.base import Completion, GenerationError, Message
from schemas.config import BackendConfig, ModelConfig, SamplingConfig

log = logging.getLogger(__name__)
_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIBackend:
    def __init__(self, model: ModelConfig, backend: BackendConfig) -> None:
        assert backend.base_url is not None
        urls = [backend.base_url] if isinstance(backend.base_url, str) else list(backend.base_url)
        self.base_urls = [u.rstrip("/") for u in urls]
        self.served_model = backend.served_model or model.name_or_path
        self.name = f"openai:{','.join(self.base_urls)}:{self.served_model}"
        self.requests_per_url = {u: 0 for u in self.base_urls}
        self._count_lock = threading.Lock()
        self.max_concurrency = backend.max_concurrency
        self.max_retries = backend.max_retries
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(backend.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(headers=headers, timeout=backend.timeout_s)

    def _payload(self, messages: Sequence[Message], sampling: SamplingConfig, seed: int) -> dict:
        return {
            "model": self.served_model,
            "messages": list(messages),
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": seed,
        }

    def _request(self, index: int, messages: Sequence[Message], sampling: SamplingConfig) -> Completion:
        last_error = "no attempt made"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(30.0, 0.5 * 2 ** (attempt - 1)))
            base = self.base_urls[(index + attempt) % len(self.base_urls)]
            url = f"{base}/chat/completions"
            with self._count_lock:
                self.requests_per_url[base] += 1
            started = time.perf_counter()
            try:
                response = self._client.post(url, json=self._payload(messages, sampling, sampling.seed + index))
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                log.warning("request %d to %s failed (%s); attempt %d/%d", index, url, last_error, attempt + 1, self.max_retries + 1)
                continue
            if response.status_code in _RETRY_STATUS:
                last_error = f"HTTP {response.status_code}"
                log.warning("request %d to %s got %s; attempt %d/%d", index, url, last_error, attempt + 1, self.max_retries + 1)
                continue
            if response.status_code != 200:
                raise GenerationError(f"{url}: request {index} refused with HTTP {response.status_code}: {response.text[:300]}")
            return self._parse(index, url, response, time.perf_counter() - started)
        servers = ", ".join(self.base_urls)
        raise GenerationError(f"{servers}: request {index} failed after {self.max_retries + 1} attempts (last error: {last_error})")

    @staticmethod
    def _parse(index: int, url: str, response: httpx.Response, seconds: float) -> Completion:
        try:
            body = response.json()
            choice = body["choices"][0]
            text = choice["message"]["content"] or ""
            usage = body.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise GenerationError(f"{url}: request {index}: malformed response ({exc}): {response.text[:300]}") from exc
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        return Completion(
            text=text.strip(),
            finish_reason=finish,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            latency_s=seconds,
        )

    def generate(
        self, conversations: Sequence[Sequence[Message]], sampling: SamplingConfig, desc: str = "generate"
    ) -> list[Completion]:
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = [pool.submit(self._request, i, c, sampling) for i, c in enumerate(conversations)]
            return [f.result() for f in tqdm(futures, desc=desc, unit="req", leave=False)]

    def close(self) -> None:
        self._client.close()
