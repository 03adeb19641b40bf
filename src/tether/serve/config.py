"""The settings of `tether serve` (tether.serve)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tether.chat_templates import check_template_setting
from tether.config import check

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
