"""The report's figures: matplotlib (Agg, no display, no pyplot state) to PNG data URIs embedded in the HTML.

One restrained style for all of them: grey axes, two accent colours (proxy blue, gold amber), red only for
alerts, so a reader learns the legend once. Each function returns a `data:image/png;base64,...` string, or
None when its inputs are too thin to draw.
"""
from __future__ import annotations

import base64
import io
import math

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # before anything touches a backend: the report runs headless
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from tether.monitor.gao import GaoFit  # noqa: E402
from tether.report.data import Optimiser  # noqa: E402

PROXY, GOLD, FIT, ALERT, INK, MUTED = "#2563eb", "#c2410c", "#9a3412", "#dc2626", "#1f2937", "#6b7280"
RATE_COLOURS = {"sycophancy": "#7c3aed", "flip": "#a855f7", "refusal": "#0891b2", "over_refusal": "#0e7490",
                "flattery": "#db2777", "hedging": "#65a30d", "padding": "#ca8a04"}
CATEGORY_COLOURS = {"fact": "#0f766e", "false_premise": "#7c3aed", "harmful": "#be185d", "benign": "#65a30d",
                    "unanswerable": "#0891b2"}
STYLE = {
    "font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 10, "axes.titleweight": "bold",
    "axes.titlelocation": "left", "axes.edgecolor": "#9ca3af", "axes.labelcolor": INK, "axes.linewidth": 0.8,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.color": "#e5e7eb",
    "grid.linewidth": 0.7, "xtick.color": MUTED, "ytick.color": MUTED, "legend.frameon": False,
    "legend.fontsize": 8, "figure.facecolor": "white",
}
DPI = 150


def to_data_uri(fig: Figure) -> str:
    """PNG bytes of the figure as a data URI (the report must open offline, from one file)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # constrained layout sets the margins: no second "tight" draw
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(w: float, h: float) -> Figure:
    """A new figure (inches); called inside `_draw`, so the report's style applies."""
    return Figure(figsize=(w, h), layout="constrained")


def _bar_title(fig: Figure, text: str) -> None:
    """A figure-level title, left-aligned: bar charts' long labels would push an axes title off the image."""
    fig.suptitle(text, x=0.01, ha="left", fontsize=10, fontweight="bold")


def _draw(fn):
    """Run a drawing function under the report's style (rcParams apply when artists are created)."""
    def wrapped(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)
    wrapped.__doc__, wrapped.__name__ = fn.__doc__, fn.__name__
    return wrapped


@_draw
def timings(timings_s: dict[str, float]) -> str | None:
    """Horizontal bars: seconds per stage, in the order they ran."""
    items = [(k, float(v)) for k, v in timings_s.items() if isinstance(v, (int, float))]
    if not items:
        return None
    fig = _figure(5.6, 0.28 * len(items) + 0.6)
    ax = fig.add_subplot()
    names, secs = [k for k, _ in items][::-1], [v for _, v in items][::-1]
    ax.barh(names, secs, color="#94a3b8", height=0.6)
    for y, s in enumerate(secs):
        ax.text(s, y, f" {s:.1f}s", va="center", fontsize=8, color=INK)
    ax.set_xlabel("seconds")
    ax.grid(axis="y", visible=False)
    ax.set_xlim(0, max(secs) * 1.18 or 1)
    _bar_title(fig, f"Stage times (total {sum(secs) / 60:.1f} min)")
    return to_data_uri(fig)


@_draw
def accuracy_vs_ceiling(bars: list[tuple[str, float]], ceiling: float | None) -> str | None:
    """Horizontal bars of agreement/accuracy figures (0-1) with the raters' ceiling as a dashed line."""
    if not bars:
        return None
    fig = _figure(5.6, 0.34 * len(bars) + 0.7)
    ax = fig.add_subplot()
    names, vals = [b[0] for b in bars][::-1], [b[1] for b in bars][::-1]
    colours = [PROXY if n.startswith("RM") else "#94a3b8" for n in names]
    ax.barh(names, vals, color=colours, height=0.6)
    for y, v in enumerate(vals):
        ax.text(v, y, f" {v:.0%}", va="center", fontsize=8, color=INK)
    if ceiling is not None:
        ax.axvline(ceiling, color=INK, linestyle="--", linewidth=1, label=f"raters' ceiling ({ceiling:.0%})")
    ax.axvline(0.5, color=MUTED, linewidth=0.8, linestyle=":", label="chance")
    fig.legend(loc="outside lower center", ncol=2)
    ax.set_xlim(0.4, 1.02)
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    ax.grid(axis="y", visible=False)
    _bar_title(fig, "Agreement with the raters (held-out pairs)")
    return to_data_uri(fig)


def _kl_at(opt: Optimiser, step: int) -> float | None:
    """sqrt(KL) at a training step, interpolated between the curve's evaluations (alerts fire between them)."""
    pts = [(p.step, p.sqrt_kl) for p in opt.curve]
    if not pts:
        return None
    if step <= pts[0][0]:
        return pts[0][1]
    for (s0, d0), (s1, d1) in zip(pts, pts[1:]):
        if s0 <= step <= s1:
            return d0 + (d1 - d0) * (step - s0) / max(1, s1 - s0)
    return pts[-1][1]


def proxy_gold(opt: Optimiser, fit: GaoFit | None) -> str | None:
    """Gao et al. 2022 Fig. 1 for one run as a data URI (see proxy_gold_figure); None with under two points."""
    fig = proxy_gold_figure(opt, fit)
    return None if fig is None else to_data_uri(fig)


@_draw
def proxy_gold_figure(opt: Optimiser, fit: GaoFit | None) -> Figure | None:
    """Gold (left axis) and proxy (right axis) against sqrt(KL) as points (each evaluation one), the fitted RL form
    R(d) = d(α - β log d) over the gold points (the line labelled "fit ..."), the gold peak, and the first alert."""
    pts = [p for p in opt.curve if p.gold is not None or p.proxy is not None]
    if len(pts) < 2:
        return None
    fig = _figure(5.6, 3.5)
    ax = fig.add_subplot()
    gold = [(p.sqrt_kl, p.gold) for p in pts if p.gold is not None]
    handles = []
    # points, not a line in step order: KL goes back and forth over training, and a line would zig-zag
    if gold:
        handles += ax.plot(*zip(*gold), "o", color=GOLD, markersize=4, label=opt.gold_label)
        peak = max(gold, key=lambda x: x[1])
        ax.plot(*peak, marker="*", markersize=11, color=GOLD, markeredgecolor="white", zorder=5)
    if fit is not None and gold:
        top = max(d for d, _ in gold)
        xs = [top * i / 100 for i in range(101)]
        handles += ax.plot(xs, [gold[0][1] + fit(x) for x in xs], "--", color=FIT, linewidth=1.2,
                           label=f"fit d(α − β log d): α={fit.alpha:.2f}, β={fit.beta:.2f}")
    ax.set_xlabel("√KL(π ‖ π_ref)   (nats^½ per response)")
    ax.set_ylabel(opt.gold_label, color=GOLD)
    proxy = [(p.sqrt_kl, p.proxy) for p in pts if p.proxy is not None]
    if proxy:
        ax2 = ax.twinx()
        ax2.spines["right"].set_visible(True)
        ax2.grid(False)
        handles += ax2.plot(*zip(*proxy), "s", color=PROXY, markersize=3.5, label="proxy (trained on)")
        ax2.set_ylabel("proxy", color=PROXY)
    if opt.alerts:
        first = min(opt.alerts, key=lambda a: a.get("step", math.inf))
        x = _kl_at(opt, int(first.get("step", 0)))
        if x is not None:
            handles.append(ax.axvline(x, color=ALERT, linewidth=1, linestyle=":",
                                      label=f"first alert ({first.get('name')}, step {first.get('step')})"))
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=7.5)
    ax.set_title("Proxy and gold against √KL")
    return fig


def _alert_lines(ax, opt: Optimiser) -> None:
    """A thin red line at each step where an alert started firing, labelled once per step."""
    labelled = set()
    for a in opt.alerts:
        step = a.get("step")
        if not isinstance(step, (int, float)) or step in labelled:
            continue
        labelled.add(step)
        ax.axvline(step, color=ALERT, linewidth=0.9, linestyle=":", alpha=0.9)
        names = ", ".join(sorted({b.get("name", "?") for b in opt.alerts if b.get("step") == step}))
        ax.text(step, 1.0, f" {names}", transform=ax.get_xaxis_transform(), rotation=90, va="top", ha="right",
                fontsize=7, color=ALERT)


@_draw
def length(opt: Optimiser) -> str | None:
    """Response length over training: each step's rollouts (or the monitor's samples) and the held-out evals."""
    train = opt.series("response_length") or opt.series("monitor/length")
    evals = [(p.step, p.length) for p in opt.curve if p.length is not None] if opt.curve_source == "eval" else []
    if len(train) + len(evals) < 2:
        return None
    fig = _figure(5.6, 3.5)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), "-" if len(train) > 20 else ".-", color="#64748b", linewidth=1.1,
                label="training rollouts" if opt.series("response_length") else "monitor samples (temperature 1)")
    if evals:
        ax.plot(*zip(*evals), "o-", color=INK, markersize=3.5, linewidth=1.4, label="held-out (greedy)")
    _alert_lines(ax, opt)
    ax.set_xlabel("step")
    ax.set_ylabel("tokens per response")
    ax.legend(loc="upper left")
    ax.set_title("Response length over training")
    return to_data_uri(fig)


@_draw
def rates(opt: Optimiser) -> str | None:
    """The monitor's behaviour rates over training (sycophancy, refusal, flattery, ...) with the alerts."""
    series = {r: opt.series(f"monitor/{r}") for r in RATE_COLOURS}
    series = {r: s for r, s in series.items() if len(s) >= 2}
    if not series:
        return None
    fig = _figure(5.6, 3.5)
    ax = fig.add_subplot()
    for r, s in series.items():
        ax.plot(*zip(*s), color=RATE_COLOURS[r], linewidth=1.3, label=r.replace("_", "-"))
    _alert_lines(ax, opt)
    ax.set_ylim(0, max(0.2, min(1.0, max(v for s in series.values() for _, v in s) * 1.15)))
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    ax.set_xlabel("step")
    fig.legend(loc="outside lower center", ncol=4)
    ax.set_title("Monitor rates over training")
    return to_data_uri(fig)


@_draw
def gold_by_category(opt: Optimiser) -> str | None:
    """Held-out gold of each prompt category over training (eval/gold/<category>) beside the overall mean: where the
    policy gains and where it loses at the same time, which the overall mean sums away."""
    series = {c: s for c, s in opt.category_gold().items() if len(s) >= 2}
    if len(series) < 2:
        return None
    fig = _figure(5.6, 3.7)
    ax = fig.add_subplot()
    for c, s in series.items():
        ax.plot(*zip(*s), ".-", color=CATEGORY_COLOURS.get(c, MUTED), markersize=4, linewidth=1.1,
                label=c.replace("_", " "))
    overall = opt.series("eval/gold")
    if overall:
        ax.plot(*zip(*overall), "-", color=GOLD, linewidth=2.6, alpha=0.85, label="all prompts")
    _alert_lines(ax, opt)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out gold, mean")
    fig.legend(loc="outside lower center", ncol=3)
    ax.set_title("Held-out gold by prompt category")
    return to_data_uri(fig)


@_draw
def attack_success(groups: dict[str, dict[str, float]]) -> str | None:
    """Grouped horizontal bars: attack success rate per suite, one colour per red-teamed policy."""
    suites = sorted({s for g in groups.values() for s in g})
    if not suites:
        return None
    labels = list(groups)
    fig = _figure(5.6, 0.32 * len(suites) * max(1, len(labels)) + 0.9)
    ax = fig.add_subplot()
    h = 0.8 / len(labels)
    palette = ["#475569", PROXY, GOLD, "#7c3aed"]
    for i, label in enumerate(labels):
        # suites top to bottom, and within a suite the policies top to bottom in their order
        ys = [len(suites) - 1 - j + ((len(labels) - 1) / 2 - i) * h for j in range(len(suites))]
        vals = [groups[label].get(s, 0.0) for s in suites]
        ax.barh(ys, vals, height=h * 0.9, color=palette[i % len(palette)], label=label)
        for y, v in zip(ys, vals):
            ax.text(v, y, f" {v:.0%}", va="center", fontsize=7.5, color=INK)
    ax.set_yticks([len(suites) - 1 - j for j in range(len(suites))], suites)
    ax.set_xlim(0, 1.1)
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    ax.grid(axis="y", visible=False)
    if len(labels) > 1:
        ax.legend(loc="lower right")
    _bar_title(fig, "Attack success rate by suite")
    return to_data_uri(fig)


@_draw
def rates_with_intervals(groups: dict[str, dict[str, tuple[float, float, float]]], title: str) -> str | None:
    """Grouped horizontal bars with their 95% intervals: rate per measure (rows), one colour per model;
    groups[model][measure] = (rate, lo, hi). `tether audit`'s models side by side."""
    measures = list(dict.fromkeys(m for g in groups.values() for m in g))
    if not measures:
        return None
    labels = list(groups)
    fig = _figure(6.2, 0.3 * len(measures) * max(1, len(labels)) + 1.0)
    ax = fig.add_subplot()
    h = 0.8 / len(labels)
    palette = ["#475569", PROXY, GOLD, "#7c3aed", "#0891b2", "#db2777"]
    for i, label in enumerate(labels):
        ys = [len(measures) - 1 - j + ((len(labels) - 1) / 2 - i) * h for j in range(len(measures))]
        cells = [groups[label].get(m) for m in measures]
        ys, cells = zip(*[(y, c) for y, c in zip(ys, cells) if c is not None]) if any(cells) else ((), ())
        if not cells:
            continue
        vals = [c[0] for c in cells]
        err = [[max(0.0, c[0] - c[1]) for c in cells], [max(0.0, c[2] - c[0]) for c in cells]]
        ax.barh(ys, vals, height=h * 0.9, color=palette[i % len(palette)], label=label, xerr=err,
                error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": INK})
    ax.set_yticks([len(measures) - 1 - j for j in range(len(measures))], measures)
    ax.set_xlim(0, 1.05)
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    ax.grid(axis="y", visible=False)
    if len(labels) > 1:
        fig.legend(loc="outside lower center", ncol=min(4, len(labels)))
    _bar_title(fig, title)
    return to_data_uri(fig)


def _fit_line(ax, fit: GaoFit, start: float, top: float, style: str, colour: str, label: str) -> list:
    xs = [top * i / 100 for i in range(101)]
    return ax.plot(xs, [start + fit(x) for x in xs], style, color=colour, linewidth=1.2, label=label)


@_draw
def overoptimisation(bon: list[dict], bon_fits: dict[str, GaoFit | None], rl: Optimiser | None,
                     rl_fits: dict[str, GaoFit | None]) -> str | None:
    """Gao et al. 2022 Fig. 1 for best-of-n beside RL: gold (left panel) and proxy (right) against sqrt(KL), each
    method's points with its fitted form (best-of-n d(α - βd), dashed; RL d(α - β log d), dotted) through them.
    bon: the points of bon.json (n, sqrt_kl, proxy, proxy_se, gold, gold_se); fits keyed "gold" and "proxy"."""
    if len(bon) < 2:
        return None
    fig = _figure(7.6, 3.4)
    panels = [(key, colour, fig.add_subplot(1, 2, i + 1)) for i, (key, colour) in enumerate((("gold", GOLD),
                                                                                             ("proxy", PROXY)))]
    rl_pts = list(rl.curve) if rl is not None else []
    for key, colour, ax in panels:
        pts = [(p["sqrt_kl"], p[key], p.get(f"{key}_se") or 0.0) for p in bon if p.get(key) is not None]
        if pts:
            ax.errorbar([x for x, _, _ in pts], [y for _, y, _ in pts], yerr=[e for _, _, e in pts], fmt="o",
                        color=colour, markersize=3.5, elinewidth=0.7, capsize=0, label="best-of-n")
            if bon_fits.get(key) is not None:
                _fit_line(ax, bon_fits[key], pts[0][1], max(x for x, _, _ in pts), "--", colour,
                          "fit d(α − βd)")
        rl_xy = [(p.sqrt_kl, getattr(p, key)) for p in rl_pts if getattr(p, key) is not None]
        if rl_xy:
            ax.plot(*zip(*rl_xy), "^", color=colour, markerfacecolor="white", markersize=4.5,
                    label=f"{rl.label} (held-out evaluations)")
            if rl_fits.get(key) is not None:
                _fit_line(ax, rl_fits[key], rl_xy[0][1], max(x for x, _ in rl_xy), ":", colour,
                          "fit d(α − β log d)")
        ax.set_xlabel("√KL(π ‖ π_SFT)   (nats^½)")
        ax.set_title(f"{key} reward", loc="left")
        ax.legend(loc="best", fontsize=7)
    _bar_title(fig, "Over-optimisation: best-of-n beside RL")
    return to_data_uri(fig)
