"""`tether rm`: train a reward model on pairwise preferences with the Bradley-Terry loss.

Comparisons of one prompt always share a batch (and a micro-batch), and each distinct (prompt, response)
in a step is encoded and scored once, however many pairs it appears in. InstructGPT (Ouyang et al. 2022
§3.5) does both: scoring the K responses of a prompt once for all K-choose-2 pairs is cheaper, and
spreading one prompt's correlated pairs over many steps overfits. The world's gold reward is never read
here: the reward model learns from preference labels only.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
from rich.console import Console

from tether import distributed, ensemble
from tether.chat import chat_format
from tether.checkpoint import load_trainer_state, set_rng_state
from tether.config import check, save_config
from tether.data.formats import check_format, load_comparisons
from tether.data.preferences import (
    Comparison,
    prompt_key,
    split_by_prompt,
)
from tether.errors import DataError, naming
from tether.guard import NonFiniteGuard
from tether.lora import (
    adapt,
    has_adapters,
    load_adapter_checkpoint,
    refuse_adapter_checkpoint,
)
from tether.math.losses import bradley_terry_loss, center_penalty
from tether.models import check_positions
from tether.optim import adamw, lr_at
from tether.progress import progress_bar
from tether.reward import RewardModel, encode_pair, reads_pairs
from tether.rm_batch import Pair, collate_pairs, pair_rewards
from tether.math.rm_metrics import expected_calibration_error, normalising_affine, pearson
from tether.training import (
    MetricsLog,
    TrainConfig,
    checkpoint_to_resume,
    compile_model,
    due,
    save_training_state,
)

console = Console(stderr=True)
TARGETS = {"A": 1.0, "B": 0.0, "tie": 0.5}  # P(A preferred) of each label


@dataclass
class RMConfig(TrainConfig):
    """Reward-model training on tether preference JSONL (Bradley-Terry loss, head on an HF backbone)."""

    data: str = "runs/label/comparisons.jsonl"
    """tether preference JSONL (prompt, response_a, response_b, choice, strength, ...); unlabelled rows are skipped.
    Also TRL, HH-RLHF or UltraFeedback data (tether.data.formats); JSONL, Parquet, Arrow or a save_to_disk folder."""
    eval_data: str | None = None
    """Held-out preference data; None: hold out `eval_fraction` of the prompts of `data` (split by prompt)."""
    format: str = "auto"
    """Format of data and eval_data: auto (told from the first row's keys) or a name from `tether data --help`:
    tether, trl, hh, ultrafeedback_binarized, ultrafeedback, ..."""
    split: str | None = None
    """Split of data when it is a `datasets` save_to_disk DatasetDict folder (e.g. train_prefs);
    None for a file."""
    eval_split: str | None = None
    """Split of eval_data when it is a save_to_disk DatasetDict folder (e.g. test_prefs); None for a file."""
    RENAMED: ClassVar[dict[str, str]] = {"backbone": "model"}
    model: str = "runs/sft/model"
    """Hugging Face folder the reward model starts from (e.g. the SFT model), with its tokenizer. A causal LM becomes
    its architecture's sequence classifier: `model/` loads with AutoModelForSequenceClassification (`tether.reward`)."""
    pool: Literal["last", "cls", "mean"] = "last"
    """Where the head reads the backbone: the last token that is not the pad token, first token (encoders), or the
    masked mean. On a causal backbone only "last" is what plain transformers' classifier computes from `model/`."""
    margin: bool = False
    """Llama 2 margin: a pair rated with strength s must be won by at least s (ties and unrated pairs: 0)."""
    label_smoothing: float = 0.0
    """Take each label as flipped with this probability (conservative targets, in [0, 0.5))."""
    center_rewards_coefficient: float | None = None
    """c of the auxiliary loss c · mean((r_a + r_b)²) that keeps rewards centred on 0 (Eisenstein et al. 2023; TRL's
    center_rewards_coefficient, e.g. 0.01); null or 0: off, the plain Bradley-Terry loss."""
    soft_labels: bool = False
    """Train toward each comparison's meta.p_a, P(response_a preferred) in [0, 1] (e.g. an AI judge's, from `tether
    judge`), as the Bradley-Terry target instead of 1 / 0 / 0.5 from its choice; a labelled row without it is an
    error. Held-out accuracy still counts a pair for the side its target favours."""
    share_prefixes: bool = True
    """Run the prompt tokens a prompt group's sequences start with once per step, each sequence only its own tail
    (causal backbones read at the last token; the rewards are unchanged, `tether.rm_batch`): the prefix and its
    tails in one row under a mask that keeps each tail to the prefix and itself (sdpa or eager attention), else the
    tails after the prefix's cached keys and values."""
    max_length: int = 256
    """Longest (prompt + response) in tokens; longer ones lose the start of the prompt (the response and
    its end, where the score is read, are kept), counted in data_report.json."""
    trust_remote_code: bool = False
    """Allow the backbone folder's own Python code to run (only for models you trust)."""
    normalise_on: Literal["train", "eval"] = "train"
    """Responses on which the final rewards are normalised to mean 0, std 1."""
    normalise_sequences: int = 2048
    """At most this many distinct responses (a seeded sample) fit the normalisation: the mean and std of
    2,048 scores are within about 0.03 sd of the full set's, at a fraction of a pass over it."""
    out: str = "runs/rm"
    """Run folder: metrics.jsonl, eval.json, data_report.json, config.yaml, checkpoints/, model/."""
    batch_size: int = 32
    """Comparisons per optimizer step, rounded up to whole prompt groups (a bigger group is a batch alone)."""
    micro_batch_size: int = 32
    """Comparisons per forward pass, rounded up to whole prompt groups; the step's gradient is unchanged."""
    epochs: float = 1.0
    """Passes over the training comparisons; InstructGPT trains one, the RM overfits after that."""
    lr: float = 3e-4
    """Peak learning rate of AdamW."""
    eval_fraction: float = 0.1
    """Share of the prompts held out when eval_data is None (at least one prompt when > 0)."""
    eval_every: int = 50
    """Steps between held-out evaluations (0: only at the end)."""
    ensemble: int = 1
    """Reward models trained (Coste et al. 2023): 1 one model; k > 1 also members 1..k-1, each a whole reward model
    from the same backbone with its own seed (head init, batch order) and, with ensemble_bootstrap, a bootstrap
    resample of the training prompts. Member 0 is the model `ensemble=1` trains (all comparisons, `seed`); the others
    go to model/members/member-<i>/ (logs in members/member-<i>/), listed in model/reward_config.json, and the online
    stages score with all of them (`tether.ensemble`: the disagreement, and reward_ensemble). Cost: k trainings and
    k forward passes per scored response (whole models, as Coste et al. train them, rather than heads on one body)."""
    ensemble_bootstrap: bool = True
    """Train each member after the first on a bootstrap resample (with replacement) of the training prompt groups:
    members from one backbone differ by more than their heads' seeds."""
    ensemble_unit: Literal["prompt", "rater"] = "prompt"
    """What ensemble_bootstrap resamples: "prompt", whole prompt groups; "rater", whole raters (every comparison a
    drawn rater labelled; a rater drawn twice counts twice), a cluster bootstrap over the unit whose label errors are
    correlated. Members from prompt resamples of the same labels inherit the same rater biases and agree on them, so
    their disagreement cannot rise where the policy exploits one; members from rater resamples differ by how much
    their raters lean (one pays more for length, another for agreement), so they disagree where the policy moves
    along a dimension the raters themselves disagree about, by as much as their leanings differ: where they all lean
    alike (the demo world's raters, each trait within ±30% of the pool's mean) that is too little to see
    (benchmarks/ensemble_rater_pilot.py). Needs each labelled comparison's `rater` and 2 or more raters."""

    def validate(self) -> None:
        super().validate()
        check(bool(self.data), "data", "is required")
        check(bool(self.model), "model", "is required")
        check_format(self.format, "comparisons")
        check(0 <= self.label_smoothing < 0.5, "label_smoothing", "must be in [0, 0.5)")
        check(self.center_rewards_coefficient is None or self.center_rewards_coefficient >= 0,
              "center_rewards_coefficient", "must be >= 0 (or null: off)")
        check(self.normalise_sequences >= 2, "normalise_sequences", "must be >= 2")
        check(self.normalise_on == "train" or self.eval_data or self.eval_fraction > 0, "normalise_on",
              "'eval' needs eval_data or eval_fraction > 0")
        check(self.ensemble >= 1, "ensemble", "must be >= 1 (reward models in the ensemble)")
        check(self.ensemble_unit in ensemble.BOOTSTRAPS, "ensemble_unit",
              f"{self.ensemble_unit!r} is not one of {', '.join(ensemble.BOOTSTRAPS)}")


# ---------------------------------------------------------------------------------------------
# Data: read, encode, split by prompt, batch by prompt


def encode_comparisons(tokenizer, comparisons: list[Comparison], cfg: RMConfig, pair_encoding: bool = False
                       ) -> tuple[list[Pair], dict]:
    """Labelled comparisons as Pairs, and counts of what was skipped or truncated. Both responses of a comparison
    follow the same prompt tokens (tether.chat.ChatFormat.encode_pairs); an encoder without a chat template reads
    each (prompt, response) with its pair encoding (`reward.reads_pairs`)."""
    labelled = [c for c in comparisons if c.choice is not None]
    responses = sorted({r for c in labelled for r in (c.response_a, c.response_b)})
    lengths = dict(zip(responses, map(len, tokenizer(responses, add_special_tokens=False)["input_ids"]))) \
        if responses else {}
    if pair_encoding:
        encoded = [tuple(encode_pair(tokenizer, c.prompt, r, cfg.max_length, pair_encoding=True)
                         for r in (c.response_a, c.response_b)) for c in labelled]
    else:
        fmt = chat_format(tokenizer, cfg.chat_template, cfg.model)
        encoded = [tuple((e.input_ids, e.truncated) for e in pair) for pair in
                   fmt.encode_pairs([(c.prompt, c.response_a, c.response_b) for c in labelled], cfg.max_length)]
    pairs, truncated = [], 0
    for c, ((ids_a, cut_a), (ids_b, cut_b)) in zip(labelled, encoded):
        truncated += cut_a + cut_b
        m = c.strength if cfg.margin and c.strength is not None and c.choice != "tie" else 0.0
        target = soft_target(c) if cfg.soft_labels else TARGETS[c.choice]
        pairs.append(Pair(prompt_key(c.prompt), ids_a, ids_b, target, float(m),
                          lengths[c.response_a], lengths[c.response_b], c.rater))
    report = {"comparisons": len(comparisons), "unlabelled_skipped": len(comparisons) - len(labelled),
              "ties": sum(c.choice == "tie" for c in labelled), "truncated_sequences": truncated,
              "max_length": cfg.max_length}
    return pairs, report


def soft_target(c: Comparison) -> float:
    """meta.p_a of a comparison (soft_labels=true); DataError `meta.p_a: ...` when absent or not in [0, 1]."""
    p = c.meta.get("p_a")
    if p is None:
        raise DataError(f"comparison {c.id}: meta.p_a: missing (soft_labels=true trains on it; label with `tether "
                        "judge`, or set soft_labels=false)")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise DataError(f"comparison {c.id}: meta.p_a: {p!r} is not a probability in [0, 1]")
    return float(p)


def group_by_prompt(pairs: list[Pair]) -> list[list[int]]:
    """Indices of `pairs` grouped by prompt, groups in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(p.prompt_key, []).append(i)
    return list(groups.values())


def pack(items: list, size: int, weight) -> list[list]:
    """Consecutive items cut into chunks of total `weight` >= `size` (the last chunk may weigh less)."""
    chunks, current, total = [], [], 0
    for item in items:
        current.append(item)
        total += weight(item)
        if total >= size:
            chunks.append(current)
            current, total = [], 0
    return chunks + ([current] if current else [])


def pack_groups(groups: list[list[int]], size: int) -> list[list[int]]:
    """Consecutive groups packed into chunks of >= `size` items (the last chunk may be smaller)."""
    return [[i for g in chunk for i in g] for chunk in pack(groups, size, len)]


def schedule(groups: list[list[int]], batch_size: int, seed: int, steps: int,
             lengths: list[int] | None = None, bucket_size: int = 1) -> list[tuple[int, list[int]]]:
    """(epoch, pair indices) of every step: each epoch shuffles the prompt groups and packs them into
    batches of about `batch_size` pairs. A pure function of the seed, so resuming needs only the step.

    With `lengths` (the longest sequence of each group) and bucket_size > 1, the groups of each window
    of about `bucket_size` batches are sorted by length before packing, then all batches are shuffled:
    batches of similar lengths pad less (the length bucketing of `training.epoch_batches`, by whole groups).
    """
    bucketed = lengths is not None and bucket_size > 1
    plan: list[tuple[int, list[int]]] = []
    epoch = 0
    while len(plan) < steps:
        rng = random.Random(seed * 1_000_003 + epoch)
        order = list(range(len(groups)))
        rng.shuffle(order)
        if not bucketed:
            batches = pack_groups([groups[g] for g in order], batch_size)
        else:
            windows = pack(order, bucket_size * batch_size, lambda g: len(groups[g]))  # lists of group indices
            batches = [batch for window in windows
                       for batch in pack_groups([groups[g] for g in sorted(window, key=lengths.__getitem__)], batch_size)]
            rng.shuffle(batches)
        plan += [(epoch, batch) for batch in batches]
        epoch += 1
    return plan[:steps]


def group_lengths(pairs: list[Pair], groups: list[list[int]]) -> list[int]:
    """The longest token sequence of each prompt group (what its batch is padded to)."""
    return [max(max(len(pairs[i].ids_a), len(pairs[i].ids_b)) for i in g) for g in groups]


def micro_batches(pairs: list[Pair], size: int) -> list[list[Pair]]:
    """Split a batch (whole prompt groups) into micro-batches of whole groups of about `size` pairs."""
    return [[pairs[i] for i in chunk] for chunk in pack_groups(group_by_prompt(pairs), size)]


# ---------------------------------------------------------------------------------------------
# One optimizer step, and the held-out evaluation


def train_step(model: RewardModel, optimizer, pairs: list[Pair], cfg: RMConfig, lr: float,
               guard: NonFiniteGuard | None = None) -> dict:
    """One optimizer step over `pairs` with gradient accumulation over micro-batches of whole groups; `guard`
    (the run's, else a fresh one from cfg) skips or halts it on a non-finite loss or gradient.

    Each micro-batch's summed pair losses are divided by the pair count of the whole step, so the
    gradient equals that of one batch however the step is split (a per-micro-batch mean would weight
    a small micro-batch's pairs more). Under torchrun each rank runs its share of the micro-batches
    (`distributed.shard`), the count divided by the ranks, whose gradients DDP averages; the sums are all-reduced.
    """
    total, raw = len(pairs), distributed.unwrap(model)
    sums = dict.fromkeys(("loss", "correct", "decided", "margins", "scores", "sequences", "centre"), 0.0)
    share = distributed.shard(micro_batches(pairs, cfg.micro_batch_size))
    prefixes = cfg.share_prefixes and raw.shares_prefixes
    for i, (micro, real) in enumerate(share):
        batch = collate_pairs(micro, raw.pad_id, raw.device, chunked=not distributed.is_sharded(model),
                              share_prefixes=prefixes, rows=raw.tree_shares)
        with distributed.accumulating(model, last=i == len(share) - 1):
            r_a, r_b, r = pair_rewards(model, batch)
            losses = pair_losses(r_a, r_b, batch.target, batch.margin, cfg)  # (P,)
            distributed.normalised(losses.sum(), total, real).backward()
        if real:
            won, gap = _decided(r_a.detach(), r_b.detach(), batch.target)
            centre = center_penalty(r_a.detach(), r_b.detach()).sum()
            for name, value in zip(sums, (losses.detach().sum(), won.sum(), len(won), gap.sum(), r.detach().sum(),
                                          len(r), centre)):
                sums[name] += float(value)
    s = distributed.all_reduce_sum(sums)
    guard = guard or NonFiniteGuard.from_config(cfg)
    grad_norm, skipped = guard.apply(optimizer, model.parameters(), cfg.grad_clip, lr, s["loss"] / total)
    return {"loss": s["loss"] / total, "accuracy": s["correct"] / max(s["decided"], 1),
            "margin": s["margins"] / max(s["decided"], 1), "score": s["scores"] / s["sequences"],
            "center_penalty": s["centre"] / total, "grad_norm": grad_norm, "lr": lr, "pairs": total,
            "sequences": int(s["sequences"]), "nonfinite_skips": skipped}


def pair_losses(r_a: torch.Tensor, r_b: torch.Tensor, target: torch.Tensor, margin: torch.Tensor,
                cfg: RMConfig) -> torch.Tensor:
    """The per-pair training loss: Bradley-Terry (margin, smoothing), plus c (r_a + r_b)² with
    center_rewards_coefficient c when set (its mean over pairs is TRL's term). Shapes: (P,) each -> (P,)."""
    losses = bradley_terry_loss(r_a, r_b, target, margin, cfg.label_smoothing)  # (P,)
    if cfg.center_rewards_coefficient:  # skipped at None and 0: the default loss stays bit for bit the same
        losses = losses + cfg.center_rewards_coefficient * center_penalty(r_a, r_b)
    return losses


def _decided(r_a: torch.Tensor, r_b: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Over the non-tie pairs (D of P): whether the chosen response scored higher (1, 0.5 if equal, 0),
    and r_chosen - r_rejected. Shapes: (P,), (P,), (P,) -> (D,), (D,)."""
    keep = target != 0.5
    chosen_minus_rejected = (torch.sign(2 * target - 1) * (r_a - r_b))[keep]  # (D,)  sign +1 when A is favoured
    return (torch.sign(chosen_minus_rejected) + 1) / 2, chosen_minus_rejected


@torch.no_grad()
def evaluate(model: RewardModel, pairs: list[Pair], cfg: RMConfig) -> dict:
    """Held-out metrics from raw rewards (the Bradley-Terry scale the loss trained).

    loss: the training objective (same margin, smoothing and centring term). center_penalty: mean (r_a + r_b)².
    accuracy: share of non-tie pairs whose chosen response scored higher (ties are excluded and counted). ece:
    expected calibration error of σ(r_a - r_b) against the non-tie labels, 10 bins. length_corr: Pearson correlation
    between reward and response length in tokens over the distinct responses (a reward that counts tokens is
    hackable).
    """
    was_training = model.training
    model.eval()
    ordered, r_a, r_b, by_sequence = [], [], [], {}  # by_sequence: ids -> (reward, response length)
    prefixes = cfg.share_prefixes and model.shares_prefixes
    for micro in micro_batches(pairs, cfg.micro_batch_size):
        with distributed.eager():  # compiled layers (torch_compile) are for training steps
            batch = collate_pairs(micro, model.pad_id, model.device, share_prefixes=prefixes, rows=model.tree_shares)
            a, b, _ = pair_rewards(model, batch)
        ordered += micro
        r_a += a.tolist()
        r_b += b.tolist()
        for p, ra, rb in zip(micro, a.tolist(), b.tolist()):
            by_sequence[tuple(p.ids_a)], by_sequence[tuple(p.ids_b)] = (ra, p.length_a), (rb, p.length_b)
    model.train(was_training)
    r_a, r_b = torch.tensor(r_a), torch.tensor(r_b)  # (P,) in the order of `ordered`
    target, margin = torch.tensor([p.target for p in ordered]), torch.tensor([p.margin for p in ordered])
    won, _ = _decided(r_a, r_b, target)
    keep = target != 0.5
    rewards, lengths = zip(*by_sequence.values())
    corr = float(pearson(torch.tensor(rewards), torch.tensor(lengths, dtype=torch.float64)))
    return {"loss": float(pair_losses(r_a, r_b, target, margin, cfg).mean()),
            "center_penalty": float(center_penalty(r_a, r_b).mean()),
            "accuracy": float(won.mean()) if len(won) else None,
            "ece": float(_symmetric_ece(torch.sigmoid(r_a - r_b)[keep], target[keep])),
            "length_corr": None if math.isnan(corr) else corr,
            "pairs": len(pairs), "ties": int((~keep).sum())}


def _symmetric_ece(p_a: torch.Tensor, y_a: torch.Tensor) -> torch.Tensor:
    """ECE over both orientations of every pair, so it does not depend on which response is called A
    (HH and TRL files always put the chosen one in A: all labels 1 would turn ECE into 1 - mean confidence)."""
    return expected_calibration_error(torch.cat([p_a, 1 - p_a]), torch.cat([y_a, 1 - y_a]))


def normalise(model: RewardModel, pairs: list[Pair], batch_size: int, limit: int | None = None, seed: int = 0) -> dict:
    """Fit (gain, bias) so the distinct responses of `pairs` (a seeded sample of at most `limit`) score
    mean 0, std 1; return what was fit."""
    sequences = list({tuple(ids): None for p in pairs for ids in (p.ids_a, p.ids_b)})
    if limit is not None and len(sequences) > limit:
        sequences = random.Random(seed).sample(sequences, limit)
    with distributed.eager():  # as `evaluate`
        raw = model.raw_scores(sequences, batch_size)  # (U,)
    gain, bias = normalising_affine(raw)
    model.set_normalisation(gain, bias)
    return {"gain": gain, "bias": bias, "raw_mean": float(raw.mean()), "raw_std": float(raw.std(correction=0)),
            "sequences": len(sequences)}


# ---------------------------------------------------------------------------------------------
# The stage


def load_pairs(cfg: RMConfig, tokenizer, pair_encoding: bool = False) -> tuple[list[Pair], list[Pair], dict]:
    """(train, held-out, report): held-out from eval_data, else a split by prompt of data."""
    with naming(cfg.data):
        pairs, report = encode_comparisons(tokenizer, load_comparisons(cfg.data, cfg.format, cfg.split), cfg,
                                           pair_encoding)
    if cfg.eval_data:
        held = load_comparisons(cfg.eval_data, cfg.format, cfg.eval_split)
        with naming(cfg.eval_data):
            train, (held_out, eval_report) = pairs, encode_comparisons(tokenizer, held, cfg, pair_encoding)
        report["eval_file"] = eval_report
    else:
        train, held_out = split_by_prompt(pairs, cfg.eval_fraction, cfg.seed)
    train_prompts, eval_prompts = {p.prompt_key for p in train}, {p.prompt_key for p in held_out}
    report.update(train_pairs=len(train), eval_pairs=len(held_out), train_prompts=len(train_prompts),
                  eval_prompts=len(eval_prompts), eval_prompts_in_train=len(train_prompts & eval_prompts))
    check(len(train) > 0, "data", f"no labelled comparisons in {cfg.data}")
    check(cfg.normalise_on == "train" or held_out, "normalise_on", "'eval' but the held-out set is empty")
    return train, held_out, report


def total_steps(cfg: RMConfig, groups: list[list[int]]) -> int:
    """max_steps, or `epochs` times the batches of one epoch. Batches round up to whole prompt groups, so an
    epoch has fewer than n_pairs / batch_size of them; counting the packing keeps epochs=1 one pass."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * len(pack_groups(groups, cfg.batch_size))))


def run(cfg: RMConfig) -> Path:
    """Train, evaluate, normalise and save a reward model; returns the model folder `out/model`. With ensemble=k, the
    members 1..k-1 first (a resumed run skips those on disk), member 0 last, then its reward_config.json lists them,
    so that a folder listing members is a finished ensemble."""
    for member in range(1, cfg.ensemble):
        if not (cfg.resume and (ensemble.member_model_dir(cfg.out, member) / "reward_config.json").is_file()):
            train_member(cfg, member)
    final = train_member(cfg, 0)
    if cfg.ensemble > 1 and distributed.is_main():
        ensemble.write_members(final, cfg.ensemble)
    return final


def train_member(cfg: RMConfig, member: int) -> Path:
    """Train, evaluate, normalise and save ensemble member `member` (0: the plain reward model); returns its folder."""
    # 1. Device (and the process group under torchrun), run folder (rank 0 writes), seed, the reward model (LoRA on
    #    its backbone: the head trains fully), comparisons encoded and split by prompt (the same split for every
    #    member; members after the first on a bootstrap resample of the training prompts).
    device, main = distributed.setup(cfg), distributed.is_main()
    run_dir, final, seed = ensemble.member_paths(cfg.out, member, cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = adapt(RewardModel.from_backbone(cfg.model, cfg.pool, cfg.trust_remote_code, cfg.max_length), cfg)
    check_positions(model, cfg.max_length, "max_length")
    train, held_out, report = load_pairs(cfg, model.tokenizer, reads_pairs(model.kind, model.tokenizer))
    if member and cfg.ensemble_bootstrap:
        with naming(cfg.data):
            train = ensemble.BOOTSTRAPS[cfg.ensemble_unit](train, seed)
    if main:
        write_inputs(cfg, run_dir, report, model.kind)
    # 2. Model on the device, wrapped for the ranks; optimizer; resume restores weights, optimizer moments and
    #    RNG. The step plan is a pure function.
    net = distributed.wrap(compile_model(cfg, distributed.prepare(model, cfg, device)), cfg.strategy)
    optimizer = adamw(model, cfg.lr, cfg.weight_decay, (0.9, cfg.adam_beta2))
    start = resume_training(cfg, run_dir, model, optimizer)
    groups = group_by_prompt(train)
    steps = total_steps(cfg, groups)
    plan = schedule(groups, cfg.batch_size, seed, steps, group_lengths(train, groups), cfg.bucket_size)
    log, guard = MetricsLog(run_dir / "metrics.jsonl", start, cfg), NonFiniteGuard.from_config(cfg, start)
    final_eval = None
    model.train()
    with progress_bar("rm", total=steps, completed=start) as bar:
        for step in range(start, steps):
            # 3. The step's batch: whole prompt groups, about batch_size comparisons.
            epoch, indices = plan[step]
            batch = [train[i] for i in indices]
            # 4. Score each distinct sequence once, Bradley-Terry loss per pair, accumulate, clip, step.
            lr = lr_at(step, cfg.lr, cfg.warmup_steps, steps, cfg.min_lr_ratio)
            row = {"step": step + 1, "epoch": epoch, **train_step(net, optimizer, batch, cfg, lr, guard)}
            # 5. Held-out metrics, metric lines, checkpoints.
            last = step + 1 == steps
            if held_out and due(step + 1, cfg.eval_every, last):
                final_eval = evaluate(model, held_out, cfg)
                row.update({f"eval_{k}": v for k, v in final_eval.items()})
            if due(step + 1, cfg.log_every, last) or "eval_loss" in row:
                log.write(row)
            if due(step + 1, cfg.save_every) and not last:
                save_training_state(run_dir, step + 1, model, optimizer, model.tokenizer, cfg.keep_checkpoints)
            bar.update(1, loss=row["loss"], acc=row["accuracy"])
    log.close()
    # 6. Normalise on the reference responses, save the model and the eval summary. The held-out
    #    metrics read raw rewards, so the last step's evaluation is the final model's.
    norm = normalise(model, train if cfg.normalise_on == "train" else held_out, cfg.micro_batch_size,
                     cfg.normalise_sequences, cfg.seed)
    distributed.on_main(model, lambda plain: plain.save_pretrained(final))
    if held_out and final_eval is None:  # resumed after the last step: nothing was evaluated in this process
        final_eval = evaluate(model, held_out, cfg)
    summary = {"eval": final_eval, "steps": steps,
               "normalisation": {"on": cfg.normalise_on, **norm}, "data": report}
    distributed.barrier()  # every rank returns once the model is on disk
    if main:
        write_summary(run_dir, summary)
    return final


def write_inputs(cfg: RMConfig, run_dir: Path, report: dict, kind: str) -> None:
    """config.yaml and data_report.json; warnings when held-out prompts also appear in training, and when `model/`
    will not read as plain transformers reads it (pool=mean on a causal backbone)."""
    if kind == "causal" and cfg.pool == "mean":
        console.print("rm: pool=mean: model/ is read by tether only; plain transformers reads the last token")
    save_config(cfg, run_dir / "config.yaml")
    (run_dir / "data_report.json").write_text(json.dumps(report, indent=1))
    if report["eval_prompts_in_train"]:
        console.print(f"rm: warning: {report['eval_prompts_in_train']} eval prompts also appear in the training data")


def write_summary(run_dir: Path, summary: dict) -> None:
    """eval.json, and the held-out figures on the console."""
    (run_dir / "eval.json").write_text(json.dumps(summary, indent=1))
    if summary["eval"]:
        e = summary["eval"]
        corr = "n/a" if e["length_corr"] is None else f"{e['length_corr']:+.3f}"
        console.print(f"rm: held-out accuracy {e['accuracy']:.3f} on {e['pairs']} pairs, loss {e['loss']:.4f}, "
                      f"ece {e['ece']:.3f}, length corr {corr}", soft_wrap=True)


def resume_training(cfg: RMConfig, run_dir: Path, model: RewardModel, optimizer) -> int:
    """Load the newest complete checkpoint into model and optimizer (on every rank); return the step to continue
    from."""
    ckpt = checkpoint_to_resume(cfg, run_dir)
    if ckpt is None:
        return 0
    if has_adapters(model):  # LoRA: the checkpoint holds the adapter and the head; the base is cfg.model
        load_adapter_checkpoint(model, ckpt)
    else:
        refuse_adapter_checkpoint(ckpt)
        saved = RewardModel.from_pretrained(ckpt, trust_remote_code=cfg.trust_remote_code)
        distributed.load_weights(model, saved.state_dict())
    state = load_trainer_state(ckpt)
    distributed.load_optimizer_state(model, optimizer, state["optimizer"])
    set_rng_state(state["rng"])
    return int(state["step"])
