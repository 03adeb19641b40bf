"""The settings of `tether dpo`: the pair losses of the DPO family and KTO (loss=kto)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tether.config import check, check_prompt_limit
from tether.data.formats import check_format
from tether.math.dpo_losses import DPO_LOSSES, UNPAIRED_LOSSES
from tether.monitor import MonitorConfig
from tether.training import TrainConfig


@dataclass
class DPOConfig(TrainConfig):
    """Direct preference optimisation of a causal LM on tether preference JSONL, against a frozen reference."""

    data: str = "runs/collect/preferences.jsonl"
    """tether preference JSONL, every row labelled ("A", "B" or "tie"; null is an error). One row per rating:
    several ratings of one pair are separate rows and each counts. loss=kto also reads TRL unpaired rows
    {"prompt", "completion", "label": true|false} (tether.data.unpaired). Also TRL, HH-RLHF or UltraFeedback
    preference data (tether.data.formats); JSONL, Parquet, Arrow or a save_to_disk folder."""
    format: str = "auto"
    """Format of data: auto (told from the first row's keys) or a name from `tether data --help`:
    tether, trl, hh, ultrafeedback_binarized, ultrafeedback; loss=kto also trl_unpaired."""
    split: str | None = None
    """Split of data when it is a `datasets` save_to_disk DatasetDict folder (e.g. train_prefs);
    None for a file."""
    model: str = "runs/sft/model"
    """HF folder of the policy's initial weights, with its tokenizer; also the reference unless ref_model is set."""
    ref_model: str | None = None
    """Another HF folder as the frozen reference π_ref (same tokenizer as model); None: the initial policy."""
    loss: Literal["sigmoid", "ipo", "cdpo", "robust", "simpo", "kto"] = "sigmoid"
    """A key of tether.math.dpo_losses.DPO_LOSSES: sigmoid (DPO), ipo, cdpo, robust (rDPO) or simpo; or kto
    (UNPAIRED_LOSSES: unpaired rows, tether.stages.dpo.unpaired). Ties are kept by ipo only."""
    beta: float = 0.1
    """β: how tightly the policy is tethered to the reference (IPO's τ); SimPO's reward scale (use ~2)."""
    label_smoothing: float = 0.0
    """ε, the assumed rate of flipped labels, for cdpo and robust; in [0, 0.5)."""
    simpo_gamma: float = 0.5
    """SimPO's target margin γ on β x (mean log-prob of chosen - of rejected)."""
    desirable_weight: float = 1.0
    """KTO's λ_D, the weight of desirable rows (the paper: λ_D n_D / (λ_U n_U) in [1, 4/3])."""
    undesirable_weight: float = 1.0
    """KTO's λ_U, the weight of undesirable rows."""
    max_length: int = 256
    """Longest prompt + response in tokens; a prompt is cut to fit, a pair (row) whose response alone does not fit is
    dropped, both counted in data_report.json."""
    max_prompt_length: int | None = None
    """Longest prompt in tokens, cut the same way (None: only max_length limits it)."""
    trust_remote_code: bool = False
    """Allow the model folders' own Python code to run (only for models you trust)."""
    out: str = "runs/dpo"
    """Run folder: metrics.jsonl, config.yaml, data_report.json, ref_logps.safetensors, checkpoints/, model/."""
    batch_size: int = 32
    """Pairs per optimizer step (each is two sequences); rows (one sequence each) for kto."""
    micro_batch_size: int = 32
    """Pairs per forward pass (2 x this many sequences); batch_size / micro_batch_size is the accumulation."""
    lr: float = 1e-4
    """Peak learning rate of AdamW (DPO wants far less than SFT)."""
    warmup_steps: int = 10
    """Linear warmup steps."""
    eval_fraction: float = 0.1
    """Share of the prompts held out, split by prompt: no prompt is on both sides."""
    eval_every: int = 50
    """Steps between held-out evaluations (0: only at the end)."""
    kl_eval_prompts: int = 0
    """Held-out prompts sampled from the policy at each evaluation for the KL(π || π_ref) estimate (0: off)."""
    kl_eval_max_new_tokens: int = 64
    """Longest sampled response of the KL estimate, in tokens."""
    share_prompts: bool = True
    """Run each prompt of a forward pass once (a pair's chosen and rejected share it): the prompt and its responses
    in one row under a mask that keeps each response to the prompt and itself (sdpa or eager attention), else the
    responses after the prompt's cached keys and values (tether.logprobs; tested equal, and used only where exact:
    full-attention models without gradient checkpointing, one process). false: every sequence whole."""
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """The reward-hacking monitor (tether.monitor), run at each evaluation on sampled held-out responses; gold (with
    monitor.world) is an audit signal only, never trained on."""

    def validate(self) -> None:
        super().validate()
        check(bool(self.data), "data", "is required")
        check(bool(self.model), "model", "is required")
        check(self.loss in {**DPO_LOSSES, **UNPAIRED_LOSSES}, "loss",
              f"must be one of {', '.join({**DPO_LOSSES, **UNPAIRED_LOSSES})}")
        check_format(self.format, "unpaired" if self.loss in UNPAIRED_LOSSES else "comparisons")
        check(self.desirable_weight > 0, "desirable_weight", "must be > 0")
        check(self.undesirable_weight > 0, "undesirable_weight", "must be > 0")
        check(self.beta > 0, "beta", "must be > 0")
        check(0 <= self.label_smoothing < 0.5, "label_smoothing", "must be in [0, 0.5)")
        check(self.kl_eval_prompts >= 0, "kl_eval_prompts", "must be >= 0")
        check(self.kl_eval_prompts == 0 or self.eval_fraction > 0, "kl_eval_prompts",
              "needs held-out prompts (eval_fraction > 0)")
        check(self.kl_eval_max_new_tokens > 0, "kl_eval_max_new_tokens", "must be > 0")
        check_prompt_limit(self.max_prompt_length)
        check(self.strategy != "fsdp2" or not (self.kl_eval_prompts or self.monitor.enabled), "strategy",
              "fsdp2 cannot sample on rank 0 alone: set kl_eval_prompts=0 and monitor.enabled=false, or use ddp")
