"""Critics for PPO: a value head on the policy, or a separate value model started from the reward model.

Both map (policy hidden (B, T, H) or None, input_ids, attention_mask, position_ids) -> values (B, T).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from tether.errors import ConfigError


class ValueHead(nn.Module):
    """V = w·h + b on the policy's final hidden state, zero-initialised so the first values are 0."""

    reads_policy = True

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden, input_ids, attention_mask, position_ids) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1).float()  # (B, T)


class ValueModel(nn.Module):
    """A separate causal backbone and a linear head read at every position (Stiennon et al. 2020 start the
    critic from the reward model)."""

    reads_policy = False

    def __init__(self, backbone: nn.Module, head: nn.Linear):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, hidden, input_ids, attention_mask, position_ids) -> torch.Tensor:
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids).last_hidden_state  # (B, T, H)
        return self.head(h.to(self.head.weight.dtype)).squeeze(-1).float()  # (B, T)


def critic_from_reward_model(policy, tokenizer, cfg) -> ValueModel:
    """The reward model's body and head, the head given a bias and rescaled by the normalisation (gain, bias), so
    that the first values are on the scale of the scores PPO trains on: V = gain * w·h + bias."""
    from tether.reward import RewardModel, decoder_only

    rm = RewardModel.from_pretrained(cfg.reward_model, trust_remote_code=cfg.trust_remote_code)
    if rm.kind == "encoder" or not decoder_only(rm.classifier.config):
        raise ConfigError(f"value_model: 'separate' needs a causal reward model (a per-token value must not see "
                          f"later tokens), {cfg.reward_model} is {rm.kind!r}")
    if rm.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"value_model: 'separate' needs the policy's tokenizer; {cfg.reward_model} has another")
    weight = rm.head.weight
    head = nn.Linear(weight.size(1), 1, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        head.weight.copy_(rm.gain * weight)
        head.bias.fill_(float(rm.bias) + float(rm.gain) * (float(rm.head.bias) if rm.head.bias is not None else 0.0))
    return ValueModel(rm.body, head)


VALUE_MODELS: dict[str, Callable[..., nn.Module]] = {
    "head": lambda policy, tokenizer, cfg: ValueHead(policy.config.hidden_size),
    "separate": critic_from_reward_model,
}
"""name -> factory(policy, tokenizer, cfg) -> critic module."""
