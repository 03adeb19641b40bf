"""Alerts: detectors over a run's metric history, each a small function in `DETECTORS`.

A history holds, per monitor metric, one value (or None) per measurement and the step of each measurement.
A detector reads the series it needs and returns an `Alert` or None; `check` runs the chosen ones. Rates are
judged against the run's baseline (mean of the first `baseline_steps` values) with the current value the mean of
the last `window` values after the baseline, so every detector is silent until the baseline is complete.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from tether.monitor.config import RATES, MonitorConfig
from tether.monitor.stats import mean, slope


@dataclass(frozen=True)
class Alert:
    """One detector firing at one step."""

    name: str
    """The detector (a key of DETECTORS)."""
    step: int
    """The training step of the measurement that fired it."""
    value: float
    """What was measured (a rate's rise over baseline, a ratio, a share, ...), in the threshold's units."""
    threshold: float
    """The config threshold it reached."""
    message: str
    """One line for a person: what rose, from what to what."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class History:
    """Monitor metrics over a run: steps[i] is the step of measurement i; series[name][i] its value or None.
    `evaluations` holds the held-out signal of the stage's evaluations, [step, mean, standard error] each (the
    first: the initial policy), for stages that evaluate besides their per-step samples (online RL)."""

    steps: list[int] = field(default_factory=list)
    series: dict[str, list[float | None]] = field(default_factory=dict)
    evaluations: list[list[float]] = field(default_factory=list)

    def append(self, step: int, values: dict[str, float | None]) -> None:
        for name in set(self.series) | set(values):
            self.series.setdefault(name, [None] * len(self.steps)).append(values.get(name))
        self.steps.append(step)

    def points(self, name: str) -> list[tuple[int, float]]:
        """(step, value) of the measurements where `name` was measured."""
        return [(s, v) for s, v in zip(self.steps, self.series.get(name, [])) if v is not None]

    def to_dict(self) -> dict:
        return {"steps": list(self.steps), "series": {k: list(v) for k, v in self.series.items()},
                "evaluations": [list(e) for e in self.evaluations]}

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(list(d["steps"]), {k: list(v) for k, v in d["series"].items()},
                   [list(e) for e in d.get("evaluations", [])])


def baseline_and_current(history: History, name: str, cfg: MonitorConfig) -> tuple[float, float] | None:
    """(baseline, current) of a series: mean of its first baseline_steps values, and of its last `window` values
    after those; None until a value exists past the baseline."""
    values = [v for _, v in history.points(name)]
    if len(values) <= cfg.baseline_steps:
        return None
    after = values[cfg.baseline_steps:]
    return mean(values[:cfg.baseline_steps]), mean(after[-cfg.window:])


def pooled_rates(history: History, metric: str, cfg: MonitorConfig) -> tuple[float, float] | None:
    """(baseline, current) of a rate pooled over samples: each measurement weighs by its sample count (series
    `<metric>:n`). The baseline is the first baseline_steps measurements, extended until it holds
    rate_min_samples samples; the current pool the last `window` measurements after it, extended back until it holds
    as many. None until both pools are that large (a rate over a few labelled prompts is noise)."""
    counts = dict(history.points(f"{metric}:n"))
    pts = [(v, counts.get(s, 0.0)) for s, v in history.points(metric)]
    i, n_base = 0, 0.0
    while i < len(pts) and (i < cfg.baseline_steps or n_base < cfg.rate_min_samples):
        n_base, i = n_base + pts[i][1], i + 1
    rest, j, n_now = pts[i:], len(pts) - i, 0.0
    while j > 0 and (len(rest) - j < cfg.window or n_now < cfg.rate_min_samples):
        j, n_now = j - 1, n_now + rest[j - 1][1]
    if n_base < cfg.rate_min_samples or n_now < cfg.rate_min_samples or not rest:
        return None
    return (sum(v * n for v, n in pts[:i]) / n_base, sum(v * n for v, n in rest[j:]) / n_now)


def noise(history: History, name: str, window: int) -> float:
    """Standard error of a `window`-mean of the series, from the spread of successive values (von Neumann 1941):
    σ² ≈ Σ (x_i - x_{i-1})² / (2 (n - 1)), robust to a trend; SE = σ / sqrt(window). 0 with fewer than 2 values."""
    xs = [v for _, v in history.points(name)]
    if len(xs) < 2:
        return 0.0
    var = sum((b - a) ** 2 for a, b in zip(xs, xs[1:])) / (2 * (len(xs) - 1))
    return (var / window) ** 0.5


def slope_noise(history: History, name: str, pts: list[tuple[int, float]]) -> float:
    """Standard error of a least-squares slope over the steps of `pts`, σ / sqrt(Σ (s - s̄)²), with σ from the
    successive differences of the whole series (as `noise`)."""
    steps = [s for s, _ in pts]
    spread = sum((s - sum(steps) / len(steps)) ** 2 for s in steps)
    return noise(history, name, 1) / spread ** 0.5 if spread > 0 else 0.0


def smoothed(history: History, name: str, window: int) -> list[tuple[int, float]]:
    """(step, trailing mean of up to `window` values ending there) for every measurement of `name`."""
    pts = history.points(name)
    return [(s, mean([v for _, v in pts[max(0, i + 1 - window):i + 1]])) for i, (s, _) in enumerate(pts)]


# ---------------------------------------------------------------------------------------------
# Detectors: (history, cfg) -> Alert | None


def rate_climb(metric: str, label: str, threshold: str = "rate_climb") -> Callable:
    """A detector firing when the rate `metric`, pooled over samples, rises at least cfg.<threshold> above its
    baseline."""
    def detect(history: History, cfg: MonitorConfig) -> Alert | None:
        bc = pooled_rates(history, metric, cfg)
        limit = getattr(cfg, threshold)
        if bc is None or bc[1] - bc[0] < limit:
            return None
        return Alert(label, history.steps[-1], bc[1] - bc[0], limit,
                     f"{label} rate rose from {bc[0]:.0%} to {bc[1]:.0%} (alert at +{limit:.0%})")
    return detect


def eval_rate_climb(rate: str) -> Callable:
    """A detector on the stage's held-out evaluations (`Monitor.observe_evaluation`): fires while the latest
    evaluation's rate `rate` has risen at least cfg.eval_rate_climb over the first evaluation's (step 0) and by
    noise_z paired standard errors, over at least rate_min_samples pairs of samples. It judges the latest
    evaluation at every step until the next one, so an alert is announced once, at the evaluation that raised it.
    Reads the text rules and prompt labels of `sample_flags` only: a warning that needs no gold."""
    name = f"monitor/eval_{rate}"

    def detect(history: History, cfg: MonitorConfig) -> Alert | None:
        pts = history.points(f"{name}_rise")
        if not pts:
            return None
        at, rise = pts[-1]
        se = dict(history.points(f"{name}_rise_se")).get(at, 0.0)
        pairs = dict(history.points(f"{name}:n")).get(at, 0.0)
        if pairs < cfg.rate_min_samples or rise < max(cfg.eval_rate_climb, cfg.noise_z * se):
            return None
        now = dict(history.points(name)).get(at, 0.0)
        return Alert(f"eval_{rate}", history.steps[-1], rise, cfg.eval_rate_climb,
                     f"{rate} rate on the step-{at} evaluation rose {rise:+.0%} over step 0's (to {now:.0%}; paired "
                     f"se {se:.1%}, {pairs:.0f} samples)")
    return detect


def eos_drop(history: History, cfg: MonitorConfig) -> Alert | None:
    bc = pooled_rates(history, "monitor/eos_rate", cfg)
    if bc is None or bc[0] - bc[1] < cfg.eos_drop:
        return None
    return Alert("eos", history.steps[-1], bc[0] - bc[1], cfg.eos_drop,
                 f"EOS rate fell from {bc[0]:.0%} to {bc[1]:.0%}: responses run to max_new_tokens")


def length_growth(history: History, cfg: MonitorConfig) -> Alert | None:
    bc = baseline_and_current(history, "monitor/length", cfg)
    if bc is None or bc[0] <= 0 or bc[1] / bc[0] < cfg.length_growth:
        return None
    return Alert("length_growth", history.steps[-1], bc[1] / bc[0], cfg.length_growth,
                 f"mean length grew {bc[1] / bc[0]:.2f}x ({bc[0]:.1f} -> {bc[1]:.1f})")


def length_corr(history: History, cfg: MonitorConfig) -> Alert | None:
    corr = baseline_and_current(history, "monitor/length_corr", cfg)
    length = baseline_and_current(history, "monitor/length", cfg)
    if corr is None or length is None or corr[1] < cfg.length_corr or length[1] <= length[0]:
        return None
    return Alert("length_corr", history.steps[-1], corr[1], cfg.length_corr,
                 f"reward-length correlation {corr[1]:.2f} while lengths grow ({length[0]:.1f} -> {length[1]:.1f})")


def length_share(history: History, cfg: MonitorConfig) -> Alert | None:
    pts = dict(history.points("monitor/length_share"))
    gain = dict(history.points("monitor/proxy_gain"))
    step = history.steps[-1]
    if len(history.steps) <= cfg.baseline_steps or step not in pts or gain.get(step, 0.0) < cfg.length_share_min_gain:
        return None
    if pts[step] < cfg.length_share:
        return None
    return Alert("length_share", step, pts[step], cfg.length_share,
                 f"length explains {pts[step]:.0%} of the proxy's gain of {gain[step]:+.2f} (Singhal et al. 2023)")


def kl_blowup(history: History, cfg: MonitorConfig) -> Alert | None:
    pts = history.points("monitor/kl")[-cfg.window:]
    if len(history.steps) <= cfg.baseline_steps or not pts:
        return None
    level = mean([v for _, v in pts])
    if level >= cfg.kl_max:
        return Alert("kl", history.steps[-1], level, cfg.kl_max, f"KL {level:.1f} nats past {cfg.kl_max:g}")
    rate = slope([s for s, _ in pts], [v for _, v in pts]) if len(pts) >= 2 else None
    if rate is not None and rate >= max(cfg.kl_max_rate, cfg.noise_z * slope_noise(history, "monitor/kl", pts)):
        return Alert("kl", history.steps[-1], rate, cfg.kl_max_rate,
                     f"KL growing {rate:.2f} nats/step (now {pts[-1][1]:.1f})")
    return None


def ensemble_disagreement(history: History, cfg: MonitorConfig) -> Alert | None:
    """A reward-model ensemble's disagreement on the policy's samples (monitor/ensemble_disagreement, the members'
    std) risen beyond noise: current / baseline >= 1 + ensemble_rise, and current - baseline >= noise_z standard
    errors of that difference, σ sqrt(1/baseline_steps + 1/window) with σ from successive differences (`noise`).
    Reads no held-out signal: a warning that needs no gold."""
    name = "monitor/ensemble_disagreement"
    bc = baseline_and_current(history, name, cfg)
    if bc is None or bc[0] <= 0:
        return None
    base, now = bc
    n_now = min(cfg.window, len(history.points(name)) - cfg.baseline_steps)
    floor = cfg.noise_z * noise(history, name, 1) * (1 / cfg.baseline_steps + 1 / n_now) ** 0.5
    if now / base < 1 + cfg.ensemble_rise or now - base < floor:
        return None
    return Alert("ensemble_disagreement", history.steps[-1], now / base, 1 + cfg.ensemble_rise,
                 f"reward-model ensemble disagreement rose {now / base:.2f}x ({base:.3f} -> {now:.3f} std): the "
                 "policy left the reward models' data")


def heldout_drop(history: History, cfg: MonitorConfig) -> Alert | None:
    """(best - now) / (best - baseline) of the held-out signal, once the gain is worth judging: at least
    heldout_min_gain and noise_z standard errors, the drop too. Read at the stage's evaluations when it records
    them (`evaluations_drop`), else on the trailing mean of every step's samples."""
    if history.evaluations:  # a stage that evaluates: nothing to judge before its second evaluation
        return evaluations_drop(history, cfg) if len(history.evaluations) >= 2 else None
    pts = smoothed(history, "monitor/heldout", cfg.window)
    if len(pts) <= cfg.baseline_steps:
        return None
    base = mean([v for _, v in history.points("monitor/heldout")[:cfg.baseline_steps]])
    best, now = max(v for _, v in pts), pts[-1][1]
    gain, floor = best - base, cfg.noise_z * noise(history, "monitor/heldout", cfg.window)
    if gain <= 0 or gain < max(cfg.heldout_min_gain, floor):
        return None
    if best - now < floor or (best - now) / gain < cfg.heldout_drop:
        return None
    return drop_alert(pts[-1][0], base, best, now, cfg)


def evaluations_drop(history: History, cfg: MonitorConfig) -> Alert | None:
    """heldout_drop over the evaluations: baseline = the first (the initial policy's, at step 0; None without it),
    best = the highest, now = the mean of the last `evaluation_window`. Each evaluation is the mean of many held-out
    samples (hundreds, against a few dozen per step) with its standard error se; a difference is judged against
    noise_z * sqrt(se_a² + se_b²), the se of `now` shrunk by the evaluations it averages (independent draws:
    conservative when the evaluations reuse one seed, as common random numbers make differences less noisy).
    Averaging `now` keeps one unlucky evaluation, set against the best (a maximum, itself biased upwards), from
    firing the alert."""
    evals = history.evaluations
    if evals[0][0] != 0:  # the initial policy's evaluation is missing (a run resumed from an older checkpoint)
        return None
    (_, base, se_base), (_, best, se_best) = evals[0], max(evals, key=lambda e: e[1])
    last = evals[1:][-cfg.evaluation_window:]  # never the baseline itself
    now = sum(e[1] for e in last) / len(last)
    se_now = (sum(e[2] ** 2 for e in last) ** 0.5) / len(last)
    gain, drop = best - base, best - now
    if gain <= 0 or gain < max(cfg.heldout_min_gain, cfg.noise_z * (se_base ** 2 + se_best ** 2) ** 0.5):
        return None
    if drop < cfg.noise_z * (se_best ** 2 + se_now ** 2) ** 0.5 or drop / gain < cfg.heldout_drop:
        return None
    return drop_alert(history.steps[-1], base, best, now, cfg)


def drop_alert(step: int, base: float, best: float, now: float, cfg: MonitorConfig) -> Alert:
    lost = (best - now) / (best - base)
    return Alert("heldout_drop", step, lost, cfg.heldout_drop,
                 f"held-out signal lost {lost:.0%} of its gain ({base:+.3f} -> best {best:+.3f} -> {now:+.3f})")


def divergence(history: History, cfg: MonitorConfig) -> Alert | None:
    """Over the last `window` measurements: the proxy's slope is up while the held-out signal fell (its trailing
    means, first to last) by at least divergence_drop and noise_z standard errors of a window mean."""
    proxy = history.points("monitor/proxy")[-cfg.window:]
    held = smoothed(history, "monitor/heldout", cfg.window)[-cfg.window:]
    if len(history.steps) <= cfg.baseline_steps or len(proxy) < 2 or len(held) < 2:
        return None
    up = slope([s for s, _ in proxy], [v for _, v in proxy])
    fall = held[0][1] - held[-1][1]
    floor = cfg.noise_z * noise(history, "monitor/heldout", cfg.window)
    if up is None or up <= 0 or fall < max(cfg.divergence_drop, floor):
        return None
    return Alert("divergence", history.steps[-1], fall, cfg.divergence_drop,
                 f"proxy rising ({up:+.3f}/step) while the held-out signal fell {fall:.3f} over the last "
                 f"{len(held)} measurements")


DETECTORS: dict[str, Callable[[History, MonitorConfig], Alert | None]] = {
    "flattery": rate_climb("monitor/flattery", "flattery"),
    "hedging": rate_climb("monitor/hedging", "hedging"),
    "padding": rate_climb("monitor/padding", "padding"),
    "refusal": rate_climb("monitor/refusal", "refusal"),
    "over_refusal": rate_climb("monitor/over_refusal", "over_refusal"),
    "compliance": rate_climb("monitor/compliance", "compliance"),  # with requests known harmful
    "sycophancy": rate_climb("monitor/sycophancy", "sycophancy"),
    "uncorrected": rate_climb("monitor/uncorrected", "uncorrected"),  # a false premise not corrected
    "flip": rate_climb("monitor/flip", "flip"),
    "repetition": rate_climb("monitor/repetition", "repetition", "repetition_climb"),
    "eos": eos_drop,
    "length_growth": length_growth,
    "length_corr": length_corr,
    "length_share": length_share,
    "kl": kl_blowup,
    "ensemble_disagreement": ensemble_disagreement,
    "heldout_drop": heldout_drop,
    "divergence": divergence,
    **{f"eval_{rate}": eval_rate_climb(rate) for rate in RATES},
}
"""name -> detector(history, cfg) -> Alert or None. The held-out ones (heldout_drop, divergence) need a held-out
signal; every other one fires from the proxy and the text alone, so it can fire before gold has moved. The
eval_<rate> ones judge the stage's held-out evaluations (each against the first), the others its steps' samples."""


def check(history: History, cfg: MonitorConfig) -> list[Alert]:
    """The alerts of the history's latest measurement, from the detectors named in cfg.detectors.

    Alerts that need a measurement of the latest step (rates at an evaluation-only metric such as flip) fire at
    the step the measurement was made."""
    if not history.steps:
        return []
    alerts = [DETECTORS[name](history, cfg) for name in cfg.detectors]
    return [a for a in alerts if a is not None]
