"""`tether audit`: the behaviour profile of models and endpoints, side by side, on built-in suites and a workload.

    tether audit model=[runs/sft/model,runs/ppo/model] prompts=my_prompts.jsonl suites=[xstest,sycophancy,style]
    tether audit endpoint=[http://127.0.0.1:8000/v1] endpoint_model=[ppo] limit=50

Steps: 1. build the suites (bad data fails before any model loads); 2. every target answers every prompt, then the
pushback turns (replies cached in <out>/cache/<name>.jsonl: a rerun resumes, asking only what is missing);
3. flag every response with the text detectors, and relabel refusal and harmful compliance with the LLM judge when
one is set; 4. summarise per target (tether.audit.scoring), compare with the first target beyond noise;
5. write audit.json, audit_samples.jsonl and audit.html, and print the headline table.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tether.audit import scoring
from tether.audit.scoring import HEADLINE
from tether.audit.config import AuditConfig, Target
from tether.audit.suites import (
    Item,
    load_facts,
    pushback_items,
    spread,
    starter_facts,
    sycophancy_items,
    workload_items,
    world_facts,
    xstest_items,
)
from tether.config import save_config
from tether.errors import ConfigError
from tether.data.formats import load_prompts
from tether.monitor.stats import HACK_NOISE_Z

console = Console(stderr=True, width=120)
CITATIONS = {
    "xstest": "Röttger et al. 2024, XSTest: A Test Suite for Identifying Exaggerated Safety Behaviours in Large "
              "Language Models (NAACL 2024); prompts CC-BY-4.0",
    "sycophancy": "Sharma et al. 2023, Towards Understanding Sycophancy in Language Models (arXiv:2310.13548), "
                  "sec. 3.2 (Are you sure?) and 3.3 (answer sycophancy)",
}
"""The rates of the summary table (path in a target's results, label), in order."""


def build_items(cfg: AuditConfig) -> dict[str, list[Item]]:
    """Suite -> its items, `limit` applied."""
    items: dict[str, list[Item]] = {}
    if "xstest" in cfg.suites:
        items["xstest"] = spread(xstest_items(), lambda i: (i.meta["type"], i.meta["label"]), cfg.limit)
    if "sycophancy" in cfg.suites:
        facts = starter_facts() if cfg.starter_facts else []
        facts += load_facts(cfg.facts) if cfg.facts else []
        if cfg.world:
            from tether.world.build import load_world

            facts += world_facts(load_world(cfg.world))
        facts = spread(facts, lambda f: (f.source, f.category), cfg.limit)
        items["sycophancy"] = sycophancy_items(facts)
    if cfg.prompts:
        items["workload"] = workload_items(load_prompts(cfg.prompts, cfg.format, cfg.split)[:cfg.limit])
    return items


def cache_file(out: Path, name: str) -> Path:
    """<out>/cache/<name>.jsonl, the name made safe for a file name (with a hash when that changed it)."""
    safe = re.sub(r"[^\w.@+-]", "_", name)
    if safe != name:
        safe += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return out / "cache" / f"{safe}.jsonl"


def responder_for(cfg: AuditConfig, target: Target):
    """The `tether.responders.Responder` of a target: an EndpointClient or a LocalResponder."""
    if target.kind == "endpoint":
        from tether.endpoint import EndpointFields

        fields = EndpointFields(endpoint=target.source, endpoint_model=target.endpoint_model,
                                api_key_env=cfg.api_key_env, endpoint_concurrency=cfg.endpoint_concurrency,
                                endpoint_timeout=cfg.endpoint_timeout, endpoint_retries=cfg.endpoint_retries)
        client = fields.endpoint_client()
        client.skip_too_long = True  # a workload prompt longer than the served model's context: left out, counted
        return client
    from tether.responders import LocalResponder

    return LocalResponder(target.source, cfg.chat_template, cfg.max_prompt_length, cfg.batch_size, cfg.device)


def _ask(responder, items: Sequence[Item], samples: Sequence[int], cfg: AuditConfig, cache: Path, label: str):
    replies = responder.replies([it.prompt for it in items], max_new_tokens=cfg.max_new_tokens,
                                temperature=cfg.temperature, seed=cfg.seed, cache=cache, label=label)
    return [{"suite": it.suite, "id": it.id, "sample": k, "prompt": it.prompt, "response": r.text,
             "tokens": r.tokens, "ended": r.ended, "meta": it.meta,
             **({"refused": r.refused} if getattr(r, "refused", None) else {})}
            for it, k, r in zip(items, samples, replies)]


def answer(responder, items: dict[str, list[Item]], cfg: AuditConfig, cache: Path, name: str) -> list[dict]:
    """Rows of one target: every item samples_per_prompt times, then each neutral fact answer's pushback turn."""
    k = cfg.samples_per_prompt
    asked = [it for suite in items.values() for it in suite for _ in range(k)]
    rows = _ask(responder, asked, [i % k for i in range(len(asked))], cfg, cache, f"audit {name}")
    neutral = [r for r in rows if r["meta"].get("protocol") == "neutral" and "refused" not in r]
    if neutral:
        pushed = pushback_items([(Item(r["suite"], r["id"], r["prompt"], r["meta"]), r["response"]) for r in neutral])
        rows += _ask(responder, pushed, [r["sample"] for r in neutral], cfg, cache, f"audit {name}: pushback")
    return [{"target": name, **r} for r in rows]


def apply_judge(judge, rows: list[dict], targets: Sequence[str]) -> dict:
    """Relabel refusal (all first-turn responses) and harmful compliance (XSTest's unsafe prompts) with the judge;
    each row keeps the rules' label beside it and the judge's raw answer. Per target: {task: JudgeResult.report}."""
    from tether.monitor.judge import JudgeResult

    report: dict = {t: {} for t in targets}
    for task, mine in (("refusal", [r for r in rows if r["meta"].get("protocol") != "pushback"]),
                       ("harmful", [r for r in rows if "harmful_rules" in r])):
        if not mine:
            continue
        result = judge.classify(task, [r["prompt"] for r in mine], [r["response"] for r in mine])
        for r, label, judged, raw in zip(mine, result.labels, result.judged, result.raw):
            r[task] = label if task == "refusal" else label == "yes"
            r[f"{task}_judge"], r[f"{task}_judge_raw"] = judged, raw
        for t in targets:
            idx = [i for i, r in enumerate(mine) if r["target"] == t]
            part = JudgeResult(*([getattr(result, f)[i] for i in idx] for f in ("labels", "judged", "rules", "raw")))
            report[t][task] = part.report()
    return report


def summarise(rows: Sequence[dict], suites: Sequence[str]) -> dict:
    """One target's results: xstest, sycophancy, style per suite (the workload's always; the others' with "style")."""
    by_suite: dict[str, list[dict]] = {}
    for r in rows:
        by_suite.setdefault(r["suite"], []).append(r)
    out: dict = {}
    if "xstest" in by_suite:
        out["xstest"] = scoring.xstest_summary(by_suite["xstest"])
    if "sycophancy" in by_suite:
        out["sycophancy"] = scoring.sycophancy_summary(by_suite["sycophancy"])
    style = {s: scoring.style_summary(by_suite[s]) for s in ("workload", "xstest", "sycophancy")
             if s in by_suite and (s == "workload" or "style" in suites)}
    if style:
        out["style"] = style
    return out


def lookup(results: dict, path: str):
    """The value at a dotted path of a results dict, or None."""
    node = results
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def headline_table(summary: dict) -> Table:
    names = [t["name"] for t in summary["targets"]]
    table = Table(title=f"audit (temperature {summary['decoding']['temperature']}; * differs from {names[0]} "
                  "beyond noise)")
    table.add_column("rate")
    for name in names:
        table.add_column(name, justify="right")
    for path, label in HEADLINE:
        cells = [lookup(summary["results"][n], path) for n in names]
        if not any(scoring.is_rate(c) and c["n"] for c in cells):
            continue
        marks = ["*" if (summary["differences"].get(n, {}).get(path) or {}).get("beyond_noise") else "" for n in names]
        table.add_row(label, *(f"{c['rate']:.0%} [{c['lo']:.0%}, {c['hi']:.0%}] n={c['n']}{m}"
                               if scoring.is_rate(c) and c["n"] else "–" for c, m in zip(cells, marks)))
    return table


def write_samples(path: Path, rows: Sequence[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def check_templates(responders: dict, items: dict[str, list[Item]]) -> None:
    """Before any sampling: a model folder without a chat template (a base model) cannot answer conversations, which
    the pushback turns of the sycophancy suite and prompts given as messages are."""
    talks = [s for s, its in items.items()
             if any(isinstance(it.prompt, list) or it.meta.get("protocol") == "neutral" for it in its)]
    for name, responder in responders.items():
        if talks and not getattr(responder, "has_chat_template", lambda: True)():  # endpoints always chat
            raise ConfigError(f"chat_template: model {name} has no chat template (a base model?), and the "
                              f"{', '.join(talks)} suite(s) hold conversations (multi-turn prompts, pushback turns); "
                              "set chat_template= to a built-in name (chatml, llama3, gemma, zephyr, hh, tether) or a "
                              f".jinja file, or leave them out (suites=[...] without {', '.join(talks)})")


def run(cfg: AuditConfig) -> dict:
    # 1. the suites: bad data and settings fail here, before any model is loaded or request sent
    items = build_items(cfg)
    targets = cfg.targets()
    for t in targets:
        if t.kind == "model" and not Path(t.source).is_dir():
            raise ConfigError(f"model: no such model folder: {t.source}")
    responders = {t.name: responder_for(cfg, t) for t in targets}
    check_templates(responders, items)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    judge = cfg.make_judge(out / "judge_cache.jsonl", cfg.device)  # before sampling: a missing key fails at once

    # 2. answers, cached per target
    rows = []
    for target in targets:
        rows += answer(responders[target.name], items, cfg, cache_file(out, target.name), target.name)

    # 3. the rules' flags, then the judge's labels, on the prompts each target answered
    refused = Counter(r["target"] for r in rows if "refused" in r)
    if refused:
        console.print(f"[yellow]audit: prompts the endpoint refused as longer than its context, left out: "
                      f"{dict(refused)} (first reason: {next(r['refused'] for r in rows if 'refused' in r)})[/yellow]")
    rows = [scoring.flag_row(r) for r in rows if "refused" not in r]
    judged = apply_judge(judge, rows, [t.name for t in targets]) if judge else None
    for r, base in zip(rows, scoring.baselines(rows, cfg.reference)):
        r["baseline_words"] = base

    # 4. per-target results and the comparison with the first target
    results = {t.name: summarise([r for r in rows if r["target"] == t.name], cfg.suites) for t in targets}
    summary = {"targets": [vars(t) for t in targets], "decoding": cfg.decoding(), "limit": cfg.limit,
               "suites": {s: len(v) for s, v in items.items()}, "results": results,
               "differences": scoring.differences(results), "noise_z": HACK_NOISE_Z,
               "detector": "rules (tether.monitor.refusal, tether.monitor.text)" if judge is None else
               f"LLM judge {cfg.judge_name()} (tether.monitor.judge), rules where it gave no label",
               "judge": judged, "reference": cfg.reference or None, "citations": CITATIONS,
               "refused_too_long": dict(refused)}

    # 5. files and the table
    (out / "audit.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
    write_samples(out / "audit_samples.jsonl", rows)
    from tether.audit.html import write_html

    write_html(summary, rows, out / "audit.html")
    Console(width=140).print(headline_table(summary))
    console.print(f"audit: {out / 'audit.json'}, {out / 'audit.html'}")
    return summary
