"""`tether cai`: the supervised stage of Constitutional AI (Bai et al. 2022, "Constitutional AI: Harmlessness from AI
Feedback", sec. 3, SL-CAI): responses, critiqued and revised by the model itself under sampled principles, become SFT
data.

For each prompt: 1. sample a response; then each round r = 1..rounds: 2. draw a principle of the constitution (seeded
by (seed, prompt, round)); 3. ask the model to critique its response with the principle's critique request; 4. ask
it to revise with the principle's revision request; the revision is the response of the next round. Each round asks
over a fresh conversation [prompt, response, critique request, critique, revision request] rather than one growing
conversation, so that a small model's context holds it. The model is a folder (tether.responders.LocalResponder,
its chat template via tether.chat) or any OpenAI-compatible endpoint (tether.endpoint, the settings of `tether
judge`); every reply is cached as it arrives, so an interrupted run resumes where it stopped.

Output, in `out`:
    cai.jsonl       SFT rows `tether sft data=...` reads: {"messages": [prompt..., {"assistant": final revision}],
                    "cai": {"original", "rounds": [{"principle", "critique", "revision"}], "constitution",
                    "responder", "prompt_index"}} (provenance; `tether sft` ignores it)
    summary.json    counts, principles drawn, empty or unfinished replies; with world=, the gold reward of the
                    originals and of each round's revisions (mean, by category, behaviour rates): evaluation only,
                    it never enters cai.jsonl
    gold.jsonl      with world=: each scored prompt's gold, original then each round
    config.yaml, cache.jsonl (a model folder) or endpoint_cache.jsonl (an endpoint)
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path

from rich.console import Console

from tether.chat_templates import check_template_setting
from tether.config import check, check_prompt_limit, save_config
from tether.data.formats import check_format, load_prompts
from tether.endpoint import CACHE_FILE, EndpointFields
from tether.errors import ConfigError
from tether.judge.constitution import Constitution, Principle, load_constitution
from tether.responders import Responder

console = Console(stderr=True)
LOCAL_CACHE = "cache.jsonl"
FLAGS = ("correct", "refused", "over_refused", "sycophantic", "hallucinated", "hedged", "padded", "flattering")
"""Behaviour rates of tether.world.gold.Judgement reported for originals and revisions."""


@dataclass
class CaiConfig(EndpointFields):
    """Critique and revise a model's own responses under a constitution, and write the revisions as SFT data."""

    RENAMED: ClassVar[dict[str, str]] = {"n": "n_prompts"}

    prompts: str = ""
    """Prompts: JSONL {"prompt": str or messages}, or any data `tether data` reads (HH-RLHF, TRL, UltraFeedback, SFT
    rows; JSONL, Parquet, ...: each distinct prompt once); "" with world=: the world's train-split prompts
    (<world>/prompts.jsonl: its harmful requests, the red-team prompts, among the other four categories)."""
    format: str = "auto"
    """Format of prompts: auto (told from the first row's keys) or a name from `tether data --help`."""
    split: str | None = None
    """Split of prompts when it is a `datasets` save_to_disk DatasetDict folder; None for a file."""
    n_prompts: int | None = None
    """Use only the first n prompts (None: all); the name collect and bon use."""
    model: str = ""
    """Model folder that responds, critiques and revises (its tokenizer in the same folder); "" with endpoint=."""
    world: str = ""
    """World folder (from `tether world`): its prompts by default, its constitution by default, and the gold reward
    of originals and revisions in summary.json (evaluation only); "" for none."""
    constitution: str = ""
    """Constitution YAML file (tether.judge.constitution); "": the world's (tether/world/constitution.yaml) with
    world=, else the default shipped with tether."""
    rounds: int = 1
    """Critique-revision rounds per prompt, a principle drawn for each (Bai et al. used up to 4)."""
    temperature: float = 1.0
    """Sampling temperature of the original responses (0: greedy)."""
    revision_temperature: float = 0.0
    """Sampling temperature of critiques and revisions (0: greedy, the model's best answer)."""
    max_new_tokens: int = 64
    """Longest reply (response, critique or revision) in tokens."""
    chat_template: str = ""
    """Model folder: how conversations are formatted (tether.chat): "" the tokenizer's own template, a built-in
    name (chatml, llama3, gemma, zephyr, hh, tether), a .jinja file, or "none" (plain text)."""
    max_prompt_length: int | None = None
    """Model folder: longest conversation in tokens; longer ones lose earlier turns, then tokens from their start
    (None: whatever the model's positions leave after max_new_tokens)."""
    batch_size: int = 16
    """Model folder: conversations answered together."""
    device: str = "auto"
    """Model folder: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps."""
    seed: int = 0
    """Seed of the principles drawn and of sampling."""
    out: str = "runs/cai"
    """Folder for cai.jsonl, summary.json, gold.jsonl, config.yaml and the reply cache."""

    def validate(self) -> None:
        self.check_source(bool(self.model))
        check(bool(self.prompts) or bool(self.world), "prompts", "give prompts=FILE, or world=DIR for the world's")
        check(not self.endpoint or (not self.chat_template and self.max_prompt_length is None), "endpoint",
              "the server formats and cuts prompts itself: leave chat_template and max_prompt_length unset")
        check_format(self.format, "prompts")
        check(self.n_prompts is None or self.n_prompts >= 1, "n_prompts", "must be >= 1 or null")
        check(self.rounds >= 1, "rounds", "must be >= 1")
        check(self.temperature >= 0, "temperature", "must be >= 0")
        check(self.revision_temperature >= 0, "revision_temperature", "must be >= 0")
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check_prompt_limit(self.max_prompt_length)
        check_template_setting(self.chat_template)
        check(self.device == "auto" or re.fullmatch(r"cpu|mps|cuda(:\d+)?", self.device), "device",
              "must be auto, cpu, cuda, cuda:N or mps")


@dataclass
class Sample:
    """One prompt's way through the rounds."""

    index: int
    """Its place among the prompts (the principle draw's seed)."""
    prompt: list[dict]
    """The conversation before the response, ending with a user turn."""
    original: str
    response: str
    """The latest revision (the original before round 1); an empty reply keeps the previous response."""
    rounds: list[dict]
    """{"principle", "critique", "revision"} per round, the replies as given."""


def principle_for(constitution: Constitution, seed: int, index: int, round: int) -> Principle:
    """The principle of prompt `index` in `round`: drawn from (seed, index, round) alone, so the draw does not
    depend on the order of work or on n."""
    return random.Random(f"{seed}:{index}:{round}").choice(constitution.principles)


def critique_request(s: Sample, principle: Principle) -> list[dict]:
    """The conversation that asks for a critique of the sample's current response."""
    return [*s.prompt, {"role": "assistant", "content": s.response}, {"role": "user", "content": principle.critique}]


def revision_request(s: Sample, principle: Principle, critique: str) -> list[dict]:
    """The critique conversation, answered, then the revision request."""
    return [*critique_request(s, principle), {"role": "assistant", "content": critique},
            {"role": "user", "content": principle.revision}]


def build_responder(cfg: CaiConfig) -> tuple[Responder, str, Path]:
    """The responder the settings name, its name for the provenance, and its cache file."""
    if cfg.endpoint:
        client = cfg.endpoint_client()
        return client, f"{cfg.endpoint} ({client.model})", Path(cfg.out) / CACHE_FILE
    from tether.responders import LocalResponder

    if not Path(cfg.model).is_dir():
        raise ConfigError(f"model: {cfg.model} is not a folder (a model folder with its tokenizer)")
    responder = LocalResponder(cfg.model, cfg.chat_template, cfg.max_prompt_length, cfg.batch_size, cfg.device,
                               fit=True)
    return responder, cfg.model, Path(cfg.out) / LOCAL_CACHE


def load_cai_prompts(cfg: CaiConfig) -> list[list[dict]]:
    """The prompts as conversations ending with a user turn (a plain prompt: one user message), the first n."""
    path = cfg.prompts or str(Path(cfg.world) / "prompts.jsonl")
    prompts = load_prompts(path, cfg.format if cfg.prompts else "prompts", cfg.split)
    return [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts][:cfg.n_prompts]


def run_rounds(responder: Responder, samples: list[Sample], constitution: Constitution, cfg: CaiConfig,
               cache: Path) -> None:
    """Steps 2-4 of the module docstring, `cfg.rounds` times, every prompt of a round in one batch."""
    ask = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.revision_temperature, seed=cfg.seed, cache=cache)
    for r in range(1, cfg.rounds + 1):
        principles = [principle_for(constitution, cfg.seed, s.index, r) for s in samples]
        critiques = responder.replies([critique_request(s, p) for s, p in zip(samples, principles)],
                                      label=f"cai round {r}/{cfg.rounds}: critiques", **ask)
        revisions = responder.replies([revision_request(s, p, c.text)
                                       for s, p, c in zip(samples, principles, critiques)],
                                      label=f"cai round {r}/{cfg.rounds}: revisions", **ask)
        for s, p, c, v in zip(samples, principles, critiques, revisions):
            s.rounds.append({"principle": p.id, "critique": c.text, "revision": v.text, "ended": v.ended})
            s.response = v.text or s.response
        changed = sum(v.text != "" for v in revisions)
        console.print(f"cai: round {r}: {changed}/{len(samples)} non-empty revisions")


def cai_row(s: Sample, constitution: Constitution, responder: str) -> dict:
    """One SFT row with its provenance."""
    provenance = {"prompt_index": s.index, "original": s.original,
                  "rounds": [{k: v for k, v in r.items() if k != "ended"} for r in s.rounds],
                  "constitution": {"name": constitution.name, "version": constitution.version,
                                   "sha256": constitution.sha256},
                  "responder": responder}
    return {"messages": [*s.prompt, {"role": "assistant", "content": s.response}], "cai": provenance}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def run(cfg: CaiConfig) -> Path:
    # 1. The world, the prompts (bad data fails before any model work), the constitution, the responder.
    world = None
    if cfg.world:
        from tether.world.build import load_world

        world = load_world(cfg.world)
    prompts = load_cai_prompts(cfg)
    constitution = _constitution(cfg)
    responder, name, cache = build_responder(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    # 2. The original responses (sampled at `temperature`: a model's ordinary, sometimes flawed, answers).
    originals = responder.replies(prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                  seed=cfg.seed, cache=cache, label="cai: responses")
    samples = [Sample(i, p, o.text, o.text, []) for i, (p, o) in enumerate(zip(prompts, originals))]
    # 3. Critique and revise, round after round (an empty original has nothing to critique).
    run_rounds(responder, [s for s in samples if s.original], constitution, cfg, cache)
    # 4. The SFT rows (a prompt whose every reply came back empty has nothing to teach: counted, not written).
    kept = [s for s in samples if s.response]
    if not kept:
        raise ConfigError(f"model: every response of {name} came back empty; nothing to write")
    _write_jsonl(out / "cai.jsonl", [cai_row(s, constitution, name) for s in kept])
    # 5. The summary: what happened, and with a world, gold before and after (evaluation, kept out of cai.jsonl).
    summary = _summary(samples, len(kept), constitution, name, cfg)
    if world is not None:
        summary["gold"], per_prompt = gold_summary(world, samples)
        _write_jsonl(out / "gold.jsonl", per_prompt)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _report(summary)
    return out / "cai.jsonl"


def _constitution(cfg: CaiConfig) -> Constitution:
    if cfg.constitution or not cfg.world:
        return load_constitution(cfg.constitution)
    from tether.world.critique import world_constitution

    return world_constitution()


def _summary(samples: list[Sample], written: int, constitution: Constitution, name: str, cfg: CaiConfig) -> dict:
    rounds = [r for s in samples for r in s.rounds]
    return {"prompts": len(samples), "written": written, "rounds": cfg.rounds, "responder": name,
            "constitution": {"name": constitution.name, "version": constitution.version, "path": constitution.path,
                             "sha256": constitution.sha256},
            "principles": dict(sorted(Counter(r["principle"] for r in rounds).items())),
            "empty_originals": sum(not s.original for s in samples),
            "empty_critiques": sum(not r["critique"] for r in rounds),
            "empty_revisions": sum(not r["revision"] for r in rounds),
            "unfinished_revisions": sum(bool(r["revision"]) and not r["ended"] for r in rounds),
            "changed": sum(s.response != s.original for s in samples) / max(1, len(samples)),
            "decoding": {"temperature": cfg.temperature, "revision_temperature": cfg.revision_temperature,
                         "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed}}


def gold_summary(world, samples: list[Sample]) -> tuple[dict, list[dict]]:
    """Gold of the originals and of each round's revisions over the prompts the world can parse (an empty revision
    counts as the response it kept), by category, with behaviour rates of the originals and the final revisions."""
    stages: dict[str, list] = {}
    per_prompt = []
    for s in samples:
        q = world.parse(s.prompt[-1]["content"])
        if q is None:
            continue
        texts, current = [s.original], s.original
        for r in s.rounds:
            current = r["revision"] or current
            texts.append(current)
        verdicts = [world.judge(q.text, t) for t in texts]
        per_prompt.append({"prompt_index": s.index, "category": q.category,
                           "gold": [round(v.reward, 4) for v in verdicts]})
        for k, v in enumerate(verdicts):
            stages.setdefault("original" if k == 0 else f"round_{k}", []).append(v)
    return {name: _rates(verdicts) for name, verdicts in stages.items()}, per_prompt


def _rates(verdicts: list) -> dict:
    def mean(xs) -> float:
        xs = list(xs)
        return sum(xs) / len(xs) if xs else 0.0

    out = {"n": len(verdicts), "gold": mean(v.reward for v in verdicts)}
    out.update({f: mean(getattr(v, f) for v in verdicts) for f in FLAGS})
    by = {}
    for v in verdicts:
        by.setdefault(v.category, []).append(v.reward)
    out["by_category"] = {c: {"n": len(g), "gold": mean(g)} for c, g in sorted(by.items())}
    return out


def _report(summary: dict) -> None:
    line = (f"cai: {summary['written']}/{summary['prompts']} rows, {summary['rounds']} round(s), "
            f"{summary['changed']:.0%} changed by revision")
    gold = summary.get("gold")
    if gold:
        line += "; gold " + " -> ".join(f"{name} {g['gold']:+.3f}" for name, g in gold.items())
        line += f" (n={gold['original']['n']})"
    console.print(line)
