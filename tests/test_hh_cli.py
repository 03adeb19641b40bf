"""The README's HH-RLHF walk-through, command by command through `tether.cli.main`, with no Python in between: on a
ChatML chat tokenizer (qwen2), a base tokenizer without pad or template (gpt2: chat_template=hh on the first command
only; the model folder it saves carries the template to the others) and a Llama-3 template (llama), on the first
rows of the real HH-RLHF file (gzipped JSONL, as downloaded; told apart by its keys, no format= needed).

`HH_COMMANDS` is the list for the README (`readme_commands()` renders it with `README_VALUES`); the test fills in
its own paths and adds only tiny step and batch settings (`TINY`).
"""
from __future__ import annotations

import json
import shlex

import pytest
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import archkit
from tether.chat_templates import HH
from tether.cli import main
from tether.data.formats import load_prompts

HH_COMMANDS = (
    "tether sft data={hh} model={model} out={runs}/sft max_length=128",
    "tether rm data={hh} model={runs}/sft/model out={runs}/rm max_length=128",
    "tether dpo data={hh} model={runs}/sft/model out={runs}/dpo max_length=128 max_prompt_length=96",
    "tether grpo model={runs}/sft/model prompts={hh} reward_model={runs}/rm/model out={runs}/grpo "
    "max_prompt_length=96 max_new_tokens=16",
    "tether collect model=[{runs}/grpo/model,{runs}/sft/model] prompts={hh} out={runs}/collect max_prompt_length=96 "
    "max_new_tokens=16",
)
"""The walk-through: SFT on HH's chosen dialogues, a reward model and DPO on its pairs, GRPO against that reward
model on its prompts, and a comparison queue from the GRPO and SFT policies. A base model without a chat template
adds chat_template=hh to the first command."""
README_VALUES = {"hh": "hh-rlhf/harmless-base/test.jsonl.gz", "model": "Qwen/Qwen2.5-0.5B-Instruct",
                 "runs": "runs/hh"}
TINY = {
    "sft": "max_steps=2 batch_size=4 micro_batch_size=4 warmup_steps=0 save_every=0 eval_fraction=0.1",
    "rm": "max_steps=2 batch_size=4 micro_batch_size=4 warmup_steps=0 save_every=0 eval_fraction=0.1",
    "dpo": "max_steps=2 batch_size=4 micro_batch_size=4 warmup_steps=0 save_every=0",
    "grpo": "max_steps=1 rollout_batch=2 group_size=2 minibatch_size=4 micro_batch_size=4 save_every=0",
    "collect": "n_prompts=4 responses_per_prompt=2",
}
"""The only settings the test adds to each command: tiny steps and batches."""
CASES = [("qwen2", "chatml"), ("gpt2", "base"), ("llama", "llama3")]
TEMPLATE = {"chatml": archkit.CHATML, "base": HH, "llama3": archkit.LLAMA3}
OUTPUTS = {"sft": ["model/config.json", "metrics.jsonl", "data_report.json"],
           "rm": ["model/config.json", "metrics.jsonl", "eval.json"],
           "dpo": ["model/config.json", "metrics.jsonl", "data_report.json"],
           "grpo": ["model/config.json", "metrics.jsonl", "samples.jsonl", "data_report.json"],
           "collect": ["queue.jsonl", "report.json"]}


def readme_commands(**values: str) -> str:
    """The walk-through as shell lines, with README_VALUES (or the given values) filled in."""
    return "\n".join(c.format(**{**README_VALUES, **values}) for c in HH_COMMANDS)


@pytest.fixture(scope="module", params=CASES, ids=[f"{a}-{s}" for a, s in CASES])
def walk(request, real_root, hh_file):
    """Every command of the walk-through in order; (exit codes by stage, runs folder, shape)."""
    arch, shape = request.param
    runs = real_root / "hh-cli" / f"{arch}-{shape}"
    values = {"hh": hh_file, "model": archkit.save_model(arch, shape, real_root), "runs": runs}
    codes = {}
    for i, command in enumerate(HH_COMMANDS):
        _, stage, *args = shlex.split(command.format(**values))
        first = ["chat_template=hh"] if i == 0 and shape == "base" else []
        codes[stage] = main([stage, *args, *first, *TINY[stage].split()])
    return codes, runs, shape


def test_the_readme_commands_run_and_write_their_outputs(walk):
    codes, runs, _ = walk
    assert codes == dict.fromkeys(OUTPUTS, 0)
    for stage, files in OUTPUTS.items():
        for name in files:
            assert (runs / stage / name).is_file(), f"{stage}/{name}"


def test_the_queue_holds_hh_prompts_from_both_policies(walk, hh_file):
    _, runs, _ = walk
    queue = [json.loads(line) for line in (runs / "collect" / "queue.jsonl").read_text().splitlines()]
    report = json.loads((runs / "collect" / "report.json").read_text())
    assert queue and report["prompts"] == 4 and report["responses"] == 8
    hh = [json.dumps(p) for p in load_prompts(hh_file)[:4]]
    assert {json.dumps(q["prompt"]) for q in queue} <= set(hh)
    assert {q["source_a"] for q in queue} | {q["source_b"] for q in queue} <= {
        str(runs / "grpo" / "model"), str(runs / "sft" / "model")}


def test_prompts_are_cut_to_max_prompt_length_and_counted(walk, hh_file):
    _, runs, _ = walk
    report = json.loads((runs / "grpo" / "data_report.json").read_text())
    assert report["prompts"] == len(load_prompts(hh_file)) and report["max_prompt_length"] == 96
    assert report["longest_prompt"] <= 96 and report["earlier_turns_dropped"] + report["prompt_cut"] > 0


def test_every_model_loads_with_plain_transformers_and_carries_the_template(walk):
    _, runs, shape = walk
    for stage in ("sft", "rm", "dpo", "grpo"):
        cls = AutoModelForSequenceClassification if stage == "rm" else AutoModelForCausalLM
        cls.from_pretrained(runs / stage / "model")
        assert AutoTokenizer.from_pretrained(runs / stage / "model").chat_template == TEMPLATE[shape], stage


def test_readme_commands_render_with_the_readme_values():
    lines = readme_commands().splitlines()
    assert lines[0] == ("tether sft data=hh-rlhf/harmless-base/test.jsonl.gz model=Qwen/Qwen2.5-0.5B-Instruct "
                        "out=runs/hh/sft max_length=128")
    assert [line.split()[1] for line in lines] == list(TINY) == list(OUTPUTS)
