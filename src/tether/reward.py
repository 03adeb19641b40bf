"""The reward model: a Hugging Face backbone and a scalar head, r(prompt, response) -> a real number.

Three backbones are accepted:

- "causal": a decoder LM (e.g. the SFT model). Its body (`AutoModel`, i.e. the CausalLM without its LM
  head) feeds `head = nn.Linear(hidden, 1)`, read at the last non-pad token: the `<eos>` closing the
  response, the one position that has attended to the whole prompt and response (Stiennon et al. 2020;
  Ouyang et al. 2022 §3.5). Pool "mean" also works; "cls" is refused (a causal model's first token sees
  nothing else).
- "encoder": a bidirectional model (BERT, MiniLM) through `AutoModel` and the same head, pooled at the
  first token ("cls"), the last non-pad token ("last") or the masked mean ("mean").
- "seqcls": an `AutoModelForSequenceClassification` with num_labels=1, used as is: its own head and its
  own pooling (Llama-style models read the last token that is not `pad_token_id`); `pool` is ignored.

Training batches are right-padded; "last" finds the last position whose attention mask is 1, so it is
also right for left padding.

Rewards are stored raw (the Bradley-Terry scale the loss trained) and returned normalised,
`score = gain * raw + bias`, with (gain, bias) fit after training so the reference set's rewards have
mean 0 and std 1: a PPO reward scale that does not depend on how long the RM trained.

On disk (`save_pretrained`): the backbone as a plain HF folder (config.json, model.safetensors), the
tokenizer, `reward_head.safetensors` (head weights, gain, bias) and `reward_config.json` (pool, kind,
max_length, normalisation). Loading reads safetensors only.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    DynamicCache,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from tether.chat import chat_format
from tether.errors import ConfigError, TetherError
from tether.guard import check_finite
from tether.models import (
    _check_local_folder,
    _looks_like_hub_id,
    cache_kwarg,
    is_checkpointing,
    load_tokenizer,
    output_cache,
    save_pretrained,
)
from tether.progress import quiet_transformers

HEAD_FILE = "reward_head.safetensors"
CONFIG_FILE = "reward_config.json"
KINDS = ("causal", "encoder", "seqcls")


# ---------------------------------------------------------------------------------------------
# Pooling: (B, T, H) hidden states and (B, T) attention mask -> (B, H)


def pool_last(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden state at the last position whose mask is 1 (works for right and left padding)."""
    positions = torch.arange(mask.size(1), device=mask.device)  # (T,)
    last = (positions * mask.long()).argmax(dim=1)  # (B,)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]  # (B, H)


def pool_cls(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The first position ([CLS] for BERT-style encoders)."""
    return hidden[:, 0]  # (B, H)


def pool_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean over positions whose mask is 1."""
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)  # (B, H)


POOLS = {"last": pool_last, "cls": pool_cls, "mean": pool_mean}


# ---------------------------------------------------------------------------------------------
# Encoding (prompt, response) -> token ids


def encode_pair(tokenizer, prompt: str | list, response: str, max_length: int | None = None, chat_template: str = "",
                pair_encoding: bool = False) -> tuple[list[int], bool]:
    """Token ids of (prompt, response) as the reward model reads them, and whether they were truncated.

    The model's chat format (tether.chat, the `chat_template` setting): prompt + response as the policy writes it,
    ending in the reply's end-of-turn token; truncation keeps the end (earlier turns, then the prompt's start go
    first), since the score is read at the last token and the responses are what differ. An encoder without a chat
    template (`pair_encoding`, see `reads_pairs`): the tokenizer's pair encoding `[CLS] prompt [SEP] response [SEP]`,
    a conversation prompt as "role: content" lines, the cut taken from the prompt's start, and from the response
    too only when it alone is longer than max_length.
    """
    if not pair_encoding:
        enc = chat_format(tokenizer, chat_template).encode(prompt, response, max_length)
        return enc.input_ids, enc.truncated
    text = prompt if isinstance(prompt, str) else "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
    ids = tokenizer(text, response)["input_ids"]
    if max_length is not None and len(ids) > max_length:
        return _truncate_pair(tokenizer, text, response, max_length), True
    return list(ids), False


def reads_pairs(kind: str, tokenizer) -> bool:
    """Whether a reward model of `kind` reads (prompt, response) with the tokenizer's pair encoding: an encoder whose
    tokenizer has no chat template."""
    return kind == "encoder" and not getattr(tokenizer, "chat_template", None)


def _truncate_pair(tokenizer, prompt: str, response: str, max_length: int) -> list[int]:
    """Pair encoding cut to max_length by the tokenizer (special tokens kept in place): the start of the prompt only,
    or, when the response alone does not fit, both (the longer first)."""
    side, tokenizer.truncation_side = tokenizer.truncation_side, "left"
    try:
        return list(tokenizer(prompt, response, truncation="only_first", max_length=max_length)["input_ids"])
    except Exception:  # the prompt is too short to absorb the cut: tokenizers raise rather than truncate
        return list(tokenizer(prompt, response, truncation="longest_first", max_length=max_length)["input_ids"])
    finally:
        tokenizer.truncation_side = side


def collate(sequences: Sequence[Sequence[int]], pad_id: int, device=None) -> dict[str, torch.Tensor]:
    """Right-pad token id lists into input_ids and attention_mask, both (B, T)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)  # (B, T)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)  # (B, T)
    for row, s in enumerate(sequences):
        ids[row, :len(s)] = torch.tensor(s, dtype=torch.long)
        attention[row, :len(s)] = 1
    return {"input_ids": ids.to(device), "attention_mask": attention.to(device)}


def backbone_kind(model_or_config) -> str:
    """"seqcls", "causal" or "encoder", from a model's class or a config's architectures and model_type."""
    config = getattr(model_or_config, "config", model_or_config)
    names = [type(model_or_config).__name__] if hasattr(model_or_config, "config") else []
    names += list(getattr(config, "architectures", None) or [])
    if names and names[0].endswith("ForSequenceClassification"):
        return "seqcls"
    if any(n.endswith(("ForCausalLM", "LMHeadModel")) for n in names):
        return "causal"
    causal_only = config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES  # BERT is in both mappings
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and causal_only:
        return "causal"
    return "encoder"


# ---------------------------------------------------------------------------------------------
# The model


class RewardModel(nn.Module):
    """r(prompt, response): backbone + scalar head; `forward` gives raw rewards, `score` normalised ones."""

    def __init__(self, backbone: nn.Module, tokenizer, pool: str = "last", kind: str | None = None,
                 max_length: int | None = None):
        super().__init__()
        self.kind = kind or backbone_kind(backbone)
        if self.kind not in KINDS:
            raise ConfigError(f"kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        if pool not in POOLS:
            raise ConfigError(f"pool: {pool!r} is not one of {', '.join(POOLS)}")
        if self.kind == "causal" and pool == "cls":
            raise ConfigError("pool: 'cls' reads the first token, which a causal model computes before seeing "
                              "any text; use 'last' or 'mean'")
        if self.kind == "seqcls" and backbone.config.num_labels != 1:
            raise ConfigError(f"backbone: a sequence classifier needs num_labels=1, got {backbone.config.num_labels}")
        if self.kind != "seqcls" and getattr(backbone, "base_model", backbone) is not backbone:
            backbone = backbone.base_model  # a *ForCausalLM/*ForMaskedLM: keep the body, drop the LM head
        self.backbone, self.tokenizer, self.pool, self.max_length = backbone, tokenizer, pool, max_length
        self.head = None
        if self.kind != "seqcls":
            hidden = backbone.config.hidden_size
            self.head = nn.Linear(hidden, 1)
            # Stiennon et al. 2020 (summarize_from_feedback): head weights ~ N(0, 1/(d+1)), bias 0.
            nn.init.normal_(self.head.weight, std=1 / (hidden + 1) ** 0.5)
            nn.init.zeros_(self.head.bias)
        self.register_buffer("gain", torch.tensor(1.0))
        self.register_buffer("bias", torch.tensor(0.0))

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def shares_prefixes(self) -> bool:
        """Whether a sequence can be scored as a tail after a shared prefix's cached keys and values (`forward`'s
        `after`): a causal body read at the last token, full attention in every layer, and the cache on (gradient
        checkpointing turns it off)."""
        cfg = self.backbone.config
        return (self.kind == "causal" and self.pool == "last" and getattr(cfg, "sliding_window", None) is None
                and set(getattr(cfg, "layer_types", None) or ["full_attention"]) == {"full_attention"}
                and not is_checkpointing(self.backbone))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, after: tuple | None = None,
                prefix_cache: bool = False):
        """Raw rewards (the Bradley-Terry scale). Shapes: (B, T), (B, T) -> (B,), float32.

        Shared prefixes (`shares_prefixes`), both through `forward` so that DDP sees every pass:
        - prefix_cache=True: right-padded prefixes (G, T_p) -> the backbone's key/value cache, no reward;
        - after=(layers, prefix_mask (G, T_p), rows (B,)): row b is the tail of a sequence whose start is prefix
          rows[b], `layers` the prefixes' (keys, values) per layer (`rm_batch.joined_caches`). The tail attends to
          that prefix's keys (its padding masked) at positions continuing from the prefix's length, so each reward
          equals `forward` of the whole sequence.
        """
        if self.kind == "seqcls":
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()  # (B,)
        if prefix_cache:
            return output_cache(self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=True))
        extra = {}
        if after is not None:
            past, positions, attention_mask = self._after_prefix(*after, input_ids, attention_mask)
            extra = {cache_kwarg(self.backbone): past, "position_ids": positions}
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state  # (B,T,H)
        tail_mask = attention_mask[:, attention_mask.size(1) - hidden.size(1):]  # (B, T): the tail's own positions
        pooled = POOLS[self.pool](hidden, tail_mask)  # (B, H)
        return self.head(pooled.to(self.head.weight.dtype)).squeeze(-1).float()  # (B,)

    @staticmethod
    def _after_prefix(layers: list, prefix_mask: torch.Tensor, rows: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
        """For tails (B, T) after prefixes `rows` of `layers` ((keys, values) per layer): a cache of those rows' keys
        and values (B, heads, T_p, d per layer; a new one, since the backbone appends to it), positions T_p_b + t
        (B, T), and the mask over prefix then tail (B, T_p + T)."""
        past = DynamicCache([(keys.index_select(0, rows), values.index_select(0, rows)) for keys, values in layers])
        before = prefix_mask.index_select(0, rows)  # (B, T_p)
        positions = before.sum(1, keepdim=True) + torch.arange(input_ids.size(1), device=input_ids.device)  # (B, T)
        return past, positions, torch.cat([before, attention_mask], 1)

    @torch.no_grad()
    def raw_scores(self, sequences: Sequence[Sequence[int]], batch_size: int = 32) -> torch.Tensor:
        """Raw rewards of encoded sequences, in eval mode, shape (N,) on the CPU.

        Sequences are scored sorted by length (little padding), then put back in the caller's order.
        """
        was_training = self.training
        self.eval()
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        out = torch.empty(len(sequences))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            out[idx] = self(**collate([sequences[i] for i in idx], self.pad_id, self.device)).cpu()
        self.train(was_training)
        return out

    def score(self, prompts: Sequence[str | list], responses: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Normalised rewards gain * r(prompt_i, response_i) + bias, shape (N,), float32 on the CPU.

        A prompt is a string (one user turn) or a list of messages ending with a user turn.
        """
        if len(prompts) != len(responses):
            raise TetherError(f"score: {len(prompts)} prompts but {len(responses)} responses")
        pairs = reads_pairs(self.kind, self.tokenizer)
        ids = [encode_pair(self.tokenizer, p, r, self.max_length, pair_encoding=pairs)[0]
               for p, r in zip(prompts, responses)]
        return self.gain.cpu() * self.raw_scores(ids, batch_size) + self.bias.cpu()

    def set_normalisation(self, gain: float, bias: float) -> None:
        self.gain.fill_(gain)
        self.bias.fill_(bias)

    # -- save / load ------------------------------------------------------------------------------

    def _head_state(self) -> dict[str, torch.Tensor]:
        """Everything outside the backbone: head.weight, head.bias, gain, bias."""
        return {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def save_pretrained(self, path: str | Path, **_ignored) -> None:
        """Write the folder described in the module docstring (extra kwargs are accepted and ignored). NaN or inf
        weights (backbone, head, normalisation) are refused before anything is written."""
        check_finite(self.state_dict(), str(path))
        path = Path(path)
        save_pretrained(self.backbone, self.tokenizer, str(path))
        save_file(self._head_state(), str(path / HEAD_FILE))
        config = {"kind": self.kind, "pool": self.pool, "max_length": self.max_length,
                  "normalisation": {"gain": float(self.gain), "bias": float(self.bias)}}
        (path / CONFIG_FILE).write_text(json.dumps(config, indent=1))

    @classmethod
    def from_backbone(cls, path: str, pool: str = "last", trust_remote_code: bool = False,
                      max_length: int | None = None) -> "RewardModel":
        """A new reward model (fresh head, gain 1, bias 0) on the HF model at `path` (safetensors only)."""
        quiet_transformers()
        path = str(path)
        if os.path.exists(path) or not _looks_like_hub_id(path):
            _check_local_folder(path, "backbone")
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        try:
            kind = backbone_kind(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code))
            auto = AutoModelForSequenceClassification if kind == "seqcls" else AutoModel
            backbone = auto.from_pretrained(path, use_safetensors=True, trust_remote_code=trust_remote_code)
        except OSError as e:
            raise TetherError(f"backbone: cannot load {path}: {e}") from None
        return cls(backbone, tokenizer, pool=pool, kind=kind, max_length=max_length)

    @classmethod
    def from_pretrained(cls, path: str | Path, trust_remote_code: bool = False) -> "RewardModel":
        """Load a folder written by `save_pretrained` (safetensors only)."""
        quiet_transformers()
        path = Path(path)
        if not (path / CONFIG_FILE).is_file() or not (path / HEAD_FILE).is_file():
            raise TetherError(f"reward model: {path} has no {CONFIG_FILE} and {HEAD_FILE}; is it a reward model?")
        _check_local_folder(str(path), "reward model")
        config = json.loads((path / CONFIG_FILE).read_text())
        auto = AutoModelForSequenceClassification if config["kind"] == "seqcls" else AutoModel
        backbone = auto.from_pretrained(str(path), use_safetensors=True, trust_remote_code=trust_remote_code)
        tokenizer = load_tokenizer(str(path), trust_remote_code=trust_remote_code)
        model = cls(backbone, tokenizer, pool=config["pool"], kind=config["kind"], max_length=config["max_length"])
        head = load_file(str(path / HEAD_FILE))
        expected = model._head_state().keys()
        if head.keys() != expected:
            raise TetherError(f"reward model: {HEAD_FILE} holds {sorted(head)}, expected {sorted(expected)}")
        model.load_state_dict(head, strict=False)  # strict=False: the backbone was loaded above
        return model
