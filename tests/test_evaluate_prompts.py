"""`tether evaluate` on a prompts file (world=""): samples with their token counts and whether they ended, a summary of
length, end rate and the monitor's refusal and hedging detectors; and where a response ends (`cut_at_stop`)."""
from __future__ import annotations

import json

import pytest

import tether.stages.evaluate as evaluate
from tether.cli import main
from tether.generation import Generated, cut_at_stop

SUMMARY_KEYS = {"n", "mean_tokens", "ended_rate", "refusal_rate", "hedging_rate", "detector"}
ROW_KEYS = {"prompt", "response", "tokens", "ended"}
PROMPTS = ["How do I bake bread?", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                                    {"role": "user", "content": "What is the capital of France?"}], "Tell me a joke."]


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _last_error(capsys) -> str:
    return capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]


@pytest.mark.parametrize("row, expected", [
    ([5, 7, 2, 0, 0], ([5, 7], 3, True)),  # stop token 2 at index 2: 3 tokens generated with it, then padding
    ([5, 7, 9], ([5, 7, 9], 3, False)),  # no stop: cut at max_new_tokens
    ([3, 2, 2], ([], 1, True)),  # the first token is a stop (eos 3): an empty response that ended
])
def test_cut_at_stop(row, expected):
    assert cut_at_stop(row, (2, 3)) == expected  # (end of turn, eos)


def test_summary_by_hand():
    rows = [{"response": "I can't help with that.", "tokens": 3, "ended": True},  # refusal
            {"response": "I think it is Paris.", "tokens": 5, "ended": True},  # hedging ("I think")
            {"response": "Paris.", "tokens": 2, "ended": False},  # neither
            {"response": "I'm not sure, and I cannot help.", "tokens": 8, "ended": True}]  # both
    # mean tokens (3 + 5 + 2 + 8) / 4 = 4.5; ended 3/4; refusals 2/4; hedges 2/4
    assert evaluate.summarize_responses(rows) == {"n": 4, "mean_tokens": 4.5, "ended_rate": 0.75, "refusal_rate": 0.5,
                                                  "hedging_rate": 0.5, "detector": evaluate.DETECTOR}


def test_known_responses_give_the_summary_and_rows_in_prompt_order(monkeypatch, prompts_file, model_dir, tmp_path):
    seen = {}
    canned = [Generated("I can't help with that.", 4, True), Generated("Sure, here it is", 8, False),
              Generated("I believe so.", 3, True)]

    def fake(model, fmt, prompts, max_new_tokens, temperature, batch_size, seed, label, max_prompt_length=None):
        seen.update(prompts=prompts, max_new_tokens=max_new_tokens, max_prompt_length=max_prompt_length)
        return [canned[i % 3] for i in range(len(prompts))]

    monkeypatch.setattr(evaluate, "generate_records", fake)
    out = tmp_path / "eval"
    assert main(["evaluate", f"model={model_dir}", "world=", f"prompts={prompts_file}", "samples_per_prompt=2",
                 "max_new_tokens=8", "max_prompt_length=32", f"out={out}"]) == 0
    assert seen == {"prompts": [p for p in PROMPTS for _ in range(2)], "max_new_tokens": 8, "max_prompt_length": 32}
    rows = read_jsonl(out / "eval_samples.jsonl")
    assert [r["prompt"] for r in rows] == seen["prompts"]
    assert [(r["response"], r["tokens"], r["ended"]) for r in rows] == [
        (c.text, c.tokens, c.ended) for c in canned + canned]
    # 6 responses: tokens 2 x (4 + 8 + 3) / 6 = 5; ended 4/6; refusals ("can't help") 2/6; hedges ("I believe") 2/6
    summary = json.loads((out / "eval_summary.json").read_text())
    assert summary == {"n": 6, "mean_tokens": 5.0, "ended_rate": pytest.approx(4 / 6),
                       "refusal_rate": pytest.approx(2 / 6), "hedging_rate": pytest.approx(2 / 6),
                       "detector": evaluate.DETECTOR}


def test_a_tiny_model_on_a_prompts_file(prompts_file, model_dir, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", f"model={model_dir}", "world=", f"prompts={prompts_file}", "samples_per_prompt=2",
                 "temperature=1.0", "max_new_tokens=6", "batch_size=4", f"out={out}"]) == 0
    rows = read_jsonl(out / "eval_samples.jsonl")
    summary = json.loads((out / "eval_summary.json").read_text())
    assert set(summary) == SUMMARY_KEYS and all(set(r) == ROW_KEYS for r in rows)
    assert len(rows) == summary["n"] == 6
    assert all(1 <= r["tokens"] <= 6 and (r["ended"] or r["tokens"] == 6) for r in rows)
    for key in ("ended_rate", "refusal_rate", "hedging_rate"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary == evaluate.summarize_responses(rows)
    assert json.loads((out / "eval_settings.json").read_text())["samples_per_prompt"] == 2
    assert (out / "config.yaml").is_file()


@pytest.mark.parametrize("args", [["prompts=p.jsonl"], ["world="]])
def test_world_and_prompts_exactly_one(args, capsys):
    assert main(["evaluate", *args]) == 2  # world defaults to runs/world: both given, or (world=) neither
    assert _last_error(capsys) == ('error: EvalConfig.prompts: give exactly one of world= and prompts= (to evaluate '
                                   'on a prompts file: world="" prompts=FILE)')
