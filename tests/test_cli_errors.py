"""User errors through `tether.cli.main`: each bad SFT data file, bad config key or value, and unknown preset
exits 2 with one `error: ...` line naming the file, line and field; truncation is counted in data_report.json."""
from __future__ import annotations

import json

import pytest

from tether.chat import chat_format
from tether.cli import main
from tether.data.corpus import read_corpus
from tether.data.sft_data import read_conversations
from tether.stages.pretrain import encode_corpus

USER = {"role": "user", "content": "Hi"}
BOT = {"role": "assistant", "content": "Hello!"}
GOOD = json.dumps({"messages": [USER, BOT]})


def _row(*messages, **fields) -> str:
    return json.dumps({"messages": list(messages)} if messages else fields)


def _last_error(capsys) -> str:
    """The final line of stderr (transformers may draw a weights-loading bar before it)."""
    err = capsys.readouterr().err
    return err.replace("\r", "\n").strip().splitlines()[-1]


# (name, file lines, line number of the error, "field: problem")
BAD_DATA = [
    ("not_json", [GOOD, '{"messages": [}'], 2,
     "<json>: not valid JSON (Expecting value, column 15)"),
    ("missing_content", [GOOD, "", _row(USER, {"role": "assistant"})], 3, "messages[1].content: missing"),
    ("missing_role", [_row({"content": "Hi"}, BOT)], 1, "messages[0].role: missing"),
    ("missing_messages", [GOOD, _row(text="Hi")], 2,
     "messages: missing (expected 'messages' or 'prompt'+'completion')"),
    ("missing_completion", [json.dumps({"prompt": "Hi"})], 1,
     "completion: missing (a row with 'prompt' needs 'completion')"),
    ("empty_content", [GOOD, GOOD, _row({"role": "user", "content": ""}, BOT)], 3,
     "messages[0].content: empty or whitespace-only"),
    ("whitespace_content", [_row(USER, {"role": "assistant", "content": " \t\n "})], 1,
     "messages[1].content: empty or whitespace-only"),
    ("whitespace_completion", [GOOD, json.dumps({"prompt": "Hi", "completion": "   "})], 2,
     "completion: empty or whitespace-only"),
    ("unknown_role", [GOOD, _row(USER, {"role": "bot", "content": "Hello!"})], 2,
     "messages[1].role: unknown role 'bot' (allowed: system, user, assistant)"),
    ("array_row", [GOOD, json.dumps([USER, BOT])], 2, "<row>: expected a JSON object, got an array"),
    ("no_assistant", [_row(USER)], 1, "messages: no assistant message"),
]


@pytest.mark.parametrize("name,lines,lineno,message", BAD_DATA, ids=[case[0] for case in BAD_DATA])
def test_bad_sft_row_names_file_line_and_field(name, lines, lineno, message, model_dir, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["sft", f"data={data}", f"model={model_dir}", f"out={out}", "max_steps=1"]) == 2
    assert _last_error(capsys) == f"error: {data}:{lineno}: {message}"
    assert not out.exists()  # nothing written, no training started


def test_invalid_utf8_names_line_and_byte(model_dir, tmp_path, capsys):
    bad = b'{"messages": [{"role": "user", "content": "caf\xe9"}]}'
    data = tmp_path / "data.jsonl"
    data.write_bytes(GOOD.encode() + b"\n\n" + bad + b"\n")
    assert main(["sft", f"data={data}", f"model={model_dir}", f"out={tmp_path / 'run'}"]) == 2
    # 0xE9 is byte 47 of line 3 (counted from 1): 46 ASCII bytes before it.
    assert bad.index(b"\xe9") + 1 == 47
    assert _last_error(capsys) == f"error: {data}:3: <utf-8>: invalid UTF-8 at byte 47"


@pytest.mark.parametrize("content,problem", [(b"", "no rows"), (b"\n  \n\n", "no rows"), (None, "file not found")],
                         ids=["empty", "blank_lines_only", "missing"])
def test_empty_or_missing_file(content, problem, model_dir, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    if content is not None:
        data.write_bytes(content)
    assert main(["sft", f"data={data}", f"model={model_dir}", f"out={tmp_path / 'run'}"]) == 2
    assert _last_error(capsys) == f"error: {data}: {problem}"
    assert not (tmp_path / "run").exists()


def test_sft_data_is_checked_before_the_model_is_loaded(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text(_row(USER, {"role": "bot", "content": "x"}) + "\n")
    assert main(["sft", f"data={data}", f"model={tmp_path / 'no-model'}"]) == 2
    assert _last_error(capsys).startswith(f"error: {data}:1: messages[1].role: unknown role 'bot'")


# ---------------------------------------------------------------------------------------------
# Config errors: raised by load_config before the stage runs


def test_unknown_key_names_the_field_and_suggests(capsys):
    assert main(["sft", "lrr=1e-3"]) == 2
    err = _last_error(capsys)
    assert err.startswith("error: SFTConfig: unknown field 'lrr' (did you mean 'lr'?); known fields: strategy, device, "
                          "bf16, gradient_checkpointing, report_to, run_name, out, seed,")
    assert err.endswith(", data, format, split, model, trust_remote_code, padding_free, pack_tokens")


@pytest.mark.parametrize("stage,config,old", [("ppo", "PPOConfig", "policy"), ("grpo", "GRPOConfig", "policy"),
                                              ("rloo", "RLOOConfig", "policy"), ("redteam", "RedteamConfig", "policy"),
                                              ("collect", "CollectConfig", "policies"), ("rm", "RMConfig", "backbone")])
def test_old_model_setting_names_stop_with_the_new_one(stage, config, old, capsys):
    # One name for the model on every stage; the old names are refused with the new one, from YAML paths as well.
    assert main([stage, f"{old}=runs/sft/model"]) == 2
    assert _last_error(capsys) == (f"error: {config}.{old}: renamed to 'model' (the same name on every stage); write "
                                   "model=... instead")


def test_every_stage_that_loads_a_model_calls_it_model():
    import importlib
    from dataclasses import fields

    from tether.cli import STAGES

    for name in ("sft", "rm", "dpo", "ppo", "grpo", "rloo", "collect", "evaluate", "redteam"):
        stage = STAGES[name]
        names = {f.name for f in fields(getattr(importlib.import_module(stage.module), stage.config))}
        assert "model" in names and not names & {"policy", "policies", "backbone"}, name


@pytest.mark.parametrize("override,message", [
    ("lr=abc", "SFTConfig.lr: expected a float, got 'abc'"),
    ("max_steps=1.5", "SFTConfig.max_steps: expected an integer or null, got '1.5'"),
    ("resume=maybe", "SFTConfig.resume: expected a boolean (true/false, yes/no, 1/0), got 'maybe'"),
    ("micro_batch_size=3", "SFTConfig.micro_batch_size: 3 must divide batch_size (32): set micro_batch_size=32 or a "
                           "divisor of it (the micro-batch is what one forward pass holds)"),
    ("batch_size=8", "SFTConfig.micro_batch_size: 32 must divide batch_size (8): set micro_batch_size=8 or a divisor "
                     "of it (the micro-batch is what one forward pass holds)"),
])
def test_bad_value_names_the_field(override, message, capsys):
    assert main(["sft", override]) == 2
    assert _last_error(capsys) == f"error: {message}"


def test_unknown_preset_names_the_allowed_ones(world_dir, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["pretrain", "preset=huge", f"corpus={world_dir / 'corpus.jsonl'}", f"tokenizer={tokenizer_dir}",
            f"out={out}"]
    assert main(args) == 2
    err = _last_error(capsys)
    assert "preset" in err and "'huge'" in err and err.endswith("allowed: test, demo, small")
    assert not out.exists()


def test_unknown_preset_is_a_config_error_before_any_work(tmp_path, capsys):
    args = ["pretrain", "preset=huge", f"corpus={tmp_path / 'none.jsonl'}", f"tokenizer={tmp_path / 'none'}"]
    assert main(args) == 2
    assert _last_error(capsys).startswith("error: PretrainConfig.preset: ")


# ---------------------------------------------------------------------------------------------
# Truncation is counted, never silent


def test_sft_truncation_is_counted_in_data_report(world_dir, model_dir, tokenizer, tmp_path):
    data = world_dir / "sft.jsonl"
    fmt = chat_format(tokenizer)
    full = [fmt.encode(c) for c in read_conversations(data)]
    lengths = sorted(len(e.input_ids) for e in full)
    max_length = lengths[len(lengths) // 2]  # the median: about half are cut
    expected = sum(len(e.input_ids) > max_length for e in full)
    assert 0 < expected < len(full)
    fitted = [fmt.encode(c, max_length=max_length) for c in read_conversations(data)]
    # Each over-long conversation keeps its end: its final reply whole wherever it fits after <bos> and one prompt
    # token, earlier turns or the start of its prompt gone; a longer reply keeps its start.
    fits = [len(e.input_ids) - e.prompt_length <= max_length - 2 for e in full]
    assert 0 < sum(fits) < len(full)
    for f, e, fit in zip(fitted, full, fits):
        reply, kept = e.input_ids[e.prompt_length:], f.input_ids[f.prompt_length:]
        assert len(f.input_ids) <= max_length and (kept == reply if fit else kept == reply[:len(kept)])
        assert (f.response_cut > 0) == (not fit)
    out = tmp_path / "run"
    args = ["sft", f"data={data}", f"model={model_dir}", f"out={out}", f"max_length={max_length}", "max_steps=1",
            "batch_size=4", "micro_batch_size=4"]
    assert main(args) == 0
    report = json.loads((out / "data_report.json").read_text())
    assert report == {
        "conversations": len(full),
        "truncated": expected,
        "earlier_turns_dropped": sum(f.turns_dropped > 0 for f in fitted),
        "prompt_cut": sum(f.prompt_cut > 0 for f in fitted),
        "final_reply_cut": len(full) - sum(fits),
        "final_reply_kept_whole": sum(fits),
        "assistant_tokens": sum(sum(f.loss_mask) for f in fitted),
        "final_reply_tokens": sum(sum(f.loss_mask[f.prompt_length:]) for f in fitted),
        "max_length": max_length,
        "chat_template": "the tokenizer's own template",
    }


def test_pretrain_truncation_count(world_dir, tokenizer):
    rows = read_corpus(world_dir / "corpus.jsonl")
    examples, truncated = encode_corpus(tokenizer, rows, max_length=10_000)
    assert truncated == 0
    lengths = [len(e.input_ids) for e in examples]
    cut = sorted(lengths)[len(lengths) // 2]
    short, truncated = encode_corpus(tokenizer, rows, max_length=cut)
    assert truncated == sum(n > cut for n in lengths) > 0
    assert [len(e.input_ids) for e in short] == [min(n, cut) for n in lengths]


@pytest.mark.parametrize("stage", ["dpo", "grpo", "collect", "evaluate"])
def test_max_prompt_length_below_one_is_refused(stage, capsys):
    assert main([stage, "max_prompt_length=0"]) == 2
    assert _last_error(capsys).endswith("max_prompt_length: must be >= 1 or null")


def test_an_sft_row_ending_with_a_user_turn_names_its_line(model_dir, tmp_path, capsys):
    data = tmp_path / "sft.jsonl"
    rows = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
             {"role": "user", "content": "And?"}]]
    data.write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows))
    assert main(["sft", f"data={data}", f"model={model_dir}", f"out={tmp_path / 'run'}"]) == 2
    assert _last_error(capsys) == f"error: {data}:2: messages: the last message must be an assistant reply"


def test_a_template_refusing_a_row_names_the_file_and_the_example(tmp_path, capsys):
    import archkit

    model = archkit.save_model("gemma2", "gemma", tmp_path)  # Gemma's own template refuses a system message
    data = tmp_path / "sft.jsonl"
    rows = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello."}]]
    data.write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows))
    assert main(["sft", f"data={data}", f"model={model}", f"out={tmp_path / 'run'}"]) == 2
    assert _last_error(capsys) == (f"error: {data}: example 2 (in the order read): chat template (the tokenizer's own "
                                   "template): System role not supported")
