"""The "http" judge: the project's prompts against an OpenAI-compatible /v1/chat/completions endpoint
(vLLM, SGLang, `transformers serve`), concurrent, with timeouts, retries and an on-disk cache."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from exprl.data import SEGMENT_DELIMITER
from exprl.rewards.cache import CompletionCache
from exprl.rewards.judge import ModelJudge
from exprl.rewards.prompts import Messages
from exprl.rewards.registry import register

# Failures worth another try: the server may recover. Anything else (4xx, malformed JSON) will not.
_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


@register
class HTTPJudge(ModelJudge):
    """Judge through `{base_url}/chat/completions` (base_url like "http://127.0.0.1:8000/v1").

    Requests run `concurrency` at a time; each waits at most `timeout_s` and is retried `retries`
    times after a timeout, a refused connection or a retryable status, sleeping backoff_s * 2**i before
    retry i. What still fails is None, counted in counters: "timeout", "connection_error",
    "server_error" (HTTP status), "bad_response" (no choices[0].message.content). Successful completions
    are cached under `cache_dir` (None: no cache), keyed by a hash of the endpoint and request body, so
    a resumed run reuses them ("cache_hit"). The API key is read from the environment variable
    `api_key_env` (sent as a Bearer token when set) and never cached.
    """

    name = "http"
    informational_counters = (*ModelJudge.informational_counters, "cache_hit", "retries")

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        mode: str = "outcome",
        delimiter: str = SEGMENT_DELIMITER,
        process_context: str = "segment",
        api_key_env: str = "OPENAI_API_KEY",
        max_tokens: int = 512,
        temperature: float = 0.0,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 1.0,
        concurrency: int = 8,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__(mode, delimiter, process_context)
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty str (the served model's name), got {model!r}")
        positive = {"max_tokens": max_tokens, "timeout_s": timeout_s, "concurrency": concurrency}
        for key, value in positive.items():
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{key} must be positive, got {value!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        if not isinstance(backoff_s, int | float) or backoff_s < 0:
            raise ValueError(f"backoff_s must be >= 0, got {backoff_s!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.concurrency = concurrency
        self.cache = CompletionCache(cache_dir) if cache_dir is not None else None
        self._local = threading.local()  # one requests.Session per worker thread
        self.counters.update(
            {
                "cache_hit": 0,
                "retries": 0,
                "timeout": 0,
                "connection_error": 0,
                "server_error": 0,
                "bad_response": 0,
            }
        )

    def _body(self, messages: Messages) -> dict:
        return {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stream": False,
        }

    def _post(self, body: dict) -> tuple[str | None, str | None, int]:
        """(completion, failure counter name, retries used) for one request, retrying what may recover.
        The first failure of the judge's lifetime is described in `first_failure` (URL, status)."""
        completion, failure, attempts, detail = self._attempts(body)
        if failure is not None and self.first_failure is None:
            self.first_failure = f"POST {self.url}: {detail}"
        return completion, failure, attempts

    def _attempts(self, body: dict) -> tuple[str | None, str | None, int, str]:
        """`_post`'s result and a description of its last failure."""
        session = getattr(self._local, "session", None) or requests.Session()
        self._local.session = session
        headers = (
            {"Authorization": f"Bearer {os.environ[self.api_key_env]}"}
            if os.environ.get(self.api_key_env)
            else {}
        )
        failure, detail = None, ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = session.post(self.url, json=body, headers=headers, timeout=self.timeout_s)
            except requests.Timeout:
                failure, detail = "timeout", f"no answer within timeout_s={self.timeout_s:g} s"
                continue
            except requests.ConnectionError as error:
                failure, detail = "connection_error", f"cannot connect ({type(error).__name__}: {error})"
                continue
            status = f"HTTP {response.status_code}: {response.text[:200]!r}"
            if response.status_code in _RETRYABLE_STATUS:
                failure, detail = "server_error", status
                continue
            if response.status_code != 200:
                return None, "server_error", attempt, status
            try:
                content = response.json()["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                content = None
            if not isinstance(content, str):
                return None, "bad_response", attempt, f"no choices[0].message.content in {status}"
            return content, None, attempt, ""
        return None, failure, self.retries, f"{detail} (after {self.retries} retries)"

    def complete(self, conversations: Sequence[Messages]) -> list[str | None]:
        bodies = [self._body(messages) for messages in conversations]
        # The endpoint is part of the key: the same prompt to another server is another request.
        keys = [{"url": self.url, **body} for body in bodies]
        results: list[str | None] = [self.cache.get(key) if self.cache else None for key in keys]
        self.counters["cache_hit"] += sum(r is not None for r in results)
        todo = [i for i, r in enumerate(results) if r is None]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            outcomes = list(pool.map(self._post, [bodies[i] for i in todo]))
        for i, (completion, failure, retries) in zip(todo, outcomes, strict=True):
            self.counters["retries"] += retries
            if failure is not None:
                self.counters[failure] += 1
                continue
            results[i] = completion
            if self.cache:
                self.cache.put(keys[i], completion)
        return results
