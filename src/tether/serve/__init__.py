"""`tether serve`: an OpenAI-compatible HTTP server for any model folder.

    tether serve model=runs/sft/model [host=127.0.0.1] [port=8000] [api_key_env=NAME] [chat_template=]

Endpoints (tether.serve.api): GET /v1/models, POST /v1/chat/completions (the model's chat template, tether.chat;
`stream: true` as server-sent events), POST /v1/completions (plain prompt text), and GET /stats (tether's own
counters). Requests are batched through the KV-cache sampler by one worker thread (tether.serve.engine).

This module holds only `run` (the settings are in config.py): torch, transformers and FastAPI are imported when
the server starts, so `tether serve --help` stays fast.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from tether.errors import ConfigError
from tether.serve.config import LOOPBACK, ServeConfig

__all__ = ["ServeConfig", "in_background", "run"]


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
