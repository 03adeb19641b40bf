"""torch_compile=true (`tether.distributed.compile_layers`): SFT, reward-model and DPO runs on HH-RLHF rows, with
Llama, Qwen2 and GPT-2 models and the ChatML template, give the eager run's losses, gradient norms, held-out metrics
and weights (inductor fuses and reorders float sums, so within 1e-5, not bit for bit; derived metrics 1e-4), with graphs really compiled
and every weight name kept; DPO's and the reward model's shared-prompt passes (a KV cache into compiled layers)
included. Evaluations and sampling run uncompiled (`distributed.eager`). GPT-2's dropout is set to 0 here: compiled
dropout draws other units from the same RNG state (still a pure function of it, so resuming stays exact)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import archkit
from tether import logprobs
from tether.config import load_config
from tether.errors import ConfigError
from tether.reward import RewardModel
from tether.stages import dpo, rm, sft

TOL = 1e-5
SHARED = dict(max_steps=2, batch_size=8, micro_batch_size=4, max_length=256, save_every=0, log_every=1, eval_every=2,
              eval_fraction=0.25, seed=0)
STAGES = {
    "sft": (sft.SFTConfig, sft.run, dict(format="hh")),
    "rm": (rm.RMConfig, rm.run, dict(format="hh", lr=1e-3)),
    "dpo": (dpo.DPOConfig, dpo.run, dict(format="hh", kl_eval_prompts=2, kl_eval_max_new_tokens=4,
                                         **{"monitor.enabled": "false"})),
}


@pytest.fixture(scope="module")
def hh_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("compile") / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in archkit.hh_rows(32)))
    return str(path)


def train(stage: str, data: str, model: Path, out: Path, compiled: bool, **more) -> list[dict]:
    config_class, run, extra = STAGES[stage]
    settings = {**SHARED, **extra, **more, "data": data, "model": str(model), "out": str(out),
                "torch_compile": str(compiled).lower()}
    run(load_config(config_class, None, [f"{k}={v}" for k, v in settings.items()]))
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def model_folder(arch: str, root: Path) -> Path:
    folder = archkit.save_model(arch, "chatml", root)
    if arch == "gpt2":
        config = json.loads((folder / "config.json").read_text())
        config.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def weights(out: Path) -> dict[str, torch.Tensor]:
    files = sorted((out / "model").glob("*.safetensors"))
    return {k: v for f in files for k, v in load_file(f).items()}


@pytest.mark.parametrize("stage, arch, shared", [("sft", "llama", False), ("dpo", "llama", True),
                                                 ("dpo", "qwen2", False), ("rm", "gpt2", False), ("rm", "llama", True)])
def test_compiled_run_equals_the_eager_run(stage, arch, shared, hh_file, tmp_path_factory, tmp_path, monkeypatch):
    """shared: the stage's shared-prompt passes on (HH's long prompts: every micro-batch shares; they run as rows
    of a prompt and its responses, compiled, and the test checks that compiling keeps them); else off."""
    model = model_folder(arch, tmp_path_factory.mktemp(arch))
    settings = {} if stage == "sft" else {"share_prompts" if stage == "dpo" else "share_prefixes": str(shared).lower()}
    eager = train(stage, hh_file, model, tmp_path / "eager", compiled=False, **settings)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    calls = []
    counted = lambda f: lambda *a, **k: calls.append(1) or f(*a, **k)  # noqa: E731
    shared_logps = logprobs.tree_prompt_logps  # DPO: counted on the compiled policy only, not the reference pass

    def compiled_shared_logps(model, *a, **k):
        calls.extend(1 for m in model.modules() if vars(m).get("_tether_compiled"))
        return shared_logps(model, *a, **k)

    monkeypatch.setattr(logprobs, "tree_prompt_logps", compiled_shared_logps)
    monkeypatch.setattr(RewardModel, "_rows_rewards", counted(RewardModel._rows_rewards))
    compiled = train(stage, hh_file, model, tmp_path / "compiled", compiled=True, **settings)
    if shared:
        assert calls  # compiled layers are not mistaken for checkpointed ones, which cannot share prompts
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the layers did compile
    assert [r["step"] for r in compiled] == [r["step"] for r in eager]
    for got, want in zip(compiled, eager):
        # not DPO's accuracies: at step 1 the policy is the reference, so each reward is 0 up to rounding and its
        # sign (what the accuracy counts) is the rounding's
        numbers = {k for k, v in want.items() if isinstance(v, float) and "per_s" not in k and "accuracies" not in k}
        assert {"loss", "grad_norm"} <= numbers
        for key in numbers:  # derived metrics (a squared mean reward) within 1e-4, as tests/test_distributed.py
            rel = TOL if key in ("loss", "grad_norm") else 10 * TOL
            assert got[key] == pytest.approx(want[key], abs=TOL, rel=rel), key
    assert any(k.startswith("eval_") for k in eager[-1])  # the uncompiled evaluation ran in both
    got_w, want_w = weights(tmp_path / "compiled"), weights(tmp_path / "eager")
    assert got_w.keys() == want_w.keys()  # Module.compile keeps every name: a plain HF folder
    for name, value in want_w.items():  # 2e-5: Adam turns rounding-level gradients of near-0 weights into steps
        gap = float((got_w[name] - value).abs().max())
        assert gap <= 2 * TOL, (name, gap)


@pytest.mark.parametrize("setting, message", [("strategy=fsdp2", "strategy=fsdp2"),
                                              ("gradient_checkpointing=true", "gradient_checkpointing")])
def test_settings_it_does_not_combine_with_are_refused(setting, message):
    with pytest.raises(ConfigError, match=f"torch_compile.*{message}"):
        load_config(sft.SFTConfig, None, ["torch_compile=true", setting])
