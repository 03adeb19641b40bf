"""`tether serve`: an OpenAI-compatible HTTP server for any model folder.

    tether serve model=runs/sft/model [host=127.0.0.1] [port=8000] [api_key_env=NAME] [chat_template=]

Endpoints (tether.serve.api): GET /v1/models, POST /v1/chat/completions (the model's chat template, tether.chat;
`stream: true` as server-sent events), POST /v1/completions (plain prompt text), and GET /stats (tether's own
counters). Requests are batched through the KV-cache sampler by one worker thread (tether.serve.engine).

This module holds only the config and `run`: torch, transformers and FastAPI are imported when the server starts,
so `tether serve --help` stays fast.
"""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tether.chat_templates import check_template_setting
from tether.config import check
from tether.errors import ConfigError

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeConfig:
    """Serve a model folder over an OpenAI-compatible HTTP API."""

    model: str = ""
    """Hugging Face model folder to serve (tokenizer in the same folder)."""
    name: str = ""
    """Model id listed by /v1/models and expected in requests' "model"; "" for the folder's name, or for a tether
    run's `<run>/model` folder the run's name (runs/ppo/model -> "ppo")."""
    host: str = "127.0.0.1"
    """Address to listen on; 127.0.0.1 keeps the server on this machine (use 0.0.0.0 with an api_key_env)."""
    port: int = 8000
    """TCP port to listen on."""
    api_key_env: str = ""
    """Name of an environment variable holding the API key; requests must then send `Authorization: Bearer <key>`.
    "" for no key (there is never a default key)."""
    chat_template: str = ""
    """How /v1/chat/completions formats messages (tether.chat): "" the tokenizer's own template, a built-in name
    (chatml, llama3, gemma, zephyr, hh, tether), a .jinja file, or "none" (plain text)."""
    device: str = "auto"
    """Device of the model: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps."""
    max_tokens: int = 1024
    """Most tokens a request may ask for (its max_tokens); more is a 400."""
    default_max_tokens: int = 256
    """max_tokens of a request that gives none (fewer when the model's positions leave fewer after the prompt)."""
    max_prompt_tokens: int = 4096
    """Longest prompt in tokens after formatting; longer is a 400 (so is prompt + max_tokens beyond the model's
    positions)."""
    max_n: int = 8
    """Most choices one request may ask for (n)."""
    max_batch_rows: int = 32
    """Most rows sampled together (each choice of each batched request is a row)."""
    batch_wait_ms: float = 5.0
    """How long an idle worker waits for more requests to batch with the first one."""
    max_queued: int = 256
    """Most requests waiting for the worker; more are answered 429."""
    max_body_bytes: int = 1_000_000
    """Largest request body; larger is a 413."""

    def validate(self) -> None:
        check(bool(self.model), "model", "give the model folder to serve: tether serve model=FOLDER")
        check(0 <= self.port <= 65535, "port", "must be in 0..65535 (0: any free port)")
        check(not self.api_key_env or ENV_NAME.fullmatch(self.api_key_env), "api_key_env",
              f"{self.api_key_env!r} is not an environment variable name (letters, digits, _)")
        check_template_setting(self.chat_template)
        check(self.device == "auto" or re.fullmatch(r"cpu|mps|cuda(:\d+)?", self.device), "device",
              "must be auto, cpu, cuda, cuda:N or mps")
        for name in ("max_tokens", "default_max_tokens", "max_prompt_tokens", "max_n", "max_batch_rows", "max_queued",
                     "max_body_bytes"):
            check(getattr(self, name) >= 1, name, "must be >= 1")
        check(self.default_max_tokens <= self.max_tokens, "default_max_tokens", f"must be <= max_tokens "
              f"({self.max_tokens})")
        check(self.max_n <= self.max_batch_rows, "max_n", f"must be <= max_batch_rows ({self.max_batch_rows})")
        check(self.batch_wait_ms >= 0, "batch_wait_ms", "must be >= 0")

    @property
    def served_name(self) -> str:
        path = Path(self.model.rstrip("/\\"))
        # two policies must not share a name: endpoint caches (tether.endpoint) key responses by it
        return self.name or (path.parent.name if path.name == "model" and path.parent.name else path.name) or self.model


def api_key(env: str) -> str | None:
    """The API key held by the environment variable `env`, None when env is ""; ConfigError when it is unset."""
    if not env:
        return None
    key = os.environ.get(env, "")
    if not key.strip():
        raise ConfigError(f"api_key_env: environment variable {env} is not set or empty; export {env}=<key> first")
    return key


def load_engine(cfg: ServeConfig):
    """The model of cfg.model on its device, in an `Engine` whose worker is not started yet."""
    import torch

    from tether.models import load_policy, load_tokenizer
    from tether.serve.engine import Engine

    device = cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    model = load_policy(cfg.model).to(device)
    return Engine(model, load_tokenizer(cfg.model), name=cfg.served_name, chat_template=cfg.chat_template,
                  source=cfg.model, max_batch_rows=cfg.max_batch_rows, batch_wait=cfg.batch_wait_ms / 1000,
                  max_queued=cfg.max_queued)


@contextlib.contextmanager
def in_background(cfg: ServeConfig, api_key: str | None = None) -> Iterator[str]:
    """`tether serve` of cfg.model in this process, on a free loopback port, for as long as the `with` block runs (the
    demo serves its policies this way to audit them over HTTP); yields the API's base URL, ending in /v1. The engine's
    worker and uvicorn run in threads; both stop on exit."""
    import socket
    import threading
    import time

    import uvicorn

    from tether.serve.api import create_app

    engine = load_engine(cfg)
    engine.start()
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # else delayed ACKs add ~40 ms per request
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(engine, cfg, api_key), log_level="warning", lifespan="off",
                                           timeout_keep_alive=30))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"tether serve of {cfg.model} did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        engine.stop()


def run(cfg: ServeConfig) -> None:
    import logging

    import uvicorn

    from tether.serve.api import create_app

    key = api_key(cfg.api_key_env)  # before loading the model: a missing key fails at once
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log = logging.getLogger("tether.serve")  # one line per request (tether.serve.api.Gate); root logging untouched
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    engine = load_engine(cfg)
    app = create_app(engine, cfg, key)
    if cfg.host not in LOOPBACK and key is None:
        print(f"warning: serving on {cfg.host} without an API key: anyone who can reach it can use the model "
              "(set api_key_env)")
    print(f"serving {engine.name} on http://{cfg.host}:{cfg.port}/v1 (Ctrl-C stops)")
    engine.start()
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False)
    finally:
        engine.stop()
