"""`tether sft`: supervised fine-tuning on conversations, loss on assistant tokens only."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from tether import distributed
from tether.chat import ChatFormat, chat_format
from tether.config import check
from tether.data.formats import check_format, load_conversations
from tether.errors import naming
from tether.models import check_positions, load_policy, load_tokenizer
from tether.packing import check_packable, packed_collate
from tether.stages.lm import train_lm
from tether.training import Example, TrainConfig, collate

console = Console(stderr=True)


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning of a causal LM on JSONL conversations (`messages` or `prompt`/`completion`)."""

    data: str = "runs/world/sft.jsonl"
    """Conversations: {"messages": [...]} or {"prompt": ..., "completion": ...} rows, or HH-RLHF, UltraFeedback,
    TRL or tether preference data (the chosen responses); JSONL, Parquet, Arrow or a save_to_disk folder."""
    format: str = "auto"
    """Format of data: auto (told from the first row's keys) or a name from `tether data --help`:
    messages, prompt_completion, hh, ultrafeedback_binarized, trl, tether, ..."""
    split: str | None = None
    """Split of data when it is a `datasets` save_to_disk DatasetDict folder (e.g. train_prefs);
    None for a file."""
    model: str = "runs/pretrain/model"
    """Hugging Face model folder to fine-tune (its tokenizer must be in the same folder)."""
    trust_remote_code: bool = False
    """Allow the model folder's own Python code to run (only for models you trust)."""
    out: str = "runs/sft"
    """Run folder: metrics.jsonl, config.yaml, checkpoints/, model/ (the final HF folder)."""
    epochs: float = 2.0
    """Passes over the training data (fractions allowed); ignored when max_steps is set."""
    lr: float = 5e-4
    """Peak learning rate of AdamW."""
    padding_free: bool = False
    """Pack each micro-batch's conversations end to end, no padding (TRL's `padding_free`): position ids restart at
    0 per conversation and transformers keeps each conversation's attention inside it (a block-diagonal causal mask;
    tether.packing). Same loss and gradients as padded batches (per-token mean over the step's assistant tokens).
    Refused on architectures whose mask ignores position ids (OPT) and attention other than sdpa/eager."""
    pack_tokens: int = 0
    """With padding_free, the most tokens per packed row: conversations go longest first into the first row with
    room (a conversation longer than this gets a row of its own). 0: one row per micro-batch, as TRL. On the CPU a
    row pays attention over its whole length squared, so a few rows of about max_length can beat one long row."""

    def validate(self) -> None:
        super().validate()
        check(bool(self.data), "data", "is required")
        check(bool(self.model), "model", "is required")
        check_format(self.format, "conversations")
        check(self.pack_tokens >= 0, "pack_tokens", "must be >= 0 (0: one packed row per micro-batch)")
        check(self.padding_free or self.pack_tokens == 0, "pack_tokens",
              "only applies with padding_free=true; set padding_free=true or pack_tokens=0")


def encode_conversations(fmt: ChatFormat, conversations: list, max_length: int) -> tuple[list[Example], dict]:
    """Examples masked to the replies, and a report of what truncation cut (never dropped silently). A conversation
    is a list of messages (every assistant turn trains) or a plain (prompt, completion) pair of strings."""
    rows = [tuple(c) if isinstance(c, tuple) else (c, None) for c in conversations]
    encoded = fmt.encode_many(rows, max_length)
    examples = [Example(e.input_ids, e.loss_mask) for e in encoded]
    report = {"conversations": len(encoded), "truncated": sum(e.truncated for e in encoded),
              "earlier_turns_dropped": sum(e.turns_dropped > 0 for e in encoded),
              "prompt_cut": sum(e.prompt_cut > 0 for e in encoded),
              "final_reply_cut": sum(e.response_cut > 0 for e in encoded),
              "final_reply_kept_whole": sum(e.response_cut == 0 for e in encoded),
              "assistant_tokens": sum(sum(e.loss_mask) for e in encoded),
              "final_reply_tokens": sum(sum(e.loss_mask[e.prompt_length:]) for e in encoded),
              "max_length": max_length, "chat_template": fmt.name}
    return examples, report


def run(cfg: SFTConfig) -> Path:
    conversations = load_conversations(cfg.data, cfg.format, cfg.split)  # bad data fails before any model work
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    model = load_policy(cfg.model, trust_remote_code=cfg.trust_remote_code)
    check_positions(model, cfg.max_length, "max_length")
    if cfg.padding_free:
        check_packable(model)
    with naming(cfg.data):
        examples, report = encode_conversations(chat_format(tokenizer, cfg.chat_template, cfg.model), conversations,
                                                cfg.max_length)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    if distributed.is_main():  # under torchrun only rank 0 writes
        (Path(cfg.out) / "data_report.json").write_text(json.dumps(report, indent=1))
        console.print(f"sft: {report['conversations']} conversations ({report['chat_template']}), "
                      f"{report['assistant_tokens']} assistant tokens; to fit max_length={cfg.max_length}, "
                      f"{report['earlier_turns_dropped']} lost earlier turns, {report['prompt_cut']} a prompt's start, "
                      f"{report['final_reply_cut']} the end of their final reply (too long alone)")
    return train_lm(cfg, model, tokenizer, examples, "sft", packed_collate(cfg.pack_tokens) if cfg.padding_free
                    else collate)
