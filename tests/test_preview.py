"""`tether data preview`: rows printed as the stage encodes them, trained spans marked, cuts described; and the
acceptance figures of HH-RLHF at max_length 128 (every final reply that fits is kept; dpo drops only pairs whose
response alone does not fit)."""
from __future__ import annotations

import gzip
import json
import re

import pytest

import archkit
from tether.chat import chat_format
from tether.cli import main
from tether.data.formats import load_comparisons, load_conversations
from tether.data.preview import CLOSE, OPEN, PreviewConfig, marked, preview
from tether.stages.dpo import DPOConfig
from tether.stages.dpo.pairs import encode_comparisons
from tether.stages.sft import encode_conversations

N_ROWS = 300


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("preview")


@pytest.fixture(scope="module")
def hh(root):
    path = root / "hh.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in archkit.hh_rows(N_ROWS))
    return path


def test_marked_wraps_each_trained_run(root):
    tok = archkit.tokenizer("chatml", root)
    ids = tok("Hi there friend", add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    mask = [0] * (len(ids) - 2) + [1, 1]
    text = marked(tok, ids, mask)
    assert text == tok.decode(ids[:-2]) + OPEN + tok.decode(ids[-2:]) + CLOSE
    assert marked(tok, ids, [0] * len(ids)) == tok.decode(ids)
    assert "\x1b[1;32m" in marked(tok, ids, mask, colour=True)


def test_sft_view_marks_every_reply_with_its_end_of_turn(root, hh):
    model = archkit.save_model("qwen2", "chatml", root)
    text = preview(PreviewConfig(data=str(hh), model=str(model), rows=3, max_length=4096))
    assert "replies end with '<|im_end|>'" in text and "the tokenizer's own template" in text
    spans = re.findall(f"{OPEN}(.*?){CLOSE}", text.split("\n", 1)[1], flags=re.S)  # after the header line
    conversations = load_conversations(hh)[:3]
    replies = [m["content"] for c in conversations for m in c if m["role"] == "assistant"]
    assert [s.removesuffix("<|im_end|>") for s in spans] == replies  # each reply, whole, closed by its end token
    assert text.count("nothing cut") == 3


def test_dpo_view_shows_both_responses_after_one_cut_prompt(root, hh):
    model = archkit.save_model("gpt2", "base", root)
    text = preview(PreviewConfig(data=str(hh), model=str(model), stage="dpo", chat_template="hh", rows=1,
                                 max_length=128))
    assert "comparison 1, response A (chosen)" in text and "comparison 1, response B (rejected)" in text
    notes = re.findall(r"--- .*", text)
    assert len(notes) == 2 and all("earlier turn(s) dropped" in n for n in notes)
    a, b = (block.split(OPEN)[0] for block in text.split("\n--- ")[1:])  # each response's prompt, as printed
    assert a.split("\n", 1)[1] == b.split("\n", 1)[1]  # the same prompt text before both responses
    assert text.count("\n\nAssistant:" + OPEN) == 2 and text.count("<|endoftext|>" + CLOSE) == 2


def test_cli_preview_and_its_errors(root, hh, capsys):
    model = archkit.save_model("gpt2", "base", root)
    assert main(["data", "preview", f"data={hh}", f"model={model}", "stage=prompts", "chat_template=hh", "rows=1"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- prompt") == 1 and out.rstrip().endswith("Assistant:")
    assert main(["data", "preview", f"data={hh}", f"model={model}"]) == 2  # conversations, no template
    assert "error: chat_template: the data holds conversations" in capsys.readouterr().err
    assert main(["data", "preview", f"data={hh}"]) == 2
    assert "model: is required" in capsys.readouterr().err


@pytest.mark.parametrize("arch,shape,setting", [("qwen2", "chatml", ""), ("gpt2", "base", "hh"),
                                                ("llama", "llama3", "")])
def test_hh_at_max_length_128(root, hh, arch, shape, setting):
    """SFT keeps the final reply of every conversation whose reply fits (after bos and one prompt token); DPO drops
    exactly the pairs with a response that alone does not fit, and keeps every other one."""
    fmt = chat_format(archkit.tokenizer(shape, root), setting)
    conversations = load_conversations(hh)
    full = fmt.encode_many([(c, None) for c in conversations])
    room = 128 - 1 - (fmt.tokenizer.bos_token_id is not None and full[0].input_ids[0] == fmt.tokenizer.bos_token_id)
    fits = [len(e.input_ids) - e.prompt_length <= room for e in full]
    examples, report = encode_conversations(fmt, conversations, 128)
    fitted = fmt.encode_many([(c, None) for c in conversations], 128)
    for f, e, fit in zip(fitted, full, fits):
        assert (f.input_ids[f.prompt_length:] == e.input_ids[e.prompt_length:]) == fit
    assert report["final_reply_kept_whole"] == sum(fits) and report["final_reply_cut"] == len(fits) - sum(fits)
    assert all(len(x.input_ids) <= 128 for x in examples)
    comparisons = load_comparisons(hh)
    pairs, dpo_report = encode_comparisons(fmt, comparisons, DPOConfig(max_length=128))
    replies = fmt.encode_many([(c.prompt, r) for c in comparisons for r in (c.response_a, c.response_b)])
    too_long = sum(any(len(e.input_ids) - e.prompt_length > room for e in replies[2 * i:2 * i + 2])
                   for i in range(len(comparisons)))
    assert dpo_report["dropped_response_too_long"] == too_long and len(pairs) == len(comparisons) - too_long
