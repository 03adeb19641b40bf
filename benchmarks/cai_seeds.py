"""Experiment: SL-CAI in the tiny world (issue 17's acceptance, the `tether cai` part), over seeds.

    .venv/bin/python benchmarks/cai_seeds.py [--seeds 0,1,2] [--critique-dialogues 3000] [--rounds 1]
                                             [--out runs/cai_seeds]

Per seed s, with the demo's stage settings (tether.stages.demo: the same pretraining, SFT and evaluation):
1. `tether world seed=s critique_dialogues=K`: the world, its pretraining corpus gaining K critique-and-revision
   demonstrations over the train split (tether.world.critique); tokenizer; pretraining; SFT on the world's
   demonstrations (which hold no critique).
2. `tether cai model=<sft> world=<world>`: the SFT policy answers the world's 600 train-split prompts at temperature
   1, critiques and revises its answers under principles of the world's constitution (greedy), `rounds` times.
   Gold of the originals and of the revisions comes from cai's summary.json.
3. `tether sft` from the SFT policy on cai.jsonl (the revisions), and, as the control, on the same prompts with the
   original responses (what the revision adds over training on the policy's own samples).
4. The three policies on the held-out prompts: temperature 1 with 4 samples per prompt (the audit's footing) and
   greedy.
Writes benchmarks/results/cai_seeds.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

from tether.data.sft_data import write_conversations
from tether.stages import cai, demo, pretrain, sft
from tether.tokenizer import run as train_tokenizer
from tether.world.build import run as build_world
from tether.world.world import WorldConfig

RESULTS = Path(__file__).resolve().parent / "results"
POLICIES = ("sft", "cai_sft", "original_sft")


def _once(done: Path, fn, *args) -> None:
    if not done.exists():
        fn(*args)


def one_seed(root: Path, seed: int, k: int, rounds: int) -> dict:
    cfg = demo.DemoConfig(name=f"seed{seed}", runs=str(root), seed=seed,
                          world=WorldConfig(critique_dialogues=k))
    stages = demo._stage_configs(cfg)
    run = cfg.root
    # 1. The world with critique demonstrations, its tokenizer, pretraining, SFT.
    _once(run / "world/eval.jsonl", build_world, stages["world"])
    _once(run / "tokenizer/tokenizer.json", train_tokenizer, stages["tokenizer"])
    _once(run / "pretrain/model/model.safetensors", pretrain.run, stages["pretrain"])
    _once(run / "sft/model/model.safetensors", sft.run, stages["sft"])
    # 2. Critique and revise the SFT policy's own temperature-1 answers.
    ccfg = cai.CaiConfig(model=str(run / "sft/model"), world=str(run / "world"), rounds=rounds, seed=seed,
                         out=str(run / "cai"))
    _once(run / "cai/summary.json", cai.run, ccfg)
    summary = json.loads((run / "cai/summary.json").read_text())
    # 3. SFT on the revisions, and on the originals (the control).
    rows = [json.loads(line) for line in (run / "cai/cai.jsonl").read_text().splitlines()]
    originals = [r["messages"][:-1] + [{"role": "assistant", "content": r["cai"]["original"]}]
                 for r in rows if r["cai"]["original"]]
    write_conversations(run / "cai/originals.jsonl", originals)
    for name, data in (("cai_sft", run / "cai/cai.jsonl"), ("original_sft", run / "cai/originals.jsonl")):
        _once(run / name / "model/model.safetensors", sft.run,
              replace(stages["sft"], data=str(data), model=str(run / "sft/model"), out=str(run / name)))
    # 4. Held-out gold of the three policies, sampled (the audit's footing) and greedy.
    evals = {}
    for name in POLICIES:
        for how, temperature, samples in (("t1", 1.0, 4), ("greedy", 0.0, 1)):
            out = run / "eval" / f"{name}_{how}_summary.json"
            if not out.exists():
                demo._evaluate(cfg, run / name / "model", f"{name}_{how}", temperature, samples)
            evals[f"{name}_{how}"] = json.loads(out.read_text())["all"]
    gold = summary["gold"]
    return {"seed": seed, "critique_dialogues": k, "rounds": rounds, "changed": summary["changed"],
            "principles": summary["principles"], "revision_gold": {n: g["gold"] for n, g in gold.items()},
            "revision_rates": {n: {f: g[f] for f in cai.FLAGS} for n, g in gold.items()},
            "revision_by_category": {n: g["by_category"] for n, g in gold.items()},
            "policy_gold": {n: e["gold"] for n, e in evals.items()}, "policy_rates": evals}


def _mean_sd(xs: list[float]) -> str:
    return f"{statistics.mean(xs):+.3f}" + (f" ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else "")


def markdown(rows: list[dict]) -> str:
    last = f"round_{rows[0]['rounds']}"
    lines = ["| seed | originals | revisions | changed | SFT t=1 | +CAI t=1 | +originals t=1 | SFT greedy "
             "| +CAI greedy | +originals greedy |", "|---" * 10 + "|"]
    for r in rows:
        g, p = r["revision_gold"], r["policy_gold"]
        lines.append(f"| {r['seed']} | {g['original']:+.3f} | {g[last]:+.3f} | {r['changed']:.0%} | "
                     + " | ".join(f"{p[f'{n}_{how}']:+.3f}" for how in ("t1", "greedy") for n in POLICIES) + " |")
    col = lambda f: [f(r) for r in rows]  # noqa: E731
    lines.append(f"| mean ± sd | {_mean_sd(col(lambda r: r['revision_gold']['original']))} | "
                 f"{_mean_sd(col(lambda r: r['revision_gold'][last]))} | | "
                 + " | ".join(_mean_sd(col(lambda r, k=f'{n}_{how}': r['policy_gold'][k]))
                              for how in ("t1", "greedy") for n in POLICIES) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--critique-dialogues", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", default="runs/cai_seeds")
    args = parser.parse_args()
    rows = []
    for seed in map(int, args.seeds.split(",")):
        rows.append(one_seed(Path(args.out), seed, args.critique_dialogues, args.rounds))
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "cai_seeds.json").write_text(json.dumps(rows, indent=1))
        (RESULTS / "cai_seeds.md").write_text(markdown(rows))
        print(markdown(rows))


if __name__ == "__main__":
    main()
