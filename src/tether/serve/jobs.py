"""What the HTTP side hands the sampling worker, and what comes back (no torch).

A `Job` is one API request: its prompts (token ids), n choices per prompt, its sampling settings, and a
`deliver` callback that carries `Piece`s (and a `Failure`) back to the request's event loop. The worker turns
each choice into one sampled row (`Choice`) and batches the rows of several jobs (`take_batch`).
"""
from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tether.serve.text import TextStream

SEED_MODULUS = 2 ** 63
"""Row seeds are reduced modulo this: a torch generator takes seeds below 2**64, and OpenAI seeds may be negative."""


class QueueFull(Exception):
    """More requests wait than the server's max_queued allows."""


def random_seed() -> int:
    """The seed of a request that gives none."""
    return secrets.randbelow(SEED_MODULUS)


@dataclass(frozen=True)
class Sampling:
    """The sampling settings of one request."""

    temperature: float
    """0 is greedy decoding."""
    top_p: float
    """Nucleus threshold in (0, 1]."""
    max_tokens: int
    """Most tokens each choice may generate (finish_reason "length" when reached)."""
    seed: int
    """Choice i samples with the noise of `sample_seed(seed, 0, i)`: the same seed gives the same text, whatever
    else shares the batch."""
    stop: tuple[str, ...] = ()
    """Stop strings: the text ends before the first occurrence of any."""


@dataclass(frozen=True)
class Piece:
    """Text for one choice: new text while streaming, or with `finish_reason` the rest of it (all of it when the
    request is not streamed)."""

    index: int
    text: str
    finish_reason: str | None = None
    """None while the choice goes on; "stop" (a stop token or stop string) or "length" (max_tokens) at its end."""
    tokens: int = 0
    """Tokens generated for the choice so far (a stop token counts, text after a stop string does not)."""


@dataclass(frozen=True)
class Failure:
    """The worker could not sample the job (the message is logged, the client sees a 500)."""

    message: str


@dataclass
class Job:
    """One request: n choices for each of its prompts."""

    prompts: list[list[int]]
    """Prompt token ids, one list per prompt (chat requests have one)."""
    n: int
    sampling: Sampling
    stream: bool
    """Send text as it is sampled; otherwise one Piece per choice at its end."""
    deliver: Callable[[Piece | Failure], None] = field(repr=False)
    """Thread-safe: called from the worker thread."""
    cancelled: bool = False
    """The client went away: the worker skips the job, or stops sampling its rows."""

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.n

    @property
    def longest_prompt(self) -> int:
        return max(map(len, self.prompts))

    @property
    def group(self) -> tuple[float, float]:
        """Jobs batch together when they sample alike (the sampler takes one temperature and top_p)."""
        return (self.sampling.temperature, self.sampling.top_p)


class Choice:
    """One sampled row of a job: its text so far, token count and finish reason."""

    def __init__(self, job: Job, index: int, decode: Callable[[list[int]], str], stop_ids: Sequence[int]):
        self.job, self.index, self.stop_ids = job, index, frozenset(stop_ids)
        self.text = TextStream(decode, job.sampling.stop)
        self.tokens = 0
        self.finish_reason: str | None = None

    @property
    def prompt(self) -> list[int]:
        return self.job.prompts[self.index // self.job.n]

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.job.cancelled

    def push(self, token: int) -> None:
        """Take the row's next sampled token and deliver what the client should see now."""
        if self.done:
            return
        self.tokens += 1
        if token in self.stop_ids:
            self.text.flush()
            self.finish_reason = "stop"
        elif self.text.add(token):
            self.finish_reason = "stop"
        elif self.tokens >= self.job.sampling.max_tokens:
            self.finish_reason = "stop" if self.text.flush() else "length"
        if self.finish_reason is not None:
            self.job.deliver(Piece(self.index, self.text.take(final=True), self.finish_reason, self.tokens))
        elif self.job.stream:
            piece = self.text.take()
            if piece:
                self.job.deliver(Piece(self.index, piece, None, self.tokens))


def take_batch(pending: list[Job], max_rows: int, positions: int | None) -> tuple[list[Job], list[Job]]:
    """(the jobs to sample now, the jobs left), the order kept: jobs sampling like the first one, while their rows
    fit in max_rows and the longest prompt plus the largest max_tokens fit in the model's positions (every row of
    a batch decodes for as many steps as its longest-lived row; a job always fits alone, checked on arrival)."""
    batch: list[Job] = []
    left: list[Job] = []
    rows = longest = steps = 0
    for job in pending:
        fits = (job.group == pending[0].group and rows + job.rows <= max_rows
                and (positions is None or max(longest, job.longest_prompt) + max(steps, job.sampling.max_tokens)
                     <= positions))
        if fits or not batch:
            batch.append(job)
            rows, longest = rows + job.rows, max(longest, job.longest_prompt)
            steps = max(steps, job.sampling.max_tokens)
        else:
            left.append(job)
    return batch, left
