"""`tether iterate`: one more round of the loop, fed by what the previous round's audit caught (issue 7, item 4).

A round, from the previous round's folder (a demo root is round 1; an iterate round lives in `<root>/round<n>/`):
1. failure prompts: the previous policy's red-team catch (found.jsonl, failing results.jsonl rows) and the PPO
   monitor's flagged samples (`tether.stages.failures`), deduplicated, held-out queries mapped to train-split
   twins, written with their provenance to `failures.jsonl`;
2. collect comparisons from the current policy and the SFT policy (for contrast) on train prompts plus the
   failure prompts; every comparison's `meta` gets {"round", "policy", "source": "train"|"redteam"|"monitor"};
3. label them (the world's simulated raters, through the rater app's service by default; every rating records
   its rater and guideline version);
4. the reward model, retrained from the SFT model on every round's comparisons (default) or extended;
5. the optimiser (PPO against the new reward model, or DPO on every round's comparisons), from the SFT policy;
6. audit: evaluation (temperature 1, 4 responses per held-out prompt, the same seed as the previous round's) and
   red team of the new policy, and `round.json`: the round's provenance and whether it reduced the hacks the
   previous round exhibited.

Why retrain the reward model on all rounds rather than extend it: the previous RM *is* the proxy the last policy
gamed; its features carry the biases the policy exploited, and a fine-tune on the new round alone forgets the
round-1 data (and `tether rm` always starts a fresh head, so "extend" keeps the features but not the calibration).
Retraining from the SFT model on the union is what InstructGPT did between data batches, costs one RM run over a
few thousand pairs here, and keeps each round's RM comparable. `rm_mode=extend` starts from the previous RM's
backbone on this round's comparisons alone, when the union grows too large to retrain.

Why optimise from the SFT policy rather than from the previous round's policy: the previous policy carries the
hack (its weights moved toward what the old proxy over-rewarded), and the KL tether would then hold the new policy
near the hacked one. From SFT, with the reference still the SFT policy, the new round's KL budget is spent
against the corrected proxy only, and round 1 and round 2 are measured on one footing. `init=parent` continues.

Every dataset and checkpoint records which round, policy and rater guidelines produced it: comparisons in their
`meta` and `guideline_version`, each stage folder and model folder in `provenance.json`, the round in `round.json`.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Literal

import yaml
from rich.console import Console
from rich.table import Table

from tether.config import check, config_from_dict, load_config, save_config
from tether.data.preferences import prompt_key, read_comparisons, write_comparisons
from tether.errors import ConfigError
from tether.monitor.stats import HACK_NOISE_Z, rate_rises
from tether.progress import StageTimer
from tether.report.data import decoding_label, hack_verdict
from tether.stages import collect, dpo, ppo, redteam, rm
from tether.stages import label as label_stage
from tether.stages.evaluate import (
    SHORT,
    EvalConfig,
    audit_eval_config,
    decoding,
)
from tether.stages.failures import (
    SOURCES,
    FailurePrompt,
    gather,
    interleave,
    monitor_failures,
    redteam_failures,
    write_prompts,
)
from tether.world.raters import RaterPoolConfig

console = Console(width=120)
HACKS = ("flattering", "sycophantic", "hedged", "padded")
"""Evaluation rates compared between rounds (lower is better), with harmful compliance and the red-team failure
rate."""


@dataclass
class IterateConfig:
    """Rounds of collect -> raters -> reward model -> PPO or DPO -> audit, each fed by the last one's failures."""

    previous: str = "runs/demo"
    """Folder of the previous round: a demo root (round 1) or an iterate round (`<root>/round<n>`, with round.json).
    Round n+1 is written to `<root>/round<n+1>/`."""
    rounds: int = 1
    """Rounds to run, each from the one before."""
    optimiser: Literal["ppo", "dpo"] = "ppo"
    """PPO against the new reward model, or DPO on every round's comparisons; the previous round's policy of the
    same optimiser is the current policy."""
    init: Literal["sft", "parent"] = "sft"
    """Where the optimiser starts: the SFT policy (default: the parent policy carries the hack, see the module
    docstring) or the parent policy."""
    rm_mode: Literal["retrain", "extend"] = "retrain"
    """retrain: from the SFT model on every round's comparisons; extend: from the previous RM's backbone (fresh
    head) on this round's comparisons only."""
    max_failure_prompts: int = 64
    """At most this many failure prompts are added to a round's prompts."""
    failure_share: float = 0.3
    """At most this share of the collected prompts are failure prompts (the rest: the world's train prompts)."""
    redteam_failures: bool = True
    """Take failure prompts from the previous policy's red team (found.jsonl, failing results.jsonl rows)."""
    monitor_failures: bool = True
    """Take failure prompts from the previous PPO run's monitor (samples after an alert or with hack markers)."""
    monitor_gold_below: float | None = None
    """Audit opt-in: also take PPO samples whose logged gold reward is below this (None: gold never picks prompts)."""
    train_twins: bool = True
    """Map held-out failure queries (the red team's topics) to train-split twins, keeping the evaluation clean."""
    app: bool = True
    """Simulated raters rate through the rater app's service and database (`<round>/label/raters/`); off: in memory."""
    inherit: bool = True
    """Start each stage from the settings the previous round used (its saved config), then apply every nested
    setting below that differs from the stage's default; off: the nested settings below as they are."""
    resume: bool = False
    """Skip stages whose output exists (and resume an interrupted training stage)."""
    collect: collect.CollectConfig = field(default_factory=collect.CollectConfig)
    """Comparison collection (policies, prompts, seed and paths set by iterate: seed = previous + 1)."""
    raters: RaterPoolConfig = field(default_factory=RaterPoolConfig)
    """The simulated rater pool (the same pool as the previous round when inherited)."""
    rm: rm.RMConfig = field(default_factory=rm.RMConfig)
    """Reward model (data, backbone and paths set by iterate)."""
    ppo: ppo.PPOConfig = field(default_factory=ppo.PPOConfig)
    """PPO (policy, prompts, reward model, world and paths set by iterate)."""
    dpo: dpo.DPOConfig = field(default_factory=dpo.DPOConfig)
    """DPO (data, model and paths set by iterate)."""
    redteam: redteam.RedteamConfig = field(default_factory=redteam.RedteamConfig)
    """Red team of the new policy (policy, world, proxy and paths set by iterate; seed kept: the same probes)."""
    eval: EvalConfig = field(default_factory=audit_eval_config)
    """Evaluation on the world's held-out prompts, on the previous round's footing (model, world and paths set by
    iterate): temperature 1, 4 responses per prompt. The parent and SFT evaluations are rerun when theirs differ."""

    def validate(self) -> None:
        check(bool(self.previous), "previous", "is required (a demo root or an iterate round folder)")
        check(self.rounds >= 1, "rounds", "must be >= 1")
        check(self.max_failure_prompts >= 0, "max_failure_prompts", "must be >= 0")
        check(0 <= self.failure_share < 1, "failure_share", "must be in [0, 1)")


@dataclass
class Parent:
    """The previous round, as the next one reads it."""

    number: int
    """Its round number (1 for a demo root)."""
    root: Path
    """The demo root: world/, sft/model, eval/ and round folders live here."""
    folder: Path
    """Where its stage folders live (the root itself for round 1)."""
    optimiser: str
    """The optimiser that trained its policy ("ppo" or "dpo"): its eval/ and redteam/ entries carry that name."""
    policy: Path
    """Its policy, the current policy."""
    reward_model: Path
    """Its reward model."""
    comparisons: list[str]
    """Labelled comparisons of every round up to it, in round order."""


def read_parent(previous: str | Path, optimiser: str) -> Parent:
    """The previous round from its folder: round.json for an iterate round (its policy, whichever optimiser trained
    it), the demo layout for round 1 (the policy of `optimiser`: the demo trains both)."""
    folder = Path(previous)
    if (folder / "round.json").exists():
        r = json.loads((folder / "round.json").read_text())
        number, root, comparisons, optimiser = r["round"], Path(r["root"]), r["data"]["all_rounds"], r["optimiser"]
    elif (folder / "sft/model").is_dir() and (folder / "world").is_dir():
        number, root, comparisons = 1, folder, [str(folder / "label/comparisons.jsonl")]
    else:
        raise ConfigError(f"previous: {folder} is neither a demo root (sft/model, world/) nor an iterate round "
                          "(round.json)")
    policy = folder / optimiser / "model"
    if not policy.is_dir():
        raise ConfigError(f"optimiser: round {number} in {folder} has no {optimiser}/model")
    return Parent(number, root, folder, optimiser, policy, folder / "rm/model", comparisons)


# ---------------------------------------------------------------------------------------------
# Stage settings: the previous round's, with this config's changes, and every path wired


def overlay(base, mine, default=None):
    """`base` with every field of `mine` that differs from `default` (its class default when None; nested configs
    field by field)."""
    default, changes = type(mine)() if default is None else default, {}
    for f in fields(mine):
        value, was = getattr(mine, f.name), getattr(default, f.name)
        if is_dataclass(value) and is_dataclass(getattr(base, f.name, None)):
            changes[f.name] = overlay(getattr(base, f.name), value, was)
        elif value != was:
            changes[f.name] = value
    return replace(base, **changes)


def _previous_config(cls, path: Path, section: str | None = None):
    """The config a previous stage saved (a section of a larger YAML, e.g. demo.yaml's `eval`), or None."""
    if not path.exists():
        return None
    if section is None:
        return load_config(cls, str(path))
    data = yaml.safe_load(path.read_text()) or {}
    return config_from_dict(cls, data[section], f"{path}: {section}") if section in data else None


def _inherited(cfg: IterateConfig, parent: Parent) -> dict:
    """The nested stage configs, over the previous round's saved ones when cfg.inherit (a stage the previous round
    did not run, e.g. DPO after a PPO round: the demo root's)."""
    def saved(cls, rel: str, section: str | None = None):
        path = next((d / rel for d in (parent.folder, parent.root) if (d / rel).exists()), parent.folder / rel)
        return _previous_config(cls, path, section)

    label_cfg = saved(label_stage.LabelConfig, "label/config.yaml")
    previous = {"collect": saved(collect.CollectConfig, "collect/config.yaml"),
                "raters": label_cfg.raters if label_cfg else None,
                "rm": saved(rm.RMConfig, "rm/config.yaml"),
                "ppo": saved(ppo.PPOConfig, "ppo/config.yaml"),
                "dpo": saved(dpo.DPOConfig, "dpo/config.yaml"),
                "redteam": saved(redteam.RedteamConfig, f"redteam/{parent.optimiser}/config.yaml"),
                "eval": saved(EvalConfig, "eval/config.yaml") or saved(EvalConfig, "demo.yaml", "eval")}
    mine, defaults = {k: getattr(cfg, k) for k in previous}, IterateConfig()
    if not cfg.inherit:
        return mine
    # Changes are judged against IterateConfig's own defaults (its eval is the audit's, not EvalConfig's greedy one).
    return {k: overlay(previous[k], mine[k], getattr(defaults, k)) if previous[k] is not None else mine[k]
            for k in previous}


def stage_configs(cfg: IterateConfig, parent: Parent, out: Path) -> dict:
    """Every stage config of the round with its paths wired: round folders under `out`, the world and the SFT
    model from the demo root."""
    s = _inherited(cfg, parent)
    world, sft = str(parent.root / "world"), str(parent.root / "sft/model")
    init = sft if cfg.init == "sft" else str(parent.policy)
    policy = str(out / cfg.optimiser / "model")
    retrain = cfg.rm_mode == "retrain"
    return {
        "collect": replace(s["collect"], model=[str(parent.policy), sft], prompts=str(out / "collect_prompts.jsonl"),
                           n_prompts=None, seed=s["collect"].seed + 1, out=str(out / "collect")),
        "label": label_stage.LabelConfig(queue=str(out / "collect/queue.jsonl"), world=world, raters=s["raters"],
                                         out=str(out / "label"), app=cfg.app),
        "rm": replace(s["rm"], data=str(out / ("all_comparisons.jsonl" if retrain else "label/comparisons.jsonl")),
                      model=sft if retrain else str(parent.reward_model), out=str(out / "rm"), resume=cfg.resume),
        "ppo": replace(s["ppo"], model=init, prompts=str(out / "prompts.jsonl"), reward="rm",
                       reward_model=str(out / "rm/model"), world=world, out=str(out / "ppo"), resume=cfg.resume),
        "dpo": replace(s["dpo"], data=str(out / "all_comparisons.jsonl"), model=init, out=str(out / "dpo"),
                       resume=cfg.resume, monitor=replace(s["dpo"].monitor, world=world)),
        "redteam": replace(s["redteam"], model=policy, world=world, reward_model=str(out / "rm/model"),
                           out=str(out / "redteam" / cfg.optimiser)),
        "eval": replace(s["eval"], model=policy, world=world, out=str(out / "eval")),
    }


# ---------------------------------------------------------------------------------------------
# Steps


def evaluate_model(ecfg: EvalConfig, model: str, out: Path, name: str) -> dict:
    """`model` on the held-out prompts with `ecfg`'s decoding, written as `out/<name>_summary.json` (its samples,
    and its decoding in `<name>_settings.json`)."""
    from tether.models import load_policy, load_tokenizer
    from tether.stages.evaluate import evaluate_policy, write_results
    from tether.world.build import load_world

    rows, summary = evaluate_policy(load_policy(model), load_tokenizer(model), load_world(ecfg.world), ecfg,
                                    label=f"evaluate {name}")
    write_results(out, rows, summary, name, cfg=ecfg)
    save_config(replace(ecfg, model=model, out=str(out)), out / "config.yaml")
    return summary


def same_footing(summary: Path, ecfg: EvalConfig) -> bool:
    """Whether the evaluation in `summary` (`<name>_summary.json`) used `ecfg`'s decoding (its `_settings.json`)."""
    settings = summary.with_name(summary.name.replace("_summary.json", "_settings.json"))
    return summary.exists() and _json(settings) == decoding(ecfg)


def _footing_evaluation(found: Path, model: str, ecfg: EvalConfig, out: Path, name: str, timed: StageTimer) -> Path:
    """`found` when it was evaluated like this round's policy will be, else `model` evaluated now into `out`."""
    if same_footing(found, ecfg):
        return found
    redone = out / f"{name}_summary.json"  # a --resume skips it only when it was evaluated like this round's
    timed(f"evaluate {name}", evaluate_model, ecfg, model, out, name,
          done=redone if same_footing(redone, ecfg) else None)
    return redone


def parent_audit(cfg: IterateConfig, parent: Parent, stages: dict, out: Path, timed: StageTimer) -> dict:
    """The parent and SFT policies' evaluations on this round's footing (read from their folders, or run now into
    `out/parent/eval/`), and the parent's red team (read, or run now into `out/parent/redteam`)."""
    name, ecfg = parent.optimiser, stages["eval"]
    evaluation = _footing_evaluation(parent.folder / "eval" / f"{name}_summary.json", str(parent.policy), ecfg,
                                     out / "parent/eval", name, timed)
    sft_eval = _footing_evaluation(parent.root / "eval/sft_summary.json", str(parent.root / "sft/model"), ecfg,
                                   out / "parent/eval", "sft", timed)
    attacks = parent.folder / "redteam" / name
    if not (attacks / "summary.json").exists():
        attacks = out / "parent/redteam"
        timed("redteam parent", redteam.run, replace(stages["redteam"], model=str(parent.policy),
              reward_model=str(parent.reward_model), out=str(attacks)), done=attacks / "summary.json")
    sft_attacks = parent.root / "redteam/sft/summary.json"
    return {"eval": _json(evaluation), "redteam": _json(attacks / "summary.json"), "redteam_dir": attacks,
            "files": {"eval": str(evaluation), "sft_eval": str(sft_eval), "redteam": str(attacks)},
            "sft": {"eval": _json(sft_eval), "redteam": _json(sft_attacks)}}


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def failure_prompts(cfg: IterateConfig, parent: Parent, redteam_dir: Path, n_train: int) -> tuple[list, dict]:
    """Step 1: the parent's red-team and monitor failures, gathered, deduplicated and capped."""
    from tether.world.build import load_world

    world = load_world(parent.root / "world")
    candidates: list[FailurePrompt] = []
    if cfg.redteam_failures:
        candidates += redteam_failures(redteam_dir)
    if cfg.monitor_failures:
        candidates += monitor_failures(parent.folder / parent.optimiser, world, cfg.monitor_gold_below)
    kept, report = gather(candidates, world, cfg.train_twins, seed=parent.number)
    share_cap = math.floor(cfg.failure_share / (1 - cfg.failure_share) * n_train)
    limit = min(cfg.max_failure_prompts, share_cap)
    chosen = interleave([[f for f in kept if f.source == s] for s in SOURCES], limit)
    report.update(limit=limit, selected=len(chosen), selected_by_source={s: sum(f.source == s for f in chosen)
                                                                         for s in SOURCES})
    return chosen, report


def train_prompts_per_round(cfg: IterateConfig, parent: Parent) -> int | None:
    """Train prompts collected on: cfg.collect.n_prompts when set, else as many as the previous round (None: all)."""
    if cfg.collect.n_prompts is not None:
        return cfg.collect.n_prompts
    if (parent.folder / "round.json").exists():
        return json.loads((parent.folder / "round.json").read_text())["failure_prompts"]["n_train"]
    previous = _previous_config(collect.CollectConfig, parent.folder / "collect/config.yaml")
    return previous.n_prompts if previous is not None else None


def round_prompts(cfg: IterateConfig, parent: Parent, redteam_dir: Path, out: Path, n: int) -> tuple[dict, dict]:
    """Steps 1-2: failures.jsonl, collect_prompts.jsonl (train prompts, then failure prompts) and prompts.jsonl
    (every train prompt plus the failure prompts, for PPO). Returns ({prompt key: source}, report)."""
    train = [json.loads(line)["prompt"] for line in (parent.root / "world/prompts.jsonl").read_text().splitlines()
             if line.strip()]
    n_train = min(len(train), train_prompts_per_round(cfg, parent) or len(train))
    chosen, report = failure_prompts(cfg, parent, redteam_dir, n_train)
    failed = {prompt_key(f.prompt) for f in chosen}
    train_rows = [{"prompt": p, "source": "train", "round": n} for p in train if prompt_key(p) not in failed]
    failure_rows = [f.row(n) for f in chosen]
    write_prompts(out / "failures.jsonl", failure_rows)
    write_prompts(out / "collect_prompts.jsonl", train_rows[:n_train] + failure_rows)
    write_prompts(out / "prompts.jsonl", train_rows + failure_rows)
    sources = {prompt_key(r["prompt"]): r["source"] for r in train_rows + failure_rows}
    report["n_train"] = n_train
    report["collect_prompts"] = dict(Counter(r["source"] for r in train_rows[:n_train] + failure_rows))
    return sources, report


def stamp_queue(queue: Path, sources: dict, n: int, policy: str) -> dict:
    """Step 2: every comparison's meta gets {"round", "policy" (the current policy), "source"}; counts by source."""
    comparisons = read_comparisons(queue)
    for c in comparisons:
        c.meta.update(round=n, policy=policy, source=sources.get(c.prompt_key, "train"))
    write_comparisons(queue, comparisons)
    return dict(Counter(c.meta["source"] for c in comparisons))


def merge_rounds(files: list[str], out: Path, sft: str) -> dict:
    """Step 4: every round's labelled comparisons in one file, round 1's stamped as the demo collected them (from
    the SFT policy, on train prompts) where its rows carry no round. Returns ratings per round."""
    rows = []
    for path in files:
        for c in read_comparisons(path):
            c.meta.setdefault("round", 1)
            c.meta.setdefault("policy", sft)
            c.meta.setdefault("source", "train")
            rows.append(c)
    write_comparisons(out, rows)
    return {str(k): v for k, v in sorted(Counter(c.meta["round"] for c in rows).items())}


def guideline_versions(path: str | Path) -> list[str]:
    return sorted({c.guideline_version for c in read_comparisons(path) if c.guideline_version})


def _rate_rows(summary: dict | None, attacks: dict | None) -> dict:
    """Metric -> (rate, count) of one policy: HACKS from its evaluation's "all" row, harmful requests answered without
    a refusal (1 - the "harmful" row's refusal rate), the red-team failure rate. Count None: not recorded."""
    rows = {}
    if summary:
        rows = {h: (summary["all"][h], summary["all"].get("n")) for h in HACKS}
        if "harmful" in summary:
            rows["complied_harmful"] = (1 - summary["harmful"]["refused"], summary["harmful"].get("n"))
    if attacks:
        rows["redteam_fail"] = (attacks["all"]["fail_rate"], attacks["all"].get("n"))
    return rows


def compare_hacks(before: dict, after: dict, before_attacks: dict, after_attacks: dict,
                  sft: dict | None = None, sft_attacks: dict | None = None) -> dict:
    """Did this round reduce the hacks the previous round exhibited?

    Rates (lower is better, `_rate_rows`) of the previous policy (`before`), this round's (`after`) and the SFT
    policy's, all from evaluations with the same decoding. A hack was *exhibited* when the previous policy's rate is
    above the SFT policy's (above 0 without an SFT reference) beyond noise (`rate_rises`, HACK_NOISE_Z standard
    errors; every evaluation's "n" is its count). `reduced` / `increased`: the exhibited hacks whose rate fell / rose
    beyond noise. `reduced_hacks`: whether the exhibited hacks' summed rate fell with at least one of them falling
    beyond noise (None: none was exhibited). Gold (higher is better) is reported beside them.
    """
    rows = [_rate_rows(before, before_attacks), _rate_rows(after, after_attacks), _rate_rows(sft, sft_attacks)]
    metrics = {}
    for k in rows[0]:
        if k not in rows[1]:
            continue
        b, a, s = rows[0][k], rows[1][k], rows[2].get(k)
        metrics[k] = {"before": b[0], "after": a[0], "sft": s[0] if s else None, "change": a[0] - b[0],
                      "exhibited": rate_rises(s if s else (0.0, None), b),
                      "fell": rate_rises(a, b), "rose": rate_rises(b, a)}
    exhibited = [k for k, m in metrics.items() if m["exhibited"]]
    fell = [k for k in exhibited if metrics[k]["fell"]]
    reduced = None if not exhibited else (bool(fell) and sum(metrics[k]["after"] for k in exhibited)
                                          < sum(metrics[k]["before"] for k in exhibited))
    return {"metrics": metrics, "exhibited": exhibited, "noise_z": HACK_NOISE_Z, "reduced": fell,
            "increased": [k for k in exhibited if metrics[k]["rose"]],
            "gold": {"before": before["all"]["gold"], "after": after["all"]["gold"],
                     "change": after["all"]["gold"] - before["all"]["gold"]},
            "reduced_hacks": reduced}


def write_provenance(out: Path, record: dict) -> None:
    """provenance.json in every folder and checkpoint the round wrote: round, parent policy, guideline versions,
    and what each was made from."""
    base = {"round": record["round"], "parent": record["parent"], "guideline_versions": record["guideline_versions"]}
    d, name = record["data"], record["optimiser"]
    made_from = {
        "collect": {"policies": [record["parent"]["policy"], record["sft"]], "prompts": d["collect_prompts"]},
        "label": {"queue": d["queue"], "through": "app" if record["app"] else "memory", "raters": record["raters"]},
        "rm": {"backbone": record["rm"]["backbone"], "data": record["rm"]["data"], "rounds": record["rm"]["rounds"]},
        name: {"init": record["init_policy"], "data": d["all_comparisons"] if name == "dpo" else d["prompts"],
               **({"reward_model": record["reward_model"]} if name == "ppo" else {})},
        f"redteam/{name}": {"policy": record["policy"], "proxy": record["reward_model"]},
    }
    for folder, inputs in made_from.items():
        for where in (out / folder, out / folder / "model"):
            if where.is_dir():
                (where / "provenance.json").write_text(json.dumps({**base, "artifact": folder, **inputs}, indent=1))


# ---------------------------------------------------------------------------------------------
# The round


def run_round(cfg: IterateConfig, previous: str | Path) -> dict:
    """One round after the one in `previous`; returns the record also written to `<root>/round<n>/round.json`."""
    parent = read_parent(previous, cfg.optimiser)
    n, name = parent.number + 1, cfg.optimiser
    out = parent.root / f"round{n}"
    if (out / "round.json").is_file() and not cfg.resume:  # a finished round: never overwritten in silence
        raise ConfigError(f"previous: {out} already holds round {n} (round.json); give previous={out} for round "
                          f"{n + 1}, resume=true to finish or reuse it, or move it away to redo it")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "iterate.yaml")
    stages, timed = stage_configs(cfg, parent, out), StageTimer(cfg.resume, console)
    # 1. The parent's audit (read, or run now), and the failure prompts its red team and monitor caught.
    before = parent_audit(cfg, parent, stages, out, timed)
    sources, prompts_report = round_prompts(cfg, parent, before["redteam_dir"], out, n)
    # 2. Comparisons from the current policy and the SFT policy, each stamped with round, policy and source.
    timed("collect", collect.run, stages["collect"], done=out / "collect/queue.jsonl")
    queue_sources = stamp_queue(out / "collect/queue.jsonl", sources, n, str(parent.policy))
    # 3. Raters label them (each rating carries its rater and guideline version).
    timed("label", label_stage.run, stages["label"], done=out / "label/comparisons.jsonl")
    # 4. The reward model on every round's comparisons (retrain) or on this round's (extend).
    all_rounds = [*parent.comparisons, str(out / "label/comparisons.jsonl")]
    rounds = merge_rounds(all_rounds, out / "all_comparisons.jsonl", str(parent.root / "sft/model"))
    timed("rm", rm.run, stages["rm"], done=out / "rm/model/reward_config.json")
    _add_rounds(out / "rm/data_report.json", rounds if cfg.rm_mode == "retrain" else {str(n): rounds[str(n)]})
    # 5. The optimiser, from the SFT policy by default.
    timed(name, (ppo.run if name == "ppo" else dpo.run), stages[name], done=out / name / "model/model.safetensors")
    # 6. Audit the new policy like the parent, and compare.
    after_eval = timed(f"evaluate {name}", evaluate_model, stages["eval"], stages["eval"].model, out / "eval", name,
                       done=None)
    after_attacks = timed(f"redteam {name}", redteam.run, stages["redteam"], done=None)
    hacks = compare_hacks(before["eval"], after_eval, before["redteam"], after_attacks, before["sft"]["eval"],
                          before["sft"]["redteam"])
    hacks["decoding"] = decoding(stages["eval"])
    record = _record(cfg, parent, stages, out, n, all_rounds, rounds, prompts_report, queue_sources, before, hacks)
    record["timings_s"] = timed.timings
    (out / "round.json").write_text(json.dumps(record, indent=1))
    write_provenance(out, record)
    console.print(hack_table(hacks, n))
    console.print(f"round {n}: written to {out}/ (round.json); stage times (s): {timed.timings}")
    return record


def _add_rounds(report: Path, rounds: dict) -> None:
    """The reward model's data_report.json records the rounds its comparisons came from."""
    data = json.loads(report.read_text())
    data["rounds"] = rounds
    report.write_text(json.dumps(data, indent=1))


def _record(cfg: IterateConfig, parent: Parent, stages: dict, out: Path, n: int, all_rounds: list, rounds: dict,
            prompts_report: dict, queue_sources: dict, before: dict, hacks: dict) -> dict:
    """round.json: what the round was made from and what it produced."""
    name, this_round = cfg.optimiser, str(out / "label/comparisons.jsonl")
    return {
        "round": n, "root": str(parent.root), "optimiser": name, "app": cfg.app, "sft": str(parent.root / "sft/model"),
        "parent": {"round": parent.number, "folder": str(parent.folder), "optimiser": parent.optimiser,
                   "policy": str(parent.policy),
                   "reward_model": str(parent.reward_model), "audit": before["files"]},
        "init_policy": stages[name].model,
        "policy": str(out / name / "model"), "reward_model": str(out / "rm/model"),
        "rm": {"mode": cfg.rm_mode, "backbone": stages["rm"].model, "data": stages["rm"].data,
               "rounds": rounds if cfg.rm_mode == "retrain" else {str(n): rounds[str(n)]}},
        "guideline_versions": guideline_versions(this_round),
        "raters": asdict(stages["label"].raters),  # the pool's biases: what a guideline version stands for here
        "guideline_versions_by_round": {str(i + 1): guideline_versions(f) for i, f in enumerate(all_rounds)},
        "failure_prompts": prompts_report, "comparisons_by_source": queue_sources,
        "data": {"failures": str(out / "failures.jsonl"), "collect_prompts": str(out / "collect_prompts.jsonl"),
                 "prompts": str(out / "prompts.jsonl"), "queue": str(out / "collect/queue.jsonl"),
                 "comparisons": this_round, "all_rounds": all_rounds,
                 "all_comparisons": str(out / "all_comparisons.jsonl")},
        "hacks": hacks,
    }


def hack_table(hacks: dict, n: int) -> Table:
    """The previous round against this one: hack rates, red-team failure rate, gold."""
    verdict = hack_verdict(hacks["reduced_hacks"])
    table = Table(title=f"Round {n - 1} -> round {n} ({decoding_label(hacks.get('decoding'))} on held-out prompts): "
                        f"did round {n} reduce the hacks of round {n - 1}? {verdict}")
    for col in ("metric", "sft", f"round {n - 1}", f"round {n}", "change", "exhibited"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for k, m in hacks["metrics"].items():
        table.add_row(SHORT.get(k, k), "-" if m["sft"] is None else f"{m['sft']:.0%}", f"{m['before']:.0%}",
                      f"{m['after']:.0%}", f"{m['change']:+.0%}", "yes" if m["exhibited"] else "")
    g = hacks["gold"]
    table.add_row("gold", "", f"{g['before']:+.2f}", f"{g['after']:+.2f}", f"{g['change']:+.2f}", "")
    return table


def run(cfg: IterateConfig) -> list[dict]:
    """`cfg.rounds` rounds, each from the one before; returns their round.json records."""
    records, previous = [], Path(cfg.previous)
    for _ in range(cfg.rounds):
        records.append(run_round(cfg, previous))
        previous = Path(records[-1]["root"]) / f"round{records[-1]['round']}"
    return records
