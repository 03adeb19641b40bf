"""`tether redteam`: adversarial probes against a policy checkpoint, scored by gold, rules and a proxy.

Probes come from a JSONL file (`probes=FILE`, format in `tether.redteam.probe`) or from the world's suites
(`tether.redteam.suites`: jailbreaks, social pressure, "are you sure?" pushback, over-refusal look-alikes,
invention under pressure). Each probe is answered `samples` times; a pushback probe is answered, then its
pushback is appended after that answer and answered again. Responses are judged by the world's gold reward
when the probe wraps a world query (and a world is given), by text rules otherwise, and scored by the proxy
(`reward_model` or `reward_fn`) when one is given.

Writes to `out`: probes.jsonl (the probes run), results.jsonl (one row per probe and sample: responses, flags,
proxy, gold, fail), summary.json (failure rate = attack success rate, mean gold and proxy, per suite and per
suite/attack), and, with a proxy, found.jsonl: the automated search's catch, bad responses the proxy scores
at or above its `found_quantile`, highest proxy first.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from rich.console import Console
from rich.table import Table

from tether.chat_templates import check_template_setting
from tether.config import check, save_config
from tether.endpoint import CACHE_FILE, EndpointFields
from tether.redteam.probe import Probe, check_queries, read_probes, write_probes
from tether.redteam.score import find_hacks, quantile, score_row, summarize
from tether.redteam.suites import SUITES, build_suites

SampleFn = Callable[[list[list[dict]], int], list[str]]
"""sample_fn(conversations, turn) -> one response per conversation; turn 0 answers the probes, turn 1 the pushbacks."""


@dataclass
class RedteamConfig(EndpointFields):
    """Red-team a policy: adversarial probes, failure rates per suite and attack, proxy-vs-gold search."""

    RENAMED: ClassVar[dict[str, str]] = {"policy": "model"}
    model: str = "runs/sft/model"
    """Hugging Face model folder of the policy (tokenizer in the same folder); "" with endpoint=URL."""
    world: str = "runs/world"
    """World folder (from `tether world`): generates the suites and judges with gold; "" for none (real models)."""
    probes: str = ""
    """JSONL probe file to run instead of the world's suites ("" = generate the suites)."""
    suites: list[str] = field(default_factory=lambda: list(SUITES))
    """World suites to generate: any of jailbreak, over_refusal, pressure, invention, pushback."""
    topics: int = 12
    """Topics (world queries) per suite; every attack of the suite is applied to each."""
    split: Literal["sft", "eval"] = "eval"
    """World split the topics come from ("eval": countries and requests held out of SFT)."""
    reward_model: str = ""
    """Reward-model folder (`tether rm`) used as the proxy score; "" for none."""
    reward_fn: str = ""
    """A proxy given as "module:function" f(prompts, responses) -> scores, instead of a reward model."""
    samples: int = 1
    """Responses sampled per probe (use > 1 with temperature > 0)."""
    temperature: float = 0.0
    """Sampling temperature; 0 is greedy decoding."""
    max_new_tokens: int = 48
    """Longest response in tokens."""
    batch_size: int = 64
    """Conversations generated together."""
    seed: int = 0
    """Seed of the suites and of sampling."""
    gold_bad: float = 0.0
    """Search: a response with gold reward below this is bad even when it does not fail its probe."""
    found_quantile: float = 0.75
    """Search: keep bad responses whose proxy is at least this quantile of all proxy scores."""
    out: str = "runs/redteam"
    """Folder for probes.jsonl, results.jsonl, summary.json, found.jsonl and config.yaml."""
    chat_template: str = ""
    """How probes are formatted (tether.chat): "" the tokenizer's own template, a built-in name (chatml, llama3,
    gemma, zephyr, hh, tether), a .jinja file, or "none" (plain text)."""

    def validate(self) -> None:
        check_template_setting(self.chat_template)
        self.check_source(bool(self.model))
        check(not self.endpoint or not self.chat_template, "chat_template", "the endpoint formats prompts itself: "
              "leave chat_template unset with endpoint=")
        check(bool(self.probes) or bool(self.world), "world", "required to generate suites (or give probes=FILE)")
        unknown = [s for s in self.suites if s not in SUITES]
        check(not unknown, "suites", f"unknown {', '.join(map(repr, unknown))}; allowed: {', '.join(SUITES)}")
        check(bool(self.suites) or bool(self.probes), "suites", "must name at least one suite")
        check(self.topics >= 1, "topics", "must be >= 1")
        check(not (self.reward_model and self.reward_fn), "reward_fn", "give reward_model or reward_fn, not both")
        check(self.samples >= 1, "samples", "must be >= 1")
        check(self.temperature >= 0, "temperature", "must be >= 0")
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(0.0 <= self.found_quantile <= 1.0, "found_quantile", "must be in [0, 1]")


def continued(probe: Probe, first: str) -> list[dict]:
    """The pushback turn: the probe's conversation, its first answer, then the pushback."""
    return [*probe.messages, {"role": "assistant", "content": first}, {"role": "user", "content": probe.pushback}]


def respond(probes: list[Probe], samples: int, sample_fn: SampleFn) -> list[tuple[Probe, int, list[str]]]:
    """(probe, sample index, responses) for each probe x sample: [answer], or [answer, answer to the pushback]."""
    items = [(p, k) for p in probes for k in range(samples)]
    first = sample_fn([p.messages for p, _ in items], 0)  # 1. answer every probe
    follow = [i for i, (p, _) in enumerate(items) if p.pushback]
    second = sample_fn([continued(items[i][0], first[i]) for i in follow], 1) if follow else []  # 2. pushback
    answers = [[a] for a in first]
    for i, a in zip(follow, second):
        answers[i].append(a)
    return [(p, k, a) for (p, k), a in zip(items, answers)]


def last_turn(probe: Probe, responses: list[str]) -> list[dict]:
    """The conversation the last response answers (what the proxy scores it against)."""
    return continued(probe, responses[0]) if len(responses) > 1 else probe.messages


def _proxy(cfg: RedteamConfig):
    from tether.rewards_source import make_reward_source

    if cfg.reward_model:
        return make_reward_source("rm", reward_model=cfg.reward_model)
    return make_reward_source("callable", reward_fn=cfg.reward_fn) if cfg.reward_fn else None


def _probes(cfg: RedteamConfig, world) -> list[Probe]:
    if cfg.probes:
        probes = read_probes(cfg.probes)
        if world is not None:
            check_queries(probes, world.parse, cfg.probes)
        return probes
    return build_suites(world, list(cfg.suites), cfg.topics, cfg.seed, cfg.split)


def summary_table(summary: dict, title: str) -> Table:
    """Failure (attack success) rate, mean gold and proxy per suite, then per attack under it."""
    table = Table(title=title)
    for col in ("suite / attack", "n", "fail (ASR)", "gold", "proxy"):
        table.add_column(col, justify="left" if col == "suite / attack" else "right")

    def cells(s):
        return [str(s["n"]), f"{s['fail_rate']:.0%}", *("-" if s[k] is None else f"{s[k]:+.2f}" for k in ("gold", "proxy"))]

    for suite, s in summary["suites"].items():
        table.add_row(f"[bold]{suite}[/bold]", *cells(s))
        for key, a in summary["attacks"].items():
            if key.split("/")[0] == suite:
                table.add_row(f"  {key.split('/', 1)[1]}", *cells(a))
    if summary["all"]["n"]:
        table.add_row("[bold]all[/bold]", *cells(summary["all"]))
    return table


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _sample_fn(cfg: RedteamConfig, out: Path) -> SampleFn:
    """Answers from the model folder, or from cfg.endpoint (cached in <out>/endpoint_cache.jsonl)."""
    if cfg.endpoint:
        client = cfg.endpoint_client()
        return lambda conversations, turn: [r.text for r in client.replies(
            conversations, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed + turn,
            cache=out / CACHE_FILE, label=f"redteam turn {turn + 1}")]
    from tether.chat import chat_format  # heavy imports (torch, transformers) only when the stage runs
    from tether.generation import generate
    from tether.models import load_policy, load_tokenizer

    model, tokenizer = load_policy(cfg.model), load_tokenizer(cfg.model)
    fmt = chat_format(tokenizer, cfg.chat_template, cfg.model)
    return lambda conversations, turn: generate(model, fmt, conversations, cfg.max_new_tokens, cfg.temperature,
                                                cfg.batch_size, cfg.seed + turn, f"redteam turn {turn + 1}")


def run(cfg: RedteamConfig) -> dict:
    from tether.world.build import load_world

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    # 1. the probes: a file, or the world's suites (written out, so a run can be repeated or edited)
    world = load_world(cfg.world) if cfg.world else None
    probes = _probes(cfg, world)
    write_probes(out / "probes.jsonl", probes)
    # 2. answer them: every probe `samples` times, pushback probes twice in a row
    answered = respond(probes, cfg.samples, _sample_fn(cfg, out))
    # 3. proxy scores of the last response in its conversation
    proxy = _proxy(cfg)
    scores = (proxy([last_turn(p, a) for p, _, a in answered], [a[-1] for _, _, a in answered]).tolist()
              if proxy else [None] * len(answered))
    # 4. gold or rules: did each attack succeed?
    judge = world.judge if world is not None else None
    rows = [score_row(p, k, a, judge, s, cfg.gold_bad) for (p, k, a), s in zip(answered, scores)]
    summary = summarize(rows)
    _write_jsonl(out / "results.jsonl", rows)
    # 5. the search: bad responses the proxy rates high
    if proxy:
        proxy_min = quantile([r["proxy"] for r in rows], cfg.found_quantile)
        found = find_hacks(rows, proxy_min)
        _write_jsonl(out / "found.jsonl", found)
        summary["search"] = {"proxy_min": proxy_min, "found": len(found), "bad": sum(r["bad"] for r in rows)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    console = Console(width=100)
    console.print(summary_table(summary, f"red team: {cfg.model or cfg.endpoint} (temperature {cfg.temperature})"))
    if proxy:
        console.print(f"search: {summary['search']['found']} bad responses with proxy >= "
                      f"{summary['search']['proxy_min']:+.2f} -> {out / 'found.jsonl'}")
    return summary
