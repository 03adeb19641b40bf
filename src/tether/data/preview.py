"""`tether data preview`: the first rows of a data file exactly as a stage will train on them.

Each row is encoded by the model's chat format (tether.chat) with the stage's settings, then decoded segment by segment:
the tokens the loss trains on are wrapped in ⟦ ⟧ (and coloured on a terminal), special tokens are shown as they are,
and a line says what truncation cut. What is printed is what the stage sees, so a wrong template, a missing end-of-turn
token or a reply cut off by max_length shows up before any training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tether.chat_templates import CHAT_TEMPLATE_HELP, check_template_setting
from tether.config import check, check_prompt_limit
from tether.data.formats import check_format

OPEN, CLOSE = "⟦", "⟧"
STAGES = {"sft": "conversations", "dpo": "comparisons", "rm": "comparisons", "kto": "unpaired", "prompts": "prompts"}


@dataclass
class PreviewConfig:
    """Print the first rows of `data` as `stage` encodes them for `model`'s tokenizer."""

    data: str = ""
    """Data file or folder (any format `tether data --help` lists)."""
    model: str = ""
    """Model (or tokenizer) folder whose tokenizer and chat template the stage would use."""
    stage: Literal["sft", "dpo", "rm", "kto", "prompts"] = "sft"
    """Which stage's view: sft (conversations), dpo and rm (both responses of a comparison), kto (unpaired rows),
    prompts (the generation prompts of ppo, grpo, rloo, collect and evaluate)."""
    chat_template: str = ""
    """The stage's chat_template setting: """ + CHAT_TEMPLATE_HELP + "."
    max_length: int = 256
    """The stage's max_length (prompts: unused)."""
    max_prompt_length: int | None = None
    """The stage's max_prompt_length (dpo, kto, prompts)."""
    format: str = "auto"
    """Format of data: auto or a name from `tether data --help`."""
    split: str | None = None
    """Split of data when it is a save_to_disk DatasetDict folder."""
    rows: int = 3
    """How many rows to show."""
    trust_remote_code: bool = False
    """Allow the model folder's own Python code to run (only for tokenizers you trust)."""

    def validate(self) -> None:
        check(bool(self.data), "data", "is required")
        check(bool(self.model), "model", "is required (the tokenizer and chat template come from it)")
        check(self.rows >= 1, "rows", "must be >= 1")
        check(self.max_length > 1, "max_length", "must be > 1")
        check_prompt_limit(self.max_prompt_length)
        check_template_setting(self.chat_template)
        check_format(self.format, STAGES[self.stage])


def marked(tokenizer, ids: list[int], mask: list[int], colour: bool = False) -> str:
    """The decoded ids, each run of trained tokens (mask 1) wrapped in ⟦ ⟧ (green with `colour`)."""
    out, start = [], 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or mask[end] != mask[start]:
            text = tokenizer.decode(ids[start:end], skip_special_tokens=False)
            if mask[start]:
                text = f"\x1b[1;32m{OPEN}{text}{CLOSE}\x1b[0m" if colour else f"{OPEN}{text}{CLOSE}"
            out.append(text)
            start = end
    return "".join(out)


def cut_note(enc, max_length: int | None) -> str:
    """What truncation did to one encoded row, in words."""
    reply = len(enc.input_ids) - enc.prompt_length
    parts = [f"{len(enc.input_ids)} tokens: prompt {enc.prompt_length}, reply {reply}"]
    if not enc.truncated:
        return parts[0] + f"; nothing cut (max_length={max_length})"
    if enc.turns_dropped:
        parts.append(f"{enc.turns_dropped} earlier turn(s) dropped")
    if enc.prompt_cut:
        parts.append(f"{enc.prompt_cut} prompt tokens cut from the start")
    if enc.response_cut:
        parts.append(f"the reply alone did not fit: its last {enc.response_cut} tokens cut")
    return "; ".join(parts)


def encoded_rows(cfg: PreviewConfig, fmt) -> list[tuple[str, object]]:
    """(label, Encoded) for the first cfg.rows rows of cfg.data as cfg.stage encodes them."""
    from tether.data import formats

    if cfg.stage == "sft":
        rows = formats.load_conversations(cfg.data, cfg.format, cfg.split)[:cfg.rows]
        encoded = fmt.encode_many([tuple(r) if isinstance(r, tuple) else (r, None) for r in rows], cfg.max_length)
        return [(f"conversation {i + 1}", e) for i, e in enumerate(encoded)]
    if cfg.stage == "prompts":
        rows = formats.load_prompts(cfg.data, cfg.format, cfg.split)[:cfg.rows]
        return [(f"prompt {i + 1}", e) for i, e in enumerate(fmt.prompts_encoded(rows, cfg.max_prompt_length))]
    if cfg.stage == "kto":
        rows = formats.load_unpaired(cfg.data, cfg.format, cfg.split)[0][:cfg.rows]
        encoded = fmt.encode_many([(r.prompt, r.completion) for r in rows], cfg.max_length, cfg.max_prompt_length)
        return [(f"row {i + 1} ({'desirable' if r.label else 'undesirable'})", e)
                for i, (r, e) in enumerate(zip(rows, encoded))]
    rows = formats.load_comparisons(cfg.data, cfg.format, cfg.split, labelled=cfg.stage == "dpo")[:cfg.rows]
    limit = cfg.max_prompt_length if cfg.stage == "dpo" else None
    pairs = fmt.encode_pairs([(c.prompt, c.response_a, c.response_b) for c in rows], cfg.max_length, limit)
    role = {("A", "A"): "chosen", ("A", "B"): "rejected", ("B", "B"): "chosen", ("B", "A"): "rejected"}
    return [(f"comparison {i + 1}, response {side} ({role.get((side, c.choice), c.choice or 'unlabelled')})", e)
            for i, (c, pair) in enumerate(zip(rows, pairs)) for side, e in zip("AB", pair)]


def preview(cfg: PreviewConfig, colour: bool = False) -> str:
    """The preview's text."""
    from tether.chat import chat_format
    from tether.models import load_tokenizer

    fmt = chat_format(load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code), cfg.chat_template, cfg.model)
    lines = [f"{cfg.stage} view of {cfg.data} for {cfg.model}: {fmt.name}; replies end with {fmt.eot_text!r}; "
             f"sampling stops at {', '.join(map(repr, fmt.tokenizer.convert_ids_to_tokens(list(fmt.stop_ids))))}; "
             f"pad {fmt.tokenizer.pad_token!r}. Trained tokens are in {OPEN} {CLOSE}" +
             (" (dpo drops a pair whose reply alone does not fit)." if cfg.stage == "dpo" else ".")]
    limit = cfg.max_prompt_length if cfg.stage == "prompts" else cfg.max_length
    for label, enc in encoded_rows(cfg, fmt):
        lines += ["", f"--- {label} ({cut_note(enc, limit)})",
                  marked(fmt.tokenizer, enc.input_ids, enc.loss_mask, colour)]
    return "\n".join(lines)
