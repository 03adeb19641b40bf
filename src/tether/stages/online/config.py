"""The settings of `tether ppo`, `tether grpo` and `tether rloo` (tether.stages.online)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from tether.config import check, check_prompt_limit
from tether.data.formats import check_format
from tether.distributed import DistributedConfig
from tether.guard import NONFINITE_POLICIES
from tether.lora import LoraOptions
from tether.math.advantages import REWARD_SCALES
from tether.math.kl import KL_CONTROLLERS, KL_ESTIMATORS
from tether.math.policy_losses import GRPO_LOSS_TYPES
from tether.monitor import MonitorConfig
from tether.value import VALUE_MODELS

RATIOS = ("sequence", "token")
"""Importance ratios of rloo (`OnlineConfig.ratio`)."""
ROLLOUT_CACHES = {"dynamic": ("dynamic", False), "static": ("static", False), "compiled": ("static", True)}
"""`OnlineConfig.rollout_cache` -> `sample`'s (cache, compile)."""
ALGORITHM_NAMES = ("ppo", "grpo", "rloo")
"""The keys of `algorithms.ALGORITHMS` (a test checks they agree), named here so that the settings need not import
the algorithms, which read them."""


@dataclass
class OnlineConfig(DistributedConfig):
    """Online RL of a policy against a reward with a KL tether to the initial policy (PPO, GRPO or RLOO)."""

    RENAMED: ClassVar[dict[str, str]] = {"policy": "model"}
    model: str = "runs/sft/model"
    """HF folder of the initial policy (with its tokenizer); its frozen copy is the reference π_ref."""
    prompts: str = "runs/world/prompts.jsonl"
    """Training prompts, rows {"prompt": str or messages}, or the prompts of TRL, HH-RLHF or UltraFeedback data
    (each distinct prompt once); JSONL, Parquet, Arrow or a save_to_disk folder; a seeded shuffle per epoch."""
    format: str = "auto"
    """Format of prompts: auto (told from the first row's keys) or a name from `tether data --help`:
    prompts, hh, trl, ultrafeedback_binarized, ultrafeedback, ..."""
    split: str | None = None
    """Split of prompts when it is a `datasets` save_to_disk DatasetDict folder (e.g. train_prefs);
    None for a file."""
    chat_template: str = ""
    """How prompts are formatted (tether.chat): "" the tokenizer's own template, a built-in name (chatml, llama3, gemma,
    zephyr, hh, tether), a .jinja file, or "none" (plain text)."""
    max_prompt_length: int | None = None
    """Longest prompt in tokens; longer ones drop earlier turns, then tokens from their start (None: no limit)."""
    reward: Literal["rm", "gold", "callable"] = "rm"
    """Reward source (tether.rewards_source): a reward model, the world's gold reward, or a Python callable."""
    reward_model: str | None = "runs/rm/model"
    """Reward-model folder (`tether rm`): the reward for reward=rm, the critic's start for value_model=separate."""
    reward_ensemble: Literal["single", "mean", "min", "uwo"] = "single"
    """With an ensemble reward model (`tether rm ensemble=k`), the reward trained on, from the members' normalised
    scores R_i (tether.math.ensemble; Coste et al. 2023): single, member 0 alone (the plain reward model; the others
    only measure their disagreement for the monitor); mean, (1/k) Σ R_i; min, the worst case min_i R_i; uwo, the
    uncertainty-weighted mean (1/k) Σ R_i - uwo_lambda * (1/k) Σ (R_i - R̄)²."""
    uwo_lambda: float = 0.5
    """λ of reward_ensemble=uwo: the weight of the members' variance (in squared normalised units) subtracted from
    their mean."""
    reward_fn: str | None = None
    """"module:function" taking (prompts, responses) and returning N floats, for reward=callable."""
    world: str | None = None
    """World folder: the reward for reward=gold; otherwise gold is logged for evaluation only, never trained on."""
    algorithm: Literal["ppo", "grpo", "rloo"] = "ppo"
    """ppo (GAE with a critic, KL in the reward), grpo (group-normalised, KL in the loss) or rloo (leave-one-out)."""
    rollout_batch: int = 32
    """Prompts per step (over all ranks, a multiple of their number); the step samples rollout_batch x group_size
    responses."""
    group_size: int = 1
    """Responses sampled per prompt, side by side; >= 2 for grpo and rloo (their baseline is the group)."""
    max_new_tokens: int = 48
    """Longest response in tokens; a response cut here has no EOS (see missing_eos_penalty)."""
    temperature: float = 1.0
    """Sampling temperature; log-probs are those of softmax(logits / temperature) everywhere."""
    rollout_cache: Literal["dynamic", "static", "compiled"] = "dynamic"
    """KV cache of the training rollouts (tether.rollout.sample): dynamic, HF's DynamicCache; static, HF's
    StaticCache with fixed-shape decoding steps (the same tokens); compiled, static with the steps compiled by
    torch.compile(mode="reduce-overhead", fullgraph=True), CUDA graphs on a GPU (benchmarks/gpu_rollout.py). On a
    CPU compiled works but has no CUDA graphs: a minute or more of compiling, no faster at tiny sizes. Evaluation
    samples keep the dynamic cache."""
    missing_eos_penalty: float | None = None
    """Subtracted from the score of a response without EOS (TRL's name and meaning; >= 0, e.g. 1.0); null: off."""
    missing_eos_score: float | None = None
    """The score given to a response without EOS instead of its reward (e.g. -1; Huang et al. 2024, TRL's former
    penalty_reward_value); null: off. Not with missing_eos_penalty."""
    kl_coef: float = 0.05
    """β, the initial weight of the KL to π_ref (in the reward for ppo and rloo, in the loss for grpo). 0 (with the
    fixed controller) drops π_ref altogether: no reference copy is made or run, and the kl/... metrics are null."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """Per-token KL estimator in the reward of ppo and rloo (tether.math.kl); grpo's loss always uses k3."""
    kl_controller: Literal["fixed", "adaptive"] = "fixed"
    """fixed β, or adaptive β steered to kl_target (Ziegler et al. 2019)."""
    kl_target: float = 6.0
    """Target KL per response in nats (k1 summed over the response) for the adaptive controller."""
    kl_horizon: float = 10000.0
    """Adaptive controller horizon, in samples."""
    gamma: float = 1.0
    """Discount of GAE (ppo)."""
    lam: float = 0.95
    """λ of GAE (ppo)."""
    whiten_rewards: bool = False
    """Scale the per-token rewards to unit variance over the batch, mean kept (ppo)."""
    whiten_advantages: bool = True
    """Whiten advantages over the batch: over valid tokens (ppo) or over responses (grpo, rloo)."""
    cliprange: float = 0.2
    """ε (ε_low) of the clipped policy ratio: clip(ρ, 1 - cliprange, 1 + epsilon_high)."""
    epsilon_high: float | None = None
    """Upper clip ε_high of the policy ratio (DAPO's clip-higher, Yu et al. 2025: 0.28 with cliprange 0.2), for every
    algorithm; null: cliprange (symmetric). clipfrac/low and clipfrac/high log how often each end clips."""
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "grpo"
    """How grpo adds up its per-token losses over an optimizer step (TRL's names): grpo, a token mean per response
    then a mean over responses (Shao et al. 2024); bnpo, a token mean over each micro-batch, averaged over them
    (TRL's per-device batch: depends on micro_batch_size and the ranks); dr_grpo, the token sum / (minibatch_size x
    max_new_tokens) (Liu et al. 2025); dapo, the token sum / the tokens of the whole minibatch (Yu et al. 2025)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """grpo: divide the group-centred scores by the std of their group (the paper), of the whole batch, or not at all
    (Dr. GRPO); batch and none need whiten_advantages=false, which would rescale them again."""
    ratio: Literal["sequence", "token"] | None = None
    """rloo's importance ratio: sequence, one per response, exp(Σ_t log π/π_old), clipped once (Ahmadian et al.
    2024); token, one per token as PPO. null: sequence for rloo; ppo and grpo always use token."""
    cliprange_value: float = 0.2
    """Clip range of the value update around the old values (ppo)."""
    vf_coef: float = 0.1
    """Weight of the value loss (ppo)."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (0: entropy only logged)."""
    value_model: Literal["head", "separate"] = "head"
    """Critic of ppo: "head", a zero-initialised linear head on the policy's last hidden state; "separate", a
    model initialised from the reward model (backbone and head, per-token values)."""
    reuse_rollout_logprobs: bool = True
    """Take the old log-probs π_old from the sampler (the tempered log-softmax of its KV-cached forward, equal to
    a forward pass up to float rounding: ~1e-6 in fp32, more under bf16) instead of a second pass over
    prompt + response; the value head, which reads that pass's hidden states, still makes it."""
    ppo_epochs: int = 4
    """Passes over each step's samples."""
    minibatch_size: int = 16
    """Samples per optimizer step; divides rollout_batch x group_size."""
    micro_batch_size: int = 8
    """Samples per forward pass; divides minibatch_size (exact gradient accumulation)."""
    lr: float = 1e-5
    """Peak learning rate of AdamW (the policy, and the critic unless value_lr is set)."""
    value_lr: float | None = None
    """Peak learning rate of the critic's own parameters (ppo: the value head, or the whole separate value model),
    on the same schedule as lr; None: lr. As OpenRLHF's critic_learning_rate; the policy trunk under a value head
    stays at lr."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    min_lr_ratio: float = 1.0
    """Final learning rate of the cosine decay as a fraction of lr (1: constant after warmup)."""
    weight_decay: float = 0.0
    """AdamW weight decay on weight matrices."""
    adam_beta2: float = 0.999
    """AdamW beta2 (beta1 is 0.9)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm (policy and critic together) to this value (0: no clipping)."""
    max_steps: int = 200
    """Steps to run (each: one rollout batch, then ppo_epochs x minibatches optimizer steps)."""
    seed: int = 0
    """Seed of prompt order, sampling and minibatch order."""
    sample_every: int = 10
    """Steps between writing samples (prompt, response, score, gold, KL) to samples.jsonl (0: never)."""
    n_samples: int = 4
    """Samples written each time (one per prompt)."""
    eval_every: int = 50
    """Steps between evaluations on held-out prompts (the world's, or eval_data's; 0: start and end only)."""
    eval_prompts: int = 60
    """Held-out prompts in each evaluation: the world's, spread over its categories, or the first of eval_data
    (0: no evaluation)."""
    eval_data: str | None = None
    """Your own held-out prompts file (read as `prompts` is, with `format`), evaluated without a world: the proxy's
    score, KL, length and EOS rate, and with monitor.heldout_rm a second reward model's score (eval/heldout), the
    held-out signal of the monitor and the report. Not with world (its held-out prompts are used)."""
    eval_temperature: float = 0.0
    """Temperature of the evaluations: 0 is greedy (the policy's mode); 1 is the distribution RL optimises, where
    a policy that first grows sharper and then games the proxy shows the rise and fall of Gao et al. 2022."""
    eval_samples: int = 1
    """Responses per held-out prompt at each evaluation (with eval_temperature > 0). Each response row has the same
    sampling noise every time (`tether.rollout.row_noise`), so successive evaluations differ by the policy, not by
    the draw (common random numbers), and their difference has a paired standard error (eval_gold.jsonl)."""
    eval_batch_size: int = 0
    """Rows sampled together in an evaluation (0: rollout_batch x group_size). Finished rows leave the batch, so a
    batch of every row (eval_prompts x eval_samples) runs as many decoding steps as its longest response, and far
    faster on a CPU or GPU with room for it; the reference log-probs of eval/kl still go by rollout_batch x
    group_size rows."""
    save_every: int = 50
    """Steps between checkpoints (0: only the final model)."""
    keep_checkpoints: int = 2
    """Complete checkpoints kept, newest first (0: keep all, e.g. to evaluate a run's whole trajectory)."""
    trust_remote_code: bool = False
    """Allow model folders' own Python code to run (only for models you trust)."""
    out: str = "runs/ppo"
    """Run folder: metrics.jsonl, samples.jsonl, config.yaml, checkpoints/, model/, value_model.safetensors."""
    resume: bool = False
    """Continue from the newest complete checkpoint in `out`."""
    nonfinite: Literal["skip", "halt"] = "skip"
    """On a NaN or inf loss or gradient norm in an optimizer step: "skip" drops that update (gradients zeroed, no
    optimizer step, AdamW moments untouched) and counts it as `nonfinite_skips` in the step's metrics; the step's
    other minibatches still train and the learning rate moves on with the step number. "halt" raises at once.
    Either way the weights and the newest complete checkpoint stay finite."""
    max_nonfinite_skips: int = 10
    """Halt anyway after this many consecutive skipped optimizer steps: a run that keeps diverging should stop,
    not burn hours producing nothing."""
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """The reward-hacking monitor (tether.monitor): detectors on every step's samples, alerts, best checkpoint by a
    held-out signal (gold only as an audit: it never trains unless reward=gold), optional stop on alert."""
    lora: LoraOptions = field(default_factory=LoraOptions)
    """LoRA on the policy (tether.lora): lora.r > 0 trains low-rank adapters on the frozen policy, and π_ref is
    the policy with its adapters disabled; the critic (value head or separate value model) trains fully."""

    @property
    def importance_ratio(self) -> str:
        """The ratio the policy loss clips: `ratio`, or its default for the algorithm."""
        return self.ratio or ("sequence" if self.algorithm == "rloo" else "token")

    @property
    def uses_reference(self) -> bool:
        """Whether π_ref is needed: not when β = 0 for good (kl_coef 0 with the fixed controller)."""
        return self.kl_coef != 0 or self.kl_controller != "fixed"

    @property
    def batch_size(self) -> int:
        """N, responses per step."""
        return self.rollout_batch * self.group_size

    def validate(self) -> None:
        super().validate()
        check(self.strategy == "ddp", "strategy", "online RL samples from whole weights on every rank: use ddp")
        check(self.algorithm in ALGORITHM_NAMES, "algorithm", f"must be one of {', '.join(ALGORITHM_NAMES)}")
        check_format(self.format, "prompts")
        self.validate_reward()
        check(self.rollout_batch > 0, "rollout_batch", "must be > 0")
        check(self.group_size >= (1 if self.algorithm == "ppo" else 2), "group_size",
              f"must be >= {1 if self.algorithm == 'ppo' else 2} for {self.algorithm}")
        check(0 < self.minibatch_size <= self.batch_size and self.batch_size % self.minibatch_size == 0,
              "minibatch_size", f"must divide rollout_batch x group_size ({self.batch_size})")
        check(0 < self.micro_batch_size <= self.minibatch_size and self.minibatch_size % self.micro_batch_size == 0,
              "micro_batch_size", f"must divide minibatch_size ({self.minibatch_size})")
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        check_prompt_limit(self.max_prompt_length)
        check(self.temperature > 0, "temperature", "must be > 0 (RL samples)")
        check(self.rollout_cache in ROLLOUT_CACHES, "rollout_cache", f"must be one of {', '.join(ROLLOUT_CACHES)}")
        check(self.kl_coef >= 0, "kl_coef", "must be >= 0")
        check(self.kl_estimator in KL_ESTIMATORS, "kl_estimator", f"must be one of {', '.join(KL_ESTIMATORS)}")
        check(self.kl_controller in KL_CONTROLLERS, "kl_controller", f"must be one of {', '.join(KL_CONTROLLERS)}")
        check(self.kl_target > 0 and self.kl_horizon > 0, "kl_target", "and kl_horizon must be > 0")
        check(0 <= self.gamma <= 1 and 0 <= self.lam <= 1, "gamma", "and lam must be in [0, 1]")
        check(self.cliprange > 0 and self.cliprange_value > 0, "cliprange", "and cliprange_value must be > 0")
        check(self.kl_coef > 0 or self.kl_controller == "fixed", "kl_coef",
              "must be > 0 with kl_controller=adaptive (it scales β, so 0 would stay 0)")
        check(self.epsilon_high is None or self.epsilon_high > 0, "epsilon_high", "must be > 0 (or null: cliprange)")
        check(self.loss_type in GRPO_LOSS_TYPES, "loss_type", f"must be one of {', '.join(GRPO_LOSS_TYPES)}")
        check(self.loss_type == "grpo" or self.algorithm == "grpo", "loss_type", "applies to algorithm=grpo only")
        check(self.scale_rewards in REWARD_SCALES, "scale_rewards", f"must be one of {', '.join(REWARD_SCALES)}")
        check(self.scale_rewards == "group" or self.algorithm == "grpo", "scale_rewards",
              "applies to algorithm=grpo only")
        check(self.scale_rewards == "group" or not self.whiten_advantages, "whiten_advantages",
              f"must be false with scale_rewards={self.scale_rewards} (whitening would rescale the advantages)")
        check(self.ratio is None or self.ratio in RATIOS, "ratio", f"must be one of {', '.join(RATIOS)}")
        check(self.ratio != "sequence" or self.algorithm == "rloo", "ratio",
              "sequence applies to algorithm=rloo only (ppo and grpo clip per token)")
        check(self.value_model in VALUE_MODELS, "value_model", f"must be one of {', '.join(VALUE_MODELS)}")
        check(self.value_model != "separate" or bool(self.reward_model), "reward_model",
              "is required when value_model=separate")
        check(self.ppo_epochs >= 1, "ppo_epochs", "must be >= 1")
        check(self.lr > 0, "lr", "must be > 0")
        check(self.value_lr is None or self.value_lr > 0, "value_lr", "must be > 0 (or null: lr)")
        check(self.value_lr is None or self.algorithm == "ppo", "value_lr",
              "applies to algorithm=ppo only (the critic)")
        check(self.max_steps >= 1, "max_steps", "must be >= 1")
        check(self.grad_clip >= 0, "grad_clip", "must be >= 0")
        for name in ("sample_every", "n_samples", "eval_every", "eval_prompts", "eval_batch_size", "save_every",
                     "keep_checkpoints", "warmup_steps"):
            check(getattr(self, name) >= 0, name, "must be >= 0")
        check(self.eval_temperature >= 0, "eval_temperature", "must be >= 0")
        check(not (self.eval_data and self.world), "eval_data", "the world's held-out prompts are evaluated when "
              "world is set; give one or the other")
        check(self.eval_samples >= 1, "eval_samples", "must be >= 1")
        check(self.nonfinite in NONFINITE_POLICIES, "nonfinite", f"must be one of {', '.join(NONFINITE_POLICIES)}")
        check(self.max_nonfinite_skips >= 1, "max_nonfinite_skips", "must be >= 1")

    def validate_reward(self) -> None:
        """The reward source's settings and what is done to its scores."""
        check(self.reward != "rm" or bool(self.reward_model), "reward_model", "is required when reward=rm")
        check(self.reward != "gold" or bool(self.world), "world", "is required when reward=gold")
        check(self.reward != "callable" or ":" in (self.reward_fn or ""), "reward_fn",
              "must be 'module:function' when reward=callable")
        check(self.reward_ensemble in ("single", "mean", "min", "uwo"), "reward_ensemble",
              "must be one of single, mean, min, uwo")
        check(self.uwo_lambda >= 0, "uwo_lambda", "must be >= 0")
        check(self.missing_eos_penalty is None or self.missing_eos_penalty >= 0, "missing_eos_penalty",
              "is subtracted from the score (TRL's meaning): must be >= 0; for a fixed score use missing_eos_score")
        check(self.missing_eos_penalty is None or self.missing_eos_score is None, "missing_eos_score",
              "set either missing_eos_penalty (subtracted) or missing_eos_score (given instead), not both")
