"""Live servers for the `tether serve` and endpoint tests: an ASGI app under uvicorn on a free loopback port, in a
thread of the test process (so a test can read the engine's counters)."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass


@contextlib.contextmanager
def serve_app(app) -> Iterator[str]:
    """Run `app` under uvicorn on a free loopback port in a thread; yields the base URL (no /v1)."""
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # else delayed ACKs add ~40 ms per request
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_keep_alive=30))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@dataclass
class Live:
    url: str
    """Base URL of the API, ending in /v1."""
    engine: object
    """The server's tether.serve.engine.Engine (its `stats` count requests and batches)."""
    cfg: object


@contextlib.contextmanager
def live_server(model_dir, api_key: str | None = None, **settings) -> Iterator[Live]:
    """`tether serve model=model_dir` with ServeConfig `settings`, as `tether.serve.run` builds it."""
    from tether.config import config_from_dict
    from tether.serve import ServeConfig, load_engine
    from tether.serve.api import create_app

    cfg = config_from_dict(ServeConfig, {"model": str(model_dir), "device": "cpu", **settings})
    engine = load_engine(cfg)
    engine.start()
    try:
        with serve_app(create_app(engine, cfg, api_key)) as url:
            yield Live(f"{url}/v1", engine, cfg)
    finally:
        engine.stop()
