"""`tether demo`: the loop on the tiny assistant world, offline on a CPU, each stage in its own folder.

world -> tokenizer -> pretrain -> (base model's styles at temperature 1) -> SFT -> held-out evaluation
with the gold reward. Every stage reads the previous stage's output folder, so any of them can be
rerun alone with `tether <stage>`; `--resume` skips finished stages and resumes an interrupted one.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console

from tether.config import check, save_config
from tether.models import load_policy, load_tokenizer
from tether.stages import pretrain, sft
from tether.stages.evaluate import (
    EvalConfig,
    evaluate_policy,
    summary_table,
    write_results,
)
from tether.tokenizer import TokenizerConfig
from tether.tokenizer import run as train_tokenizer_stage
from tether.world.build import load_world
from tether.world.build import run as build_world
from tether.world.world import WorldConfig

console = Console(width=120)


def _pretrain_defaults() -> pretrain.PretrainConfig:
    return pretrain.PretrainConfig(max_steps=800, lr=3e-3, warmup_steps=30, eval_every=200, save_every=400)


def _sft_defaults() -> sft.SFTConfig:
    return sft.SFTConfig(max_steps=60, lr=3e-4, eval_every=20, save_every=0)


@dataclass
class DemoConfig:
    """The whole loop on the tiny assistant world. Paths inside the nested stage configs are set by the demo."""

    name: str = "demo"
    """Run name: everything is written to `<runs>/<name>/`."""
    runs: str = "runs"
    """Folder holding all runs."""
    preset: str = "demo"
    """Model size (test, demo, small)."""
    seed: int = 0
    """Seed of the world, the model and every stage."""
    vocab_size: int = 1024
    """Tokenizer vocabulary."""
    base_samples: int = 2
    """Responses sampled per held-out prompt at temperature 1 to measure the base model's styles."""
    resume: bool = False
    """Skip stages whose output exists and resume an interrupted training stage."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """The world (its `out` is set by the demo)."""
    pretrain: pretrain.PretrainConfig = field(default_factory=_pretrain_defaults)
    """Pretraining (paths set by the demo)."""
    sft: sft.SFTConfig = field(default_factory=_sft_defaults)
    """Supervised fine-tuning (paths set by the demo)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation settings (paths and temperature set by the demo)."""

    def validate(self) -> None:
        check(bool(self.name) and "/" not in self.name, "name", "must be a non-empty folder name")
        check(self.base_samples >= 0, "base_samples", "must be >= 0")

    @property
    def root(self) -> Path:
        return Path(self.runs) / self.name


def _stage_configs(cfg: DemoConfig) -> dict:
    """The stage configs with every path wired to the previous stage's output."""
    root = cfg.root
    world = replace(cfg.world, seed=cfg.seed, out=str(root / "world"))
    return {
        "world": world,
        "tokenizer": TokenizerConfig(corpus=str(root / "world/corpus.jsonl"), vocab_size=cfg.vocab_size,
                                     out=str(root / "tokenizer")),
        "pretrain": replace(cfg.pretrain, corpus=str(root / "world/corpus.jsonl"), tokenizer=str(root / "tokenizer"),
                            preset=cfg.preset, seed=cfg.seed, out=str(root / "pretrain"), resume=cfg.resume),
        "sft": replace(cfg.sft, data=str(root / "world/sft.jsonl"), model=str(root / "pretrain/model"),
                       seed=cfg.seed, out=str(root / "sft"), resume=cfg.resume),
    }


def _evaluate(cfg: DemoConfig, model_dir: Path, name: str, temperature: float, samples: int) -> dict:
    world = load_world(cfg.root / "world")
    ecfg = replace(cfg.eval, temperature=temperature, samples_per_prompt=samples, seed=cfg.seed)
    model, tokenizer = load_policy(str(model_dir)), load_tokenizer(str(model_dir))
    rows, summary = evaluate_policy(model, tokenizer, world, ecfg, label=f"evaluate {name}")
    write_results(cfg.root / "eval", rows, summary, name)
    return summary


def run(cfg: DemoConfig) -> dict:
    """Run the loop; returns the summary also written to `<root>/summary.json`."""
    root = cfg.root
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, root / "demo.yaml")
    stages = _stage_configs(cfg)
    timings: dict[str, float] = {}

    def timed(name: str, fn, *args, done: Path | None = None):
        if cfg.resume and done is not None and done.exists():
            console.print(f"[dim]{name}: already done ({done}), skipped[/dim]")
            return None
        console.rule(f"[bold]{name}")
        start = time.perf_counter()
        result = fn(*args)
        timings[name] = round(time.perf_counter() - start, 1)
        return result

    # 1. The world, its tokenizer, and a base model pretrained from scratch on the world's corpus.
    timed("world", build_world, stages["world"], done=root / "world/eval.jsonl")
    timed("tokenizer", train_tokenizer_stage, stages["tokenizer"], done=root / "tokenizer/tokenizer.json")
    timed("pretrain", pretrain.run, stages["pretrain"], done=root / "pretrain/model/model.safetensors")
    # 2. What the base distribution can do: the bad styles RL could later exploit.
    base = timed("base styles", _evaluate, cfg, root / "pretrain/model", "base", 1.0, cfg.base_samples) \
        if cfg.base_samples else None
    # 3. Supervised fine-tuning on the demonstrations, then the held-out evaluation (greedy).
    timed("sft", sft.run, stages["sft"], done=root / "sft/model/model.safetensors")
    policy = timed("evaluate sft", _evaluate, cfg, root / "sft/model", "sft", 0.0, 1)
    summary = {"timings_s": timings, "base_temperature_1": base, "sft_greedy": policy}
    (root / "summary.json").write_text(json.dumps(summary, indent=1))
    # 4. The tables.
    if base:
        console.print(summary_table(base, "Base model, temperature 1: what its distribution can produce"))
    if policy:
        console.print(summary_table(policy, "SFT policy, greedy, held-out prompts (entities never seen in SFT)"))
    console.print(f"stage times (s): {timings}\nwritten to {root}/ (summary.json, eval/, checkpoints in each stage)")
    return summary
