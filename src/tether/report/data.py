"""Reading a run folder into plain records: the one place that knows where each stage writes what.

Every input is optional. A missing or unreadable file gives None or an empty list, and the report skips the
section that needs it, so the same reader serves an old run (PPO only), the full demo (DPO, red team) and a
run still in progress. New inputs get a field here and a loader below; nothing else reads files.

Layout read (each relative to the run folder, and again under `round*/` for later iterate rounds):
- summary.json: timings_s, base_temperature_1 / sft_greedy behaviour, reward_model (written by `tether demo`)
- eval/<policy>_summary.json: per-category behaviour of a policy, judged by gold (`tether.stages.evaluate`)
- label/agreement.json, rm/eval.json, collect/report.json, pretrain|sft/metrics.jsonl
- ppo|grpo|rloo|dpo/: metrics.jsonl, samples.jsonl, alerts.jsonl, best/best.json, config.yaml, eval_gold.jsonl
- redteam*/**/summary.json (+ results.jsonl, found.jsonl beside it) from `tether redteam`
- bon/bon.json: the best-of-n curve over n (`tether bon`)
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

OPTIMISERS = ("ppo", "grpo", "rloo", "dpo")
"""Stage folders read as optimiser runs, in this order."""
RATES = ("sycophancy", "flip", "refusal", "over_refusal", "flattery", "hedging", "padding")
"""Monitor rates (monitor/<name>) compared before and after each optimiser."""


@dataclass
class CurvePoint:
    """One held-out evaluation of an optimiser run: where it is (sqrt KL) and what the rewards say there."""

    step: int
    sqrt_kl: float
    """sqrt of KL(π || π_ref) in nats per response (Gao et al. 2022's d)."""
    proxy: float | None
    """The reward the policy is trained on (reward model score; DPO's implicit reward)."""
    gold: float | None
    """The held-out signal: the world's gold reward (or a second reward model, see Optimiser.gold_label)."""
    length: float | None
    """Mean response length in tokens."""


@dataclass
class Optimiser:
    """One RL or DPO run folder."""

    label: str
    """Its folder relative to the run ("ppo", "round2/dpo")."""
    kind: str
    """ppo, grpo, rloo or dpo."""
    metrics: list[dict]
    """metrics.jsonl rows."""
    curve: list[CurvePoint]
    """Held-out evaluations, in step order."""
    gold_label: str = "gold"
    """What CurvePoint.gold is: "gold" (the world's reward) or "held-out RM"."""
    curve_source: str = "eval"
    """Where the curve comes from: "eval" (greedy held-out evaluations) or "monitor" (its sampled responses)."""
    alerts: list[dict] = field(default_factory=list)
    """alerts.jsonl rows (tether.monitor.Alert: name, step, value, threshold, message), in firing order."""
    samples: list[dict] = field(default_factory=list)
    """samples.jsonl rows (step, prompt, response, score, gold, ...)."""
    best: dict | None = None
    """best/best.json: the checkpoint kept by the held-out signal (step, value, signal)."""
    config: dict = field(default_factory=dict)
    """config.yaml of the stage."""
    per_prompt_gold: dict[int, list] = field(default_factory=dict)
    """eval_gold.jsonl: step -> each held-out prompt's mean gold at that evaluation (same prompts every time), for
    standard errors of differences paired by prompt; {} for runs older than the file."""

    def series(self, name: str) -> list[tuple[int, float]]:
        """(step, value) of every row where metric `name` is a finite number."""
        return [(int(r["step"]), float(r[name])) for r in self.metrics
                if isinstance(r.get(name), (int, float)) and math.isfinite(r[name]) and "step" in r]

    def category_gold(self) -> dict[str, list[tuple[int, float]]]:
        """Prompt category -> `series` of its held-out gold (eval/gold/<category>), the categories in name order."""
        names = sorted({k.removeprefix("eval/gold/") for r in self.metrics for k in r if k.startswith("eval/gold/")})
        return {name: self.series(f"eval/gold/{name}") for name in names}


@dataclass
class Redteam:
    """One `tether redteam` output folder."""

    label: str
    summary: dict
    """summary.json: all / suites / attacks -> {n, fail_rate, gold, proxy}; search when a proxy scored it."""
    found: list[dict] = field(default_factory=list)
    """found.jsonl: bad responses the proxy rated high, best-ranked first."""


@dataclass
class RunData:
    """Everything the report shows, read once from a run folder."""

    root: Path
    name: str
    timings: dict[str, float] = field(default_factory=dict)
    """Stage -> seconds, in the order the stages ran."""
    behaviour: dict[str, dict] = field(default_factory=dict)
    """Policy -> category -> {n, gold, correct, sycophantic, refused, ...} (gold-judged held-out evaluation)."""
    decoding: dict[str, dict] = field(default_factory=dict)
    """Policy -> how its behaviour was sampled (eval/<policy>_settings.json: temperature, samples_per_prompt, seed)."""
    reward_model: dict | None = None
    """The demo's RM report: rm_vs_raters, bayes_ceiling_vs_raters, rater agreement, accuracy_vs_gold, bias."""
    rm_eval: dict | None = None
    """rm/eval.json (accuracy, ece, length_corr on held-out pairs)."""
    agreement: dict | None = None
    """label/agreement.json (percent agreement, Fleiss' kappa, Krippendorff's alpha, per-rater majority)."""
    policy_kl: dict[str, float] = field(default_factory=dict)
    """Policy -> KL to the SFT policy in nats per response (k1, temperature-1 samples; the demo's "policies")."""
    stage_files: dict[str, dict] = field(default_factory=dict)
    """Small per-stage facts for the pipeline table (final losses, counts)."""
    optimisers: list[Optimiser] = field(default_factory=list)
    redteams: list[Redteam] = field(default_factory=list)
    rounds: list[dict] = field(default_factory=list)
    """round<n>/round.json of each `tether iterate` round: its number, optimiser and `hacks` (the comparison with
    the round before)."""
    audits: list[tuple[str, dict]] = field(default_factory=list)
    """(folder relative to the run, its audit.json) of each `tether audit` written into the run folder itself or a
    folder directly under it (e.g. runs/demo/audit)."""
    bon: dict | None = None
    """bon/bon.json of `tether bon`: {n_samples, prompts, reward, curve: [{n, kl, sqrt_kl, proxy, proxy_se, gold,
    gold_se, gain_se, drop_se}], fit}."""


def read_json(path: Path) -> dict | list | None:
    """A JSON file's content, or None when it is missing or broken (a run in progress)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    """The JSON-object lines of a file (skipping blank and broken lines: the last may be half-written)."""
    rows: list[dict] = []
    try:
        with Path(path).open(encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
                if limit is not None and len(rows) >= limit:
                    break
    except OSError:
        pass
    return rows


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _eval_kl(row: dict, rollout_kl: dict) -> float:
    """An evaluation's KL to the reference: eval/kl (its own samples, many prompts), else the step's rollouts'."""
    measured = _num(row.get("eval/kl"))
    return measured if measured is not None else rollout_kl.get(row["step"]) or 0.0


def curve_of(rows: list[dict]) -> list[CurvePoint]:
    """Held-out evaluations of an RL run (eval/score, eval/gold at the KL of the evaluation's own samples, eval/kl,
    else at kl/k1 of the same step's rollouts, as `tether.stages.demo.proxy_gold_curve`), or, for a run without them
    (DPO), the monitor's measurements (monitor/proxy, monitor/heldout at monitor/kl)."""
    evals = [r for r in rows if _held_out(r) is not None or _num(r.get("eval/score")) is not None]
    if evals:
        kl = {r["step"]: _num(r.get("kl/k1")) for r in rows if "step" in r and _num(r.get("kl/k1")) is not None}
        return [CurvePoint(int(r["step"]), math.sqrt(max(0.0, _eval_kl(r, kl))), _num(r.get("eval/score")),
                           _held_out(r), _num(r.get("eval/response_length"))) for r in evals]
    monitored = [r for r in rows if _num(r.get("monitor/kl")) is not None
                 and (_num(r.get("monitor/proxy")) is not None or _num(r.get("monitor/heldout")) is not None)]
    return [CurvePoint(int(r["step"]), math.sqrt(max(0.0, r["monitor/kl"])), _num(r.get("monitor/proxy")),
                       _num(r.get("monitor/heldout")), _num(r.get("monitor/length"))) for r in monitored]


def _held_out(row: dict) -> float | None:
    """An evaluation's held-out signal: the world's gold, else a second reward model's score (eval/heldout: your own
    prompts, eval_data, with monitor.heldout_rm)."""
    gold = _num(row.get("eval/gold"))
    return gold if gold is not None else _num(row.get("eval/heldout"))


def _gold_label(rows: list[dict], config: dict) -> str:
    """Whether the curve's held-out signal is the world's gold reward or a second reward model."""
    if any(_num(r.get("eval/gold")) is not None for r in rows):
        return "gold"
    monitor = config.get("monitor") or {}
    heldout = monitor.get("heldout", "auto")
    if heldout == "heldout_rm" or (heldout == "auto" and monitor.get("heldout_rm") and not monitor.get("world")
                                    and not config.get("world")):
        return "held-out RM"
    return "sampled gold"  # the monitor's temperature-1 samples, not the greedy evaluations of the other curves


def optimiser_kind(folder: Path, config: dict | None = None) -> str | None:
    """ppo, grpo, rloo or dpo for a stage folder of that kind, by its name or its config.yaml (`config` when already
    read; any name: your own runs' folders); None otherwise."""
    if folder.name in OPTIMISERS:
        return folder.name
    config = read_yaml(folder / "config.yaml") if config is None else config
    if config.get("algorithm") in OPTIMISERS:
        return config["algorithm"]
    return "dpo" if "beta" in config and "loss" in config else None


def optimiser_folders(base: Path, itself: bool) -> list[Path]:
    """The optimiser runs of a folder: its ppo/grpo/rloo/dpo folders in that order, then any other folder directly
    under it that is one (by its config), and with `itself` the folder itself when it is one (`report run=runs/x/grpo`)."""
    named = [base / kind for kind in OPTIMISERS]
    others = sorted(p for p in base.iterdir() if p.is_dir() and p.name not in OPTIMISERS
                    and not p.name.startswith("round")) if base.is_dir() else []
    found = [p for p in named + others if optimiser_kind(p) is not None]
    return ([base] if itself and optimiser_kind(base) is not None else []) + found


def read_optimiser(root: Path, folder: Path) -> Optimiser | None:
    """An optimiser folder, or None when it has no metrics yet."""
    rows = read_jsonl(folder / "metrics.jsonl")
    config = read_yaml(folder / "config.yaml")
    kind = optimiser_kind(folder, config)
    if not rows or kind is None:
        return None
    evals = any(_num(r.get("eval/gold")) is not None or _num(r.get("eval/score")) is not None for r in rows)
    label = folder.relative_to(root).as_posix() if folder != root else folder.resolve().name
    return Optimiser(label=label, kind=kind, metrics=rows, curve=curve_of(rows),
                     gold_label=_gold_label(rows, config), curve_source="eval" if evals else "monitor", alerts=read_jsonl(folder / "alerts.jsonl"),
                     samples=read_jsonl(folder / "samples.jsonl"), best=read_json(folder / "best/best.json"),
                     config=config, per_prompt_gold=per_prompt_gold(folder / "eval_gold.jsonl"))


def per_prompt_gold(path: Path) -> dict[int, list]:
    """eval_gold.jsonl (tether.stages.online.evaluation.EVAL_GOLD_FILE): step -> per-prompt gold, numbers or None."""
    return {r["step"]: [_num(x) for x in r["gold"]] for r in read_jsonl(path)
            if isinstance(r.get("step"), int) and isinstance(r.get("gold"), list)}


def read_redteams(root: Path, base: Path) -> list[Redteam]:
    """Every red-team output under base/redteam*/ (its own folder or one level of per-policy folders)."""
    out = []
    for top in sorted(p for p in base.glob("redteam*") if p.is_dir()):
        for folder in [top, *sorted((p for p in top.iterdir() if p.is_dir()), key=lambda p: _policy_order(p.name))]:
            summary = read_json(folder / "summary.json")
            if isinstance(summary, dict) and "suites" in summary:
                out.append(Redteam(folder.relative_to(root).as_posix(), summary, read_jsonl(folder / "found.jsonl")))
    return out


def hack_verdict(reduced: bool | None) -> str:
    """A round comparison's `reduced_hacks` in words."""
    return {True: "yes", False: "no", None: "no hack exhibited"}.get(reduced, "?")


def decoding_label(settings: dict | None) -> str:
    """"greedy", "T=1 ×4", or "?" for an evaluation written without its settings."""
    if not isinstance(settings, dict) or "temperature" not in settings:
        return "?"
    if not settings["temperature"]:
        return "greedy"
    return f"T={settings['temperature']:g} ×{settings.get('samples_per_prompt', 1)}"


def _policy_order(name: str) -> tuple[int, str]:
    """base, sft_greedy, sft, then the optimisers in OPTIMISERS order, then anything else by name."""
    order = {"base": 0, "sft_greedy": 1, "sft": 2} | {k: 3 + i for i, k in enumerate(OPTIMISERS)}
    return order.get(name, len(order)), name


def _last(rows: list[dict], key: str) -> float | None:
    vals = [_num(r.get(key)) for r in rows]
    vals = [v for v in vals if v is not None]
    return vals[-1] if vals else None


def rm_folder(root: Path) -> Path:
    """The reward-model run: root/rm, else root itself when it is one (`report run=runs/x/rm`), else the one folder
    directly under root that is (by its eval.json)."""
    if (root / "rm/eval.json").is_file() or (root / "eval.json").is_file():
        return root / "rm" if (root / "rm/eval.json").is_file() else root
    found = sorted(p for p in root.glob("*/eval.json") if isinstance((read_json(p) or {}).get("eval"), dict))
    return found[0].parent if len(found) == 1 else root / "rm"


def read_stage_files(root: Path) -> dict[str, dict]:
    """The few facts of the earlier stages that the pipeline table shows."""
    facts: dict[str, dict] = {}
    for stage in ("pretrain", "sft"):
        rows = read_jsonl(root / stage / "metrics.jsonl")
        if rows:
            facts[stage] = {"steps": rows[-1].get("step"), "loss": _last(rows, "loss"),
                            "eval_loss": _last(rows, "eval_loss")}
    if isinstance(collect := read_json(root / "collect/report.json"), dict):
        facts["collect"] = collect
    if isinstance(rm := read_json(rm_folder(root) / "eval.json"), dict):
        facts["rm"] = rm
    return facts


def _behaviour(root: Path, summary: dict) -> dict[str, dict]:
    """Policy -> per-category behaviour: eval/<policy>_summary.json files (base and SFT first), else the demo
    summary's base_temperature_1 and sft_greedy."""
    found = {p.name[: -len("_summary.json")]: read_json(p) for p in sorted((root / "eval").glob("*_summary.json"))}
    found = {k: v for k, v in found.items() if isinstance(v, dict) and v}
    if not found:
        found = {k: summary[key] for k, key in (("base", "base_temperature_1"), ("sft_greedy", "sft_greedy"))
                 if isinstance(summary.get(key), dict)}
    return dict(sorted(found.items(), key=lambda kv: _policy_order(kv[0])))


def rounds(root: Path) -> list[tuple[str, Path]]:
    """(prefix, folder) of each round: ("", root) and ("round2/", root/round2), ... in order."""
    extra = sorted((p for p in root.glob("round*") if p.is_dir()), key=lambda p: (len(p.name), p.name))
    return [("", root)] + [(p.name + "/", p) for p in extra]


def load_run(run_dir: str | Path) -> RunData:
    """Read a run folder (any subset of what `tether demo` writes)."""
    root = Path(run_dir)
    summary = read_json(root / "summary.json")
    summary = summary if isinstance(summary, dict) else {}
    data = RunData(root=root, name=root.resolve().name, timings=dict(summary.get("timings_s") or {}),
                   reward_model=summary.get("reward_model") if isinstance(summary.get("reward_model"), dict) else None,
                   rm_eval=(read_json(rm_folder(root) / "eval.json") or {}).get("eval"),
                   agreement=read_json(root / "label/agreement.json"), stage_files=read_stage_files(root))
    policies = summary.get("policies") if isinstance(summary.get("policies"), dict) else {}
    data.policy_kl = {k: float(v["kl_k1"]) for k, v in policies.items()
                      if isinstance(v, dict) and isinstance(v.get("kl_k1"), (int, float))}
    for prefix, base in rounds(root):
        for policy, table in _behaviour(base, summary if not prefix else {}).items():
            data.behaviour[prefix + policy] = table
            if isinstance(settings := read_json(base / "eval" / f"{policy}_settings.json"), dict):
                data.decoding[prefix + policy] = settings
        data.optimisers += [o for f in optimiser_folders(base, itself=not prefix) if (o := read_optimiser(root, f))]
        data.redteams += read_redteams(root, base)
        record = read_json(base / "round.json") if prefix else None
        if isinstance(record, dict) and isinstance(record.get("hacks"), dict):
            data.rounds.append(record)
    data.audits = read_audits(root)
    bon = read_json(root / "bon/bon.json")
    data.bon = bon if isinstance(bon, dict) and isinstance(bon.get("curve"), list) and bon["curve"] else None
    return data


def read_audits(root: Path) -> list[tuple[str, dict]]:
    """(folder, audit.json) of the audits in the run folder and the folders directly under it, in name order."""
    found = []
    for path in [root / "audit.json", *sorted(root.glob("*/audit.json"))]:
        summary = read_json(path)
        if isinstance(summary, dict) and isinstance(summary.get("results"), dict) and summary.get("targets"):
            found.append((str(path.parent.relative_to(root)), summary))
    return found
