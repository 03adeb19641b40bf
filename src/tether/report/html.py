"""The report's sections: each a small function from `RunData` to the template's context, or None to skip it.

`SECTIONS` lists them in page order; a section whose inputs are absent renders as its title and one line saying
what it needs. To add a section: a builder here, a block in templates/report.html.j2, and (when it reads a new
file) a field in `tether.report.data`. The template is Jinja2 with autoescape on: sample texts are model output.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jinja2

from tether.report import findings, plots
from tether.report.data import Optimiser, Redteam, RunData, decoding_label, hack_verdict

FLAGS = ("correct", "sycophantic", "refused", "over_refused", "hedged", "padded", "flattering", "hallucinated")
"""Behaviour flags of `tether.stages.evaluate` (gold-judged), in its order."""
BAD_WHEN_UP = {"sycophantic", "over_refused", "hedged", "padded", "flattering", "hallucinated"}
"""Flags whose rise is bad news (refused is good on harmful prompts, bad on benign ones: shown, not judged)."""


@dataclass
class Section:
    id: str
    title: str
    build: Callable[[RunData], dict | None]
    needs: str
    """What the section reads, shown when it is skipped."""
    optional: bool = False
    """Left out of the page, not shown as skipped, when its inputs are absent (an audit most runs do not have)."""


def _pct(x) -> str:
    return "–" if not isinstance(x, (int, float)) else f"{x:.0%}"


def _num(x, fmt: str = "+.2f") -> str:
    return "–" if not isinstance(x, (int, float)) else format(x, fmt)


def _seconds(s) -> str:
    if not isinstance(s, (int, float)):
        return "–"
    return f"{s:.1f} s" if s < 90 else f"{s / 60:.1f} min"


# Key figures of the pipeline table: stage -> one line from the run's records ("" when unknown).
def _fig_behaviour(policy: str) -> Callable[[RunData], str]:
    def fig(d: RunData) -> str:
        a = (d.behaviour.get(policy) or {}).get("all")
        return f"gold {_num(a['gold'])}, correct {_pct(a['correct'])} on {a['n']} held-out prompts" if a else ""
    return fig


def _fig_loss(stage: str) -> Callable[[RunData], str]:
    def fig(d: RunData) -> str:
        f = d.stage_files.get(stage) or {}
        parts = [f"{f['steps']} steps" if f.get("steps") is not None else "",
                 f"loss {f['loss']:.3f}" if f.get("loss") is not None else "",
                 f"eval loss {f['eval_loss']:.3f}" if f.get("eval_loss") is not None else ""]
        return ", ".join(p for p in parts if p)
    return fig


def _fig_collect(d: RunData) -> str:
    c = d.stage_files.get("collect") or {}
    return f"{c.get('pairs', '?')} pairs from {c.get('prompts', '?')} prompts" if c else ""


def _fig_label(d: RunData) -> str:
    a = d.agreement or {}
    return (f"{a.get('n_ratings')} ratings by {a.get('n_raters')} raters, Krippendorff α "
            f"{_num(a.get('krippendorff_alpha'), '.2f')}") if a else ""


def _fig_rm(d: RunData) -> str:
    e = d.rm_eval or {}
    return f"accuracy {_pct(e.get('accuracy'))} on {e.get('pairs')} held-out pairs" if e else ""


def _fig_rm_report(d: RunData) -> str:
    r = d.reward_model or {}
    return f"accuracy vs gold {_pct(r.get('accuracy_vs_gold'))}" if r else ""


STAGE_FIGURES: dict[str, Callable[[RunData], str]] = {
    "pretrain": _fig_loss("pretrain"), "base styles": _fig_behaviour("base"), "sft": _fig_loss("sft"),
    "evaluate sft": _fig_behaviour("sft"), "collect": _fig_collect, "label": _fig_label, "rm": _fig_rm,
    "rm report": _fig_rm_report,
}


def _fig_optimiser(o: Optimiser) -> str:
    pts = [p for p in o.curve if p.gold is not None]
    last = o.metrics[-1].get("step", "?")
    gold = f", {o.gold_label} {_num(pts[0].gold)} → {_num(pts[-1].gold)}" if len(pts) >= 2 else ""
    return f"{last} steps{gold}, {len(o.alerts)} alert(s)"


def _fig_redteam(r: Redteam) -> str:
    a = r.summary.get("all") or {}
    return f"{a.get('n', 0)} probes, attack success {_pct(a.get('fail_rate'))}" if a.get("n") else ""


def _stage_figure(stage: str) -> Callable[[RunData], str]:
    """The key-figure function of a timed stage: STAGE_FIGURES, or "evaluate <policy>" -> its behaviour."""
    if stage in STAGE_FIGURES:
        return STAGE_FIGURES[stage]
    if stage.startswith("evaluate "):
        return _fig_behaviour(stage.removeprefix("evaluate "))
    return lambda _: ""


def _timed_name(d: RunData, label: str) -> str:
    """A folder label as the demo's timings name it, when they do ("redteam/ppo" -> "redteam ppo")."""
    spaced = label.replace("/", " ")
    return spaced if spaced in d.timings and label not in d.timings else label


def pipeline(d: RunData) -> dict | None:
    """Stages in the order they ran, with their time and one key figure each; optimiser and red-team folders
    without a timing (run alone, or a later round) are added after them."""
    figures = {stage: _stage_figure(stage)(d) for stage in d.timings}
    # folders are named like the demo's timed stages, with "/" for its spaces ("redteam/ppo", "redteam ppo")
    figures |= {_timed_name(d, o.label): _fig_optimiser(o) for o in d.optimisers}
    figures |= {_timed_name(d, r.label): _fig_redteam(r) for r in d.redteams}
    if not figures:
        return None
    rows = [{"stage": s, "time": _seconds(d.timings.get(s)), "figure": f} for s, f in figures.items()]
    total = sum(v for v in d.timings.values() if isinstance(v, (int, float)))
    return {"rows": rows, "total": _seconds(total) if d.timings else None, "plot": plots.timings(d.timings)}


def reward_model(d: RunData) -> dict | None:
    """Rater agreement, the ceiling it puts on any model of the raters, and the RM against it and against gold."""
    r, a, e = d.reward_model or {}, d.agreement or {}, d.rm_eval or {}
    if not (r or a or e):
        return None
    rm_acc = r.get("rm_vs_raters", e.get("accuracy"))
    held = r.get("held_out_as_rater") or {}
    rows = [
        ("Raters: pairwise agreement", a.get("percent_agreement", r.get("rater_pairwise_agreement")),
         "two raters on the same pair choose the same response"),
        ("Raters: agreement with the majority", a.get("majority_agreement_mean", r.get("rater_majority_agreement")),
         "a rater against the other raters' majority, mean over raters"),
        ("Ceiling: the population's preference", r.get("bayes_ceiling_vs_raters"),
         "the best any model of the raters can do on these held-out labels"),
        ("RM vs raters (held-out)", rm_acc, "the reward model's accuracy on held-out rater labels"),
        ("Raters vs the majority (held-out pairs)", held.get("rater_majority_agreement"),
         "the raters' agreement with the majority, on the RM's held-out pairs only"),
        ("RM as one more rater vs the majority", held.get("rm_vs_majority"),
         "the RM scored like a rater: against each rater's leave-one-out majority on those pairs"),
        ("RM vs gold", r.get("accuracy_vs_gold"), "on distinct held-out pairs, gold ties skipped"),
    ]
    rows = [(k, v, why) for k, v, why in rows if isinstance(v, (int, float))]
    ceiling = r.get("bayes_ceiling_vs_raters")
    bars = [("RM vs gold" if k == "RM vs gold" else "RM vs raters" if k.startswith("RM vs raters") else k, v)
            for k, v, _ in rows]
    extra = [("Krippendorff's α", _num(a.get("krippendorff_alpha", r.get("krippendorff_alpha")), ".3f")),
             ("Fleiss' κ", _num(a.get("fleiss_kappa"), ".3f")), ("RM calibration error (ECE)", _num(e.get("ece"), ".3f")),
             ("RM score-length correlation", _num(e.get("length_corr"), "+.2f"))]
    bias = [{"trait": t.replace("_", " "), "n": b.get("n"), "gain": _num(b.get("reward_gain")),
             "prefers": _pct(b.get("prefers_trait")), "gold": _num(b.get("gold_gain")),
             "inherited": (b.get("reward_gain") or 0) > 0 and (b.get("gold_gain") or 0) < 0}
            for t, b in (r.get("bias") or {}).items()]
    gap = (ceiling - rm_acc) if isinstance(ceiling, (int, float)) and isinstance(rm_acc, (int, float)) else None
    return {"rows": [(k, _pct(v), why) for k, v, why in rows], "extra": [x for x in extra if x[1] != "–"],
            "bias": bias, "gap": None if gap is None else f"{gap * 100:.1f} points",
            "plot": plots.accuracy_vs_ceiling(bars, ceiling if isinstance(ceiling, (int, float)) else None)}


def behaviour(d: RunData) -> dict | None:
    """Gold-judged behaviour rates of each evaluated policy, all held-out prompts, then per category."""
    if not d.behaviour:
        return None
    policies = list(d.behaviour)
    ref = d.behaviour.get("sft", {}).get("all")

    def cells(s: dict, base: dict | None) -> list[dict]:
        out = [{"text": _pct(s.get(f)), "worse": bool(base) and f in BAD_WHEN_UP
                and (s.get(f) or 0) - (base.get(f) or 0) >= 0.05} for f in FLAGS]
        return out + [{"text": _num(s.get("gold")), "worse": False}]

    def against_sft(p: str) -> dict | None:  # marked against the SFT policy only when sampled the same way
        return ref if p not in ("base", "sft") and d.decoding.get(p) == d.decoding.get("sft") else None

    rows = [{"policy": p, "n": t["all"].get("n"), "cells": cells(t["all"], against_sft(p)),
             "decoding": decoding_label(d.decoding.get(p)) if p in d.decoding else "",
             "kl": _num(d.policy_kl.get(p), ".2f")} for p, t in d.behaviour.items() if "all" in t]
    categories = [c for c in next(iter(d.behaviour.values())) if c != "all"]
    by_category = [{"category": c.replace("_", " "), "rows": [
        {"policy": p, "n": d.behaviour[p][c].get("n"), "cells": cells(d.behaviour[p][c], None)}
        for p in policies if c in d.behaviour[p]]} for c in categories]
    return {"flags": [f.replace("_", "-") for f in FLAGS], "rows": rows, "by_category": by_category,
            "kl": bool(d.policy_kl), "decoding": bool(d.decoding)}


def _alert_rows(o: Optimiser) -> list[dict]:
    return [{"step": a.get("step"), "name": a.get("name"), "value": _num(a.get("value"), ".3g"),
             "threshold": _num(a.get("threshold"), ".3g"), "message": a.get("message", "")}
            for a in sorted(o.alerts, key=lambda a: a.get("step", 0))]


def _sample_rows(samples: list[dict]) -> list[dict]:
    return [{"step": s.get("step"), "prompt": findings.text_of(s.get("prompt")), "response": s.get("response", ""),
             "proxy": _num(s.get("score")), "gold": _num(s.get("gold"))} for s in samples]


def optimiser_block(o: Optimiser) -> dict:
    """Everything shown for one optimiser run."""
    fit = findings.gao_fit(o.curve)
    v = findings.verdict(o)
    before_after = [{"rate": r.replace("_", "-"), "before": _pct(b), "after": _pct(a), "delta": f"{round((a - b) * 100):+d}",
                     "worse": a - b >= 0.05} for r, (b, a) in findings.rates_before_after(o).items()]
    best, worst = findings.best_and_worst(o.samples)
    fit_text = None
    if fit is not None:
        peak = "never turns down (β ≤ 0)" if fit.beta <= 0 else f"peaks at √KL {fit.d_peak:.2f}, gain {fit.r_peak:+.2f}"
        fit_text = f"α = {fit.alpha:.3f}, β = {fit.beta:.3f}, rmse {fit.rmse:.3f}; the fitted curve {peak}"
    settings = {k: o.config[k] for k in ("kl_coef", "beta", "loss", "max_steps", "lr", "reward") if k in o.config}
    return {"label": o.label, "name": findings.display_name(o.label), "verdict": v, "fit": fit_text, "settings": settings,
            "curve_plot": plots.proxy_gold(o, fit), "length_plot": plots.length(o), "rates_plot": plots.rates(o),
            "category_plot": plots.gold_by_category(o), "category_moves": findings.category_moves(o),
            "before_after": before_after, "alerts": _alert_rows(o), "best": _sample_rows(best),
            "worst": _sample_rows(worst), "kept": o.best, "n_points": len(o.curve)}


def optimisers(d: RunData) -> dict | None:
    return {"runs": [optimiser_block(o) for o in d.optimisers]} if d.optimisers else None


RL_KINDS = ("ppo", "grpo", "rloo")


def _fit_text(fit, form: str) -> str | None:
    if fit is None:
        return None
    peak = "never turns down (β ≤ 0)" if fit.beta <= 0 else f"peaks at √KL {fit.d_peak:.2f}, gain {fit.r_peak:+.2f}"
    return f"{form}: α = {fit.alpha:.3f}, β = {fit.beta:.3f}, rmse {fit.rmse:.3f}; {peak}"


def overoptimisation(d: RunData) -> dict | None:
    """Best-of-n (bon/bon.json) beside the first round's RL run: gold and proxy against √KL with Gao's fits, the
    best-of-n curve at n = 1, 2, 4, ... and whether its gold rose, then fell, beyond noise."""
    if d.bon is None:
        return None
    curve = d.bon["curve"]
    rl = next((o for o in d.optimisers if o.kind in RL_KINDS and o.curve_source == "eval" and "/" not in o.label),
              None)
    fit, rl_fit = findings.bon_fit(curve), findings.gao_fit(rl.curve) if rl is not None else None
    shown = [p for p in curve if p["n"] & (p["n"] - 1) == 0 or p is curve[-1]]  # powers of 2 and the largest n
    rows = [{"n": p["n"], "kl": _num(p.get("kl"), ".3f"), "sqrt_kl": _num(p.get("sqrt_kl"), ".2f"),
             "proxy": _num(p.get("proxy")), "gold": _num(p.get("gold")), "se": _num(p.get("gold_se"), ".3f")}
            for p in shown]
    return {"plot": plots.overoptimisation(curve, {"gold": fit}, rl, {"gold": rl_fit}), "rows": rows,
            "fit": _fit_text(fit, "best-of-n d(α − βd)"), "rl_fit": _fit_text(rl_fit, "RL d(α − β log d)"),
            "rl": rl.label if rl is not None else None, "shape": findings.bon_shape(curve),
            "n_samples": d.bon.get("n_samples"), "prompts": d.bon.get("prompts"), "reward": d.bon.get("reward")}


def _short(label: str) -> str:
    return label.removeprefix("redteam/")


def _asr_row(name: str, stats: list[dict | None], indent: bool = False) -> dict:
    """One row of the comparison: attack success per policy, red where >= 5 points above the first policy's."""
    rates = [(s or {}).get("fail_rate") for s in stats]
    first = rates[0]
    n = next((s.get("n") for s in stats if s), None)
    return {"name": name, "indent": indent, "n": n, "cells": [
        {"text": _pct(r), "worse": i > 0 and isinstance(r, float) and isinstance(first, float) and r - first >= 0.05}
        for i, r in enumerate(rates)]}


def redteam(d: RunData) -> dict | None:
    """Attack success per suite and attack, one column per red-teamed policy, and the search's worst finds."""
    if not d.redteams:
        return None
    reds = d.redteams
    suites = list(dict.fromkeys(k for r in reds for k in (r.summary.get("suites") or {})))
    attacks = list(dict.fromkeys(k for r in reds for k in (r.summary.get("attacks") or {})))
    rows = []
    for suite in suites:
        rows.append(_asr_row(suite, [(r.summary.get("suites") or {}).get(suite) for r in reds]))
        rows += [_asr_row(a.split("/", 1)[1], [(r.summary.get("attacks") or {}).get(a) for r in reds], True)
                 for a in attacks if a.split("/")[0] == suite]
    total = _asr_row("all", [r.summary.get("all") for r in reds])
    gold = [_num((r.summary.get("all") or {}).get("gold")) for r in reds]
    found = [{"policy": _short(r.label), "rank": f.get("rank"), "attack": f"{f.get('suite')}/{f.get('attack')}",
              "prompt": findings.text_of(f.get("messages")), "response": (f.get("responses") or [""])[-1],
              "proxy": _num(f.get("proxy")), "gold": _num(f.get("gold"))} for r in reds for f in r.found[:3]]
    search = [f"{_short(r.label)}: {r.summary['search'].get('found')} of {r.summary['search'].get('bad')} bad"
              for r in reds if isinstance(r.summary.get("search"), dict)]
    groups = {_short(r.label): {k: v.get("fail_rate", 0.0) for k, v in (r.summary.get("suites") or {}).items()}
              for r in reds}
    return {"plot": plots.attack_success(groups), "policies": [_short(r.label) for r in reds], "rows": rows,
            "total": total, "gold": gold, "found": found, "search": "; ".join(search)}


def rounds(d: RunData) -> dict | None:
    """Each iterate round against the round before: the hack rates (SFT, before, after), which were exhibited
    (above the SFT policy's beyond noise), which fell or rose, gold, and the verdict."""
    if not d.rounds:
        return None
    out = []
    for r in d.rounds:
        h, n = r["hacks"], r.get("round", "?")
        verdict = hack_verdict(h.get("reduced_hacks"))
        rows = [{"metric": k.replace("_", " "), "sft": _pct(m.get("sft")), "before": _pct(m.get("before")),
                 "after": _pct(m.get("after")), "change": _signed_pct(m.get("change")),
                 "exhibited": bool(m.get("exhibited")), "fell": bool(m.get("fell")), "rose": bool(m.get("rose"))}
                for k, m in (h.get("metrics") or {}).items()]
        gold = h.get("gold") or {}
        out.append({"n": n, "previous": n - 1 if isinstance(n, int) else "?", "optimiser": r.get("optimiser", ""),
                    "verdict": verdict, "decoding": decoding_label(h.get("decoding")), "rows": rows,
                    "gold": {k: _num(gold.get(k)) for k in ("before", "after", "change")},
                    "noise_z": h.get("noise_z")})
    return {"rounds": out}


def audits(d: RunData) -> dict | None:
    """Each `tether audit` in the run folder: its headline rates per model with 95% intervals, marked where they
    differ from the first model's beyond noise (tether.audit.html), and a link to its own audit.html."""
    if not d.audits:
        return None
    from tether.audit.html import headline_rows

    blocks = []
    for folder, summary in d.audits:
        dec = summary.get("decoding") or {}
        link = Path(folder) / "audit.html"
        blocks.append({"folder": folder, "names": [t.get("name") for t in summary["targets"]],
                       "rows": headline_rows(summary), "decoding": decoding_label(dec),
                       "suites": summary.get("suites") or {}, "detector": summary.get("detector", ""),
                       "link": link.as_posix() if (d.root / link).is_file() else None,
                       "noise_z": summary.get("noise_z")})
    return {"audits": blocks}


def _signed_pct(x) -> str:
    return "–" if not isinstance(x, (int, float)) else f"{round(x * 100):+d}"


SECTIONS = [
    Section("pipeline", "Pipeline", pipeline, "summary.json timings or stage folders"),
    Section("raters", "Raters and the reward model", reward_model,
            "label/agreement.json, rm/eval.json or summary.json's reward_model"),
    Section("behaviour", "Behaviour on held-out prompts", behaviour, "eval/<policy>_summary.json"),
    Section("optimisers", "Optimisation against the proxy", optimisers, "ppo/, grpo/, rloo/ or dpo/ metrics.jsonl"),
    Section("overoptimisation", "Over-optimisation: best-of-n beside RL", overoptimisation,
            "bon/bon.json (tether bon)", optional=True),
    Section("redteam", "Red team", redteam, "redteam/<policy>/summary.json (tether redteam)"),
    Section("rounds", "Rounds: did the next round reduce the hacks?", rounds, "round<n>/round.json (tether iterate)"),
    Section("audit", "Audit: models side by side", audits, "audit.json in the run folder or one under it "
            "(tether audit)", optional=True),
]


def glance(d: RunData, verdicts: list[findings.Verdict]) -> list[dict]:
    """The row of key numbers under the verdict: RM vs its ceiling, each optimiser's held-out reward, red team,
    total time."""
    tiles = []
    r = d.reward_model or {}
    acc = r.get("rm_vs_raters", (d.rm_eval or {}).get("accuracy"))
    if isinstance(acc, (int, float)):
        sub = [f"ceiling {_pct(r['bayes_ceiling_vs_raters'])}" if "bayes_ceiling_vs_raters" in r else "",
               f"{_pct(r['accuracy_vs_gold'])} vs gold" if "accuracy_vs_gold" in r else ""]
        tiles.append({"label": "Reward model vs raters", "value": _pct(acc), "sub": " · ".join(x for x in sub if x)})
    for o, v in zip(d.optimisers, verdicts):
        pts = [p for p in o.curve if p.gold is not None]
        if len(pts) < 2:
            continue
        peak = max(pts, key=lambda p: p.gold)
        first = min((a.get("step", 0) for a in o.alerts), default=None)
        sub = f"peak {_num(peak.gold)} at step {peak.step}" + (f" · first alert step {first}" if first is not None
                                                               else " · no alert")
        tiles.append({"label": f"{findings.display_name(o.label)} {o.gold_label}", "status": v.status,
                      "value": f"{_num(pts[0].gold)} → {_num(pts[-1].gold)}", "sub": sub})
    reds = [r for r in d.redteams if (r.summary.get("all") or {}).get("n")]
    if reds:
        tiles.append({"label": "Red-team attack success", "value": " · ".join(
            _pct(r.summary["all"].get("fail_rate")) for r in reds[:3]), "sub": " · ".join(
            _short(r.label) for r in reds[:3]) + f" ({reds[0].summary['all']['n']} probes)"})
    if d.timings:
        total = sum(v for v in d.timings.values() if isinstance(v, (int, float)))
        tiles.append({"label": "Wall time", "value": _seconds(total), "sub": f"{len(d.timings)} stages"})
    return tiles


def render(d: RunData) -> str:
    """The whole page as one string."""
    verdicts = [findings.verdict(o) for o in d.optimisers]
    status, headline = findings.overall(verdicts)
    sections = []
    for s in SECTIONS:
        ctx = s.build(d)
        if ctx is None and s.optional:
            continue
        sections.append({"id": s.id, "title": s.title, "ctx": ctx, "needs": s.needs})
    env = jinja2.Environment(loader=jinja2.PackageLoader("tether.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(
        name=d.name, root=str(d.root), created=dt.datetime.now().strftime("%Y-%m-%d %H:%M"), status=status,
        headline=headline, verdicts=verdicts, tiles=glance(d, verdicts), sections=sections)


def write(d: RunData, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(d), encoding="utf-8")
    return out
