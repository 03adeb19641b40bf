"""examples/*.yaml (the README's configs for 0.5B-8B models on one GPU) stay valid: each loads into its stage's config,
every key known and every value checked, as `tether STAGE --config FILE` would read it."""
import importlib
from pathlib import Path

import pytest

from tether.cli import STAGES
from tether.config import load_config

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_there_are_examples_for_every_optimiser():
    stages = {path.read_text().split()[2] for path in EXAMPLES}  # "# tether STAGE --config ..."
    assert stages == {"sft", "rm", "dpo", "grpo"} and len(EXAMPLES) >= 7


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_loads_into_its_stage_config(path):
    first = path.read_text().splitlines()[0].split()
    assert first[:2] == ["#", "tether"] and first[3:] == ["--config", f"examples/{path.name}"], first
    stage = STAGES[first[2]]
    cfg = load_config(getattr(importlib.import_module(stage.module), stage.config), path)
    assert cfg.bf16 and cfg.gradient_checkpointing and cfg.model
    assert ("8b" in path.name) == (cfg.lora.r > 0)  # LoRA exactly on the 8B model
