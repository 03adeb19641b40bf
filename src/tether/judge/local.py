"""A local causal LM as a pairwise judge: one forward pass per question, the next-token probabilities of "A" and "B".

The judge's prompt (tether.judge.constitution) is one user message formatted with the model's own chat template
(`tether.chat.chat_format(...).prompt_ids`: the generation prompt, where the model's reply would begin), or plain text
for a model without one. No sampling: the distribution over the next token is read at the prompt's last position,

    P(first wins) = P("A") / (P("A") + P("B"))

renormalised over the two answers (Lee et al. 2023, "RLAIF", sec. 2.1 read the same two-token softmax). The share
of next-token mass on the two answers, P("A") + P("B"), is reported as `answer_mass`: a judge that puts little mass on
them is not answering the question, whatever its ratio says.

Which tokens are "A" (`answer_token_ids`): a reply may start with the letter alone ("A") or with a space before it
(" A", as a plain-text prompt is followed, or a SentencePiece "▁A"). Each spelling is tokenised twice: as the reply
after a prompt, the way the chat format encodes a reply the model was trained on (a SentencePiece tokenizer that adds
a leading "▁" to a text on its own does not add it there), and as text on its own. The first token of each counts
when it decodes to the letter with nothing but whitespace around it; P("A") sums the probabilities of the distinct
tokens found. A tokenizer where no spelling gives such a token, or where "A" and "B" share a token, stops with an
error naming the model.

Batched: prompts sorted by length, right-padded (positions of real tokens are unchanged under a causal mask), the
logits read at each row's last real token.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from tether.chat import ChatFormat, chat_format
from tether.errors import TetherError
from tether.judge.pairwise import PairwiseItem
from tether.models import check_positions, position_limit

__all__ = ["ANSWER_SPELLINGS", "LocalJudge", "answer_token_ids", "first_wins_from_logits"]

ANSWER_SPELLINGS = ("{}", " {}")
"""How a reply may begin with the letter: alone, or after a space."""


def answer_token_ids(fmt: ChatFormat) -> dict[str, list[int]]:
    """{"A": ids, "B": ids}: the tokens a reply answering that letter starts with (see the module docstring)."""
    tokenizer, source = fmt.tokenizer, fmt.source
    out: dict[str, list[int]] = {}
    for letter in ("A", "B"):
        ids = []
        for spelling in ANSWER_SPELLINGS:
            as_reply = fmt.encode("Which?", spelling.format(letter))
            alone = tokenizer(spelling.format(letter), add_special_tokens=False)["input_ids"]
            for token in (as_reply.input_ids[as_reply.prompt_length:] or [None])[0], (alone or [None])[0]:
                if token is not None and token not in ids and tokenizer.decode([token]).strip() == letter:
                    ids.append(token)
        if not ids:
            raise TetherError(f"model: the tokenizer of {source} has no token that reads {letter!r} alone, so the "
                              "judge cannot read its answer from one forward pass; use endpoint= (votes) instead")
        out[letter] = ids
    if set(out["A"]) & set(out["B"]):
        raise TetherError(f"model: the tokenizer of {source} gives 'A' and 'B' a shared token")
    return out


def first_wins_from_logits(logits: torch.Tensor, ids_a: Sequence[int], ids_b: Sequence[int]
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(P(first wins), answer mass) from next-token logits.

        log P("A") = logsumexp over ids_a of log_softmax(logits);  P(first) = sigmoid(log P("A") - log P("B"))

    Shapes: logits (N, V) -> (N,), (N,). float32 or wider, so a bf16 model's probabilities keep their precision.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
    log_a = torch.logsumexp(logp[:, list(ids_a)], dim=-1)  # (N,)
    log_b = torch.logsumexp(logp[:, list(ids_b)], dim=-1)  # (N,)
    return torch.sigmoid(log_a - log_b), log_a.exp() + log_b.exp()


class LocalJudge:
    """A causal LM judging pairs (`tether.judge.pairwise.Judge`)."""

    def __init__(self, model, tokenizer, name: str, chat_template: str = "", batch_size: int = 8,
                 max_prompt_length: int | None = None, source: str = "the model"):
        self.model, self.name, self.batch_size = model.eval(), name, batch_size
        self.max_prompt_length = max_prompt_length
        self.fmt = chat_format(tokenizer, chat_template, source)
        self.answers = answer_token_ids(self.fmt)
        self._mass: list[float] = []
        self._truncated = 0

    def first_wins(self, items: Sequence[PairwiseItem]) -> list[float]:
        # unset max_prompt_length: the model's positions (the answer is the next token), cut prompts counted
        positions = position_limit(self.model)
        limit = self.max_prompt_length if self.max_prompt_length is not None or positions is None else positions[0]
        encoded = self.fmt.prompts_encoded([item.text for item in items], limit)
        self._truncated += sum(e.truncated for e in encoded)
        rows = [e.input_ids for e in encoded]
        if rows:
            check_positions(self.model, max(map(len, rows)), "max_prompt_length")
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths batch together: less padding
        probs = [0.0] * len(rows)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            p, mass = first_wins_from_logits(self.next_token_logits([rows[i] for i in chunk]), self.answers["A"],
                                             self.answers["B"])
            for i, value in zip(chunk, p.tolist()):
                probs[i] = value
            self._mass += mass.tolist()
        return probs

    @torch.no_grad()
    def next_token_logits(self, rows: list[list[int]]) -> torch.Tensor:
        """Logits of the token after each row. Shapes: B rows of lengths L_i -> (B, V)."""
        device = next(self.model.parameters()).device
        longest = max(map(len, rows))
        ids = torch.full((len(rows), longest), self.fmt.pad_id, dtype=torch.long)  # (B, T) right-padded
        mask = torch.zeros_like(ids)
        for r, row in enumerate(rows):
            ids[r, :len(row)] = torch.tensor(row)
            mask[r, :len(row)] = 1
        logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # (B, T, V)
        last = mask.sum(dim=1).to(device) - 1  # (B,) index of each row's last real token
        return logits[torch.arange(len(rows), device=device), last]  # (B, V)

    def stats(self) -> dict:
        mass = self._mass
        return {"kind": "local", "answer_tokens": self.answers,
                "answer_mass_mean": sum(mass) / len(mass) if mass else None,
                "answer_mass_min": min(mass) if mass else None, "truncated_prompts": self._truncated}
