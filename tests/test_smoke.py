"""Smoke test (STYLE practice 11c): world -> tokenizer -> pretrain -> sft -> evaluate through `tether.cli.main`,
a "test"-preset model and a few steps: every stage exits 0, losses are finite, parameters move, every
model folder loads with plain transformers, and the eval summary covers every category."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tether.cli import main
from tether.config import load_config
from tether.models import build_model
from tether.stages.evaluate import FLAGS, EvalConfig
from tether.stages.pretrain import PretrainConfig
from tether.stages.sft import SFTConfig
from tether.world import CATEGORIES

STEPS = 5
TRAIN = [f"max_steps={STEPS}", "batch_size=8", "micro_batch_size=4", "warmup_steps=2", "eval_every=0",
         "save_every=0", "log_every=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_world):
    root = tmp_path_factory.mktemp("smoke")
    world, tok, pre, sft, ev = (root / name for name in ("world", "tokenizer", "pretrain", "sft", "eval"))
    codes = {
        "world": main(["world", f"out={world}", *(f"{k}={v}" for k, v in tiny_world.items())]),
        "tokenizer": main(["tokenizer", f"corpus={world}/corpus.jsonl", "vocab_size=400", f"out={tok}"]),
        "pretrain": main(["pretrain", f"corpus={world}/corpus.jsonl", f"tokenizer={tok}", "preset=test",
                          "max_length=128", "lr=3e-3", f"out={pre}", *TRAIN]),
        "sft": main(["sft", f"data={world}/sft.jsonl", f"model={pre}/model", "lr=3e-3", f"out={sft}", *TRAIN]),
        "evaluate": main(["evaluate", f"model={sft}/model", f"world={world}", f"out={ev}", "max_new_tokens=8"]),
    }
    return dict(codes=codes, sizes=tiny_world, world=world, tok=tok, pretrain=pre, sft=sft, eval=ev)


def test_every_stage_exits_0(runs):
    assert runs["codes"] == {"world": 0, "tokenizer": 0, "pretrain": 0, "sft": 0, "evaluate": 0}


@pytest.mark.parametrize("stage", ["pretrain", "sft"])
def test_losses_finite_and_every_step_logged(runs, stage):
    rows = [json.loads(line) for line in (runs[stage] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 and math.isfinite(r["grad_norm"]) for r in rows)
    assert "eval_loss" in rows[-1] and math.isfinite(rows[-1]["eval_loss"])  # eval_every=0: at the end only


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_parameters_changed(runs):
    tok = AutoTokenizer.from_pretrained(runs["tok"])
    initial = build_model("test", tok, seed=0).state_dict()  # what `tether pretrain seed=0` started from
    pretrained, tuned = _weights(runs["pretrain"] / "model"), _weights(runs["sft"] / "model")
    assert pretrained.keys() == tuned.keys() and set(pretrained) <= set(initial)
    for name in pretrained:
        assert not torch.equal(pretrained[name], initial[name]), f"pretrain left {name} unchanged"
        assert not torch.equal(tuned[name], pretrained[name]), f"sft left {name} unchanged"


@pytest.mark.parametrize("stage", ["pretrain", "sft"])
def test_model_folder_loads_with_plain_transformers(runs, stage):
    folder = runs[stage] / "model"
    assert not [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[0] == 1 and 1 <= out.shape[1] - ids.shape[1] <= 3
    for name, value in _weights(folder).items():
        torch.testing.assert_close(model.state_dict()[name], value, atol=0, rtol=0)


def test_eval_summary_covers_every_category(runs):
    summary = json.loads((runs["eval"] / "eval_summary.json").read_text())
    n = runs["sizes"]["eval_per_category"]
    assert list(summary) == [*CATEGORIES, "all"]
    assert [summary[c]["n"] for c in summary] == [n] * len(CATEGORIES) + [n * len(CATEGORIES)]
    for category, stats in summary.items():
        for flag in FLAGS:
            assert 0.0 <= stats[flag] <= 1.0, (category, flag)
        assert -1.0 <= stats["gold"] <= 1.0 and math.isfinite(stats["gold"])
    samples = (runs["eval"] / "eval_samples.jsonl").read_text().splitlines()
    assert len(samples) == n * len(CATEGORIES)


def test_run_folders_keep_their_config(runs):
    pre = load_config(PretrainConfig, runs["pretrain"] / "config.yaml")
    sft = load_config(SFTConfig, runs["sft"] / "config.yaml")
    assert (pre.max_steps, pre.preset, pre.max_length, pre.out) == (STEPS, "test", 128, str(runs["pretrain"]))
    assert (sft.max_steps, sft.model, sft.lr, sft.out) == (STEPS, f"{runs['pretrain']}/model", 3e-3, str(runs["sft"]))
    assert (runs["world"] / "world.yaml").exists()
    report = json.loads((runs["pretrain"] / "data_report.json").read_text())
    assert report["rows"] == len((runs["world"] / "corpus.jsonl").read_text().splitlines())


def test_eval_folder_keeps_its_config(runs):
    ev = load_config(EvalConfig, runs["eval"] / "config.yaml")  # the settings given, and defaults for the rest
    assert (ev.model, ev.world, ev.out, ev.max_new_tokens) == (f"{runs['sft']}/model", str(runs["world"]),
                                                               str(runs["eval"]), 8)
    assert (ev.temperature, ev.samples_per_prompt, ev.seed) == (0.0, 1, 0)
