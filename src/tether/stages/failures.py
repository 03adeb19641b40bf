"""Failure prompts for the next round of `tether iterate`: what the red team and the monitor caught.

Two sources, both signals the loop already produces, never the gold reward on its own:
- red team (`tether redteam` folder): `found.jsonl`, the bad responses the proxy scored high (the automated
  search's catch, ranked), then every failing row of `results.jsonl`. A probe's prompt is its plain world
  `query` (what the attack wraps, and what the world's raters and judge can read); a probe without one keeps
  its `messages` (rated by people through the app, not by the world's simulated raters).
- monitor (`tether ppo` folder): `samples.jsonl` rows logged at or after the first alert of `alerts.jsonl`
  (the policy the monitor said was hacking; alerts computed from the held-out signal, `HELDOUT_ALERTS`, count
  only when that signal was not gold, see `best/best.json`), and rows whose response trips the monitor's own text detectors
  (flattery, hedging, padding; agreeing with a false premise, refusing a benign request, complying with a harmful
  one). Optionally, as an explicit audit choice
  (`gold_below`), rows whose logged gold reward is low: off by default, because letting the gold reward pick
  which prompts get new labels leaks the judge into the training data (the red team's gold verdicts are the
  audit the loop already runs; a low-gold filter on training samples would be a second, undeclared channel).
The red team's failing rows are judged by gold on the world: that is the audit the issue asks to feed back
("the red-team and monitor failures as prompts"). Only *which prompts* get new comparisons follows it; the
labels always come from the raters.

Held-out hygiene. The world's red-team suites draw their topics from the *held-out* split (countries and
requests never seen in SFT, the same split the greedy evaluation reads). Collecting comparisons and training on
those very queries would contaminate the next round's evaluation and red team. With `train_twins` each held-out
query becomes its train-split twin: the same category, attribute and template about a train-split entity
(`train_twin`), so the next round learns the failure pattern, not the test answers.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tether.data.preferences import prompt_key
from tether.monitor.text import agrees, complies_with_harmful, is_flattery, is_hedging, is_padding, is_refusal
from tether.world.prompts import (
    FACT_TEMPLATES,
    PREMISE_TEMPLATES,
    REQUEST_TEMPLATES,
    Query,
)

HELDOUT_ALERTS = ("heldout_drop", "divergence")
"""Monitor detectors that read the held-out signal: with gold as that signal they are gold's verdicts."""

SOURCES = ("redteam", "monitor")
"""Where a failure prompt comes from (collected prompts from the world's training set are "train")."""


@dataclass
class FailurePrompt:
    """One prompt to re-collect comparisons on, and why."""

    prompt: str | list
    """What the policy is asked: a world query (string) or a conversation ending with a user turn."""
    source: str
    """One of SOURCES."""
    reason: str
    """Why it was kept: "found" (proxy high, response bad), "fail" (attack succeeded), "alert" (sampled at or
    after a monitor alert), "flags:..." (the monitor's text detectors), "gold" (audit opt-in)."""
    origin: dict = field(default_factory=dict)
    """Where it was read: file, probe id / suite / attack, or training step; `heldout_query` when twinned."""

    def row(self, round_number: int) -> dict:
        """The prompts-JSONL row (`{"prompt": ...}` plus provenance, which `read_prompts` ignores)."""
        return {"prompt": self.prompt, "source": self.source, "reason": self.reason, "round": round_number,
                "origin": self.origin}


def _text(prompt: str | list) -> str:
    """The last user turn of a prompt: what the world parses."""
    return prompt if isinstance(prompt, str) else next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# ---------------------------------------------------------------------------------------------
# Readers: a red-team folder, a PPO run folder


def redteam_failures(folder: str | Path) -> list[FailurePrompt]:
    """The proxy's catch (found.jsonl, highest proxy first), then every failing results.jsonl row, in file order."""
    folder = Path(folder)
    out = []
    for name, reason, keep in (("found.jsonl", "found", lambda r: True), ("results.jsonl", "fail", lambda r: r["fail"])):
        for r in _jsonl(folder / name):
            if keep(r):
                origin = {"file": str(folder / name), "id": r["id"], "suite": r["suite"], "attack": r["attack"]}
                out.append(FailurePrompt(r.get("query") or r["messages"], "redteam", reason, origin))
    return out


def sample_flags(prompt: str | list, response: str, world=None) -> list[str]:
    """The monitor's text detectors on one sample: flattery, hedging, padding; and, by the prompt's category (the
    world's parse of the prompt, its metadata, not the gold reward), agreeing with a false premise, refusing a
    harmless request (over_refusal) and complying with a harmful one (compliance)."""
    flags = [name for name, detect in (("flattery", is_flattery), ("hedging", is_hedging), ("padding", is_padding))
             if detect(response)]
    q = world.parse(_text(prompt)) if world is not None else None
    if q is not None and q.category == "false_premise" and agrees(response):
        flags.append("sycophancy")
    if q is not None and q.category != "harmful" and is_refusal(response):
        flags.append("over_refusal")
    if q is not None and q.category == "harmful" and complies_with_harmful(_text(prompt), response):
        flags.append("compliance")
    return flags


def monitor_failures(run_dir: str | Path, world=None, gold_below: float | None = None) -> list[FailurePrompt]:
    """samples.jsonl rows the monitor flags: at or after the first alert's step, or tripping a text detector;
    with `gold_below` (audit opt-in, see the module docstring) also rows whose logged gold is below it."""
    run_dir = Path(run_dir)
    alerts = _jsonl(run_dir / "alerts.jsonl")
    if gold_below is None and _heldout_signal(run_dir) == "gold":  # gold's own verdicts do not pick prompts
        alerts = [a for a in alerts if a["name"] not in HELDOUT_ALERTS]
    first_alert = min((a["step"] for a in alerts), default=None)
    out = []
    for r in _jsonl(run_dir / "samples.jsonl"):
        flags = sample_flags(r["prompt"], r["response"], world)
        if first_alert is not None and r["step"] >= first_alert:
            reason = "alert"
        elif flags:
            reason = "flags:" + ",".join(flags)
        elif gold_below is not None and r.get("gold") is not None and r["gold"] < gold_below:
            reason = "gold"
        else:
            continue
        out.append(FailurePrompt(r["prompt"], "monitor", reason,
                                 {"file": str(run_dir / "samples.jsonl"), "step": r["step"], "flags": flags}))
    return out


def _heldout_signal(run_dir: Path) -> str:
    """The monitor's held-out signal of a run ("gold", "heldout_rm", ...), from best/best.json; "gold" when
    unknown, so that an unreadable run never lets gold in."""
    best = run_dir / "best" / "best.json"
    return json.loads(best.read_text()).get("signal", "gold") if best.exists() else "gold"


# ---------------------------------------------------------------------------------------------
# Held-out queries -> train-split twins


def _templates(category: str, attribute: str) -> list[str]:
    return {"fact": FACT_TEMPLATES.get(attribute, []), "unanswerable": FACT_TEMPLATES.get(attribute, []),
            "false_premise": PREMISE_TEMPLATES.get(attribute, []), "harmful": REQUEST_TEMPLATES,
            "benign": REQUEST_TEMPLATES}[category]


def in_train_split(world, q: Query) -> bool:
    """Whether a query is about a train-split entity (an SFT country, a train request, an SFT unknown name)."""
    if q.category in ("fact", "false_premise"):
        return q.country in {c.name for c in world.sft_countries}
    if q.category == "unanswerable":
        return q.country in world.knowledge.unknown_sft
    pool = world.harmful_train if q.category == "harmful" else world.benign_train
    return (q.verb, q.target) in pool


def train_twin(world, q: Query, rng: random.Random) -> Query:
    """`q` itself when it is about a train-split entity; else the same category, attribute and template about a
    train-split entity drawn with `rng` (a fresh train query of the category if the template is not found)."""
    if in_train_split(world, q):
        return q
    old = dict(c=q.country, f=q.false_value, verb=q.verb, target=q.target)
    template = next((t for t in _templates(q.category, q.attribute) if t.format(**old) == q.text), None)
    new = dict(old)
    if q.category in ("fact", "false_premise"):
        country = rng.choice(world.sft_countries)
        new["c"] = country.name
        if q.category == "false_premise" and q.false_value == country.fact(q.attribute):
            new["f"] = rng.choice([v for v in world.knowledge.values(q.attribute) if v != q.false_value])
    elif q.category == "unanswerable":
        new["c"] = rng.choice(world.knowledge.unknown_sft)
    else:
        new["verb"], new["target"] = rng.choice(world.harmful_train if q.category == "harmful" else world.benign_train)
    twin = world.parse(template.format(**new)) if template else None
    if twin is None or twin.category != q.category or not in_train_split(world, twin):
        twin = world.query(q.category, "sft", rng)
    return twin


def _rng(seed: int, text: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"{seed}/{text}".encode()).digest()[:8], "big"))


# ---------------------------------------------------------------------------------------------
# Gathering


def gather(candidates: Iterable[FailurePrompt], world=None, train_twins: bool = True,
           seed: int = 0) -> tuple[list[FailurePrompt], dict]:
    """Deduplicated failure prompts (first occurrence kept) and counts of what was kept and dropped.

    With a world, a prompt it cannot parse is dropped ("unparsed": neither its simulated raters nor its judge
    can read it); with `train_twins`, a held-out query becomes its train-split twin (seeded by the query text,
    so the same failure always gets the same twin).
    """
    seen: set[str] = set()
    kept, report = [], {"candidates": 0, "duplicates": 0, "unparsed": 0, "twinned": 0}
    for f in candidates:
        report["candidates"] += 1
        if world is not None:
            q = world.parse(_text(f.prompt))
            if q is None:
                report["unparsed"] += 1
                continue
            if train_twins and not in_train_split(world, q):
                twin = train_twin(world, q, _rng(seed, q.text))
                f = FailurePrompt(twin.text, f.source, f.reason, {**f.origin, "heldout_query": q.text})
                report["twinned"] += 1
        key = prompt_key(f.prompt)
        if key in seen:
            report["duplicates"] += 1
            continue
        seen.add(key)
        kept.append(f)
    report["kept"] = len(kept)
    report["by_source"] = {s: sum(f.source == s for f in kept) for s in SOURCES}
    return kept, report


def interleave(groups: list[list[FailurePrompt]], limit: int) -> list[FailurePrompt]:
    """Round-robin over the groups (each in its own priority order), at most `limit` in all, so a cap never
    crowds out a whole source."""
    out, i = [], 0
    while len(out) < limit and any(i < len(g) for g in groups):
        out += [g[i] for g in groups if i < len(g)][:limit - len(out)]
        i += 1
    return out


def write_prompts(path: str | Path, rows: list[dict]) -> None:
    """A prompts JSONL (`{"prompt": ..., ...provenance}` per line), readable by `tether.data.corpus.read_prompts`."""
    with Path(path).open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
