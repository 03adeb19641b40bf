"""Online RL against a reward, tethered to the initial policy by a KL penalty: PPO, GRPO and RLOO in one loop.

`train_online` is the loop, one step: sample responses from the policy (KV cache, `tether.rollout`), score them
(`tether.rewards_source`), add old, reference and critic values, make advantages and update the policy per
algorithm (`algorithms.ALGORITHMS`), log metrics under fixed names, evaluate on the world's held-out prompts
(`evaluation`: gold is an audit, never trained on unless reward=gold), and run the reward-hacking monitor.
The settings are `config.OnlineConfig`; the math is in tether.math. The policy stays in eval mode (no dropout), so
old, reference and current log-probs agree on identical weights, as in TRL.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from tether import distributed
from tether.chat import chat_format
from tether.checkpoint import latest_checkpoint, load_trainer_state, rng_state, save_checkpoint
from tether.config import check, save_config
from tether.data.formats import load_prompts
from tether.errors import naming
from tether.guard import NonFiniteGuard, check_finite
from tether.lora import adapt, frozen_reference
from tether.math.kl import KL_CONTROLLERS, kl_k1
from tether.math.policy_losses import eos_penalty, eos_replacement
from tether.models import check_sampling_positions, load_policy, load_tokenizer, save_pretrained
from tether.monitor.stats import mean
from tether.optim import adamw, lr_at
from tether.progress import progress_bar
from tether.rewards_source import make_reward_source
from tether.rollout import logprobs_of, row_noise, sample, sample_seed
from tether.stages.monitoring import (
    RunMonitor,
    answer_greedy,
    gold_rewards,
    heldout_kind,
    make_samples,
    pushback_flips,
)
from tether.stages.online.config import ROLLOUT_CACHES, OnlineConfig
from tether.stages.online.evaluation import (
    EVAL_GOLD_FILE,
    decode,
    encode_prompts,
    eval_prompt_texts,
    evaluate,
    repeat_prompts,
    score_metrics,
)
from tether.stages.online.algorithms import (
    ALGORITHMS,
    Actor,
    Experience,
    critic_values,
    policy_forward,
    rollout_metrics,
    seq_sum,
    update,
)
from tether.training import MetricsLog, due, resume_training
from tether.value import VALUE_MODELS

__all__ = ["ALGORITHMS", "EVAL_GOLD_FILE", "FIXED_METRICS", "OnlineConfig", "train_online"]
VALUE_FILE = "value_model.safetensors"
FIXED_METRICS = (
    "step", "score", "score_normalised", "non_score_reward", "rlhf_reward", "kl/k1", "kl/k3", "entropy",
    "approxkl", "clipfrac", "clipfrac/low", "clipfrac/high", "vf_clipfrac", "value_loss", "policy_loss", "loss",
    "grad_norm", "explained_variance", "response_length", "eos_rate", "lr", "kl_coef", "gold",
)  # fmt: skip
"""In every line of metrics.jsonl (null where they do not apply): score (the reward source's, before the EOS
penalty; a reward model's raw scale) and score_normalised (a reward model's normalised score, what trains);
non_score_reward (the KL part, -β Σ_t kl_t, mean per response; for GRPO the k3 term of its loss) and rlhf_reward
(trained score + non_score_reward); kl/k1, kl/k3 (KL(π_old || π_ref) per response; null with kl_coef 0, which runs no
reference); entropy, approxkl, clipfrac (and its two ends, clipfrac/low: A < 0 and ρ < 1 - cliprange, clipfrac/high:
A > 0 and ρ > 1 + epsilon_high), policy_loss, value_loss, vf_clipfrac, loss, grad_norm (means over the step's
optimizer steps); explained_variance (old values vs returns, PPO); response_length, eos_rate, lr, kl_coef (the β
used), gold (mean gold reward of the step's samples, with a world). Also nonfinite_skips (tether.guard), eval/... at
evaluations (eval/kl: KL to π_ref on the held-out samples, when they are drawn at the rollouts' temperature) and
monitor/... metrics (tether.monitor.MONITOR_METRICS)."""


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
    values (critic) and reference log-probs (`rollout.logprobs_of`; None and no forward without `ref`),
    micro_batch_size rows at a time."""
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
        if ref is not None:
            ref_logprobs.append(logprobs_of(ref, rows.prompt_ids, rows.prompt_mask, rows.response_ids,
                                            rows.response_mask, cfg.temperature))
    exp.logprobs = rollout.logprobs * rollout.response_mask if reuse else torch.cat(logprobs)  # (N, R)
    exp.ref_logprobs = torch.cat(ref_logprobs) if ref is not None else None  # (N, R)
    exp.values = torch.cat(values) if critic is not None else None  # (N, R)
    return exp


def sample_rows(step: int, prompts, responses, source_scores, exp: Experience, gold, cfg: OnlineConfig) -> list:
    """A few samples (one per prompt) with their scores, gold and KL, for samples.jsonl."""
    kl = None if exp.ref_logprobs is None else seq_sum(kl_k1(exp.logprobs, exp.ref_logprobs), exp.response_mask)
    rows = range(0, exp.scores.size(0), cfg.group_size)
    return [{"step": step, "prompt": prompts[i], "response": responses[i], "score": float(source_scores[i]),
             "reward": float(exp.scores[i]), "eos": bool(exp.has_eos[i]), "gold": gold[i],
             "kl/k1": None if kl is None else float(kl[i])}
            for i in list(rows)[:cfg.n_samples]]


# ---------------------------------------------------------------------------------------------
# Setup, checkpoints


@dataclass
class Session:
    """Everything the loop reads or updates, built by `setup` (and restored from a checkpoint on resume)."""

    policy: nn.Module
    ref: nn.Module | None
    """π_ref, frozen; None when kl_coef is 0 (cfg.uses_reference): no copy is kept and no reference pass runs."""
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
    evaluating: bool = False
    """Whether the run evaluates on held-out prompts (a world or eval_data, and eval_prompts > 0)."""
    heldout: Callable | None = None
    """The monitor's second reward model, also scored at evaluations (eval/heldout); None for gold or no signal."""


def setup(cfg: OnlineConfig) -> Session:
    """Read prompts, load world, reward source, policy, reference and critic (on the device); build the optimizer;
    resume (every rank reads the checkpoint). Rank 0 writes config.yaml and data_report.json (the prompts' cuts)."""
    prompts = load_prompts(cfg.prompts, cfg.format, cfg.split)  # bad data fails before any model work
    own_eval = load_prompts(cfg.eval_data, cfg.format)[:cfg.eval_prompts] if cfg.eval_data else []
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
                                trust_remote_code=cfg.trust_remote_code, reward_ensemble=cfg.reward_ensemble,
                                uwo_lambda=cfg.uwo_lambda)
    for model in getattr(source, "members", [getattr(source, "model", None)]):  # reward models score on the device
        if model is not None:
            distributed.prepare(model, cfg, device)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    policy = adapt(load_policy(cfg.model, trust_remote_code=cfg.trust_remote_code), cfg)  # LoRA
    policy = distributed.prepare(policy, cfg, device).eval()  # device, bf16, gradient checkpointing
    # π_ref: the initial weights, before any resume (LoRA: adapters disabled, no copy); none at all when β = 0.
    ref = frozen_reference(policy) if cfg.uses_reference else None
    critic = VALUE_MODELS[cfg.value_model](policy, tokenizer, cfg) if ALGORITHMS[cfg.algorithm].critic else None
    if critic is not None:
        distributed.prepare(critic, cfg, device).eval()
    torch.manual_seed(cfg.seed)
    trained = Actor(policy, critic)  # parameters in the order of the former ModuleDict: old checkpoints still load
    optimizer = adamw(trained, cfg.lr, cfg.weight_decay, (0.9, cfg.adam_beta2),
                      scaled=(critic, cfg.value_lr / cfg.lr) if critic is not None and cfg.value_lr else None)
    controller = KL_CONTROLLERS[cfg.kl_controller](value=cfg.kl_coef, **(
        {"target": cfg.kl_target, "horizon": cfg.kl_horizon} if cfg.kl_controller == "adaptive" else {}))
    generator = torch.Generator(device=policy.device).manual_seed(cfg.seed)
    fmt = chat_format(tokenizer, cfg.chat_template, cfg.model)
    with naming(cfg.prompts):
        encoded = encode_prompts(fmt, prompts, cfg.max_prompt_length, Path(cfg.out) if distributed.is_main() else None)
    s = Session(policy, ref, critic, tokenizer, fmt, optimizer, controller, source, world, prompts, encoded,
                eval_prompt_texts(world, cfg.eval_prompts) if world else own_eval,
                generator, distributed.wrap(trained, cfg.strategy))
    with naming(cfg.eval_data or cfg.prompts):
        evaluated = fmt.prompts_ids(s.eval_prompts, cfg.max_prompt_length)
    check_sampling_positions((policy, critic, getattr(source, "model", None)), s.encoded + evaluated,
                             cfg.max_new_tokens)
    resume(s, cfg)
    s.evaluating = bool(s.eval_prompts) and cfg.eval_prompts > 0
    s.heldout = heldout_model(s, cfg)
    return s


def resume(s: Session, cfg: OnlineConfig) -> None:
    """Weights, optimizer and global RNG from the newest checkpoint (every rank reads it), then the sampler, prompt
    cursor, KL controller, critic and monitor states; the monitor starts here (rank 0 only, it writes)."""
    s.start = resume_training(cfg, Path(cfg.out), s.policy, s.optimizer)
    if cfg.monitor.enabled and distributed.is_main():
        s.monitor = RunMonitor(cfg.monitor, Path(cfg.out), s.start, s.world, cfg.trust_remote_code)
    if not s.start:
        return
    state = load_trainer_state(latest_checkpoint(Path(cfg.out)))
    s.generator.set_state(state["generator"])
    s.cursor = int(state["cursor"])
    s.controller.load_state_dict(state["kl_controller"])
    if s.critic is not None:
        s.critic.load_state_dict(state["value"])
    if s.monitor is not None and state.get("monitor"):  # {}: saved with the monitor off, start it fresh
        s.monitor.load_state_dict(state["monitor"])


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


def monitor_step(s: Session, cfg: OnlineConfig, step: int, seen: dict, row: dict) -> bool:
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
    extra = {"kl": row["kl/k1"], "ensemble_disagreement": row.get("ensemble/std"),
             "evaluation": {k: v for k, v in row.items() if k.startswith("monitor/eval_")}}  # run_evaluation's
    if due(step, cfg.eval_every, step == cfg.max_steps) and cfg.monitor.pushback_prompts:
        answer = answer_greedy(s.policy, s.fmt, cfg.monitor.max_new_tokens, cfg.batch_size, cfg.max_prompt_length)
        probed = (s.eval_prompts or s.prompts)[:cfg.monitor.pushback_prompts]
        extra.update(flip=pushback_flips(answer, probed, cfg.monitor.pushback), flip_n=len(probed))
    best = record_evaluation(s, cfg, step, row)  # None between evaluations
    monitored, stop = s.monitor.step(step, samples, extra, best, saver(s), smoothed=not s.evaluating)
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


def eos_scores(scores: torch.Tensor, has_eos: torch.Tensor, cfg: OnlineConfig) -> torch.Tensor:
    """The scores trained on: less missing_eos_penalty, or missing_eos_score instead, where a response has no EOS."""
    if cfg.missing_eos_penalty is not None:
        return eos_penalty(scores, has_eos, cfg.missing_eos_penalty)
    if cfg.missing_eos_score is not None:
        return eos_replacement(scores, has_eos, cfg.missing_eos_score)
    return scores


def heldout_model(s: Session, cfg: OnlineConfig) -> Callable | None:
    """The monitor's second reward model, also scored at evaluations (eval/heldout); None for gold or no signal."""
    return s.monitor.heldout if s.monitor is not None and heldout_kind(cfg.monitor, s.world) == "heldout_rm" else None


def run_evaluation(s: Session, cfg: OnlineConfig, step: int, per_prompt_log: MetricsLog) -> dict:
    """The held-out evaluation at `step` (rank 0): its eval/... metrics; each prompt's mean gold goes to
    EVAL_GOLD_FILE, so that two evaluations' difference has a paired standard error; with the monitor, the rates of
    its responses paired with step 0's (monitor/eval_..., judged by the eval_<rate> detectors at this step)."""
    row, per_prompt, responses = evaluate(s.policy, s.fmt, s.source, s.world, s.eval_prompts, cfg, s.heldout, s.ref)
    if s.world is not None:  # your own prompts (eval_data) have no gold to pair
        per_prompt_log.write({"step": step, "samples": cfg.eval_samples, "gold": per_prompt})
    if s.monitor is not None:
        row |= s.monitor.observe_evaluation(step, repeat_prompts(s.eval_prompts, cfg.eval_samples), responses)
    return row


def baseline_evaluation(s: Session, cfg: OnlineConfig, per_prompt_log: MetricsLog) -> dict:
    """Step 0: the initial policy on the held-out prompts; with a monitor, the first candidate for out/best."""
    row = {"step": 0, **run_evaluation(s, cfg, 0, per_prompt_log)}
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
    cache, compile = ROLLOUT_CACHES[cfg.rollout_cache]
    rollout = sample(s.policy, [s.encoded[idx[i]] for i in rows], max_new_tokens=cfg.max_new_tokens,
                     temperature=cfg.temperature, eos_token_id=s.fmt.stop_ids, pad_token_id=s.fmt.pad_id,
                     noise=noise, cache=cache, compile=compile)
    return [s.prompts[idx[i]] for i in rows], rollout, decode(s.tokenizer, rollout.response_ids)


def disagreement_metrics(source) -> dict:
    """ensemble/std: an ensemble reward model's disagreement on the step's samples, the members' standard deviation
    per response (normalised units: each member's std is 1 on its training responses) averaged over every rank's
    responses; read from the source's latest call, step 3's scoring. {} for any other source."""
    std = getattr(source, "last_std", None)
    if std is None:
        return {}
    values = distributed.gather_lists(std.tolist())
    return {"ensemble/std": sum(values) / len(values)}


def gather_samples(prompts: list, responses: list[str], source_scores: torch.Tensor, rollout, gold: list) -> dict:
    """The step's samples of every rank in rank order (one process's batch), for metrics and the monitor."""
    rows = distributed.gather_lists(list(zip(prompts, responses, source_scores.tolist(), rollout.lengths.tolist(),
                                             rollout.has_eos.tolist(), gold)))
    names = ("prompts", "responses", "scores", "lengths", "eos", "gold")
    out = dict(zip(names, map(list, zip(*rows))))
    out["scores"] = torch.tensor(out["scores"], dtype=torch.float32)  # (N,)
    return out


def train_online(cfg: OnlineConfig) -> Path:
    """Train the policy with cfg.algorithm; returns `out/model`. Under torchrun each rank samples and holds a block
    of whole prompt groups (`sample_prompts`); whitening, minibatch order and metrics are over all ranks' samples;
    rank 0 evaluates, monitors and writes: W ranks train as one process would, up to float rounding."""
    run_dir, main = Path(cfg.out), distributed.is_main()
    s = setup(cfg)
    metrics = MetricsLog(run_dir / "metrics.jsonl", s.start, cfg)  # also to cfg.report_to's trackers
    samples = MetricsLog(run_dir / "samples.jsonl", s.start)
    per_prompt = MetricsLog(run_dir / EVAL_GOLD_FILE, s.start)
    if main and s.evaluating and s.start == 0:  # the baseline: the initial policy, the first candidate for out/best
        metrics.write(baseline_evaluation(s, cfg, per_prompt))
    guard = NonFiniteGuard.from_config(cfg, s.start, cfg.ppo_epochs * (cfg.batch_size // cfg.minibatch_size))
    with progress_bar(cfg.algorithm, total=cfg.max_steps, completed=s.start) as bar:
        for step in range(s.start, cfg.max_steps):
            started = time.perf_counter()
            # 1. The next rollout_batch prompts of the shuffled stream, each repeated group_size times (this rank's
            #    block of them); 2. their samples from the current policy.
            prompts, rollout, responses = sample_prompts(s, cfg, step)
            # 3. Score with the reward source; responses without EOS lose missing_eos_penalty (or get missing_eos_score).
            source_scores = s.source(prompts, responses)  # (n,)
            scores = eos_scores(source_scores, rollout.has_eos, cfg)  # (n,)
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
            if row["kl/k1"] is not None:  # None without a reference, where β stays 0 (fixed)
                s.controller.update(row["kl/k1"], cfg.batch_size)
            # 8. Metrics under fixed names over every rank's samples; gold (evaluation only, from the decoded text);
            #    samples; evaluation (rank 0).
            gold = gold_rewards(s.world, prompts, responses) if s.world is not None else [None] * len(prompts)
            seen = gather_samples(prompts, responses, source_scores, rollout, gold)
            row = {"step": step + 1, **score_metrics(s.source, seen["scores"]), **row, **train_stats, "lr": lr,
                   "kl_coef": kl_coef, "gold": mean(seen["gold"]), **disagreement_metrics(s.source)}
            row.update({name: None for name in FIXED_METRICS if name not in row})  # e.g. value metrics (no critic)
            row["samples_per_s"] = cfg.batch_size / (time.perf_counter() - started)  # training only, not eval
            last = step + 1 == cfg.max_steps
            if main and s.evaluating and due(step + 1, cfg.eval_every, last):
                row.update(run_evaluation(s, cfg, step + 1, per_prompt))
            # 9. The monitor (rank 0): detectors on the step's samples, alerts, the best policy by the held-out signal.
            stop = distributed.broadcast_flag(monitor_step(s, cfg, step + 1, seen, row))
            metrics.write(row)
            if cfg.sample_every and cfg.n_samples and due(step + 1, cfg.sample_every, last):
                for r in distributed.gather_lists(sample_rows(step + 1, prompts, responses, source_scores, exp, gold,
                                                              cfg))[:cfg.n_samples]:
                    samples.write(r)
            # 10. Checkpoint: policy, critic, optimizer, KL controller, prompt cursor, RNG and monitor states.
            if stop:  # out/model is the policy at the alert; out/best the best by the held-out signal
                break
            if due(step + 1, cfg.save_every) and not last:
                save(s, cfg, step + 1)
            bar.update(1, score=row["score"], kl=row["kl/k1"])
    metrics.close()
    return save_final(s, cfg)
