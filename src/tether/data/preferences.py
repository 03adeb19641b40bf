"""Preference records: one comparison of two responses to one prompt, with the provenance of its label.

A comparison without a `choice` is a queue item waiting for a rater (human or simulated).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal, Union

Choice = Literal["A", "B", "tie"]
Prompt = Union[str, list]  # a plain user prompt, or a conversation prefix (messages) ending with a user turn


@dataclass
class Comparison:
    """Two responses to one prompt and, once rated, which is better.

    `strength` is the rater's confidence in (0, 1] (e.g. 1 = "much better", 0.5 = "slightly"), None if not
    asked. `source_a`/`source_b` name the policy (checkpoint path, "human", ...) that wrote each response.
    `meta` holds free provenance such as the iterate round or the sampling temperature.
    """

    prompt: Prompt
    response_a: str
    response_b: str
    choice: Choice | None = None
    strength: float | None = None
    rater: str | None = None
    guideline_version: str | None = None
    source_a: str | None = None
    source_b: str | None = None
    timestamp: str | None = None
    id: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = pair_id(self.prompt, self.response_a, self.response_b)

    @property
    def prompt_text(self) -> str:
        """The prompt as one string (the last user turn's content for a conversation)."""
        if isinstance(self.prompt, str):
            return self.prompt
        return next(m["content"] for m in reversed(self.prompt) if m["role"] == "user")

    def to_dict(self) -> dict:
        return asdict(self)


def pair_id(prompt: Prompt, a: str, b: str) -> str:
    """A stable id of the unordered pair: the same two responses in either order get the same id."""
    key = json.dumps([prompt, sorted([a, b])], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
