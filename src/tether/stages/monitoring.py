"""Glue between a training stage and `tether.monitor`: samples with their labels and held-out scores, the
pushback probe, alerts.jsonl, the best checkpoint, and the monitor's state inside the trainer state.

The stage's loop makes one call per monitored step, `RunMonitor.step`, and stops when it says so.

Held-out signals, never trained on: "gold" reads the world's gold reward as an audit (the same judge that logs
`gold`), "heldout_rm" a second reward model. Prompt labels (benign, false premise) come from the world's parse of
the prompt, the prompt's metadata, not from the gold reward.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from rich.console import Console

from tether.monitor import Alert, Monitor, MonitorConfig, Sample
from tether.monitor.text import flip_rate
from tether.rewards_source import prompt_text
from tether.training import MetricsLog

console = Console(stderr=True)
ALERTS = "alerts.jsonl"
BEST = "best"


def gold_rewards(world, prompts: Sequence, responses: Sequence[str]) -> list[float | None]:
    """Gold reward per response, None for prompts the world does not know (evaluation and audit only)."""
    return [world.judge(prompt_text(p), r).reward if world.parse(prompt_text(p)) else None
            for p, r in zip(prompts, responses)]


def heldout_kind(cfg: MonitorConfig, world) -> str:
    """The held-out signal that cfg.heldout names ("auto": gold with a world, else heldout_rm when set, else none)."""
    if cfg.heldout != "auto":
        return cfg.heldout
    return "gold" if world is not None else "heldout_rm" if cfg.heldout_rm else "none"


def heldout_scorer(cfg: MonitorConfig, world, trust_remote_code: bool = False) -> Callable | None:
    """(prompts, responses) -> a held-out score per response (None where unknown), or None without a signal."""
    kind = heldout_kind(cfg, world)
    if kind == "gold":
        if world is None:
            from tether.errors import ConfigError

            raise ConfigError("monitor.heldout: gold needs a world (the stage's world, or monitor.world)")
        return lambda prompts, responses: gold_rewards(world, prompts, responses)
    if kind == "heldout_rm":
        from tether.rewards_source import RewardModelSource

        rm = RewardModelSource(cfg.heldout_rm, trust_remote_code=trust_remote_code)
        return lambda prompts, responses: rm(prompts, responses).tolist()
    return None


def prompt_labels(world, prompt) -> tuple[bool | None, bool | None]:
    """(benign, false_premise) of a prompt from the world's parse; (None, None) for unknown prompts or no world."""
    q = world.parse(prompt_text(prompt)) if world is not None else None
    return (None, None) if q is None else (q.category != "harmful", q.category == "false_premise")


def make_samples(prompts: Sequence, responses: Sequence[str], scores=None, lengths=None, eos=None, heldout=None,
                 world=None) -> list[Sample]:
    """Monitor samples from a stage's parallel lists (each optional list None or of len(prompts))."""
    n = len(prompts)
    scores, lengths, eos, heldout = (list(x) if x is not None else [None] * n for x in (scores, lengths, eos, heldout))
    out = []
    for i, p in enumerate(prompts):
        benign, false_premise = prompt_labels(world, p)
        out.append(Sample(prompt_text(p), responses[i], None if scores[i] is None else float(scores[i]),
                          None if lengths[i] is None else float(lengths[i]),
                          None if eos[i] is None else bool(eos[i]), heldout[i], benign, false_premise))
    return out


def pushback_flips(answer: Callable[[list], list[str]], prompts: Sequence, pushback: str) -> float | None:
    """The flip probe: answer each prompt, then the conversation [prompt, answer, pushback]; the share of answers
    that change or concede (`text.flip_rate`). `answer(conversations)` returns one response per message list."""
    if not prompts:
        return None
    chats = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]
    first = answer(chats)
    second = answer([c + [{"role": "assistant", "content": a}, {"role": "user", "content": pushback}]
                     for c, a in zip(chats, first)])
    return flip_rate(first, second)


class RunMonitor:
    """The monitor of one run folder: alerts.jsonl, out/best with best.json, the state for checkpoints."""

    def __init__(self, cfg: MonitorConfig, run_dir: Path, resume_step: int, world=None,
                 trust_remote_code: bool = False):
        self.cfg, self.run_dir, self.world = cfg, Path(run_dir), world
        self.monitor = Monitor(cfg)
        self.alerts_path = self.run_dir / ALERTS
        if self.alerts_path.exists():  # keep the lines up to a resumed step (none on a fresh run)
            MetricsLog(self.alerts_path, resume_step)
        self.heldout = heldout_scorer(cfg, world, trust_remote_code)

    def score_heldout(self, prompts: Sequence, responses: Sequence[str]) -> list[float | None]:
        return self.heldout(prompts, responses) if self.heldout is not None else [None] * len(prompts)

    def step(self, step: int, samples: Sequence[Sample], extra: dict, best_value: float | None,
             save_best: Callable[[Path], None], smoothed: bool = False) -> tuple[dict, bool]:
        """Measure, alert (alerts.jsonl, printed once as each starts firing), keep the best policy (save_best(out/
        best) at a new best of `best_value`, or with `smoothed` of the held-out signal's window mean); returns (the
        monitor/... metrics, whether to stop)."""
        metrics, started = self.monitor.observe(step, samples, extra)
        if smoothed:
            best_value = self.monitor.smoothed_heldout()
        for alert in started:
            with self.alerts_path.open("a") as f:
                f.write(json.dumps(alert.to_dict()) + "\n")
            console.print(f"[bold red]monitor alert[/] step {alert.step} {alert.name}: {alert.message}")
        self.offer_best(step, best_value, save_best)
        stop = self.monitor.should_stop(started)
        if stop:
            console.print(f"monitor: stopping at step {step} ({', '.join(a.name for a in started)}); best "
                          f"held-out checkpoint: {self._best_text()}")
        return metrics, stop

    def observe_evaluation(self, step: int, prompts: Sequence, responses: Sequence[str]) -> dict:
        """The rates of the stage's evaluation at `step` (its held-out prompts, one per response, labelled by the
        world) paired with step 0's (`Monitor.observe_evaluation`): monitor/eval_... metrics, for the same step's
        `step(extra={"evaluation": ...})`."""
        return self.monitor.observe_evaluation(step, make_samples(prompts, responses, world=self.world))

    def record_evaluation(self, step: int, value: float | None, se: float | None) -> None:
        """The held-out signal of the stage's evaluation at `step` (its mean and standard error; step 0: the
        initial policy): heldout_drop then reads evaluations, not the noisier per-step samples."""
        self.monitor.record_evaluation(step, value, se)

    def offer_best(self, step: int, value: float | None, save_best: Callable[[Path], None]) -> None:
        """At a new best of the held-out signal, save_best(out/best) and write out/best/best.json."""
        if self.cfg.keep_best and self.monitor.is_best(step, value):
            save_best(self.run_dir / BEST)
            (self.run_dir / BEST / "best.json").write_text(json.dumps(
                {"step": step, "value": value, "signal": heldout_kind(self.cfg, self.world)}))

    def _best_text(self) -> str:
        if self.monitor.best_step is None:
            return "none (no held-out signal)"
        return f"{self.run_dir / BEST} (step {self.monitor.best_step}, {self.monitor.best_value:+.3f})"

    def state_dict(self) -> dict:
        return self.monitor.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.monitor.load_state_dict(state)


def alert_rows(run_dir: Path) -> list[Alert]:
    """The alerts of a run folder, in order."""
    path = Path(run_dir) / ALERTS
    lines = path.read_text().splitlines() if path.exists() else []
    return [Alert(**json.loads(line)) for line in lines if line]


@torch.no_grad()
def answer_greedy(model, fmt, max_new_tokens: int, batch_size: int, max_prompt_length: int | None = None
                  ) -> Callable[[list], list[str]]:
    """answer(conversations) -> greedy responses (conversations cut to max_prompt_length tokens), leaving the global
    RNG untouched (resume equality)."""
    from tether.generation import generate

    def answer(chats: list) -> list[str]:
        with torch.random.fork_rng(devices=[]):
            return generate(model, fmt, chats, max_new_tokens, 0.0, batch_size, 0, label="monitor pushback",
                            max_prompt_length=max_prompt_length, field="monitor.max_new_tokens")
    return answer


def open_monitor(cfg: MonitorConfig, run_dir: Path, start: int, trust_remote_code: bool = False) -> RunMonitor | None:
    """A preference stage's monitor (None when disabled, and on every rank but 0) with the world of cfg.world for the
    gold audit, its state restored from the newest checkpoint when resuming at `start` > 0."""
    from tether import distributed
    from tether.checkpoint import latest_checkpoint, load_trainer_state

    if not cfg.enabled or not distributed.is_main():
        return None
    world = None
    if cfg.world:
        from tether.world.build import load_world

        world = load_world(cfg.world)
    monitor = RunMonitor(cfg, run_dir, start, world, trust_remote_code)
    saved = load_trainer_state(latest_checkpoint(run_dir)).get("monitor") if start else None
    if saved:  # {} or absent: the run was saved with the monitor off, so it starts fresh here
        monitor.load_state_dict(saved)
    return monitor
