"""`tether world`: write the tiny assistant world to a folder for the later stages to read.

Files: `world.yaml` (the config; reloading it rebuilds the identical world), `knowledge.json` (for
people to read), `corpus.jsonl` (pretraining), `sft.jsonl` (demonstrations), `eval.jsonl` (held-out
prompts with their category), `prompts.jsonl` (train-split prompts for preference collection and RL).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tether.config import load_config, save_config
from tether.data.sft_data import write_conversations
from tether.errors import TetherError
from tether.world.world import World, WorldConfig

__all__ = ["WorldConfig", "run", "load_world"]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def run(cfg: WorldConfig) -> World:
    world = World(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "world.yaml")
    (out / "knowledge.json").write_text(json.dumps(dataclasses.asdict(world.knowledge), indent=1))
    _write_jsonl(out / "corpus.jsonl", world.pretraining_corpus())
    write_conversations(out / "sft.jsonl", world.sft_demos())
    _write_jsonl(out / "eval.jsonl", [{"prompt": q.text, "category": q.category} for q in world.eval_queries()])
    _write_jsonl(out / "prompts.jsonl", [{"prompt": q.text, "category": q.category} for q in world.train_queries()])
    return world


def load_world(folder: str | Path) -> World:
    """Rebuild the world a folder was written from (its `world.yaml`)."""
    path = Path(folder) / "world.yaml"
    if not path.exists():
        raise TetherError(f"{folder}: not a world folder (no world.yaml); run `tether world out={folder}` first")
    return World(load_config(WorldConfig, str(path)))
