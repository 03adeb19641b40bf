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
MODELS = {"base": "pretrain/model", "sft": "sft/model"}
"""The responders: the pretrained model (every style, as Bai et al.'s helpful-only model: its SL-CAI model is the
pretrained LM fine-tuned on the revisions) and the SFT policy (fine-tuned on the world's demonstrations)."""


def _once(done: Path, fn, *args) -> None:
    if not done.exists():
        fn(*args)


def _gold(run: Path, name: str, how: str, cfg, temperature: float, samples: int) -> dict:
    out = run / "eval" / f"{name}_{how}_summary.json"
    if not out.exists():
        demo._evaluate(cfg, run / name / "model" if name not in MODELS else run / MODELS[name], f"{name}_{how}",
                       temperature, samples)
    return json.loads(out.read_text())["all"]


def one_responder(run: Path, cfg, stages: dict, responder: str, rounds: int) -> dict:
    # 2. Critique and revise the responder's own temperature-1 answers.
    cai_dir = run / f"cai_{responder}"
    ccfg = cai.CaiConfig(model=str(run / MODELS[responder]), world=str(run / "world"), rounds=rounds, seed=cfg.seed,
                         out=str(cai_dir))
    _once(cai_dir / "summary.json", cai.run, ccfg)
    summary = json.loads((cai_dir / "summary.json").read_text())
    # 3. SFT from the responder on the revisions, and on the originals (the control).
    rows = [json.loads(line) for line in (cai_dir / "cai.jsonl").read_text().splitlines()]
    originals = [r["messages"][:-1] + [{"role": "assistant", "content": r["cai"]["original"]}]
                 for r in rows if r["cai"]["original"]]
    write_conversations(cai_dir / "originals.jsonl", originals)
    for name, data in ((f"{responder}_cai", cai_dir / "cai.jsonl"), (f"{responder}_orig", cai_dir / "originals.jsonl")):
        _once(run / name / "model/model.safetensors", sft.run,
              replace(stages["sft"], data=str(data), model=str(run / MODELS[responder]), out=str(run / name)))
    # 4. Held-out gold of the three policies, sampled (the audit's footing) and greedy.
    evals = {f"{name}_{how}": _gold(run, name, how, cfg, temperature, samples)
             for name in (responder, f"{responder}_cai", f"{responder}_orig")
             for how, temperature, samples in (("t1", 1.0, 4), ("greedy", 0.0, 1))}
    gold = summary["gold"]
    return {"changed": summary["changed"], "principles": summary["principles"],
            "revision_gold": {n: g["gold"] for n, g in gold.items()},
            "revision_rates": {n: {f: g[f] for f in cai.FLAGS} for n, g in gold.items()},
            "revision_by_category": {n: g["by_category"] for n, g in gold.items()},
            "policy_gold": {n: e["gold"] for n, e in evals.items()}, "policy_rates": evals}


def one_seed(root: Path, seed: int, k: int, rounds: int, responders: list[str]) -> dict:
    cfg = demo.DemoConfig(name=f"seed{seed}", runs=str(root), seed=seed,
                          world=WorldConfig(critique_dialogues=k))
    stages = demo._stage_configs(cfg)
    run = cfg.root
    # 1. The world with critique demonstrations, its tokenizer, pretraining, SFT.
    _once(run / "world/eval.jsonl", build_world, stages["world"])
    _once(run / "tokenizer/tokenizer.json", train_tokenizer, stages["tokenizer"])
    _once(run / "pretrain/model/model.safetensors", pretrain.run, stages["pretrain"])
    _once(run / "sft/model/model.safetensors", sft.run, stages["sft"])
    return {"seed": seed, "critique_dialogues": k, "rounds": rounds,
            **{r: one_responder(run, cfg, stages, r, rounds) for r in responders}}


def _mean_sd(xs: list[float]) -> str:
    return f"{statistics.mean(xs):+.3f}" + (f" ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else "")


def markdown(rows: list[dict], responders: list[str]) -> str:
    last = f"round_{rows[0]['rounds']}"
    out = []
    for m in responders:
        names = [m, f"{m}_cai", f"{m}_orig"]
        out += [f"responder: {m}", "", "| seed | originals | revisions | changed | " + " | ".join(
            f"{n} {how}" for how in ("t=1", "greedy") for n in names) + " |", "|---" * 10 + "|"]
        for r in rows:
            g, p = r[m]["revision_gold"], r[m]["policy_gold"]
            out.append(f"| {r['seed']} | {g['original']:+.3f} | {g[last]:+.3f} | {r[m]['changed']:.0%} | "
                       + " | ".join(f"{p[f'{n}_{how}']:+.3f}" for how in ("t1", "greedy") for n in names) + " |")
        col = lambda f: [f(r[m]) for r in rows]  # noqa: E731
        out.append(f"| mean ± sd | {_mean_sd(col(lambda x: x['revision_gold']['original']))} | "
                   f"{_mean_sd(col(lambda x: x['revision_gold'][last]))} | | "
                   + " | ".join(_mean_sd(col(lambda x, k=f'{n}_{how}': x['policy_gold'][k]))
                                for how in ("t1", "greedy") for n in names) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--critique-dialogues", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--responders", default="base,sft")
    parser.add_argument("--out", default="runs/cai_seeds")
    args = parser.parse_args()
    responders = args.responders.split(",")
    rows = []
    for seed in map(int, args.seeds.split(",")):
        rows.append(one_seed(Path(args.out), seed, args.critique_dialogues, args.rounds, responders))
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "cai_seeds.json").write_text(json.dumps(rows, indent=1))
        (RESULTS / "cai_seeds.md").write_text(markdown(rows, responders))
        print(markdown(rows, responders))


if __name__ == "__main__":
    main()
