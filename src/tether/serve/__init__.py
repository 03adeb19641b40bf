"""`tether serve`: an OpenAI-compatible HTTP server for any model folder.

    tether serve model=runs/sft/model [host=127.0.0.1] [port=8000] [api_key_env=NAME] [chat_template=]

Endpoints (tether.serve.api): GET /v1/models, POST /v1/chat/completions (the model's chat template, tether.chat;
`stream: true` as server-sent events), POST /v1/completions (plain prompt text), and GET /stats (tether's own
counters). Requests are batched through the KV-cache sampler by one worker thread (tether.serve.engine).

This module holds only `run` (the settings are in config.py): torch, transformers and FastAPI are imported when
the server starts, so `tether serve --help` stays fast.
"""
from __future__ import annotations

import os

from tether.errors import ConfigError
from tether.serve.config import LOOPBACK, ServeConfig

__all__ = ["ServeConfig", "run"]


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
