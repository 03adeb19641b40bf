"""The sampling worker of `tether serve`: one background thread batches the waiting requests through tether's
KV-cache sampler (`tether.rollout.sample`).

When the worker is idle, the first request opens a window of `batch_wait` seconds in which more requests join;
while a batch samples, new requests queue and form the next one. Prompts are left-padded, so rows of different
lengths share a batch. Each row draws its noise from its own seed (`row_noise` of `sample_seed(seed, 0, choice)`),
so a seeded request gives the same text alone or batched with others (up to float rounding of the padded batch).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import torch

from tether.chat import chat_format
from tether.errors import DataError
from tether.models import position_limit
from tether.rollout import row_noise, sample, sample_seed
from tether.serve.jobs import SEED_MODULUS, Choice, Failure, Job, QueueFull, take_batch

log = logging.getLogger("tether.serve")

class Engine:
    """A model, its chat formats and the worker thread that samples queued `Job`s in batches."""

    def __init__(self, model, tokenizer, *, name: str, chat_template: str = "", source: str = "the model",
                 max_batch_rows: int = 32, batch_wait: float = 0.005, max_queued: int = 256):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.chat = chat_format(tokenizer, chat_template, source)
        self.plain = chat_format(tokenizer, "none", source)
        # Both endpoints stop on the union: a completion of a chat model ends at its end-of-turn token too.
        self.stop_ids = tuple(dict.fromkeys(self.chat.stop_ids + self.plain.stop_ids))
        found = position_limit(model)
        self.positions = found[0] if found else None
        """Most tokens one sequence may hold (prompt + response), None when the model names no limit."""
        self.max_batch_rows, self.batch_wait, self.max_queued = max_batch_rows, batch_wait, max_queued
        self.stats = {"requests": 0, "batches": 0, "rows": 0, "max_batch_requests": 0, "max_batch_rows": 0,
                      "queued": 0}
        """Counters for /stats: requests accepted, batches sampled, rows sampled, the largest batch seen."""
        self._queue: queue.Queue[Job] = queue.Queue()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- prompts ------------------------------------------------------------------------------------------

    def chat_ids(self, messages: list[dict]) -> list[int]:
        """The generation prompt of a conversation under the model's chat template (tether.chat). Without a
        template, a lone user message is sent as plain text, as `tether evaluate` does with a prompt string."""
        if self.chat.template is None:
            if len(messages) != 1 or messages[0]["role"] != "user":
                raise DataError("messages: the model has no chat template, so only one user message (sent as plain "
                                "text) can be answered; start tether serve with chat_template=NAME for conversations")
            return self.chat.prompt_ids(messages[0]["content"])
        return self.chat.prompt_ids(messages)

    def text_ids(self, prompt: str) -> list[int]:
        """A plain-text prompt's ids (the tokenizer's own bos where it adds one), for /v1/completions."""
        return self.plain.prompt_ids(prompt)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- the worker ---------------------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue a job; QueueFull when max_queued jobs already wait."""
        with self._lock:
            if self.stats["queued"] >= self.max_queued:
                raise QueueFull(f"{self.stats['queued']} requests are waiting (max_queued={self.max_queued})")
            self.stats["queued"] += 1
            self.stats["requests"] += 1
        self._queue.put(job)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="tether-serve-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _loop(self) -> None:
        pending: list[Job] = []
        while not self._stop.is_set():
            if not pending:  # idle: the first request opens a short window for others to join
                try:
                    pending.append(self._queue.get(timeout=0.1))
                except queue.Empty:
                    continue
                deadline = time.monotonic() + self.batch_wait
                while (wait := deadline - time.monotonic()) > 0:
                    try:
                        pending.append(self._queue.get(timeout=wait))
                    except queue.Empty:
                        break
            pending += _drain(self._queue)
            pending = [job for job in pending if not job.cancelled]
            if not pending:
                self._set_queued(0)
                continue
            batch, pending = take_batch(pending, self.max_batch_rows, self.positions)
            self._set_queued(len(pending) + self._queue.qsize())
            self._run(batch)

    def _set_queued(self, n: int) -> None:
        with self._lock:
            self.stats["queued"] = n

    def _run(self, batch: list[Job]) -> None:
        """Sample every choice of the batch's jobs together, delivering text as it comes."""
        choices: list[Choice] = []
        try:
            choices = [Choice(job, i, self.decode, self.stop_ids) for job in batch for i in range(job.rows)]
            self._count(len(batch), len(choices))
            steps = max(job.sampling.max_tokens for job in batch)
            seeds = [sample_seed(c.job.sampling.seed, 0, c.index) % SEED_MODULUS for c in choices]
            device = next(self.model.parameters()).device
            s = batch[0].sampling

            def on_step(t: int, tokens: torch.Tensor) -> list[bool]:
                for choice, token in zip(choices, tokens.tolist()):
                    choice.push(token)
                return [c.done for c in choices]  # finished rows leave the batch's forward pass

            sample(self.model, [c.prompt for c in choices], max_new_tokens=steps, temperature=s.temperature,
                   top_p=s.top_p, eos_token_id=self.stop_ids, pad_token_id=self.chat.pad_id,
                   noise=row_noise(seeds, steps, device), on_step=on_step)
        except Exception as err:  # a bug or the device failing: every request of the batch gets a 500, logged once
            log.exception("sampling failed for a batch of %d requests", len(batch))
            waiting = {id(c.job) for c in choices if not c.done} if choices else {id(j) for j in batch}
            for job in batch:
                if id(job) in waiting:
                    job.deliver(Failure(f"{type(err).__name__}: {err}"))

    def _count(self, requests: int, rows: int) -> None:
        self.stats["batches"] += 1
        self.stats["rows"] += rows
        self.stats["max_batch_requests"] = max(self.stats["max_batch_requests"], requests)
        self.stats["max_batch_rows"] = max(self.stats["max_batch_rows"], rows)


def _drain(q: queue.Queue) -> list[Job]:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out

