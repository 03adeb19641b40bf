"""Pilot: do reward-model members from a bootstrap of the *raters* (`tether rm ensemble_unit=rater`) disagree more as
PPO exploits a rater bias than members from a bootstrap of the prompts (the default)? Offline, on a finished run of
benchmarks/ensemble_seeds.py: no PPO is rerun. (Issue 20, item 5.)

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ensemble_rater_pilot.py --run runs/ens/seed0-length
                                                                           --out runs/ens-rater/seed0-length

1. Members 1..k-1 of a rater-bootstrap ensemble trained on the run's labels with its reward-model settings (member
   0, the plain reward model, is the run's own: the same data and seed would train the same weights, so the PPO
   policy against it is the run's policy, step for step).
2. The run's policy at step 0 (its SFT model), at its checkpoints and at the end: the PPO evaluation (its held-out
   prompts, samples and seed: common random numbers) scored with both ensembles. eval/ensemble_std of the prompt
   ensemble reproduces the run's logged value (a check of the replay).
3. benchmarks/results/ensemble_rater_pilot.json (one entry per --run, merged with earlier ones) and a table.
"""
from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

from online_curves import RESULTS

from tether import ensemble
from tether.chat import chat_format
from tether.config import load_config
from tether.ensemble import EnsembleSource
from tether.models import load_policy, load_tokenizer
from tether.stages import rm
from tether.stages.online.evaluation import eval_prompt_texts, evaluate
from tether.stages.ppo import PPOConfig
from tether.world.build import load_world


def rater_ensemble(run: Path, out: Path, members: int) -> Path:
    """The rater-bootstrap ensemble in out/rm/model (member 0 copied from the run's reward model)."""
    cfg = replace(load_config(rm.RMConfig, run / "rm/config.yaml"), out=str(out / "rm"), ensemble=members,
                  ensemble_unit="rater", resume=True)
    for member in range(1, members):
        if not (ensemble.member_model_dir(cfg.out, member) / "reward_config.json").is_file():
            rm.train_member(cfg, member)
    model = out / "rm/model"
    for f in (run / "rm/model").iterdir():
        if f.is_file():
            shutil.copy(f, model / f.name)
    ensemble.write_members(model, members)
    return model


def policies(ppo: Path, base: str) -> list[tuple[int, str]]:
    """(step, folder) of the run's policy: its initial model, checkpoints and final model."""
    ckpts = sorted((int(p.name.split("-")[1]), str(p)) for p in (ppo / "checkpoints").glob("step-*"))
    return [(0, base), *ckpts, (json.loads((ppo / "metrics.jsonl").read_text().splitlines()[-1])["step"],
                                str(ppo / "model"))]


def pilot(run: Path, out: Path, members: int) -> dict:
    ppo_dir = run / "ppo-single"
    cfg = load_config(PPOConfig, ppo_dir / "config.yaml")
    sources = {"prompt": EnsembleSource(str(run / "rm/model")),
               "rater": EnsembleSource(str(rater_ensemble(run, out, members)))}
    world = load_world(cfg.world)
    prompts = eval_prompt_texts(world, cfg.eval_prompts)
    logged = {r["step"]: r.get("eval/ensemble_std") for r in map(json.loads, (ppo_dir / "metrics.jsonl").read_text()
                                                                   .splitlines())}
    rows = []
    for step, folder in policies(ppo_dir, cfg.model):
        tokenizer = load_tokenizer(folder)
        policy, fmt = load_policy(folder).eval(), chat_format(tokenizer, cfg.chat_template, folder)
        row = {"step": step, "logged_std": logged.get(step)}
        for unit, source in sources.items():
            e = evaluate(policy, fmt, source, world, prompts, cfg)
            row |= {"gold": e["eval/gold"], "length": e["eval/response_length"], f"{unit}_std": e["eval/ensemble_std"]}
        rows.append(row)
        print(row, flush=True)
    return {"run": str(run), "members": members, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", action="append", required=True, help="a seed<s>-<bias> folder of ensemble_seeds.py")
    ap.add_argument("--out", action="append", required=True, help="where its rater ensemble goes (one per --run)")
    ap.add_argument("--members", type=int, default=4)
    args = ap.parse_args()
    path = RESULTS / "ensemble_rater_pilot.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    for run, out in zip(args.run, args.out):
        done[run] = pilot(Path(run), Path(out), args.members)
        RESULTS.mkdir(exist_ok=True)
        path.write_text(json.dumps(done, indent=1))
    print("| run | step | gold | length | std, prompt bootstrap (logged) | std, rater bootstrap |")
    print("|---|---|---|---|---|---|")
    for r in done.values():
        for x in r["rows"]:
            logged = "-" if x["logged_std"] is None else f"{x['logged_std']:.3f}"
            print(f"| {Path(r['run']).name} | {x['step']} | {x['gold']:+.3f} | {x['length']:.1f} | "
                  f"{x['prompt_std']:.3f} ({logged}) | {x['rater_std']:.3f} |")

if __name__ == "__main__":
    main()
