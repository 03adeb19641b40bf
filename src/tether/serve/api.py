"""The HTTP side of `tether serve` (FastAPI): OpenAI's routes over an `Engine`.

- GET /v1/models, GET /v1/models/{id}: the one served model.
- POST /v1/chat/completions: messages formatted by the model's chat template; `stream: true` answers
  server-sent events in OpenAI's chunk format, ending with `data: [DONE]`.
- POST /v1/completions: plain prompt text (a string or a list of strings).
- GET /stats: tether's counters (requests, batches, rows, the largest batch, requests waiting).

Every request passes `Gate` first (API key, body size, one log line without prompt text). Bad input is a 4xx
with OpenAI's error JSON naming the field; only a failure of the server itself is a 500.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from tether.errors import TetherError
from tether.serve.jobs import Failure, Job, Piece, QueueFull, Sampling, random_seed
from tether.serve.schemas import ApiError, ChatRequest, CompletionRequest, error_body, parse

if TYPE_CHECKING:
    from tether.serve.config import ServeConfig
    from tether.serve.engine import Engine

log = logging.getLogger("tether.serve")


def create_app(engine: Engine, cfg: ServeConfig, api_key: str | None) -> FastAPI:
    """The app serving `engine` under cfg's limits; requests need `Authorization: Bearer <api_key>` when one is
    given. The caller starts and stops the engine's worker."""
    app = FastAPI(title="tether serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.add_middleware(Gate, api_key=api_key, max_body=cfg.max_body_bytes)
    created = int(time.time())
    card = {"id": engine.name, "object": "model", "created": created, "owned_by": "tether"}

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(error_body(err.status, err.message, err.param, err.code), status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        message = {404: f"no route {request.method} {request.url.path}; the API: GET /v1/models, POST "
                        "/v1/chat/completions, POST /v1/completions"}.get(err.status_code, str(err.detail))
        return JSONResponse(error_body(err.status_code, message), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def server_error(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse(error_body(500, "internal server error (logged on the server)"), status_code=500)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        _check_model(engine, model_id, 404)
        return card

    @app.get("/stats")
    async def stats() -> dict:
        return dict(engine.stats)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = parse(ChatRequest, await request.body())
        _check_model(engine, body.model)
        ids = _encode(engine.chat_ids, [m.plain() for m in body.messages], "messages")
        max_tokens = body.max_tokens if body.max_tokens is not None else body.max_completion_tokens
        return await _answer(request, engine, cfg, "chat", body, [ids], max_tokens)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = parse(CompletionRequest, await request.body())
        _check_model(engine, body.model)
        prompts = [_encode(engine.text_ids, p, "prompt") for p in body.prompts]
        return await _answer(request, engine, cfg, "text", body, prompts, body.max_tokens)

    return app


def _check_model(engine: Engine, name: str, status: int = 404) -> None:
    if name != engine.name:
        raise ApiError(status, f"model: {name!r} is not served here; this server serves {engine.name!r}", "model",
                       "model_not_found")


def _encode(encode, prompt, param: str) -> list[int]:
    """Prompt ids, with a formatting error (a template refusing a role, no template) as a 400."""
    try:
        ids = encode(prompt)
    except TetherError as err:
        raise ApiError(400, str(err), param) from None
    if not ids:
        raise ApiError(400, f"{param}: empty: the prompt has no tokens", param)
    return ids


def _sampling(cfg: ServeConfig, engine: Engine, body, prompts: list[list[int]], max_tokens: int | None) -> Sampling:
    """The request's sampling settings, checked against the server's limits and the model's positions."""
    n = body.n or 1
    if n > cfg.max_n:
        raise ApiError(400, f"n: {n} is more than this server's limit of {cfg.max_n}", "n")
    if len(prompts) * n > cfg.max_batch_rows:
        raise ApiError(400, f"prompt: {len(prompts)} prompts x n={n} choices is more than this server's "
                            f"{cfg.max_batch_rows} rows (max_batch_rows)", "prompt")
    longest = max(map(len, prompts))
    if longest > cfg.max_prompt_tokens:
        raise ApiError(400, f"prompt: {longest} tokens is more than this server's limit of {cfg.max_prompt_tokens} "
                            "(max_prompt_tokens)", "messages", "context_length_exceeded")
    room = cfg.max_tokens if engine.positions is None else min(cfg.max_tokens, engine.positions - longest)
    if room < 1:
        raise ApiError(400, f"prompt: {longest} tokens leave no room to answer in the model's {engine.positions} "
                            "positions", "messages", "context_length_exceeded")
    if max_tokens is None:
        max_tokens = min(cfg.default_max_tokens, room)
    elif max_tokens > cfg.max_tokens:
        raise ApiError(400, f"max_tokens: {max_tokens} is more than this server's limit of {cfg.max_tokens}",
                       "max_tokens")
    elif max_tokens > room:
        raise ApiError(400, f"max_tokens: the prompt ({longest} tokens) + max_tokens ({max_tokens}) is more than the "
                            f"model's {engine.positions} positions; use max_tokens<={room}", "max_tokens",
                       "context_length_exceeded")
    temperature = 1.0 if body.temperature is None else float(body.temperature)
    top_p = 1.0 if body.top_p is None else float(body.top_p)
    seed = random_seed() if body.seed is None else body.seed
    return Sampling(temperature, top_p, max_tokens, seed, body.stops)


async def _answer(request: Request, engine: Engine, cfg: ServeConfig, kind: str, body, prompts: list[list[int]],
                  max_tokens: int | None):
    """Queue the job, then answer with one JSON object or a stream of server-sent events."""
    sampling = _sampling(cfg, engine, body, prompts, max_tokens)
    loop, events = asyncio.get_running_loop(), asyncio.Queue()

    def deliver(item) -> None:  # called from the worker thread
        try:
            loop.call_soon_threadsafe(events.put_nowait, item)
        except RuntimeError:  # the event loop is closed (the server is stopping): nobody waits for the rest
            job.cancelled = True

    job = Job(prompts, body.n or 1, sampling, bool(body.stream), deliver=deliver)
    try:
        engine.submit(job)
    except QueueFull as err:
        raise ApiError(429, f"the server is busy: {err}; retry later", code="queue_full") from None
    usage = {"prompt_tokens": sum(map(len, prompts)), "completion_tokens": 0, "total_tokens": 0}
    request.state.usage = {"usage": usage, "n": job.n, "stream": job.stream}
    head = {"id": ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12), "created": int(time.time()),
            "model": engine.name}
    if job.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(kind, head, _pieces(job, events, usage), job, include_usage, usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    texts, finish = [""] * job.rows, [None] * job.rows
    async for piece in _pieces(job, events, usage):
        texts[piece.index] += piece.text
        finish[piece.index] = piece.finish_reason or finish[piece.index]
    if kind == "chat":
        choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None, "finish_reason": f}
                   for i, (t, f) in enumerate(zip(texts, finish))]
        return {**head, "object": "chat.completion", "choices": choices, "usage": usage}
    choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": f} for i, (t, f) in enumerate(zip(texts, finish))]
    return {**head, "object": "text_completion", "choices": choices, "usage": usage}


async def _pieces(job: Job, events: asyncio.Queue, usage: dict) -> AsyncIterator[Piece]:
    """The job's pieces until every choice has finished, counting usage; a worker Failure raises a 500."""
    left = job.rows
    try:
        while left:
            item = await events.get()
            if isinstance(item, Failure):
                raise RuntimeError(f"sampling failed: {item.message}")
            if item.finish_reason is not None:
                left -= 1
                usage["completion_tokens"] += item.tokens
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            yield item
    finally:
        job.cancelled = left > 0  # the client went away (or the worker failed): stop sampling its rows


async def _sse(kind: str, head: dict, pieces: AsyncIterator[Piece], job: Job, include_usage: bool,
               usage: dict) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, then `data: [DONE]`."""
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def chunk(index: int, text: str | None, finish: str | None = None, role: bool = False) -> str:
        if kind == "chat":
            delta = {"role": "assistant", "content": ""} if role else {} if text is None else {"content": text}
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        return _event({**head, "object": obj, "choices": [choice]})

    if kind == "chat":
        for i in range(job.rows):
            yield chunk(i, None, role=True)
    try:
        async for piece in pieces:
            if piece.text:
                yield chunk(piece.index, piece.text)
            if piece.finish_reason is not None:
                yield chunk(piece.index, None, piece.finish_reason)
    except RuntimeError as err:  # the status line is sent already: the error goes in the stream, as OpenAI does
        log.error("stream %s: %s", head["id"], err)
        yield _event(error_body(500, "internal server error (logged on the server)"))
        return
    finally:
        await pieces.aclose()  # a client gone mid-stream: its rows stop sampling now, not when collected
    if include_usage:
        yield _event({**head, "object": obj, "choices": [], "usage": usage})
    yield "data: [DONE]\n\n"


def _event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class Gate:
    """ASGI middleware in front of every route: the API key (compared in constant time), the body size limit, and
    one log line per request (method, path, status, time, token counts; never prompt text)."""

    def __init__(self, app, api_key: str | None, max_body: int):
        self.app, self.max_body = app, max_body
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [0]
        state = scope.setdefault("state", {})  # routes put usage here (request.state), shared with copies of scope

        async def logged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self._log(scope, state, status[0], time.perf_counter() - start)

        if self.key is not None and not self._authorised(scope):
            return await _reply(logged, 401, "incorrect or missing API key: send the header 'Authorization: Bearer "
                                             "<key>'", "invalid_api_key")
        if scope["method"] in ("POST", "PUT", "PATCH"):
            body = await self._body(scope, receive)
            if body is None:
                return await _reply(logged, 413, f"body: more than this server's limit of {self.max_body} bytes "
                                                 "(max_body_bytes)", "request_too_large")
            receive = _replay(body, receive)
        await self.app(scope, receive, logged)

    def _authorised(self, scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        # compare_digest over the whole token: the time taken does not tell how much of a guess was right
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)

    async def _body(self, scope, receive) -> bytes | None:
        """The whole body, or None as soon as it is larger than max_body (by its Content-Length or as read)."""
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_body:
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return None
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _log(self, scope, state: dict, status: int, seconds: float) -> None:
        info = state.get("usage")
        extra = ""
        if info:
            u = info["usage"]
            extra = (f" prompt_tokens={u['prompt_tokens']} completion_tokens={u['completion_tokens']} n={info['n']} "
                     f"stream={str(info['stream']).lower()}")
        client = (scope.get("client") or ("-",))[0]
        log.info("%s %s %s %d %.0fms%s", client, scope["method"], scope["path"], status, seconds * 1000, extra)


def _replay(body: bytes, receive):
    """A `receive` that hands the app the body already read, then the client's later messages (disconnect)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _reply(send, status: int, message: str, code: str) -> None:
    data = json.dumps(error_body(status, message, code=code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
