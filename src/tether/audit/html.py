"""audit.html: one self-contained page (inline CSS, the plot as a data URI, no scripts) of an audit's summary.

The template (templates/audit.html.j2) is Jinja2 with autoescape on: prompts and responses are model output and
user data. A cell is coloured only when its rate differs from the first model's beyond noise (audit.json's
"differences"): red when the change is for the worse, green for the better, bold when it has no good direction.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import jinja2

from tether.audit.scoring import HEADLINE, is_rate

BAD_WHEN_UP = {"over_refusal", "full_refusal_safe", "harmful_compliance", "agrees_with_wrong", "wrong_neutral",
               "flip_rate", "admits_mistake", "hedging", "flattery", "padding", "verbose"}
GOOD_WHEN_UP = {"refusal_unsafe", "accuracy_neutral", "accuracy_suggested", "ended"}
"""Measures whose rise is bad or good news; the others (a workload's refusal rate) are marked without a colour."""
XSTEST_ROWS = [("over_refusal", "over-refusal: safe prompts refused (full or partial)"),
               ("full_refusal_safe", "safe prompts fully refused"),
               ("refusal_unsafe", "unsafe prompts refused"),
               ("harmful_compliance", "unsafe prompts complied with")]
SYCOPHANCY_ROWS = [("accuracy_neutral", "accuracy, neutral question"),
                   ("accuracy_suggested", "accuracy, \"I think the answer is X\" (X wrong)"),
                   ("wrong_neutral", "gives X, neutral question"),
                   ("agrees_with_wrong", "gives X when the user suggests it"),
                   ("flip_rate", "correct first answer lost after \"Are you sure?\""),
                   ("admits_mistake", "correct first answer, then concedes a mistake")]
STYLE_ROWS = [("refusal", "refusal (full or partial)"), ("hedging", "hedging"), ("flattery", "flattery"),
              ("padding", "padding"), ("verbose", "verbose (1.5x the baseline length or more)"),
              ("ended", "ended (not cut at max_new_tokens)")]
PLOT = [("xstest.over_refusal", "over-refusal"), ("xstest.harmful_compliance", "harmful compliance"),
        ("sycophancy.all.agrees_with_wrong", "agrees with wrong"), ("sycophancy.all.flip_rate", "flips"),
        ("style.workload.refusal", "workload refusal"), ("style.workload.hedging", "workload hedging"),
        ("style.workload.verbose", "workload verbose")]
EXAMPLES = 3
"""Example responses shown per kind and model."""


def _lookup(node, path: str):
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def cell(summary: dict, name: str, path: str) -> dict:
    """One table cell: the rate, its interval and n, and the class of its difference from the first model."""
    r = _lookup(summary["results"][name], path)
    if not is_rate(r) or r["rate"] is None:
        return {"text": "–", "ci": "", "n": "", "cls": ""}
    diff = (summary["differences"].get(name) or {}).get(path) or {}
    cls = ""
    if diff.get("beyond_noise"):
        key = path.rsplit(".", 1)[-1]
        up = diff["diff"] > 0
        cls = ("worse" if up else "better") if key in BAD_WHEN_UP else ("better" if up else "worse") \
            if key in GOOD_WHEN_UP else "changed"
    return {"text": f"{r['rate']:.1%}", "ci": f"{r['lo']:.1%}–{r['hi']:.1%}", "n": r["n"], "cls": cls,
            "diff": f"{diff['diff']:+.1%}" if diff else ""}


def table(summary: dict, prefix: str, rows: Sequence[tuple[str, str]]) -> list[dict]:
    """Rows {label, cells (one per model)} for the measures under `prefix` that some model has."""
    names = [t["name"] for t in summary["targets"]]
    out = []
    for key, label in rows:
        cells = [cell(summary, n, f"{prefix}{key}") for n in names]
        if any(c["n"] != "" for c in cells):
            out.append({"label": label, "cells": cells})
    return out


def headline_rows(summary: dict) -> list[dict]:
    """The headline rates (`tether.audit.scoring.HEADLINE`) as table rows; `tether report` shows these too."""
    names = [t["name"] for t in summary["targets"]]
    rows = [{"label": label, "cells": [cell(summary, n, path) for n in names]} for path, label in HEADLINE]
    return [r for r in rows if any(c["n"] != "" for c in r["cells"])]


def _plot(summary: dict) -> str | None:
    from tether.report import plots

    groups = {}
    for t in summary["targets"]:
        res = summary["results"][t["name"]]
        groups[t["name"]] = {label: (r["rate"], r["lo"], r["hi"]) for path, label in PLOT
                             if is_rate(r := _lookup(res, path)) and r["rate"] is not None}
    return plots.rates_with_intervals(groups, "Rates with 95% intervals")


def _examples(rows: Sequence[dict], names: Sequence[str]) -> list[dict]:
    """A few responses per model of each kind worth reading: over-refusals, harmful compliance, flips, workload."""
    kinds = [("XSTest safe prompt refused", lambda r: r["suite"] == "xstest" and r["meta"]["label"] == "safe"
              and r["refusal"] != "none"),
             ("XSTest unsafe prompt complied with", lambda r: r.get("harmful") is True),
             ("correct answer given up after pushback", lambda r: r["meta"].get("protocol") == "pushback"
              and r.get("first_correct") and not r.get("correct")),
             ("workload", lambda r: r["suite"] == "workload")]
    out = []
    for name in names:
        mine = [r for r in rows if r["target"] == name]
        for kind, keep in kinds:
            for r in [r for r in mine if keep(r)][:EXAMPLES]:
                prompt = r["prompt"] if isinstance(r["prompt"], str) else "\n".join(
                    f"{m.get('role')}: {m.get('content')}" for m in r["prompt"])
                out.append({"model": name, "kind": kind, "prompt": prompt, "response": r["response"],
                            "refusal": r["refusal"]})
    return out


def context(summary: dict, rows: Sequence[dict]) -> dict:
    """Everything the template shows."""
    names = [t["name"] for t in summary["targets"]]
    any_res = {k for res in summary["results"].values() for k in res}
    styles = sorted({s for res in summary["results"].values() for s in (res.get("style") or {})},
                    key=["workload", "xstest", "sycophancy"].index)
    xstest_types = sorted({t for res in summary["results"].values()
                           for t in ((res.get("xstest") or {}).get("by_type") or {})},
                          key=lambda t: (t.startswith("contrast_"), t))
    sources = sorted({s for res in summary["results"].values()
                      for s in ((res.get("sycophancy") or {}).get("by_source") or {})})
    return {
        "names": names, "summary": summary, "created": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "headline": headline_rows(summary), "plot": _plot(summary),
        "xstest": table(summary, "xstest.", XSTEST_ROWS) if "xstest" in any_res else None,
        "xstest_types": [{"label": t, "cells": [cell(summary, n, f"xstest.by_type.{t}.refusal") for n in names]}
                         for t in xstest_types],
        "sycophancy": table(summary, "sycophancy.all.", SYCOPHANCY_ROWS) if "sycophancy" in any_res else None,
        "sycophancy_sources": [{"source": s, "rows": table(summary, f"sycophancy.by_source.{s}.", SYCOPHANCY_ROWS)}
                               for s in sources],
        "styles": [{"suite": s, "rows": table(summary, f"style.{s}.", STYLE_ROWS),
                    "words": [_lookup(summary["results"][n], f"style.{s}.mean_words") for n in names],
                    "tokens": [_lookup(summary["results"][n], f"style.{s}.mean_tokens") for n in names]}
                   for s in styles],
        "judge": summary.get("judge"), "examples": _examples(rows, names),
    }


def render(summary: dict, rows: Sequence[dict]) -> str:
    env = jinja2.Environment(loader=jinja2.PackageLoader("tether.audit", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("audit.html.j2").render(**context(summary, rows))


def write_html(summary: dict, rows: Sequence[dict], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(summary, rows), encoding="utf-8")
    return path
