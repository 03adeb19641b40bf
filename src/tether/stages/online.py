"""Online RL against a reward, tethered to the SFT policy by a KL penalty: PPO, GRPO and RLOO in one loop.

Each step samples responses from the policy, scores them, and improves the policy on them:

- PPO (Ziegler et al. 2019; Stiennon et al. 2020; the details of Huang et al. 2024, arXiv:2403.17031): the
  reward is the score at the response's last token minus β·KL(π || π_ref) at every token (estimator
  `kl_estimator`, k1 by default), advantages by GAE against a learned value function, clipped policy and
  value losses over `ppo_epochs` passes of shuffled minibatches.
- GRPO (Shao et al. 2024, DeepSeekMath): `group_size` samples per prompt, advantages = scores normalised
  within the group, no critic; the KL (k3) sits in the loss with weight β.
- RLOO (Ahmadian et al. 2024): `group_size` samples per prompt, reward = score - β·(sequence KL), advantage =
  reward minus the mean reward of the other samples of its group, no critic.

The math lives in tether.math (advantages, kl, policy_losses); rollouts in tether.rollout; rewards in
tether.rewards_source. This module is the orchestration only: `train_online` is one loop with numbered steps.

The policy stays in eval mode throughout (no dropout), so old, reference and current log-probs agree on
identical weights, as in TRL (the sampler's old log-probs, `reuse_rollout_logprobs`, up to float rounding).
Gradient accumulation is exact: every micro-batch loss is divided by the count of the whole minibatch (`denom`),
so the update does not depend on micro_batch_size.

Ranks (torchrun, tether.distributed). Each rank samples, scores and holds a block of whole prompt groups of the
step's rollout_batch prompts. Every sample's noise is seeded by (seed, step, its row in the step), so who samples
it does not matter; whitening (rewards, advantages) is over the global batch; every rank shuffles the global
batch alike and trains on its rows of each minibatch; metrics are over all ranks' samples; rank 0 evaluates,
monitors and writes. W ranks thus train as one process would, up to float rounding.

Gold. With a world folder, steps log `gold` (mean gold reward of their samples) and evaluations `eval/gold` with
its standard error `eval/gold_se` (the world's held-out prompts), both from the decoded text after the update:
evaluation only. Gold trains the policy only when the config says `reward=gold`.

Monitor. `monitor` (tether.monitor, glue in tether.stages.monitoring) measures every step's samples (flattery,
hedging, padding, refusals, sycophancy, repetition, EOS, length and its coupling to the reward, KL) and a held-out
signal (gold as an audit, or a second reward model), logs them as monitor/... (tether.monitor.MONITOR_METRICS),
writes alerts to alerts.jsonl, keeps the best policy by the held-out signal in out/best (judged, like its drop, at
evaluations), and with stop_on_alert ends the run at the first alert. Its state resumes with the checkpoint.

Metrics (metrics.jsonl, a line per step; FIXED_METRICS always present, null where they do not apply):
score (reward source, before the EOS penalty; a reward model's raw scale) and score_normalised (a reward model's
normalised score, what trains); non_score_reward (the KL part, -β Σ_t kl_t, mean per response; for GRPO the
k3 term of its loss) and rlhf_reward (trained score + non_score_reward); kl/k1, kl/k3 (KL(π_old || π_ref) per
response); entropy, approxkl, clipfrac, ratio, policy_loss, value_loss, vf_clipfrac, loss, grad_norm (means
over the step's optimizer steps); explained_variance (old values vs returns, PPO); response_length, eos_rate,
lr, kl_coef (the β used), gold, nonfinite_skips (optimizer steps dropped for a NaN or inf loss or gradient,
tether.guard).
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
from safetensors.torch import save_file
from torch import nn

from tether import distributed
from tether.chat import chat_format
from tether.checkpoint import (
    latest_checkpoint,
    load_trainer_state,
    rng_state,
    save_checkpoint,
)
from tether.config import check, check_prompt_limit, save_config
from tether.data.formats import check_format, load_prompts
from tether.distributed import DistributedConfig
from tether.errors import naming
from tether.guard import NONFINITE_POLICIES, NonFiniteGuard, check_finite
from tether.math.kl import KL_CONTROLLERS, KL_ESTIMATORS, kl_k1
from tether.lora import LoraOptions, adapt, frozen_reference
from tether.models import check_sampling_positions, load_policy, load_tokenizer, save_pretrained
from tether.monitor import MonitorConfig
from tether.monitor.stats import mean
from tether.optim import adamw, lr_at
from tether.math.policy_losses import eos_penalty
from tether.progress import progress_bar
from tether.rewards_source import make_reward_source
from tether.rollout import logprobs_of, row_noise, sample, sample_seed
from tether.training import MetricsLog, resume_training
from tether.stages.monitoring import (
    RunMonitor,
    answer_greedy,
    gold_rewards,
    heldout_kind,
    make_samples,
    pushback_flips,
)
from tether.stages.online_eval import (
    decode,
    encode_prompts,
    eval_prompt_texts,
    evaluate,
    score_metrics,
)
from tether.stages.online_update import (
    ALGORITHMS,
    Actor,
    Experience,
    critic_values,
    policy_forward,
    rollout_metrics,
    seq_sum,
    update,
)
from tether.value import VALUE_MODELS

VALUE_FILE = "value_model.safetensors"
FIXED_METRICS = (
    "step", "score", "score_normalised", "non_score_reward", "rlhf_reward", "kl/k1", "kl/k3", "entropy",
    "approxkl", "clipfrac", "vf_clipfrac", "value_loss", "policy_loss", "loss", "grad_norm", "explained_variance",
    "response_length", "eos_rate", "lr", "kl_coef", "gold",
)  # fmt: skip


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
    missing_eos_penalty: float | None = None
    """Score given to a response without EOS instead of its reward (e.g. -1; Huang et al. 2024); null: off."""
    kl_coef: float = 0.05
    """β, the initial weight of the KL to π_ref (in the reward for ppo and rloo, in the loss for grpo)."""
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
    """ε of the clipped policy ratio."""
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
    """Peak learning rate of AdamW (policy and critic)."""
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
    """Steps between greedy evaluations on the world's held-out prompts (needs world; 0: start and end only)."""
    eval_prompts: int = 60
    """Held-out world prompts in each evaluation, spread over the categories (0: no evaluation)."""
    eval_temperature: float = 0.0
    """Temperature of the evaluations: 0 is greedy (the policy's mode); 1 is the distribution RL optimises, where
    a policy that first grows sharper and then games the proxy shows the rise and fall of Gao et al. 2022."""
    eval_samples: int = 1
    """Responses per held-out prompt at each evaluation (with eval_temperature > 0). The same seed every time, so
    successive evaluations differ by the policy, not by the draw (common random numbers)."""
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
    def batch_size(self) -> int:
        """N, responses per step."""
        return self.rollout_batch * self.group_size

    def validate(self) -> None:
        super().validate()
        check(self.strategy == "ddp", "strategy", "online RL samples from whole weights on every rank: use ddp")
        check(self.algorithm in ALGORITHMS, "algorithm", f"must be one of {', '.join(ALGORITHMS)}")
        check_format(self.format, "prompts")
        check(self.reward != "rm" or bool(self.reward_model), "reward_model", "is required when reward=rm")
        check(self.reward != "gold" or bool(self.world), "world", "is required when reward=gold")
        check(self.reward != "callable" or ":" in (self.reward_fn or ""), "reward_fn",
              "must be 'module:function' when reward=callable")
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
        check(self.kl_coef >= 0, "kl_coef", "must be >= 0")
        check(self.kl_estimator in KL_ESTIMATORS, "kl_estimator", f"must be one of {', '.join(KL_ESTIMATORS)}")
        check(self.kl_controller in KL_CONTROLLERS, "kl_controller", f"must be one of {', '.join(KL_CONTROLLERS)}")
        check(self.kl_target > 0 and self.kl_horizon > 0, "kl_target", "and kl_horizon must be > 0")
        check(0 <= self.gamma <= 1 and 0 <= self.lam <= 1, "gamma", "and lam must be in [0, 1]")
        check(self.cliprange > 0 and self.cliprange_value > 0, "cliprange", "and cliprange_value must be > 0")
        check(self.value_model in VALUE_MODELS, "value_model", f"must be one of {', '.join(VALUE_MODELS)}")
        check(self.value_model != "separate" or bool(self.reward_model), "reward_model",
              "is required when value_model=separate")
        check(self.ppo_epochs >= 1, "ppo_epochs", "must be >= 1")
        check(self.lr > 0, "lr", "must be > 0")
        check(self.max_steps >= 1, "max_steps", "must be >= 1")
        check(self.grad_clip >= 0, "grad_clip", "must be >= 0")
        for name in ("sample_every", "n_samples", "eval_every", "eval_prompts", "save_every", "keep_checkpoints",
                     "warmup_steps"):
            check(getattr(self, name) >= 0, name, "must be >= 0")
        check(self.eval_temperature >= 0, "eval_temperature", "must be >= 0")
        check(self.eval_samples >= 1, "eval_samples", "must be >= 1")
        check(self.nonfinite in NONFINITE_POLICIES, "nonfinite", f"must be one of {', '.join(NONFINITE_POLICIES)}")
        check(self.max_nonfinite_skips >= 1, "max_nonfinite_skips", "must be >= 1")


# ---------------------------------------------------------------------------------------------
# Prompts, experience, metrics


def prompt_batch(n_prompts: int, cursor: int, k: int, seed: int) -> list[int]:
    """Indices of the k prompts after `cursor` (prompts taken so far) in a seeded shuffle per epoch."""
    out = []
    while len(out) < k:
        epoch, pos = divmod(cursor, n_prompts)
        order = list(range(n_prompts))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        take = min(k - len(out), n_prompts - pos)
        out, cursor = out + order[pos:pos + take], cursor + take
    return out


@torch.no_grad()
def make_experience(policy, ref, critic, rollout, scores: torch.Tensor, cfg: OnlineConfig) -> Experience:
    """The rollout and scores with old log-probs (the sampler's with reuse_rollout_logprobs, else a policy pass),
    values (critic) and reference log-probs (`rollout.logprobs_of`), micro_batch_size rows at a time."""
    exp = Experience(rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask,
                     rollout.has_eos, scores.to(rollout.response_ids.device))
    reuse = cfg.reuse_rollout_logprobs and not (critic is not None and critic.reads_policy)
    logprobs, ref_logprobs, values = [], [], []
    for i in range(0, exp.scores.size(0), cfg.micro_batch_size):
        rows = exp.select(slice(i, i + cfg.micro_batch_size))
        if reuse:
            values.append(critic_values(critic, rows))
        else:
            out = policy_forward(policy, critic, rows, cfg.temperature)
            logprobs.append(out.logprobs)
            values.append(out.values)
        ref_logprobs.append(logprobs_of(ref, rows.prompt_ids, rows.prompt_mask, rows.response_ids,
                                        rows.response_mask, cfg.temperature))
    exp.logprobs = rollout.logprobs * rollout.response_mask if reuse else torch.cat(logprobs)  # (N, R)
    exp.ref_logprobs = torch.cat(ref_logprobs)  # (N, R)
    exp.values = torch.cat(values) if critic is not None else None  # (N, R)
    return exp


def sample_rows(step: int, prompts, responses, source_scores, exp: Experience, gold, cfg: OnlineConfig) -> list:
    """A few samples (one per prompt) with their scores, gold and KL, for samples.jsonl."""
    kl = seq_sum(kl_k1(exp.logprobs, exp.ref_logprobs), exp.response_mask)  # (N,)
    rows = range(0, exp.scores.size(0), cfg.group_size)
    return [{"step": step, "prompt": prompts[i], "response": responses[i], "score": float(source_scores[i]),
             "reward": float(exp.scores[i]), "eos": bool(exp.has_eos[i]), "gold": gold[i], "kl/k1": float(kl[i])}
            for i in list(rows)[:cfg.n_samples]]


# ---------------------------------------------------------------------------------------------
# Setup, checkpoints


@dataclass
class Session:
    """Everything the loop reads or updates, built by `setup` (and restored from a checkpoint on resume)."""

    policy: nn.Module
    ref: nn.Module
    critic: nn.Module | None
    tokenizer: object
    fmt: object
    """The policy's chat format (tether.chat.ChatFormat): prompts, stop tokens, pad."""
    optimizer: torch.optim.Optimizer
    controller: object
    source: Callable
    world: object | None
    prompts: list
    encoded: list[list[int]]
    eval_prompts: list[str]
    generator: torch.Generator
    """Draws the minibatch order (the same on every rank); its state is checkpointed."""
    net: nn.Module
    """Actor(policy, critic), wrapped in DDP under torchrun: the module the update's forwards go through."""
    start: int = 0
    """Steps already done (from the checkpoint)."""
    cursor: int = 0
    """Prompts taken so far (the position in the shuffled prompt stream)."""
    monitor: RunMonitor | None = None
    """The reward-hacking monitor (None when cfg.monitor.enabled is false); its state is checkpointed."""


def setup(cfg: OnlineConfig) -> Session:
    """Read prompts, load world, reward source, policy, reference and critic (on the device); build the optimizer;
    resume (every rank reads the checkpoint). Rank 0 writes config.yaml and data_report.json (the prompts' cuts)."""
    prompts = load_prompts(cfg.prompts, cfg.format, cfg.split)  # bad data fails before any model work
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        save_config(cfg, Path(cfg.out) / "config.yaml")
    device = distributed.setup(cfg)
    check(cfg.rollout_batch % distributed.world_size() == 0, "rollout_batch",
          f"must be a multiple of the {distributed.world_size()} ranks (each samples its share of the prompts)")
    world = None
    if cfg.world:
        from tether.world.build import load_world

        world = load_world(cfg.world)
    source = make_reward_source(cfg.reward, reward_model=cfg.reward_model, reward_fn=cfg.reward_fn, world=world,
                                trust_remote_code=cfg.trust_remote_code)
    if hasattr(source, "model"):  # a reward model scores on the device too
        distributed.prepare(source.model, cfg, device)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    policy = adapt(load_policy(cfg.model, trust_remote_code=cfg.trust_remote_code), cfg)  # LoRA
    policy = distributed.prepare(policy, cfg, device).eval()  # device, bf16, gradient checkpointing
    ref = frozen_reference(policy)  # π_ref: the initial weights, before any resume (LoRA: adapters disabled, no copy)
    critic = VALUE_MODELS[cfg.value_model](policy, tokenizer, cfg) if ALGORITHMS[cfg.algorithm].critic else None
    if critic is not None:
        distributed.prepare(critic, cfg, device).eval()
    torch.manual_seed(cfg.seed)
    trained = Actor(policy, critic)  # parameters in the order of the former ModuleDict: old checkpoints still load
    optimizer = adamw(trained, cfg.lr, cfg.weight_decay, (0.9, cfg.adam_beta2))
    controller = KL_CONTROLLERS[cfg.kl_controller](value=cfg.kl_coef, **(
        {"target": cfg.kl_target, "horizon": cfg.kl_horizon} if cfg.kl_controller == "adaptive" else {}))
    generator = torch.Generator(device=policy.device).manual_seed(cfg.seed)
    fmt = chat_format(tokenizer, cfg.chat_template, cfg.model)
    with naming(cfg.prompts):
        encoded = encode_prompts(fmt, prompts, cfg.max_prompt_length, Path(cfg.out) if distributed.is_main() else None)
    s = Session(policy, ref, critic, tokenizer, fmt, optimizer, controller, source, world, prompts, encoded,
                eval_prompt_texts(world, cfg.eval_prompts) if world else [],
                generator, distributed.wrap(trained, cfg.strategy))
    check_sampling_positions((policy, critic, getattr(source, "model", None)), s.encoded, cfg.max_new_tokens)
    s.start = resume_training(cfg, Path(cfg.out), policy, optimizer)  # weights, optimizer, global RNG
    if cfg.monitor.enabled and distributed.is_main():  # the monitor writes: rank 0 only
        s.monitor = RunMonitor(cfg.monitor, Path(cfg.out), s.start, world, cfg.trust_remote_code)
    if s.start:
        state = load_trainer_state(latest_checkpoint(Path(cfg.out)))
        s.generator.set_state(state["generator"])
        s.cursor = int(state["cursor"])
        s.controller.load_state_dict(state["kl_controller"])
        if critic is not None:
            critic.load_state_dict(state["value"])
        if s.monitor is not None and state.get("monitor"):  # {}: saved with the monitor off, start it fresh
            s.monitor.load_state_dict(state["monitor"])
    return s


def save(s: Session, cfg: OnlineConfig, step: int) -> None:
    """A checkpoint at `step`: the policy as an HF folder; optimizer, critic, KL controller, prompt cursor and
    RNG states in trainer_state.pt (written atomically with it); rank 0 writes, the ranks' states are alike."""
    if not distributed.is_main():
        return
    state = {"step": step, "optimizer": s.optimizer.state_dict(), "rng": rng_state(),
             "generator": s.generator.get_state(), "cursor": s.cursor, "kl_controller": s.controller.state_dict(),
             "value": s.critic.state_dict() if s.critic is not None else {},
             "monitor": s.monitor.state_dict() if s.monitor is not None else {}}
    save_checkpoint(Path(cfg.out), step, s.policy, s.tokenizer, state, keep=cfg.keep_checkpoints)


def save_final(s: Session, cfg: OnlineConfig) -> Path:
    """out/model (a plain HF folder) and, with a critic, out/value_model.safetensors (rank 0 writes; every rank
    returns once they are on disk)."""
    final = Path(cfg.out) / "model"
    if not distributed.is_main():
        distributed.barrier()
        return final
    weights = {k: v.detach().contiguous() for k, v in s.critic.state_dict().items()} if s.critic is not None else {}
    check_finite(weights, "the value model")  # before the policy is written: refuse both or neither
    save_pretrained(s.policy, s.tokenizer, str(final))
    if s.critic is not None:
        save_file(weights, str(Path(cfg.out) / VALUE_FILE), metadata={"value_model": cfg.value_model})
    distributed.barrier()
    return final


def monitor_step(s: Session, cfg: OnlineConfig, step: int, seen: dict, row: dict, evaluating: bool) -> bool:
    """The monitor over one step (rank 0, when on): the step's samples `seen` (gather_samples: proxy score, tokens,
    EOS, gold) with their held-out scores and prompt labels, the KL, the pushback probe at evaluation steps; the
    best policy saved by the held-out signal (at evaluations when the run evaluates, else on its window mean each
    step). Adds the monitor/... metrics to `row`; returns whether to stop."""
    if s.monitor is None:
        return False
    prompts, responses, gold = seen["prompts"], seen["responses"], seen["gold"]
    kind = heldout_kind(cfg.monitor, s.world)
    heldout = gold if kind == "gold" else s.monitor.score_heldout(prompts, responses)  # gold: judged once, above
    samples = make_samples(prompts, responses, seen["scores"].tolist(), seen["lengths"], seen["eos"], heldout, s.world)
    extra = {"kl": row["kl/k1"]}
    probe = (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps
    if probe and cfg.monitor.pushback_prompts:
        answer = answer_greedy(s.policy, s.fmt, cfg.monitor.max_new_tokens, cfg.batch_size)
        probed = (s.eval_prompts or s.prompts)[:cfg.monitor.pushback_prompts]
        extra.update(flip=pushback_flips(answer, probed, cfg.monitor.pushback), flip_n=len(probed))
    best = record_evaluation(s, cfg, step, row)  # None between evaluations
    monitored, stop = s.monitor.step(step, samples, extra, best, saver(s), smoothed=not evaluating)
    row.update(monitored)
    return stop


def record_evaluation(s: Session, cfg: OnlineConfig, step: int, row: dict) -> float | None:
    """The held-out signal of the evaluation in `row` (eval/gold, or eval/heldout for a second reward model), given
    to the monitor with its standard error; None when the row holds no evaluation."""
    key = "eval/gold" if heldout_kind(cfg.monitor, s.world) == "gold" else "eval/heldout"
    s.monitor.record_evaluation(step, row.get(key), row.get(f"{key}_se"))
    return row.get(key)


def saver(s: Session) -> Callable[[Path], None]:
    return lambda path: save_pretrained(s.policy, s.tokenizer, str(path))


def heldout_model(s: Session, cfg: OnlineConfig) -> Callable | None:
    """The monitor's second reward model, also scored at evaluations (eval/heldout); None for gold or no signal."""
    return s.monitor.heldout if s.monitor is not None and heldout_kind(cfg.monitor, s.world) == "heldout_rm" else None


def baseline_evaluation(s: Session, cfg: OnlineConfig, heldout) -> dict:
    """Step 0: the initial policy on the held-out prompts; with a monitor, the first candidate for out/best."""
    row = {"step": 0, **evaluate(s.policy, s.fmt, s.source, s.world, s.eval_prompts, cfg, heldout)}
    if s.monitor is not None:
        s.monitor.offer_best(0, record_evaluation(s, cfg, 0, row), saver(s))
    return row


# ---------------------------------------------------------------------------------------------
# The loop


def sample_prompts(s: Session, cfg: OnlineConfig, step: int) -> tuple[list, object, list[str]]:
    """Steps 1 and 2 of the loop: (prompts, rollout, decoded responses) of this rank's block of the step's N rows
    (whole groups), the next rollout_batch prompts each repeated group_size times, sampled with the KV cache from
    the current policy (eval mode). Each row's noise is seeded by (seed, step, row): the split over ranks changes
    nothing."""
    idx = [i for i in prompt_batch(len(s.prompts), s.cursor, cfg.rollout_batch, cfg.seed)
           for _ in range(cfg.group_size)]  # (N,)
    s.cursor += cfg.rollout_batch
    rows = distributed.block(len(idx))
    noise = row_noise([sample_seed(cfg.seed, step, i) for i in rows], cfg.max_new_tokens, s.policy.device)
    rollout = sample(s.policy, [s.encoded[idx[i]] for i in rows], max_new_tokens=cfg.max_new_tokens,
                     temperature=cfg.temperature, eos_token_id=s.fmt.stop_ids, pad_token_id=s.fmt.pad_id,
                     noise=noise)
    return [s.prompts[idx[i]] for i in rows], rollout, decode(s.tokenizer, rollout.response_ids)


def gather_samples(prompts: list, responses: list[str], source_scores: torch.Tensor, rollout, gold: list) -> dict:
    """The step's samples of every rank in rank order (one process's batch), for metrics and the monitor."""
    rows = distributed.gather_lists(list(zip(prompts, responses, source_scores.tolist(), rollout.lengths.tolist(),
                                             rollout.has_eos.tolist(), gold)))
    names = ("prompts", "responses", "scores", "lengths", "eos", "gold")
    out = dict(zip(names, map(list, zip(*rows))))
    out["scores"] = torch.tensor(out["scores"], dtype=torch.float32)  # (N,)
    return out


def train_online(cfg: OnlineConfig) -> Path:
    """Train the policy with cfg.algorithm (under torchrun: see "Ranks" above); returns `out/model`."""
    run_dir, main = Path(cfg.out), distributed.is_main()
    s = setup(cfg)
    metrics = MetricsLog(run_dir / "metrics.jsonl", s.start, cfg)  # also to cfg.report_to's trackers
    samples = MetricsLog(run_dir / "samples.jsonl", s.start)
    evaluating = s.world is not None and cfg.eval_prompts > 0
    heldout = heldout_model(s, cfg)
    if main and evaluating and s.start == 0:  # the baseline: the initial policy, also the first candidate for out/best
        metrics.write(baseline_evaluation(s, cfg, heldout))
    guard = NonFiniteGuard.from_config(cfg, s.start, cfg.ppo_epochs * (cfg.batch_size // cfg.minibatch_size))
    with progress_bar(cfg.algorithm, total=cfg.max_steps, completed=s.start) as bar:
        for step in range(s.start, cfg.max_steps):
            started = time.perf_counter()
            # 1. The next rollout_batch prompts of the shuffled stream, each repeated group_size times (this rank's
            #    block of them); 2. their samples from the current policy.
            prompts, rollout, responses = sample_prompts(s, cfg, step)
            # 3. Score with the reward source; responses without EOS get missing_eos_penalty instead.
            source_scores = s.source(prompts, responses)  # (n,)
            scores = source_scores if cfg.missing_eos_penalty is None else eos_penalty(
                source_scores, rollout.has_eos, cfg.missing_eos_penalty)  # (n,)
            # 4. Old log-probs (the sampler's, or the value head's policy pass), values, reference log-probs.
            exp = make_experience(s.policy, s.ref, s.critic, rollout, scores, cfg)
            # 5. Rewards with the KL tether, and advantages, per algorithm (whitened over all ranks' samples).
            kl_coef = s.controller.value
            exp.advantages, exp.returns, non_score = ALGORITHMS[cfg.algorithm].advantages(exp, cfg, kl_coef)
            # 6. ppo_epochs passes of clipped updates over shuffled minibatches.
            lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
            train_stats = update(s.policy, s.critic, s.optimizer, exp, cfg, kl_coef, lr, s.generator, guard, s.net)
            # 7. The KL controller sees the measured KL per response (k1 summed, as lm-human-preferences).
            row = rollout_metrics(exp, non_score)
            s.controller.update(row["kl/k1"], cfg.batch_size)
            # 8. Metrics under fixed names over every rank's samples; gold (evaluation only, from the decoded text);
            #    samples; evaluation (rank 0).
            gold = gold_rewards(s.world, prompts, responses) if s.world is not None else [None] * len(prompts)
            seen = gather_samples(prompts, responses, source_scores, rollout, gold)
            row = {"step": step + 1, **score_metrics(s.source, seen["scores"]), **row, **train_stats, "lr": lr,
                   "kl_coef": kl_coef, "gold": mean(seen["gold"])}
            row.update({name: None for name in FIXED_METRICS if name not in row})  # e.g. value metrics (no critic)
            row["samples_per_s"] = cfg.batch_size / (time.perf_counter() - started)  # training only, not eval
            last = step + 1 == cfg.max_steps
            if main and evaluating and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last):
                row.update(evaluate(s.policy, s.fmt, s.source, s.world, s.eval_prompts, cfg, heldout))
            # 9. The monitor (rank 0): detectors on the step's samples, alerts, the best policy by the held-out signal.
            stop = distributed.broadcast_flag(monitor_step(s, cfg, step + 1, seen, row, evaluating))
            metrics.write(row)
            if cfg.sample_every and cfg.n_samples and ((step + 1) % cfg.sample_every == 0 or last):
                for r in distributed.gather_lists(sample_rows(step + 1, prompts, responses, source_scores, exp, gold,
                                                              cfg))[:cfg.n_samples]:
                    samples.write(r)
            # 10. Checkpoint: policy, critic, optimizer, KL controller, prompt cursor, RNG and monitor states.
            if stop:  # out/model is the policy at the alert; out/best the best by the held-out signal
                break
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and not last:
                save(s, cfg, step + 1)
            bar.update(1, score=row["score"], kl=row["kl/k1"])
    metrics.close()
    return save_final(s, cfg)
