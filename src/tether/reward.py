"""The reward model: a Hugging Face backbone and a scalar head, r(prompt, response) -> a real number.

Three backbones are accepted:

- "causal": a decoder LM (e.g. the SFT model), made into Hugging Face's own sequence classifier for it
  (`AutoModelForSequenceClassification`, e.g. LlamaForSequenceClassification: the LM's body and a bias-free
  `score = nn.Linear(hidden, 1)`, the LM head dropped). The reward is that classifier's `logits[:, 0]`: the score
  read at the last token that is not `pad_token_id`, i.e. the end-of-turn token (or the last token) closing the
  response, the one position that has attended to the whole prompt and response (Stiennon et al. 2020; Ouyang et al. 2022 §3.5).
  The head has no bias: a constant offset cancels in the Bradley-Terry loss, and the normalisation's bias holds
  the level. Pool "mean" also works (tether's own reading of the same body and head, which plain transformers
  cannot reproduce); "cls" is refused (a causal model's first token sees nothing else).
- "encoder": a bidirectional model (BERT, MiniLM) through `AutoModel` and tether's own head
  `nn.Linear(hidden, 1)` (with a bias), pooled at the first token ("cls"), the last position whose attention
  mask is 1 ("last") or the masked mean ("mean").
- "seqcls": an `AutoModelForSequenceClassification` with num_labels=1, used as is: its own head and its
  own pooling (decoders read the last token that is not `pad_token_id`); `pool` is ignored.

Padding. Batches are right-padded with the tokenizer's pad token; a tokenizer without one (GPT-2, Llama-3 base)
pads with its eos token, and that choice is written into the saved tokenizer (pad_token) and config.json
(pad_token_id), so that plain transformers pads and pools as tether did. Hugging Face reads the last token that is
not pad_token_id: when pad is eos, a response ending in eos is read at the token before it, and so is tether's.

Rewards are stored raw (the Bradley-Terry scale the loss trained) and returned normalised,
`score = gain * raw + bias`, with (gain, bias) fit after training so the reference set's rewards have
mean 0 and std 1: a PPO reward scale that does not depend on how long the RM trained.

On disk (`save_pretrained`), causal and seqcls: a standard sequence-classification folder (config.json with
architectures [XForSequenceClassification], num_labels 1, pad_token_id, and `reward_normalisation: {gain, bias}`;
model.safetensors with the body and `score`; the tokenizer), which
`AutoModelForSequenceClassification.from_pretrained` loads as is: its `logits[:, 0]` is tether's raw reward and
`gain * logits[:, 0] + bias` tether's score. Encoders keep tether's own head file, `reward_head.safetensors` (head
weights, gain, bias), beside the `AutoModel` body. Both write `reward_config.json` (kind, pool, max_length,
normalisation), which is what tether reads back. A causal folder in the previous layout (an `AutoModel` body beside
`reward_head.safetensors`) still loads, its head's bias folded into the normalisation's; saving it again writes the
current layout. Loading reads safetensors only.
"""
from __future__ import annotations

import contextlib
import copy
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
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
)
from transformers.utils import logging as hf_logging

from tether.chat import chat_format
from tether.errors import ConfigError, TetherError
from tether.guard import check_finite
from tether.last_layer import read_rows_only
from tether.models import (
    _check_local_folder,
    _looks_like_hub_id,
    accepts,
    cache_kwarg,
    is_checkpointing,
    load_tokenizer,
    output_cache,
    save_pretrained,
)
from tether.prefix_tree import MASKS, tree_mask
from tether.progress import quiet_transformers

HEAD_FILE = "reward_head.safetensors"
"""An encoder's head, gain and bias (tether's own format); beside a causal body: the previous layout."""
CONFIG_FILE = "reward_config.json"
NORMALISATION_KEY = "reward_normalisation"
"""The key of config.json holding {"gain", "bias"}: tether's score is gain * logits[:, 0] + bias."""
KINDS = ("causal", "encoder", "seqcls")


# ---------------------------------------------------------------------------------------------
# Pooling: (B, T, H) hidden states and (B, T) attention mask -> (B, H)


def pool_last(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden state at the last position whose mask is 1 (works for right and left padding). Encoders only: a
    causal reward model reads Hugging Face's classifier, at the last token that is not pad_token_id."""
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


def decoder_only(config) -> bool:
    """Whether a config's model type is a decoder-only LM (BERT is in both the causal and the masked LM mappings)."""
    return (config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def backbone_kind(model_or_config) -> str:
    """"seqcls", "causal" or "encoder", from a model's class or a config's architectures and model_type."""
    config = getattr(model_or_config, "config", model_or_config)
    names = [type(model_or_config).__name__] if hasattr(model_or_config, "config") else []
    names += list(getattr(config, "architectures", None) or [])
    if names and names[0].endswith("ForSequenceClassification"):
        return "seqcls"
    if any(n.endswith(("ForCausalLM", "LMHeadModel")) for n in names) or decoder_only(config):
        return "causal"
    return "encoder"


# ---------------------------------------------------------------------------------------------
# Hugging Face's sequence classifier for a causal LM, and its pad token


def with_pad_token(tokenizer):
    """`tokenizer`, or a copy that pads with its eos token when it has no pad token (GPT-2, Llama-3 base)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer
    if tokenizer.eos_token is None:
        raise ConfigError("backbone: the tokenizer has neither a pad nor an eos token to pad with; add a pad token "
                          "to the backbone's tokenizer")
    padded = copy.deepcopy(tokenizer)
    padded.pad_token = tokenizer.eos_token
    return padded


def as_classifier(lm: nn.Module, pad_token_id: int) -> nn.Module:
    """Hugging Face's sequence classifier (num_labels=1) for the causal LM `lm` (a *ForCausalLM or its body), with
    `lm`'s body, not a copy, and a new `score` head (Stiennon init). The classifier is built on the meta device and
    its body then replaced: no second body is ever allocated. `lm`'s config becomes the classifier's."""
    config = lm.config
    classifier_class = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING.get(type(config), None)
    if classifier_class is None:
        raise ConfigError(f"backbone: transformers has no sequence classifier for {config.model_type!r} models")
    config.num_labels, config.pad_token_id = 1, pad_token_id
    with torch.device("meta"):
        classifier = classifier_class(config)
    body = lm.base_model
    setattr(classifier, classifier.base_model_prefix, body)
    weight = next(body.parameters())
    classifier.score = nn.Linear(classifier.score.in_features, 1, bias=False, device=weight.device, dtype=weight.dtype)
    init_head(classifier.score)
    return classifier


def init_head(head: nn.Linear) -> None:
    """Stiennon et al. 2020 (summarize_from_feedback): head weights ~ N(0, 1/(d+1)), bias 0."""
    nn.init.normal_(head.weight, std=1 / (head.in_features + 1) ** 0.5)
    if head.bias is not None:
        nn.init.zeros_(head.bias)


@contextlib.contextmanager
def _expected_missing_head():
    """Silence transformers' load report while a causal LM's folder loads into its classifier: the new `score` is
    missing from the checkpoint and the LM head left over, as they must be."""
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


# ---------------------------------------------------------------------------------------------
# The model


def continued_positions(prefix_mask: torch.Tensor, tail_mask: torch.Tensor) -> torch.Tensor:
    """Position ids (B, T) of right-padded tails (mask (B, T)) after right-padded prefixes (mask (B, T_p)): each
    tail token continues its own prefix, at prefix length + t; padding at 0. Padding must not count on: a short
    prefix's tail is padded to the width of a longer prefix's, so it would run past the sequence's own length, and
    a learned position table (GPT-2's, n_positions rows) has no row there. Nothing reads the padding's outputs."""
    steps = torch.arange(tail_mask.size(1), device=tail_mask.device)  # (T,)
    return (prefix_mask.sum(1, keepdim=True) + steps) * tail_mask  # (B, T)


class RewardModel(nn.Module):
    """r(prompt, response): a Hugging Face model and a scalar head; `forward` gives raw rewards, `score` normalised
    ones. `backbone` is the Hugging Face model (causal, seqcls: the sequence classifier; encoder: the body), under
    peft's wrapper with LoRA; `classifier` is it without the wrapper, `body` its transformer, `head` the scalar head."""

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
        tokenizer = with_pad_token(tokenizer)
        if self.kind == "encoder":
            backbone = backbone.base_model  # a *ForMaskedLM: keep the body, drop the LM head
            self.head = nn.Linear(backbone.config.hidden_size, 1)  # a child named "head": see the `head` property
            init_head(self.head)
        elif backbone_kind(backbone) != "seqcls":  # a causal LM (or its body): Hugging Face's classifier for it
            backbone = as_classifier(backbone, tokenizer.pad_token_id)
        if self.kind != "encoder":
            if backbone.config.num_labels != 1:
                raise ConfigError(f"backbone: a sequence classifier needs num_labels=1, got "
                                  f"{backbone.config.num_labels}")
            backbone.config.pad_token_id = tokenizer.pad_token_id  # the classifier pools before the padding
        self.backbone, self.tokenizer, self.pool, self.max_length = backbone, tokenizer, pool, max_length
        self.register_buffer("gain", torch.tensor(1.0))
        self.register_buffer("bias", torch.tensor(0.0))

    @property
    def classifier(self) -> nn.Module:
        """The Hugging Face model: `backbone` without peft's wrapper (its LoRA layers stay in place)."""
        return self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone

    @property
    def body(self) -> nn.Module:
        """The transformer giving hidden states (B, T, H): the classifier's body, or the encoder itself."""
        return self.classifier.base_model

    @property
    def head(self) -> nn.Module:
        """The scalar head: the classifier's `score` (bias-free), or an encoder's own `nn.Linear` (a registered child
        that this property, a class attribute, shadows)."""
        return self._modules["head"] if self.kind == "encoder" else self.classifier.score

    @property
    def reads_classifier(self) -> bool:
        """Whether the reward is the Hugging Face classifier's own output (seqcls, or causal pooled at the last
        token), rather than tether's pooling of the body's hidden states."""
        return self.kind == "seqcls" or (self.kind == "causal" and self.pool == "last")

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def shares_prefixes(self) -> bool:
        """Whether a sequence can be scored as a tail after a shared prefix's cached keys and values (`forward`'s
        `after`): a decoder read by its classifier, full attention in every layer, and the cache on (gradient
        checkpointing turns it off)."""
        cfg = self.classifier.config
        return (self.reads_classifier and decoder_only(cfg) and accepts(self.backbone, "position_ids")
                and getattr(cfg, "sliding_window", None) is None
                and set(getattr(cfg, "layer_types", None) or ["full_attention"]) == {"full_attention"}
                and not is_checkpointing(self.classifier))

    @property
    def tree_shares(self) -> bool:
        """Whether shared prefixes can run in rows of a prefix and its tails under a custom mask (`forward`'s
        `rows`): `shares_prefixes`, and an attention that takes the mask (`prefix_tree.MASKS`)."""
        return self.shares_prefixes and getattr(self.classifier.config, "_attn_implementation", None) in MASKS

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, after: tuple | None = None,
                prefix_cache: bool = False, rows: tuple | None = None):
        """Raw rewards (the Bradley-Terry scale). Shapes: (B, T), (B, T) -> (B,), float32.

        Shared prefixes (`shares_prefixes`), both through `forward` so that DDP sees every pass:
        - prefix_cache=True: right-padded prefixes (G, T_p) -> the backbone's key/value cache, no reward;
        - after=(layers, prefix_mask (G, T_p), rows (B,)): row b is the tail of a sequence whose start is prefix
          rows[b], `layers` the prefixes' (keys, values) per layer (`rm_batch.joined_caches`). The tail attends to
          that prefix's keys (its padding masked) at positions continuing from the prefix's length, so each reward
          equals `forward` of the whole sequence (the tail holds the sequence's last non-pad token:
          `rm_batch.shared_prefixes`).
        - rows=(position_ids (R, W), segments (R, W), read (U, 2)): input_ids (R, W) hold prefixes and their tails
          (`prefix_tree.tree_rows`; attention_mask None): one reward per read (row, column), the classifier's
          score of the hidden state there, as the whole sequence's (`rm_batch.collate_rows`).
        """
        if rows is not None:
            return self._rows_rewards(input_ids, *rows)
        if prefix_cache:
            return output_cache(self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=True))
        extra = {"use_cache": False}  # nothing reads a cache here (and compiled layers run only without one)
        if after is not None:
            past, positions, attention_mask = self._after_prefix(*after, input_ids, attention_mask)
            extra = {cache_kwarg(self.backbone): past, "position_ids": positions}
        # (B,) copies, not views of the (B, 1) outputs: FSDP2 hooks a sharded module's output for its backward, and
        # warns on every pass that a view's hook would be lost to an in-place op (none is made here).
        if self.reads_classifier:  # Hugging Face's own pooling: the last token that is not pad_token_id
            logits = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
            return logits[:, 0].float().clone()
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        pooled = POOLS[self.pool](hidden, attention_mask)  # (B, H)
        return self.head(pooled.to(self.head.weight.dtype)).squeeze(-1).float().clone()  # (B,)

    def _rows_rewards(self, input_ids: torch.Tensor, positions: torch.Tensor, segments: torch.Tensor,
                      read: torch.Tensor) -> torch.Tensor:
        """(U,) rewards of the sequences laid in rows: the body under `prefix_tree.tree_mask`, the score head at
        each read position (what Hugging Face's classifier does at a whole sequence's last non-pad token); the last
        layer's feed-forward block at the read positions only (`tether.last_layer`)."""
        mask = tree_mask(segments, self.classifier.config._attn_implementation, self.classifier.dtype)
        with read_rows_only(self.classifier, self.body, read[:, 0] * input_ids.size(1) + read[:, 1]):
            hidden = self.body(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                               use_cache=False).last_hidden_state  # (R, W, H)
        picked = hidden[read[:, 0], read[:, 1]]  # (U, H)
        return self.head(picked).squeeze(-1).float().clone()  # (U,)

    @staticmethod
    def _after_prefix(layers: list, prefix_mask: torch.Tensor, rows: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
        """For tails (B, T) after prefixes `rows` of `layers` ((keys, values) per layer): a cache of those rows' keys
        and values (B, heads, T_p, d per layer; a new one, since the backbone appends to it), positions T_p_b + t
        (B, T), and the mask over prefix then tail (B, T_p + T)."""
        past = DynamicCache([(keys.index_select(0, rows), values.index_select(0, rows)) for keys, values in layers])
        before = prefix_mask.index_select(0, rows)  # (B, T_p)
        return past, continued_positions(before, attention_mask), torch.cat([before, attention_mask], 1)

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
        """What `HEAD_FILE` holds: everything outside the backbone (an encoder's head.weight and head.bias, gain,
        bias)."""
        return {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def save_pretrained(self, path: str | Path, **_ignored) -> None:
        """Write the folder described in the module docstring (extra kwargs are accepted and ignored). NaN or inf
        weights (backbone, head, normalisation) are refused before anything is written."""
        check_finite(self.state_dict(), str(path))
        path = Path(path)
        normalisation = {"gain": float(self.gain), "bias": float(self.bias)}
        if self.kind != "encoder":  # in config.json, for whoever loads the classifier without tether
            setattr(self.classifier.config, NORMALISATION_KEY, normalisation)
        save_pretrained(self.backbone, self.tokenizer, str(path))
        if self.kind == "encoder":
            save_file(self._head_state(), str(path / HEAD_FILE))
        else:  # a head file left by an earlier save in the previous layout would read as that layout
            (path / HEAD_FILE).unlink(missing_ok=True)
        config = {"kind": self.kind, "pool": self.pool, "max_length": self.max_length, "normalisation": normalisation}
        (path / CONFIG_FILE).write_text(json.dumps(config, indent=1))

    @classmethod
    def from_backbone(cls, path: str, pool: str = "last", trust_remote_code: bool = False,
                      max_length: int | None = None) -> "RewardModel":
        """A new reward model (fresh head, gain 1, bias 0) on the HF model at `path` (safetensors only): a causal LM
        loads into its sequence classifier, the LM head left out, `score` newly drawn. So does a causal tether reward
        model (`tether rm` starts a fresh head, `tether.stages.iterate`'s rm_mode=extend); another sequence
        classifier keeps its own head."""
        quiet_transformers()
        path = str(path)
        if os.path.exists(path) or not _looks_like_hub_id(path):
            _check_local_folder(path, "backbone")
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        load = dict(use_safetensors=True, trust_remote_code=trust_remote_code)
        try:
            kind = backbone_kind(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code))
            if os.path.isfile(os.path.join(path, CONFIG_FILE)):
                kind = json.loads(Path(path, CONFIG_FILE).read_text())["kind"]
            if kind == "causal":
                with _expected_missing_head():
                    backbone = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **load)
            else:
                backbone = (AutoModel if kind == "encoder" else AutoModelForSequenceClassification).from_pretrained(
                    path, **load)
        except OSError as e:
            raise TetherError(f"backbone: cannot load {path}: {e}") from None
        except ValueError as e:  # no sequence classifier for this model type
            raise ConfigError(f"backbone: cannot load {path} as a reward model: {e}") from None
        model = cls(backbone, tokenizer, pool=pool, kind=kind, max_length=max_length)
        if kind == "causal":
            init_head(model.head)  # tether's init, not the one transformers drew for the missing `score`
        return model

    @classmethod
    def from_pretrained(cls, path: str | Path, trust_remote_code: bool = False) -> "RewardModel":
        """Load a folder written by `save_pretrained`, or a causal one in the previous layout (safetensors only)."""
        quiet_transformers()
        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise TetherError(f"reward model: {path} has no {CONFIG_FILE}; is it a reward model?")
        _check_local_folder(str(path), "reward model")
        config = json.loads((path / CONFIG_FILE).read_text())
        kind, has_head_file = config["kind"], (path / HEAD_FILE).is_file()
        if kind == "encoder" and not has_head_file:
            raise TetherError(f"reward model: {path} has no {HEAD_FILE} (an encoder reward model's head)")
        previous = kind == "causal" and has_head_file  # an AutoModel body beside the head: no `score` yet
        auto = AutoModel if kind == "encoder" else AutoModelForSequenceClassification
        with _expected_missing_head() if previous else contextlib.nullcontext():
            backbone, info = auto.from_pretrained(str(path), use_safetensors=True, trust_remote_code=trust_remote_code,
                                                  output_loading_info=True, **({"num_labels": 1} if previous else {}))
        missing = sorted(set(info["missing_keys"]) - ({"score.weight"} if previous else set()))
        if missing:
            raise TetherError(f"reward model: {path} lacks the weights {', '.join(missing[:4])}")
        tokenizer = load_tokenizer(str(path), trust_remote_code=trust_remote_code)
        model = cls(backbone, tokenizer, pool=config["pool"], kind=kind, max_length=config["max_length"])
        if has_head_file:
            model._load_head_file(path / HEAD_FILE, previous)
        else:
            model.set_normalisation(config["normalisation"]["gain"], config["normalisation"]["bias"])
        return model

    def _load_head_file(self, file: Path, previous: bool) -> None:
        """Load `HEAD_FILE`. The previous causal layout's head (weight and bias) becomes `score` and the bias moves
        into the normalisation: gain * (w·h + b) + bias = gain * w·h + (bias + gain * b), the same scores."""
        head = load_file(str(file))
        expected = {"head.weight", "head.bias", "gain", "bias"} if previous else self._head_state().keys()
        if head.keys() != expected:
            raise TetherError(f"reward model: {file} holds {sorted(head)}, expected {sorted(expected)}")
        if not previous:
            self.load_state_dict(head, strict=False)  # strict=False: the backbone was loaded already
            return
        with torch.no_grad():
            self.head.weight.copy_(head["head.weight"])
        gain = float(head["gain"])
        self.set_normalisation(gain, float(head["bias"]) + gain * float(head["head.bias"][0]))
