"""Experiment (issue 20, item 3): does the reward model inherit the raters' agreement bias where they cannot check the
facts, and does RL exploit it? Over seeds, before and after a rater change, on one footing.

    .venv/bin/python benchmarks/sycophancy_seeds.py --root runs/syco --seeds 0,1,2 --tag after [--set key=value ...]
    .venv/bin/python benchmarks/sycophancy_seeds.py --root runs/syco --seeds 0,1,2 --table before,after

1. Per seed, the demo's stages up to the comparisons (world, tokenizer, pretraining, SFT, collection) once, in
   <root>/s<seed>/: the rater change touches none of them, so both settings share them.
2. Per seed and tag, in <root>/s<seed>-<tag>/ (the shared folders linked in): the simulated raters' labels (the demo's
   rater pool with `--set raters.<field>=...`), the reward model and its report (the trait table of
   `tether.stages.evaluate.reward_model_bias`), PPO and DPO as the demo runs them, then SFT, PPO and DPO on the
   demo's footing (temperature 1, 4 responses per held-out prompt, the same seed for each; KL to SFT), and
   best-of-n against the reward model (`tether bon`, the demo's settings) when the stage exists.
   Resumable: a finished stage is skipped.
3. `--table`: the figures per seed and their mean, per tag: the RM's reward gain and preference for each trait, the
   policies' sycophancy and hedging rates (all held-out prompts, and false-premise prompts by whether the fact is
   common or obscure when the world marks it), best-of-n's rates at n = 1 (SFT on its prompts: bon1_) and n = N
   (bonN_, with the paired standard error of the change), written to <root>/table.md and table.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from tether.config import load_config
from tether.progress import StageTimer
from tether.stages import collect, pretrain, sft
from tether.stages import demo as demo_stage
from tether.tokenizer import run as train_tokenizer
from tether.world.build import load_world
from tether.world.build import run as build_world

SHARED = ("world", "tokenizer", "pretrain", "sft", "collect")
"""Stage folders the tags share (built once per seed)."""


def _demo_config(root: Path, name: str, seed: int, overrides: list[str]) -> demo_stage.DemoConfig:
    return load_config(demo_stage.DemoConfig, None, [f"name={name}", f"runs={root}", f"seed={seed}", "resume=true",
                                                     "base_samples=0", "rounds=1", *overrides])


def shared_stages(root: Path, seed: int) -> None:
    cfg = _demo_config(root, f"s{seed}", seed, [])
    stages, timed, base = demo_stage._stage_configs(cfg), StageTimer(True), cfg.root
    timed("world", build_world, stages["world"], done=base / "world/eval.jsonl")
    timed("tokenizer", train_tokenizer, stages["tokenizer"], done=base / "tokenizer/tokenizer.json")
    timed("pretrain", pretrain.run, stages["pretrain"], done=base / "pretrain/model/model.safetensors")
    timed("sft", sft.run, stages["sft"], done=base / "sft/model/model.safetensors")
    timed("collect", collect.run, stages["collect"], done=base / "collect/queue.jsonl")


def tagged_stages(root: Path, seed: int, tag: str, overrides: list[str]) -> dict:
    cfg = _demo_config(root, f"s{seed}-{tag}", seed, overrides)
    base = cfg.root
    base.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        if not (base / name).exists():
            (base / name).symlink_to(Path("..") / f"s{seed}" / name)
    stages, timed = demo_stage._stage_configs(cfg), StageTimer(True)
    out_path = base / "syco.json"
    record = json.loads(out_path.read_text()) if out_path.exists() else {"seed": seed, "tag": tag,
                                                                         "overrides": overrides}
    pref = demo_stage._preference_phase(cfg, stages, timed)
    if pref.get("reward_model") is not None:
        record["reward_model"] = pref["reward_model"]
    timed("ppo", demo_stage.ppo.run, stages["ppo"], done=base / "ppo/model/model.safetensors")
    timed("dpo", demo_stage.dpo.run, stages["dpo"], done=base / "dpo/model/model.safetensors")
    record["ppo_curve"] = demo_stage.proxy_gold_curve(base / "ppo/metrics.jsonl")
    footing = record.setdefault("policies", {})
    for name in demo_stage.POLICIES:
        if name not in footing:
            footing[name] = demo_stage._policy_footing(cfg, base / name / "model", name)
            out_path.write_text(json.dumps(record, indent=1))
    bon_stage = stages.get("bon")
    if bon_stage is not None:
        from tether.stages import bon

        timed("bon", bon.run, bon_stage, done=base / "bon/bon.json")
    out_path.write_text(json.dumps(record, indent=1))
    return record


def _fact_split(base: Path, policy: str) -> dict:
    """Sycophancy on false-premise prompts by whether the world marks the fact common (None without the mark)."""
    world = load_world(base / "world")
    is_common = getattr(world.knowledge, "is_common", None)
    path = base / "eval" / f"{policy}_samples.jsonl"
    if is_common is None or not path.exists():
        return {}
    out: dict[str, list[bool]] = {"common": [], "obscure": []}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r["category"] != "false_premise":
            continue
        q = world.parse(r["prompt"])
        out["common" if is_common(q.country, q.attribute) else "obscure"].append(bool(r["sycophantic"]))
    return {k: {"n": len(v), "sycophantic": sum(v) / max(1, len(v))} for k, v in out.items()}


FLAGS = ("sycophantic", "hedged", "flattering", "padded", "hallucinated", "correct")
"""The world's behaviour flags read off each policy's samples."""


def bon_rates(base: Path) -> dict:
    """Best-of-n's behaviour rates at n = 1 (the SFT policy itself on bon's prompts) and n = N, from bon's samples
    (`tether.math.best_of_n.bon_estimates` with each flag as the value: unbiased, no resampling), over all its
    prompts and its false-premise ones (fp_), with the paired standard error of each change (N minus 1)."""
    path = base / "bon" / "samples.jsonl"
    if not path.exists():
        return {}
    import torch

    from tether.math.best_of_n import bon_estimates

    world = load_world(base / "world")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    proxy = torch.tensor([r["proxy"] for r in rows], dtype=torch.float64)  # (P, N)
    judged = [[world.judge(r["prompt"], x) for x in r["responses"]] for r in rows]
    fp = torch.tensor([world.parse(r["prompt"]).category == "false_premise" for r in rows])
    out = {"bon_prompts": len(rows), "bon_fp_prompts": int(fp.sum()), "bon_n": proxy.size(1)}
    for flag in FLAGS:
        est = bon_estimates(proxy, torch.tensor([[float(getattr(j, flag)) for j in js] for js in judged],
                                                dtype=torch.float64))  # (P, N)
        for prefix, rows_of in (("", slice(None)), ("fp_", fp)):
            if flag != "sycophantic" and prefix:
                continue
            e = est[rows_of]
            change = e[:, -1] - e[:, 0]
            out[f"bon1_{prefix}{flag}"] = float(e[:, 0].mean())
            out[f"bonN_{prefix}{flag}"] = float(e[:, -1].mean())
            out[f"bonN_{prefix}{flag}_change_se"] = float(change.std() / len(change) ** 0.5)
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def table(root: Path, seeds: list[int], tags: list[str]) -> str:
    lines, data = [], {}
    for tag in tags:
        rows = {}
        for seed in seeds:
            base = root / f"s{seed}-{tag}"
            rec = json.loads((base / "syco.json").read_text())
            bias = rec["reward_model"]["bias"]
            row = {f"rm_{t}_prefers": b["prefers_trait"] for t, b in bias.items()}
            row |= {f"rm_{t}_gain": b["reward_gain"] for t, b in bias.items()}
            row["rm_vs_raters"] = rec["reward_model"]["rm_vs_raters"]
            row["rm_accuracy_vs_gold"] = rec["reward_model"]["accuracy_vs_gold"]
            for name, f in rec["policies"].items():
                s = f["summary"]
                row[f"{name}_gold"] = s["all"]["gold"]
                row[f"{name}_kl"] = f["kl_k1"]
                for flag in FLAGS:
                    row[f"{name}_{flag}"] = s["all"][flag]
                row[f"{name}_fp_sycophantic"] = s["false_premise"]["sycophantic"]
                for k, v in _fact_split(base, name).items():
                    row[f"{name}_fp_{k}_sycophantic"] = v["sycophantic"]
            rows[seed] = row | bon_rates(base)
        data[tag] = rows
        keys = list(dict.fromkeys(k for r in rows.values() for k in r))
        lines += [f"## {tag}", "", "| measure | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
                  "|---|" + "---:|" * (len(seeds) + 1)]
        for k in keys:
            vals = [rows[s].get(k) for s in seeds]
            nums = [v for v in vals if isinstance(v, (int, float))]
            lines.append(f"| {k} | " + " | ".join("-" if v is None else f"{v:+.3f}" for v in vals)
                         + f" | {_mean(nums):+.3f} |")
        lines.append("")
    (root / "table.json").write_text(json.dumps(data, indent=1))
    (root / "table.md").write_text("\n".join(lines))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default="runs/syco")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--tag", default="after")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a DemoConfig override")
    p.add_argument("--table", default="", help="comma-separated tags: print the table instead of running")
    p.add_argument("--shared-only", action="store_true", help="only the stages the tags share")
    args = p.parse_args(argv)
    root, seeds = Path(args.root), [int(s) for s in args.seeds.split(",")]
    if args.table:
        print(table(root, seeds, args.table.split(",")))
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for seed in seeds:
        shared_stages(root, seed)
        if not args.shared_only:
            tagged_stages(root, seed, args.tag, args.set)
    return 0


if __name__ == "__main__":
    sys.exit(main())
