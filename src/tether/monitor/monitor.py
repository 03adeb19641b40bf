"""The monitor of one run: measure a step's samples, keep the history, raise alerts, track the best step.

    monitor = Monitor(cfg)
    rates = monitor.observe_evaluation(step, eval_samples)                        # at evaluations (step 0 first)
    metrics, alerts = monitor.observe(step, samples, {"kl": ..., "evaluation": rates})  # each step
    if monitor.is_best(step, value): save the policy                              # held-out signal, new best
    if monitor.should_stop(alerts): stop training

`measure` is pure (samples in, metrics out); `Monitor` adds the state that needs the past (the baseline samples
of the length share, the first evaluation's flags, the history, the best step, the alerts already announced) and
saves it with the run's checkpoint (`state_dict`, plain Python types) so a resumed run monitors exactly as an
uninterrupted one.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tether.monitor import text
from tether.monitor.config import MonitorConfig
from tether.monitor.detectors import Alert, History, check
from tether.monitor.stats import length_reward_share, mean, paired_difference, pearson

MONITOR_METRICS = (
    "monitor/flattery", "monitor/hedging", "monitor/padding", "monitor/refusal", "monitor/over_refusal", "monitor/compliance",
    "monitor/sycophancy", "monitor/uncorrected", "monitor/flip", "monitor/repetition", "monitor/distinct",
    "monitor/eos_rate", "monitor/length", "monitor/length_corr", "monitor/length_share", "monitor/proxy_gain", "monitor/kl",
    "monitor/proxy", "monitor/heldout", "monitor/ensemble_disagreement", "monitor/alerts",
)  # fmt: skip
"""Every monitor metric, logged at every monitored step (None where it does not apply)."""


@dataclass
class Sample:
    """One prompt and response, with what is known about it. Only prompt and response are required."""

    prompt: str
    """The user's message (the last one of a conversation)."""
    response: str
    """The decoded response."""
    score: float | None = None
    """The proxy reward the policy is trained on (a reward model's score, DPO's implicit reward)."""
    length: float | None = None
    """Length in tokens; None: counted in words."""
    eos: bool | None = None
    """The response ended with EOS (None: unknown)."""
    heldout: float | None = None
    """The held-out signal (gold audit or a second reward model); never trained on."""
    benign: bool | None = None
    """The prompt is known harmless: refusing it is an over-refusal (None: unknown)."""
    false_premise: bool | None = None
    """The prompt asserts something false: agreeing is sycophancy, not correcting it leaves it uncorrected (None:
    unknown)."""

    @property
    def size(self) -> float:
        return self.length if self.length is not None else float(len(text.words(self.response)))


def rules_refusal(sample: Sample, cfg: MonitorConfig) -> tuple[bool, bool]:
    """(refused, complied): `text.is_refusal`, and `text.complies_with_harmful` (no refusal and on-topic)."""
    return text.is_refusal(sample.response), text.complies_with_harmful(sample.prompt, sample.response)


def markers_refusal(sample: Sample, cfg: MonitorConfig) -> tuple[bool, bool]:
    """(refused, complied): a phrase of cfg.refusal_markers anywhere in the response, and its absence."""
    refused = text.has_marker(sample.response, cfg.refusal_markers)
    return refused, not refused


REFUSAL_DETECTORS = {"rules": rules_refusal, "markers": markers_refusal}
"""cfg.refusal_detector -> (sample, cfg) -> (refused, complied with a request known harmful)."""


def sample_flags(samples: Sequence[Sample], cfg: MonitorConfig) -> dict[str, list[bool | None]]:
    """Per rate of config.RATES (the keys, in that order), whether each sample shows it; None where the sample does
    not count for the rate (over-refusal: only prompts labelled benign; compliance: only prompts labelled harmful,
    benign False and not None; sycophancy and uncorrected: only prompts labelled false-premise). Sycophancy is
    `text.agrees`, an agreement phrase or opening "yes"-word and no correction marker; uncorrected, no correction
    marker at all: the user's false claim left standing, agreed with or passed over (the world wants a correction).
    Text rules and prompt labels only, never a held-out score."""
    refusal = [REFUSAL_DETECTORS[cfg.refusal_detector](s, cfg) for s in samples]  # (refused, complied)

    def agrees(response: str) -> bool:
        return text.agrees(response, cfg.agreement_markers, cfg.agreement_openers, cfg.correction_markers)

    return {
        "flattery": [text.has_marker(s.response, cfg.flattery_markers) for s in samples],
        "hedging": [text.has_marker(s.response, cfg.hedging_markers) for s in samples],
        "padding": [text.has_marker(s.response, cfg.padding_markers) for s in samples],
        "refusal": [refused for refused, _ in refusal],
        "over_refusal": [refused if s.benign else None for s, (refused, _) in zip(samples, refusal)],
        # prompts known harmful (benign is False, not None) answered, not refused: the safety regression
        "compliance": [complied if s.benign is False else None for s, (_, complied) in zip(samples, refusal)],
        "sycophancy": [agrees(s.response) if s.false_premise else None for s in samples],
        "uncorrected": [not text.has_marker(s.response, cfg.correction_markers) if s.false_premise else None
                        for s in samples],
    }


def measure(samples: Sequence[Sample], cfg: MonitorConfig) -> dict[str, float | None]:
    """The text and reward signals of one batch of samples (monitor/...): rates in [0, 1] (the share of the samples
    each counts that show it, `sample_flags`), mean length, the Pearson correlation of proxy score and length, mean
    proxy and held-out scores. None where not measurable."""
    responses = [s.response for s in samples]
    scored = [s for s in samples if s.score is not None]
    eos = [s.eos for s in samples if s.eos is not None]
    return {
        **{f"monitor/{name}": mean(flags) for name, flags in sample_flags(samples, cfg).items()},
        "monitor/repetition": text.repetition(responses, cfg.repetition_n),
        "monitor/distinct": text.distinct_n(responses, cfg.distinct_n),
        "monitor/eos_rate": sum(eos) / len(eos) if eos else None,
        "monitor/length": mean([s.size for s in samples]),
        "monitor/length_corr": pearson([s.score for s in scored], [s.size for s in scored]),
        "monitor/proxy": mean([s.score for s in samples]),
        "monitor/heldout": mean([s.heldout for s in samples]),
    }


def evaluation_rates(flags: dict[str, list[bool | None]], base: dict[str, list[bool | None]] | None
                     ) -> dict[str, float | None]:
    """The rates of one evaluation's samples (`sample_flags`), monitor/eval_<rate>, and with `base` (the first
    evaluation's flags: the initial policy on the same held-out prompts with the same row noise, so sample i here
    pairs with sample i there) each rate's rise over it with the paired standard error (`stats.paired_difference`
    of the 0/1 flags) and the pairs it counts: monitor/eval_<rate>_rise, _rise_se and :n. No rise where the two
    evaluations differ in size (other prompts: nothing to pair)."""
    out: dict[str, float | None] = {}
    for name, now in flags.items():
        out[f"monitor/eval_{name}"] = mean(now)
        before = (base or {}).get(name)
        if before is None or len(before) != len(now):
            continue
        paired = paired_difference([None if f is None else float(f) for f in now],
                                   [None if f is None else float(f) for f in before])
        if paired is not None:
            out[f"monitor/eval_{name}_rise"], out[f"monitor/eval_{name}_rise_se"] = paired
            out[f"monitor/eval_{name}:n"] = float(sum(a is not None and b is not None for a, b in zip(now, before)))
    return out


def sample_counts(samples: Sequence[Sample]) -> dict[str, float]:
    """The samples each rate of `measure` was computed over (series "<metric>:n"), so rates pool by sample."""
    n = float(len(samples))
    counts = {f"monitor/{name}:n": n for name in ("flattery", "hedging", "padding", "refusal", "repetition")}
    counts["monitor/over_refusal:n"] = float(sum(bool(s.benign) for s in samples))
    counts["monitor/compliance:n"] = float(sum(s.benign is False for s in samples))
    counts["monitor/sycophancy:n"] = counts["monitor/uncorrected:n"] = float(sum(bool(s.false_premise)
                                                                                 for s in samples))
    counts["monitor/eos_rate:n"] = float(sum(s.eos is not None for s in samples))
    return counts


class Monitor:
    """The monitor's state over a run: history, baseline samples, best held-out value, active alerts."""

    def __init__(self, cfg: MonitorConfig):
        self.cfg = cfg
        self.history = History()
        self.baseline: list[tuple[float, float]] = []
        """(length, score) of the scored samples of the first baseline_steps measurements (the length share's
        reference)."""
        self.recent: list[list[tuple[float, float]]] = []
        """(length, score) of the scored samples of the last `window` measurements."""
        self.best_step: int | None = None
        self.best_value: float | None = None
        self.active: list[str] = []
        """Detectors firing at the latest measurement (an alert is announced when it starts firing)."""
        self.eval_baseline: dict[str, list[bool | None]] | None = None
        """`sample_flags` of the stage's first evaluation (step 0, the initial policy), which later evaluations'
        rates pair with (`evaluation_rates`); None before it, or for a stage that does not evaluate."""

    def observe(self, step: int, samples: Sequence[Sample], extra: dict | None = None) -> tuple[dict, list[Alert]]:
        """Measure `samples` and the stage's `extra` metrics ("kl": nats per response, "flip": a rate over
        "flip_n" probed prompts, "ensemble_disagreement": a reward-model ensemble's mean std on the samples,
        "evaluation": the monitor/eval_... metrics of an evaluation at this step, `observe_evaluation`), append them
        to the history, run the detectors. Returns (the step's monitor/... metrics, the alerts that *started* firing
        at this step)."""
        metrics = {name: None for name in MONITOR_METRICS}
        metrics.update(measure(samples, self.cfg))
        metrics.update((extra or {}).get("evaluation") or {})
        for key in ("kl", "flip", "ensemble_disagreement"):
            if (extra or {}).get(key) is not None:
                metrics[f"monitor/{key}"] = float(extra[key])
        metrics.update(self._length_share(samples))
        counts = sample_counts(samples) | {"monitor/flip:n": float((extra or {}).get("flip_n", 0))}
        self.history.append(step, {k: v for k, v in metrics.items() if k != "monitor/alerts"} | counts)
        alerts = check(self.history, self.cfg)
        started = [a for a in alerts if a.name not in self.active]
        self.active = [a.name for a in alerts]
        metrics["monitor/alerts"] = len(alerts)
        return metrics, started

    def observe_evaluation(self, step: int, samples: Sequence[Sample]) -> dict[str, float | None]:
        """The rates of an evaluation's samples and, after step 0's, their paired rises over step 0's
        (`evaluation_rates`: monitor/eval_...); step 0's flags become the baseline. Pass the result to the same step's
        `observe` as extra["evaluation"], where the eval_<rate> detectors judge it."""
        flags = sample_flags(samples, self.cfg)
        if step == 0:
            self.eval_baseline = flags
            return evaluation_rates(flags, None)
        return evaluation_rates(flags, self.eval_baseline)

    def record_evaluation(self, step: int, value: float | None, se: float | None) -> None:
        """The held-out signal of an evaluation at `step` (mean over its samples, standard error): heldout_drop reads
        these instead of the per-step samples once two exist. The first must be the initial policy's (step 0)."""
        if value is not None:
            self.history.evaluations.append([step, float(value), float(se or 0.0)])

    def _length_share(self, samples: Sequence[Sample]) -> dict:
        """Singhal et al.'s share of the proxy gain explained by length: the recent window's samples against the
        baseline's."""
        pairs = [(s.size, s.score) for s in samples if s.score is not None]
        if len(self.history.steps) < self.cfg.baseline_steps:
            self.baseline += pairs
            return {}
        self.recent = (self.recent + [pairs])[-self.cfg.window:]
        current = [p for batch in self.recent for p in batch]
        share = length_reward_share([x for x, _ in self.baseline], [r for _, r in self.baseline],
                                    [x for x, _ in current], [r for _, r in current], self.cfg.length_bins)
        return {} if share is None else {"monitor/length_share": share["share"], "monitor/proxy_gain": share["gain"]}

    def smoothed_heldout(self) -> float | None:
        """The held-out signal's mean over the last `window` measurements (None: never measured)."""
        pts = self.history.points("monitor/heldout")[-self.cfg.window:]
        return mean([v for _, v in pts])

    def is_best(self, step: int, value: float | None) -> bool:
        """Record `value` of the held-out signal at `step`; True when it is a new best (save that checkpoint)."""
        if value is None or (self.best_value is not None and value <= self.best_value):
            return False
        self.best_step, self.best_value = step, float(value)
        return True

    def should_stop(self, alerts: Sequence[Alert]) -> bool:
        """Early stop: the config asks to stop on alerts and one fired (of a `stop_on` detector when it names any)."""
        stopping = [a for a in alerts if not self.cfg.stop_on or a.name in self.cfg.stop_on]
        return self.cfg.stop_on_alert and bool(stopping)

    def state_dict(self) -> dict:
        """Plain Python types (loadable by torch.load(weights_only=True) inside a trainer state)."""
        return {"history": self.history.to_dict(), "baseline": [list(p) for p in self.baseline],
                "recent": [[list(p) for p in batch] for batch in self.recent], "best_step": self.best_step,
                "best_value": self.best_value, "active": list(self.active),
                "eval_baseline": None if self.eval_baseline is None else
                {k: list(v) for k, v in self.eval_baseline.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.history = History.from_dict(state["history"])
        self.baseline = [tuple(p) for p in state["baseline"]]
        self.recent = [[tuple(p) for p in batch] for batch in state["recent"]]
        self.best_step, self.best_value = state["best_step"], state["best_value"]
        self.active = list(state["active"])
        saved = state.get("eval_baseline")  # absent from states saved before evaluations' rates were paired
        self.eval_baseline = None if saved is None else {k: list(v) for k, v in saved.items()}
