"""Responses from any OpenAI-compatible endpoint (`tether serve`, vLLM, OpenAI, ...), for evaluate, collect and
redteam in place of a model folder (`endpoint=URL endpoint_model=NAME api_key_env=NAME`, with model="").

One POST /chat/completions per response (n=1), `endpoint_concurrency` at a time from a thread pool. A request that
times out, cannot connect, or gets a 429 or a 5xx is retried with exponential backoff (0.5 s, 1 s, 2 s, ... up to
30 s, with jitter, or the server's Retry-After); any other 4xx stops the run with the server's message.

The cache (`<out>/endpoint_cache.jsonl`): each response is appended as one JSON line the moment it arrives, keyed by
a hash of the model name, the messages, the sampling settings and the sample index (the k-th response asked for the
same conversation). A run that is interrupted and started again reads the file and requests only what it lacks,
so no request that was answered is sent (or paid for) twice. A line cut short by a kill is ignored.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import httpx

from tether.config import check
from tether.errors import ConfigError, TetherError
from tether.progress import progress_bar

CACHE_FILE = "endpoint_cache.jsonl"
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
"""Statuses worth another try (OpenAI's own client retries these too)."""
TOO_LONG = re.compile(r"context.length|context window|maximum context|too long|leave no room|exceeds? the max", re.I)
"""How servers say a prompt does not fit (OpenAI's context_length_exceeded, vLLM's, tether serve's)."""


@dataclass
class EndpointFields:
    """The settings a stage gains to sample from an endpoint instead of a model folder (a base of its config)."""

    endpoint: str = ""
    """Base URL of an OpenAI-compatible API to sample from instead of a model folder, e.g. http://127.0.0.1:8000/v1
    (`tether serve`); needs model="". Responses are cached in <out>/endpoint_cache.jsonl, so a rerun resumes (use
    a new out folder when the model behind the same name has changed)."""
    endpoint_model: str = ""
    """Model name sent to the endpoint; "" for the only model its /models lists."""
    api_key_env: str = ""
    """Environment variable holding the endpoint's API key (sent as `Authorization: Bearer`); "" for none."""
    endpoint_concurrency: int = 8
    """Requests in flight at once."""
    endpoint_timeout: float = 120.0
    """Seconds one request may take before it is retried."""
    endpoint_retries: int = 6
    """Retries of a request after a timeout, a 429 or a 5xx, with exponential backoff."""

    def check_source(self, model_given: bool) -> None:
        """validate(): exactly one of model= and endpoint=, and sane endpoint settings."""
        check(model_given != bool(self.endpoint), "endpoint", "give exactly one of model= and endpoint= (to sample "
              "from an endpoint: model=\"\" endpoint=URL)")
        if self.endpoint:
            check(self.endpoint.startswith(("http://", "https://")), "endpoint",
                  f"{self.endpoint!r} is not an http:// or https:// URL")
        check(self.endpoint_concurrency >= 1, "endpoint_concurrency", "must be >= 1")
        check(self.endpoint_timeout > 0, "endpoint_timeout", "must be > 0")
        check(self.endpoint_retries >= 0, "endpoint_retries", "must be >= 0")

    def endpoint_client(self) -> EndpointClient:
        key = None
        if self.api_key_env:
            key = os.environ.get(self.api_key_env, "")
            if not key:
                raise ConfigError(f"api_key_env: environment variable {self.api_key_env} is not set or empty")
        return EndpointClient(self.endpoint, self.endpoint_model, key, self.endpoint_concurrency,
                              self.endpoint_timeout, self.endpoint_retries)


@dataclass
class Reply:
    """One response, with the fields of tether.generation.Generated."""

    text: str
    """The response text, whitespace stripped (as tether's own sampling gives it)."""
    tokens: int
    """Completion tokens the endpoint counted (usage.completion_tokens)."""
    ended: bool
    """finish_reason was "stop" (the reply ended), not "length"."""
    refused: str | None = None
    """The endpoint's reason when it refused the prompt as too long (`EndpointClient.skip_too_long`); text is ""."""


class Refused(TetherError):
    """An endpoint's final 4xx answer to a request, with its status and its own message."""

    def __init__(self, message: str, status: int, detail: str):
        super().__init__(message)
        self.status, self.detail = status, detail


class EndpointClient:
    """Chat completions from one endpoint and model, with retries, bounded concurrency and the response cache."""

    def __init__(self, url: str, model: str = "", api_key: str | None = None, concurrency: int = 8,
                 timeout: float = 120.0, retries: int = 6, backoff: float = 0.5, max_backoff: float = 30.0):
        self.url, self.concurrency, self.retries = url.rstrip("/"), concurrency, retries
        self.backoff, self.max_backoff = backoff, max_backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(headers=headers, timeout=timeout,
                                 limits=httpx.Limits(max_connections=concurrency))
        self._model = model
        self.skip_too_long = False
        """A prompt the endpoint refuses as too long gets an empty Reply with `refused` set instead of an error (the
        audit leaves such prompts out and counts them)."""

    @property
    def model(self) -> str:
        """The model name sent; asked of the endpoint's /models once when none was given."""
        if not self._model:
            ids = [m.get("id") for m in self.call("GET", "/models").get("data", [])]
            if len(ids) != 1:
                raise ConfigError(f"endpoint_model: {self.url} serves {len(ids)} models ({', '.join(map(str, ids))}); "
                                  "name one with endpoint_model=NAME")
            self._model = ids[0]
        return self._model

    def replies(self, prompts: Sequence[str | list], *, max_new_tokens: int, temperature: float, seed: int,
                top_p: float = 1.0, cache: Path | None = None, label: str = "endpoint") -> list[Reply]:
        """One reply per prompt, in order (a string is one user message); a prompt repeated k times gets k samples.
        Replies found in `cache` are not requested again; new ones are appended to it as they arrive."""
        bodies = [request_body(self.model, p, max_new_tokens, temperature, top_p, seed, k)
                  for p, k in zip(prompts, sample_indices(prompts))]
        keys = [request_key(b) for b in bodies]
        store = ReplyCache(cache)
        todo = [i for i, key in enumerate(keys) if key not in store]
        with progress_bar(f"{label} ({self.url})", total=len(keys), completed=len(keys) - len(todo)) as bar, \
                ThreadPoolExecutor(self.concurrency) as pool:
            futures = [pool.submit(self._fetch, bodies[i], keys[i], store) for i in todo]
            try:
                for future in as_completed(futures):
                    future.result()
                    bar.update(1)
            except BaseException:
                # requests not yet sent are dropped; those in flight finish and are cached (the rerun skips them)
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return [store[key] for key in keys]

    def _fetch(self, body: dict, key: str, store: ReplyCache) -> None:
        try:
            data = self.call("POST", "/chat/completions", {k: v for k, v in body.items() if k != "sample"})
        except Refused as err:
            if not (self.skip_too_long and err.status in (400, 413, 422) and TOO_LONG.search(err.detail)):
                raise
            store.add(key, Reply("", 0, False, refused=err.detail[:300]))
            return
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
            reply = Reply(text.strip(), int((data.get("usage") or {}).get("completion_tokens", 0)),
                          choice.get("finish_reason") == "stop")
        except (KeyError, IndexError, TypeError, ValueError):
            raise TetherError(f"endpoint: {self.url}/chat/completions answered something that is not a chat "
                              f"completion: {json.dumps(data)[:200]}") from None
        store.add(key, reply)

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        """The JSON answer of one request, retried on timeouts, lost connections, 429 and 5xx."""
        url = self.url + path
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self.http.request(method, url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as err:
                if last:
                    raise TetherError(f"endpoint: {method} {url} failed {attempt + 1} times; last: "
                                      f"{type(err).__name__}: {err}") from None
                self._sleep(attempt, None)
                continue
            if response.status_code < 400:
                try:
                    return response.json()
                except ValueError:
                    raise TetherError(f"endpoint: {url} answered {response.status_code} with a body that is not JSON: "
                                      f"{response.text[:200]!r}") from None
            if response.status_code not in RETRY_STATUS or last:
                tries = f" after {attempt + 1} tries" if attempt else ""
                hint = " (check api_key_env)" if response.status_code == 401 else ""
                detail = error_message(response)
                raise Refused(f"endpoint: {method} {url} answered {response.status_code}{tries}{hint}: {detail}",
                              response.status_code, detail)
            self._sleep(attempt, response.headers.get("retry-after"))
        raise AssertionError("unreachable")

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2)  # jitter
        if retry_after is not None:
            try:
                delay = min(self.max_backoff, max(delay, float(retry_after)))
            except ValueError:
                pass
        time.sleep(delay)


def request_body(model: str, prompt: str | list, max_new_tokens: int, temperature: float, top_p: float, seed: int,
                 sample: int) -> dict:
    """The chat-completion request for sample `sample` of one prompt (a string is one user message), with the cache
    key's extra field "sample" (dropped before sending). tether.responders keys a model folder's replies the same way."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    # sample k of a conversation gets its own seed, so k samples differ and each is reproducible
    return {"model": model, "messages": messages, "max_tokens": max_new_tokens, "temperature": temperature,
            "top_p": top_p, "seed": seed * 1_000_003 + sample, "n": 1, "sample": sample}


def request_key(body: dict) -> str:
    """The cache key of a request: sha256 of its model, messages, sampling settings and sample index."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def sample_indices(prompts: Sequence) -> list[int]:
    """For each prompt, how many equal prompts come before it: its sample index."""
    seen: Counter = Counter()
    out = []
    for p in prompts:
        key = json.dumps(p, sort_keys=True)
        out.append(seen[key])
        seen[key] += 1
    return out


def error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


class ReplyCache:
    """Replies by request key, read from and appended to a JSONL file (in memory only when path is None)."""

    def __init__(self, path: Path | None):
        self.path, self.replies, self._lock = path, {}, threading.Lock()
        if path is not None and path.is_file():
            text = path.read_text(encoding="utf-8")
            for line in text.splitlines():
                try:
                    row = json.loads(line)
                    self.replies[row["key"]] = Reply(**row["reply"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a kill: that request is made again
            if text and not text.endswith("\n"):
                with path.open("a", encoding="utf-8") as f:  # the next reply must not extend the cut line
                    f.write("\n")

    def __contains__(self, key: str) -> bool:
        return key in self.replies

    def __getitem__(self, key: str) -> Reply:
        return self.replies[key]

    def add(self, key: str, reply: Reply) -> None:
        with self._lock:
            self.replies[key] = reply
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                line = json.dumps({"key": key, "reply": vars(reply)}, ensure_ascii=False) + "\n"
                with self.path.open("a", encoding="utf-8") as f:  # one write per reply: a kill loses at most it
                    f.write(line)

