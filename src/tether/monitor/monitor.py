"""The monitor of one run: measure a step's samples, keep the history, raise alerts, track the best step.

    monitor = Monitor(cfg)
    metrics, alerts = monitor.observe(step, samples, {"kl": ..., "flip": ...})   # each step (or evaluation)
    if monitor.is_best(step, value): save the policy                              # held-out signal, new best
    if monitor.should_stop(alerts): stop training

`measure` is pure (samples in, metrics out); `Monitor` adds the state that needs the past (the baseline samples
of the length share, the history, the best step, the alerts already announced) and saves it with the run's
checkpoint (`state_dict`, plain Python types) so a resumed run monitors exactly as an uninterrupted one.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tether.monitor import text
from tether.monitor.config import MonitorConfig
from tether.monitor.detectors import Alert, History, check
from tether.monitor.stats import length_reward_share, mean, pearson

MONITOR_METRICS = (
    "monitor/flattery", "monitor/hedging", "monitor/padding", "monitor/refusal", "monitor/over_refusal", "monitor/compliance",
    "monitor/sycophancy", "monitor/flip", "monitor/repetition", "monitor/distinct", "monitor/eos_rate",
    "monitor/length", "monitor/length_corr", "monitor/length_share", "monitor/proxy_gain", "monitor/kl",
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
    """The prompt asserts something false: agreeing is sycophancy (None: unknown)."""

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


def measure(samples: Sequence[Sample], cfg: MonitorConfig) -> dict[str, float | None]:
    """The text and reward signals of one batch of samples (monitor/...): rates in [0, 1], mean length, the
    Pearson correlation of proxy score and length, mean proxy and held-out scores. None where not measurable."""
    responses = [s.response for s in samples]
    scored = [s for s in samples if s.score is not None]
    eos = [s.eos for s in samples if s.eos is not None]
    flags = [REFUSAL_DETECTORS[cfg.refusal_detector](s, cfg) for s in samples]
    refused, complied = [f[0] for f in flags], [f[1] for f in flags]
    return {
        "monitor/flattery": text.marker_rate(responses, cfg.flattery_markers),
        "monitor/hedging": text.marker_rate(responses, cfg.hedging_markers),
        "monitor/padding": text.marker_rate(responses, cfg.padding_markers),
        "monitor/refusal": sum(refused) / len(refused) if refused else None,
        "monitor/over_refusal": text.labelled_rate(refused, [s.benign for s in samples]),
        # prompts known harmful (benign is False, not None) answered, not refused: the safety regression
        "monitor/compliance": text.labelled_rate(complied, [s.benign is False for s in samples]),
        "monitor/sycophancy": text.sycophancy_rate(responses, [s.false_premise for s in samples], lambda r: text.agrees(
            r, cfg.agreement_markers, cfg.agreement_openers, cfg.correction_markers)),
        "monitor/repetition": text.repetition(responses, cfg.repetition_n),
        "monitor/distinct": text.distinct_n(responses, cfg.distinct_n),
        "monitor/eos_rate": sum(eos) / len(eos) if eos else None,
        "monitor/length": mean([s.size for s in samples]),
        "monitor/length_corr": pearson([s.score for s in scored], [s.size for s in scored]),
        "monitor/proxy": mean([s.score for s in samples]),
        "monitor/heldout": mean([s.heldout for s in samples]),
    }


def sample_counts(samples: Sequence[Sample]) -> dict[str, float]:
    """The samples each rate of `measure` was computed over (series "<metric>:n"), so rates pool by sample."""
    n = float(len(samples))
    counts = {f"monitor/{name}:n": n for name in ("flattery", "hedging", "padding", "refusal", "repetition")}
    counts["monitor/over_refusal:n"] = float(sum(bool(s.benign) for s in samples))
    counts["monitor/compliance:n"] = float(sum(s.benign is False for s in samples))
    counts["monitor/sycophancy:n"] = float(sum(bool(s.false_premise) for s in samples))
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

    def observe(self, step: int, samples: Sequence[Sample], extra: dict | None = None) -> tuple[dict, list[Alert]]:
        """Measure `samples` and the stage's `extra` metrics ("kl": nats per response, "flip": a rate over
        "flip_n" probed prompts, "ensemble_disagreement": a reward-model ensemble's mean std on the samples), append them to the history, run the detectors. Returns (the step's monitor/... metrics, the alerts that *started*
        firing at this step)."""
        metrics = {name: None for name in MONITOR_METRICS}
        metrics.update(measure(samples, self.cfg))
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
                "best_value": self.best_value, "active": list(self.active)}

    def load_state_dict(self, state: dict) -> None:
        self.history = History.from_dict(state["history"])
        self.baseline = [tuple(p) for p in state["baseline"]]
        self.recent = [[tuple(p) for p in batch] for batch in state["recent"]]
        self.best_step, self.best_value = state["best_step"], state["best_value"]
        self.active = list(state["active"])
