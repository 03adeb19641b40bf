"""An OpenAI-compatible endpoint as a pairwise judge (`tether serve`, vLLM, OpenAI, ... through tether.endpoint).

Two ways to read its answer, chosen by `mode`:

- logprobs: one request per question with max_tokens=1, temperature 0, logprobs=true, top_logprobs=20; P("A") sums
  the probabilities of the listed first tokens that read "A" with only whitespace around them (as the local judge
  counts them), and P(first wins) = P("A") / (P("A") + P("B")). A letter not among the listed tokens counts 0; a
  reply listing neither gives 0.5 (counted as `no_answer`). Not cached.
- votes: k replies per question sampled at `temperature` (1 by default), each parsed by
  `tether.judge.pairwise.parse_vote`; P(first wins) = share of "A" among the parsed votes (0.5 when none parsed,
  counted). Replies are cached in `<out>/endpoint_cache.jsonl` like every endpoint request, so a rerun resumes.

"auto" sends the first question with logprobs once: a 400 or 422 (tether serve refuses logprobs with a 400) or an
answer without logprobs falls back to votes, and the report says so.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tether.endpoint import EndpointClient, error_message
from tether.errors import TetherError
from tether.judge.pairwise import PairwiseItem, parse_vote, vote_probability

__all__ = ["MODES", "EndpointJudge", "first_wins_from_top_logprobs"]

MODES = ("auto", "logprobs", "votes")
TOP_LOGPROBS = 20
"""The most alternatives OpenAI's API lists per token."""


def first_wins_from_top_logprobs(top: Sequence[dict]) -> tuple[float | None, float]:
    """(P(first wins) or None when neither letter is listed, the listed mass of the two letters) from one token's
    top_logprobs [{"token", "logprob"}, ...]."""
    mass = {"A": 0.0, "B": 0.0}
    for entry in top:
        letter = str(entry.get("token", "")).strip()
        if letter in mass:
            mass[letter] += math.exp(float(entry["logprob"]))
    total = mass["A"] + mass["B"]
    return (mass["A"] / total if total > 0 else None), total


class EndpointJudge:
    """A judge behind an OpenAI-compatible API (`tether.judge.pairwise.Judge`)."""

    def __init__(self, client: EndpointClient, name: str = "", mode: str = "auto", votes: int = 5,
                 temperature: float = 1.0, max_new_tokens: int = 8, seed: int = 0, cache: Path | None = None):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {MODES}")
        self.client, self.mode, self.votes, self.temperature = client, mode, votes, temperature
        self.max_new_tokens, self.seed, self.cache = max_new_tokens, seed, cache
        self.name = name or client.model
        self._stats: dict = {"kind": "endpoint", "url": client.url}

    def first_wins(self, items: Sequence[PairwiseItem]) -> list[float]:
        if not items:
            return []
        if self.mode == "auto":
            self.mode = self._probe(items[0].text)
        self._stats["mode"] = self.mode
        return self._logprobs(items) if self.mode == "logprobs" else self._voted(items)

    def _body(self, text: str) -> dict:
        return {"model": self.client.model, "messages": [{"role": "user", "content": text}], "max_tokens": 1,
                "temperature": 0.0, "logprobs": True, "top_logprobs": TOP_LOGPROBS, "seed": self.seed}

    def _probe(self, text: str) -> str:
        """"logprobs" when the endpoint answers a logprobs request with them, else "votes"."""
        response = self.client.http.post(self.client.url + "/chat/completions", json=self._body(text))
        if response.status_code in (400, 422):
            self._stats["logprobs_refused"] = f"{response.status_code}: {error_message(response)}"
            return "votes"
        if response.status_code >= 400:  # anything else: the usual retries and error message
            self.client.call("POST", "/chat/completions", self._body(text))
        try:
            response.json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        except (ValueError, KeyError, IndexError, TypeError):
            self._stats["logprobs_refused"] = "the answer had no logprobs"
            return "votes"
        return "logprobs"

    def _logprobs(self, items: Sequence[PairwiseItem]) -> list[float]:
        def ask(item: PairwiseItem) -> tuple[float | None, float]:
            data = self.client.call("POST", "/chat/completions", self._body(item.text))
            try:
                top = data["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            except (KeyError, IndexError, TypeError):
                raise TetherError(f"endpoint: {self.client.url} answered a logprobs request without logprobs") from None
            return first_wins_from_top_logprobs(top)

        with ThreadPoolExecutor(self.client.concurrency) as pool:
            answers = list(pool.map(ask, items))
        self._stats["no_answer"] = sum(p is None for p, _ in answers)
        self._stats["answer_mass_mean"] = sum(m for _, m in answers) / len(answers)
        return [0.5 if p is None else p for p, _ in answers]

    def _voted(self, items: Sequence[PairwiseItem]) -> list[float]:
        prompts = [item.text for item in items for _ in range(self.votes)]  # the k-th copy is sample k
        replies = self.client.replies(prompts, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                      seed=self.seed, cache=self.cache, label="judge")
        votes = [parse_vote(r.text) for r in replies]
        probs = [vote_probability(votes[i * self.votes:(i + 1) * self.votes]) for i in range(len(items))]
        self._stats.update(votes_per_order=self.votes, vote_temperature=self.temperature,
                           unparsed_votes=sum(v is None for v in votes), votes=len(votes),
                           no_answer=sum(p is None for p in probs))
        return [0.5 if p is None else p for p in probs]

    def stats(self) -> dict:
        return dict(self._stats)
