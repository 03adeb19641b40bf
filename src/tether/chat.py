"""Chat formats: a model's own tokenizer and chat template turned into token ids, loss masks and stop tokens.

Every stage that formats text goes through `ChatFormat` (sft, dpo/kto, rm, ppo/grpo/rloo, collect, evaluate, redteam),
so one conversation becomes the same tokens everywhere.

Which template (`resolve_template`, the stages' `chat_template` setting): "" (the default) takes the tokenizer's own
chat template; a built-in name (`TEMPLATES`: chatml, llama3, gemma, zephyr, hh, tether); a path to a .jinja file; or
"none" for plain text even when the tokenizer has a template. A template given by the setting is stored on the
tokenizer, so the model folder a stage saves carries it and the next stage needs no setting.

Plain text (no template): the prompt string is text as it is and the response follows it directly, closed by eos
(TRL's "standard" prompt/completion format); the tokenizer adds its own bos where it does. Conversations (message lists)
need a template: without one they stop with an error naming `chat_template`. With a template, a prompt string is one
user message.

Masks. An assistant turn trains from where generation would start to the end of its end-of-turn token. Where the
template marks replies with `{% generation %}` those spans are used. Otherwise the prefix property is checked and
used: the conversation up to turn i rendered with the generation prompt must start the conversation through turn i,
which must start the whole conversation (Qwen2, Llama-3, Gemma and Mistral templates have it; a template that rewrites
earlier turns, e.g. dropping past reasoning, stops with an error naming `chat_template`).

Tokens. The rendered text is tokenised in segments cut at the trained spans, with `add_special_tokens=False` (templates
write their own bos: none is doubled). A prompt's tokens are therefore exactly the tokens sampling starts from, and a
response's are the tokens the policy writes. Message contents that spell a control token (a user typing "<|im_end|>")
are encoded as text through transformers' `sanitize_control_tokens` machinery, never as a forged turn marker.

End of turn (`eot_id`): the first special token after the reply in an assistant turn (<|im_end|>, <|eot_id|>,
<end_of_turn>, eos). It is the last trained token of every reply and, with eos, a stop token of sampling
(`stop_ids`). A template whose replies end in no special token is refused: a model trained on it could never stop.

Pad: a tokenizer without a pad token pads with its eos (the tokenizer is changed in memory and saved that way, as TRL
does); padded positions are always masked.

Truncation (`max_length`, `max_prompt_length`) keeps the end: whole earlier turns go first (after a system message),
then tokens from the left of the prompt (a leading bos stays), and only when the final response alone does not fit is
its end cut (`Encoded.response_cut`; dpo drops such pairs). `Encoded` counts each cut for the stages' data reports.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence, Union

from jinja2 import TemplateError
# transformers' machinery behind apply_chat_template(return_assistant_tokens_mask=..., sanitize_control_tokens=...)
from transformers.utils.chat_template_utils import (
    _CONTROL_TOKEN_END as _END,
    _CONTROL_TOKEN_START as _START,
    _get_control_token_patterns,
    mark_control_tokens,
    render_jinja_template,
)

from tether.chat_templates import TEMPLATES, resolve_template
from tether.errors import ConfigError, DataError

Prompt = Union[str, list]
"""A plain prompt string, or a list of {"role", "content"} messages (a conversation ending with a user turn)."""

@dataclass
class Encoded:
    """One example as token ids, with what truncation cut."""

    input_ids: list[int]
    """Token ids, length T (<= max_length when one was given)."""
    loss_mask: list[int]
    """Length T: 1 on the trained tokens (replies and their end-of-turn token), else 0."""
    prompt_length: int
    """Tokens before the final reply: input_ids[:prompt_length] is what sampling would start from."""
    turns_dropped: int = 0
    """Whole earlier turns (a user message and what followed it) dropped to fit."""
    prompt_cut: int = 0
    """Tokens cut from the left of the prompt to fit (after dropping turns)."""
    response_cut: int = 0
    """Tokens cut from the end of the final reply, which alone did not fit."""

    @property
    def truncated(self) -> bool:
        return bool(self.turns_dropped or self.prompt_cut or self.response_cut)


ENCODE_PROGRESS_EVERY = 500
"""Rows between updates of the encoding bar, drawn for datasets of at least this many rows (rendering a chat template
costs ~2-6 ms a row: 100k rows are minutes)."""


@contextmanager
def _encoding_progress(n: int):
    """A progress bar for encoding n rows, or a silent stand-in below ENCODE_PROGRESS_EVERY rows."""
    if n < ENCODE_PROGRESS_EVERY:
        yield _NoBar()
        return
    from tether.progress import progress_bar

    with progress_bar("encode", total=n) as bar:
        yield bar
        bar.update(n % ENCODE_PROGRESS_EVERY)


class _NoBar:
    def update(self, advance: int = 1) -> None:
        pass


def merged_turns(prompt: Prompt) -> list[dict] | None:
    """The messages with each run of consecutive turns of one role joined into one (texts separated by a blank
    line); None when the prompt is text or its roles already alternate."""
    if not _is_messages(prompt) or all(a["role"] != b["role"] for a, b in zip(prompt, prompt[1:])):
        return None
    out: list[dict] = []
    for m in prompt:
        if out and out[-1]["role"] == m["role"]:
            out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n\n{m['content']}"}
        else:
            out.append(dict(m))
    return out


def _is_messages(prompt) -> bool:
    return isinstance(prompt, (list, tuple))


def _check_messages(messages: Sequence[dict]) -> None:
    """Raise DataError on an empty conversation, a bad role or a non-string content."""
    if not messages:
        raise DataError("messages: empty conversation")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            role = m.get("role") if isinstance(m, dict) else m
            raise DataError(f"messages[{i}].role: {role!r} is not one of system, user, assistant")
        if not isinstance(m.get("content"), str):
            raise DataError(f"messages[{i}].content: expected a string, got {type(m.get('content')).__name__}")


def drop_first_turn(messages: list) -> list | None:
    """`messages` without its first exchange (the first user message and everything up to the next user message),
    a leading system message kept; None when only one exchange is left."""
    start = 1 if messages and messages[0]["role"] == "system" else 0
    users = [i for i in range(start, len(messages)) if messages[i]["role"] == "user"]
    if len(users) < 2:
        return None
    return messages[:start] + messages[users[1]:]


class ChatFormat:
    """How one tokenizer turns prompts and replies into tokens (see the module docstring). Build it with
    `chat_format(tokenizer, chat_template)`; `source` (a model path) only names the model in error messages."""

    def __init__(self, tokenizer, chat_template: str = "", source: str = "the model"):
        self.tokenizer, self.source = tokenizer, source
        self.template, self.name = resolve_template(tokenizer, chat_template)
        if chat_template:  # saved with the model, so later stages need no setting ("none": saved without a template)
            tokenizer.chat_template = self.template
        if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token  # padded positions are masked: any id would do
        self.markers = self.template is not None and bool(_GENERATION.search(self.template))
        self._control = _control_pattern(tokenizer, self.template) if self.template is not None else None
        # SentencePiece-style tokenizers (Metaspace "first") put a space before the start of every text they encode;
        # a segment in the middle of a chat must not get one, so it is encoded after an anchor token, then removed.
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        self._prefix_space = encode("a") == encode(" a")
        self._anchor = next((t for t in (tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token)
                             if t is not None and len(encode(t)) == 1), "\n")
        self._anchor_ids = encode(self._anchor)
        self.eot_text = self._end_of_turn()
        self.eot_id = tokenizer.convert_tokens_to_ids(self.eot_text)
        eos = tokenizer.eos_token_id
        self.stop_ids = (self.eot_id,) + ((eos,) if eos is not None and eos != self.eot_id else ())
        """Token ids that end a sampled reply: the end-of-turn token, and eos."""

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    # -- public encoders -------------------------------------------------------------------------------

    def encode(self, prompt: Prompt, response: str | None = None, max_length: int | None = None,
               max_prompt_length: int | None = None) -> Encoded:
        """prompt + response, the response (and its end-of-turn token) trained; with response None, `prompt` is a
        whole conversation ending with an assistant turn and every assistant turn trains."""
        return self.encode_many([(prompt, response)], max_length, max_prompt_length)[0]

    def encode_many(self, rows: Sequence[tuple[Prompt, str | None]], max_length: int | None = None,
                    max_prompt_length: int | None = None) -> list[Encoded]:
        """`encode` over many (prompt, response) rows, their segments tokenised in one batched call."""
        return self._encode_rows([(p, r, False) for p, r in rows], max_length, max_prompt_length)

    def encode_pairs(self, rows: Sequence[tuple[Prompt, str, str]], max_length: int | None = None,
                     max_prompt_length: int | None = None) -> list[tuple[Encoded, Encoded]]:
        """Both responses of each (prompt, a, b) row after the same prompt tokens: the longer response sets how much
        of the prompt fits, so a comparison never sees two different cuts of its prompt."""
        flat = self._encode_rows([(p, r, False) for p, a, b in rows for r in (a, b)], None, None, progress=False)
        out = []
        with _encoding_progress(len(rows)) as bar:  # a pair cut to fit is encoded again, one turn dropped at a time
            for i, ((prompt, a, b), pair) in enumerate(zip(rows, zip(flat[::2], flat[1::2]))):
                longest = max(len(e.input_ids) - e.prompt_length for e in pair)
                limits = [max_prompt_length, None if max_length is None else max_length - longest]
                budget = min([pair[0].prompt_length] + [x for x in limits if x is not None])
                bos = self.tokenizer.bos_token_id
                floor = 1 + (pair[0].prompt_length > 1 and bos is not None and pair[0].input_ids[0] == bos)
                if budget < floor:  # a response alone fills max_length: each keeps what prompt it can on its own
                    pair = tuple(self.encode(prompt, r, max_length, max_prompt_length) for r in (a, b))
                elif budget < pair[0].prompt_length:
                    pair = tuple(self.encode(prompt, r, max_length, budget) for r in (a, b))
                out.append(pair)
                if (i + 1) % ENCODE_PROGRESS_EVERY == 0:
                    bar.update(ENCODE_PROGRESS_EVERY)
        return out

    def prompt_ids(self, prompt: Prompt, max_prompt_length: int | None = None) -> list[int]:
        """The generation prompt: what a model samples its reply after."""
        return self.prompts_ids([prompt], max_prompt_length)[0]

    def prompts_ids(self, prompts: Sequence[Prompt], max_prompt_length: int | None = None) -> list[list[int]]:
        return [e.input_ids for e in self.prompts_encoded(prompts, max_prompt_length)]

    def prompts_encoded(self, prompts: Sequence[Prompt], max_prompt_length: int | None = None) -> list[Encoded]:
        """Generation prompts with what truncation cut (for the stages' reports)."""
        return self._encode_rows([(p, None, True) for p in prompts], max_prompt_length, max_prompt_length)

    def render(self, prompt: Prompt, response: str | None = None, generation: bool = False) -> str:
        """The text of a row as the template writes it (what `tether data preview` shows)."""
        texts, _ = self._pieces(prompt, response, generation)
        return "".join(texts).replace(_START, "").replace(_END, "")

    # -- rendering ----------------------------------------------------------------------------------------

    def _messages(self, prompt: Prompt, response: str | None) -> list[dict]:
        messages = list(prompt) if _is_messages(prompt) else [{"role": "user", "content": prompt}]
        if response is not None:
            messages.append({"role": "assistant", "content": response})
        _check_messages(messages)
        return messages

    def _render(self, messages: list[dict], generation: bool, spans: bool = False):
        try:
            text, indices = render_jinja_template(
                conversations=[messages], chat_template=self.template, add_generation_prompt=generation,
                return_assistant_tokens_mask=spans, **self.tokenizer.special_tokens_map)
        except TemplateError as err:
            raise DataError(f"chat template ({self.name}): {err}") from None
        return (text[0], indices[0]) if spans else text[0]

    def _pieces(self, prompt: Prompt, response: str | None, generation: bool) -> tuple[list[str], list[bool]]:
        """The row's text cut into segments, each trained or not; nothing follows the final trained segment. A
        template that refuses roles that do not alternate (Gemma's; a few HH-RLHF prompts have two user turns in a
        row) gets the prompt's consecutive turns of one role as one message, their texts joined by a blank line."""
        if self.template is None:
            return self._plain_pieces(prompt, response, generation)
        try:
            return self._template_pieces(prompt, response, generation)
        except DataError:
            merged = merged_turns(prompt)
            if merged is None:
                raise
            return self._template_pieces(merged, response, generation)

    def _template_pieces(self, prompt: Prompt, response: str | None, generation: bool
                         ) -> tuple[list[str], list[bool]]:
        messages = _mark(self._messages(prompt, response), self._control)
        if generation:
            return [self._render(messages, True)], [False]
        if messages[-1]["role"] != "assistant":
            raise DataError("messages: the conversation must end with an assistant turn (the reply to train)")
        train = [len(messages) - 1] if response is not None else \
            [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        text, spans = self._marker_spans(messages, train) if self.markers else self._prefix_spans(messages, train)
        texts, trained, at = [], [], 0
        for start, end in spans:
            texts += [text[at:start], text[start:end]]
            trained += [False, True]
            at = end
        return texts, trained

    def _plain_pieces(self, prompt: Prompt, response: str | None, generation: bool) -> tuple[list[str], list[bool]]:
        if _is_messages(prompt):
            raise ConfigError(f"chat_template: the data holds conversations, and the tokenizer of {self.source} has no "
                              f"chat template to format them (or chat_template=none asked for plain text); set "
                              f"chat_template to a built-in name ({', '.join(TEMPLATES)}) or a .jinja file")
        if generation:
            return [prompt], [False]
        if response is None:
            raise DataError("prompt: a plain-text row needs a completion")
        return [prompt, response], [False, True]

    def _marker_spans(self, messages: list[dict], train: list[int]) -> tuple[str, list[tuple[int, int]]]:
        text, spans = self._render(messages, False, spans=True)
        assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if len(spans) != len(assistants):
            raise ConfigError(f"chat_template: {self.name} marks {len(spans)} replies with {{% generation %}} in a "
                              f"conversation of {len(assistants)} assistant turns")
        return text, [_through_end(text, span, self.eot_text) for i, span in zip(assistants, spans) if i in train]

    def _prefix_spans(self, messages: list[dict], train: list[int]) -> tuple[str, list[tuple[int, int]]]:
        """Trained spans from prefix renders: turn i trains from the end of the conversation before it (with the
        generation prompt) to the end of its end-of-turn token."""
        full, spans = self._render(messages, False), []
        for i in train:
            before, through = self._render(messages[:i], True), self._render(messages[:i + 1], False)
            content = messages[i]["content"].strip()
            found = through.find(content, len(before))
            eot = through.find(self.eot_text, found + len(content) if found >= 0 else len(before))
            end = eot + len(self.eot_text) if eot >= 0 else len(through)
            # Up to the end of the reply only: some templates close a conversation with eos (Phi-3) after its last turn.
            if not (through.startswith(before) and full.startswith(through[:end])):
                raise ConfigError(f"chat_template: {self.name} of {self.source} is not prefix-stable (the "
                                  f"conversation up to turn {i} renders differently inside the whole conversation), so "
                                  f"replies cannot be masked; use a template with {{% generation %}} markers")
            spans.append((len(before), end))
        return full, spans
    # -- the end of a reply -----------------------------------------------------------------------------

    def _end_of_turn(self) -> str:
        """The special token that closes a reply: the first one after the reply in a rendered probe turn."""
        if self.template is None:
            if self.tokenizer.eos_token is None:
                raise ConfigError(f"model: the tokenizer of {self.source} has no eos token, so a reply could never end")
            return self.tokenizer.eos_token
        probe = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Fine thanks"}]
        before = self._render(probe[:1], True)
        if before == self._render(probe[:1], False):  # no generation block: fine if the reply needs no header of its
            through = self._render(probe, False)       # own ([INST] ... [/INST] reply), not if it has one (ChatML's)
            lead = through[len(before):through.find("Fine thanks", len(before))] if through.startswith(before) else ""
            if any(t in lead for t in self._specials() if t):
                raise ConfigError(f"chat_template: {self.name} of {self.source} writes nothing for "
                                  f"add_generation_prompt, but its replies start with a header ({lead!r}): sampling "
                                  "would start without it and SFT would train it as part of the reply; use a template "
                                  "with an `{% if add_generation_prompt %}` block")
        if self.markers:
            text, spans = self._render(probe, False, spans=True)
            if not spans or spans[-1][0] != len(before):
                raise ConfigError(f"chat_template: {self.name}'s {{% generation %}} span does not start where its "
                                  "generation prompt ends, so training and sampling would see different prompts")
            # a block may leave the end-of-turn token just outside it: `_marker_spans` trains it all the same
            turn = text[spans[-1][0]:spans[-1][1]] + text[spans[-1][1]:][:_leading_special(text[spans[-1][1]:],
                                                                                            self._specials())]
        else:
            text = self._render(probe, False)
            if not text.startswith(before):
                raise ConfigError(f"chat_template: {self.name} of {self.source} is not prefix-stable (a prompt with "
                                  "the generation prompt does not start the conversation that answers it)")
            turn = text[len(before):]
        after = turn.find("Fine thanks")
        tail = turn[after + len("Fine thanks"):] if after >= 0 else turn
        found = [(tail.find(t), t) for t in self._specials() if t and t in tail]
        if not found:
            raise ConfigError(f"chat_template: with {self.name}, a reply ends in {tail!r}, which holds no special "
                              f"token of the tokenizer of {self.source}: a model trained on it could never stop. Use a "
                              "template whose turns end in one of its tokens (hh and zephyr end replies with eos)")
        return min(found, key=lambda f: (f[0], -len(f[1])))[1]

    def _specials(self) -> set[str]:
        """The texts of the tokenizer's special tokens."""
        return set(self.tokenizer.all_special_tokens) | {
            t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special}

    # -- tokens -------------------------------------------------------------------------------------------

    def _encode_rows(self, rows: list[tuple], max_length: int | None, max_prompt_length: int | None,
                     progress: bool = True) -> list[Encoded]:
        """Rows (prompt, response, generation-prompt-only) as Encoded: 1. render and cut into segments; 2. tokenise
        every segment of every row in one batched call; 3. join; 4. fit rows that are too long (a bar over a large
        dataset, unless `progress` is off: a caller with its own)."""
        pieces = []
        for i, (p, r, g) in enumerate(rows):
            try:
                pieces.append(self._pieces(p, r, g))
            except DataError as err:
                raise DataError(f"example {i + 1} (in the order read): {err}") from None
        texts = [t for ts, _ in pieces for t in ts]
        firsts = [j == 0 for ts, _ in pieces for j in range(len(ts))]
        flat, out, at = self._encode_texts(texts, firsts), [], 0
        with _encoding_progress(len(rows) if progress else 0) as bar:  # fitting re-renders a row per turn it drops
            for i, ((prompt, response, generation), (ts, trained)) in enumerate(zip(rows, pieces)):
                enc = self._join(flat[at:at + len(ts)], trained, plain_reply=self.template is None and not generation)
                at += len(ts)
                out.append(self._fit(enc, prompt, response, generation, max_length, max_prompt_length))
                if (i + 1) % ENCODE_PROGRESS_EVERY == 0:
                    bar.update(ENCODE_PROGRESS_EVERY)
        return out

    def _encode_texts(self, texts: list[str], firsts: list[bool]) -> list[list[int]]:
        """Token ids of each segment; only a plain-text prompt (the first segment without a template) gets the
        tokenizer's own special tokens (its bos)."""
        tok, out = self.tokenizer, [None] * len(texts)
        shifted = [not first and self._prefix_space for first in firsts]
        inputs = [self._anchor + t if s else t for t, s in zip(texts, shifted)]
        for special in (True, False):
            idx = [i for i, t in enumerate(inputs) if (firsts[i] and self.template is None) == special
                   and not _is_marked(t)]
            if idx:
                encoded = tok([inputs[i] for i in idx], add_special_tokens=special)["input_ids"]
                for i, ids in zip(idx, encoded):
                    out[i] = ids
        for i, t in enumerate(inputs):
            if out[i] is None:  # a content spelling a control token: encoded as text (transformers' sanitizer)
                out[i] = tok(t, add_special_tokens=False, sanitize_control_tokens=True)["input_ids"]
            if shifted[i]:
                n = len(self._anchor_ids)
                out[i] = out[i][n:] if out[i][:n] == self._anchor_ids else tok(texts[i], add_special_tokens=False)[
                    "input_ids"]
        return out

    def _join(self, segments: list[list[int]], trained: list[bool], plain_reply: bool) -> Encoded:
        ids, mask = [], []
        for seg, on in zip(segments, trained):
            ids += seg
            mask += [int(on)] * len(seg)
        if plain_reply:  # plain text: the reply is closed by eos
            ids.append(self.eot_id)
            mask.append(1)
        final = len(segments) - 1 if trained[-1] else len(segments)
        prompt_length = sum(len(s) for s in segments[:final])
        return Encoded(ids, mask, prompt_length)

    def _fit(self, enc: Encoded, prompt: Prompt, response: str | None, generation: bool, max_length: int | None,
             max_prompt_length: int | None) -> Encoded:
        """Fit the limits: whole earlier turns first, then the prompt's left tokens, the reply's end last."""
        too_long = lambda e: (max_length is not None and len(e.input_ids) > max_length) or (  # noqa: E731
            max_prompt_length is not None and e.prompt_length > max_prompt_length)
        dropped = 0
        while too_long(enc) and _is_messages(prompt) and (shorter := drop_first_turn(list(prompt))) is not None:
            prompt, dropped = shorter, dropped + 1
            enc = self._encode_rows([(prompt, response, generation)], None, None)[0]
        enc.turns_dropped = dropped
        return cut_to_fit(enc, max_length, max_prompt_length, self.tokenizer.bos_token_id) if too_long(enc) else enc


def cut_to_fit(enc: Encoded, max_length: int | None, max_prompt_length: int | None, bos_id: int | None) -> Encoded:
    """Cut tokens from the left of the prompt (a leading bos kept, and at least the prompt's last token, which
    predicts the reply's first), then, if the reply alone is still too long, from the end of the reply."""
    ids, mask, prompt_length = enc.input_ids, enc.loss_mask, enc.prompt_length
    reply = len(ids) - prompt_length
    keep_bos = prompt_length > 1 and bos_id is not None and ids[0] == bos_id
    budget = prompt_length
    if max_prompt_length is not None:
        budget = min(budget, max_prompt_length)
    if max_length is not None:
        budget = min(budget, max_length - reply)
    budget = max(budget, min(prompt_length, 1 + keep_bos))
    cut = prompt_length - budget
    head = 1 if keep_bos and cut else 0
    ids, mask = ids[:head] + ids[head + cut:], mask[:head] + mask[head + cut:]
    over = min(len(ids) - max_length, reply) if max_length is not None else 0  # never into the prompt's floor
    if over > 0:
        ids, mask = ids[:-over], mask[:-over]
    return Encoded(ids, mask, budget, enc.turns_dropped, cut, max(over, 0))


_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


def _leading_special(text: str, specials: set[str]) -> int:
    """The length of the special token `text` starts with (the longest), 0 when none."""
    return max((len(t) for t in specials if t and text.startswith(t)), default=0)


def _through_end(text: str, span: tuple[int, int], eot_text: str) -> tuple[int, int]:
    """A `{% generation %}` span, extended over the end-of-turn token when the template writes it just after the
    block (`{% generation %}{{ content }}{% endgeneration %}<|im_end|>`): the model must learn to stop."""
    start, end = span
    if not text[start:end].endswith(eot_text) and text.startswith(eot_text, end):
        return start, end + len(eot_text)
    return span


def _control_pattern(tokenizer, template: str):
    """The regex of the control tokens a user's text must not forge (transformers' choice for this template)."""
    return _get_control_token_patterns(tokenizer._get_control_tokens(template))[0]


def _mark(messages: list[dict], control) -> list[dict]:
    """Messages whose contents wrap any control token in transformers' private markers (`mark_control_tokens`), so
    that it is encoded as text; contents without one are left as they are."""
    if control is None or not any(control.search(m["content"]) for m in messages):
        return messages
    return mark_control_tokens(messages, control)


def _is_marked(text: str) -> bool:
    return _START in text or _END in text


def chat_format(tokenizer, chat_template: str = "", source: str = "the model") -> ChatFormat:
    """The ChatFormat of `tokenizer` under the `chat_template` setting, built once per tokenizer and setting (building
    renders probe turns)."""
    cache = tokenizer.__dict__.setdefault("_tether_chat_formats", {})
    if chat_template not in cache:
        cache[chat_template] = ChatFormat(tokenizer, chat_template, source)
    cache[chat_template].source = source  # errors name the caller's model
    return cache[chat_template]


__all__ = ["ChatFormat", "Encoded", "Prompt", "chat_format", "cut_to_fit", "drop_first_turn"]
