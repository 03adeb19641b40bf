"""KL divergence to the reference policy: per-token estimators and the KL-coefficient controllers.

Pure torch (the controllers are plain Python). The estimators follow John Schulman's note "Approximating
KL divergence" (http://joschu.net/blog/kl-approx.html); the adaptive controller is the one of Ziegler et
al. 2019, "Fine-Tuning Language Models from Human Preferences", as coded in openai/lm-human-preferences
(`train_policy.py::AdaptiveKLController`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

# -- per-token estimators of KL(π || π_ref) ------------------------------------------------------------
# All three take log-probs of tokens *sampled from π*: logp = log π(x_t), ref_logp = log π_ref(x_t), both
# (B, T), and return (B, T). Each is a single-sample estimate; average it over valid tokens (or sum it over a
# response for a sequence-level KL). They are elementwise, so padding never mixes in: mask afterwards.
# With r = π_ref(x) / π(x), E_π[r] = 1, and
#   k1 = -log r                 unbiased, high variance, negative on about half the samples;
#   k2 = ½ (log r)²             biased (its mean is an f-divergence that matches KL to second order when
#                               π ≈ π_ref), low variance, >= 0;
#   k3 = (r - 1) - log r        unbiased (k1 plus the zero-mean control variate r - 1), low variance, and
#                               >= 0 for every sample because log r <= r - 1.
# Used as a *loss* (differentiated through logp, samples held fixed), on-policy the expected gradients are:
# k1 -> 0 (E_π[∇ log π] = 0); k2 -> ∇ KL(π || π_ref); k3 -> ∇ KL(π_ref || π), the *forward* KL, since
# ∇k3 = (1 - r) ∇log π and E_π[r ∇log π] = Σ_x π_ref(x) ∇log π(x). GRPO puts k3 in its loss (see
# policy_losses.grpo_loss); PPO puts k1 in the reward (advantages.per_token_rewards), never differentiated.


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log π(x) - log π_ref(x). Unbiased, high variance, can be negative. Shapes (B, T) -> (B, T)."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = ½ (log π(x) - log π_ref(x))². Biased, low variance, >= 0. Shapes (B, T) -> (B, T)."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = exp(log π_ref(x) - log π(x)). Unbiased, low variance, >= 0.

    Also the per-token KL of DeepSeekMath (Shao et al. 2024, eq. 4). expm1 keeps precision when r ≈ 1.
    r overflows (inf) once log π_ref - log π exceeds ~88 in float32, i.e. only for a token that π itself
    almost never samples. Shapes (B, T) -> (B, T).
    """
    log_r = ref_logp - logp
    return torch.expm1(log_r) - log_r


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
"""name -> estimator(logp, ref_logp) -> (B, T); all share one signature."""


# -- controllers of the KL coefficient β ----------------------------------------------------------------
@dataclass
class FixedKLController:
    """A constant KL coefficient; `update` does nothing (kept so a stage can treat both kinds alike)."""

    value: float
    """β, the weight of the KL penalty."""

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


@dataclass
class AdaptiveKLController:
    """β steered towards a target KL, as in Ziegler et al. 2019 and lm-human-preferences:

        e_t     = clip(KL_t / KL_target - 1, -0.2, 0.2)
        β_{t+1} = β_t (1 + e_t n_steps / horizon)

    so β grows while the policy is further from the reference than the target and shrinks otherwise, by at
    most a factor 1 ± 0.2 n_steps / horizon per update. n_steps is the number of samples (episodes) in the
    step just taken, so `horizon` is measured in samples, as in the original code.
    """

    value: float
    """β now (the initial coefficient at construction)."""
    target: float
    """KL_target, in nats per response (the unit of the current_kl the caller passes)."""
    horizon: float
    """Samples over which a sustained error e changes β by about a factor exp(e), at most exp(±0.2)
    (10000 in the paper)."""

    def __post_init__(self) -> None:
        if not self.target > 0:
            raise ValueError(f"target must be > 0, got {self.target}")
        if not self.horizon > 0:
            raise ValueError(f"horizon must be > 0, got {self.horizon}")

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.value, self.target, self.horizon = float(state["value"]), float(state["target"]), float(state["horizon"])


KL_CONTROLLERS = {"fixed": FixedKLController, "adaptive": AdaptiveKLController}
"""name -> controller class. Construct with keywords: fixed(value=β), adaptive(value=β, target=..., horizon=...);
both then share update(current_kl, n_steps), .value, state_dict() and load_state_dict()."""
