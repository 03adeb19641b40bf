"""tether.data.formats, sources and convert: every format read into each kind of record, detection and its errors,
Parquet/Arrow/save_to_disk sources, the real HH-RLHF file, `tether data convert`, and the stages reading them."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

import archkit
from tether.cli import main
from tether.data.formats import (
    detect,
    format_names,
    load,
    load_comparisons,
    load_conversations,
    load_prompts,
    load_unpaired,
)
from tether.data.preferences import Comparison
from tether.data.unpaired import Unpaired
from tether.errors import ConfigError, DataError

REAL_HH = archkit.HH  # the full 2,312-row file beside the checkout (../shared), when present
PAIR_FORMATS = "tether, trl, hh, ultrafeedback_binarized, ultrafeedback"


def U(text: str) -> dict:
    return {"role": "user", "content": text}


def A(text: str) -> dict:
    return {"role": "assistant", "content": text}


TETHER = [{"prompt": "2+2?", "response_a": "5", "response_b": "4", "choice": "B", "strength": 0.5},
          {"prompt": "2+2?", "response_a": "4", "response_b": "four", "choice": "tie"}]
TRL_PLAIN = [{"prompt": "2+2?", "chosen": "4", "rejected": "5"},
             {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Rome"}]
TRL_CONVERSATIONAL = [{"prompt": [U("2+2?")], "chosen": [A("4")], "rejected": [A("5")]}]
TRL_IMPLICIT = [{"chosen": [U("2+2?"), A("4")], "rejected": [U("2+2?"), A("5")]}]
HH = [{"chosen": "\n\nHuman: 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: 2+2?\n\nAssistant: 5"}]
UF_BINARIZED = [{"prompt": "2+2?", "prompt_id": "p1", "chosen": [U("2+2?"), A("4")], "rejected": [U("2+2?"), A("5")],
                 "messages": [U("2+2?"), A("4")], "score_chosen": 9.0, "score_rejected": 2.5}]
UF = [{"source": "evol", "instruction": "2+2?", "models": ["m0", "m1", "m2", "m3", "m4"], "completions": [
    {"model": "m0", "response": "5", "overall_score": 3.0},
    {"model": "m1", "response": "4", "overall_score": 8.5},  # the best: the first of two equal bests
    {"model": "m2", "response": "four", "overall_score": 8.5},  # not strictly lower: no pair
    {"model": "m3", "response": "  ", "overall_score": 1.0},  # no response: left out
    {"model": "m4", "response": "22", "overall_score": 1.0},
]}]
UNPAIRED = [{"prompt": "2+2?", "completion": "4", "label": True}, {"prompt": "2+2?", "completion": "5", "label": False}]
MESSAGES = [{"messages": [U("2+2?"), A("4")]}]
PROMPT_COMPLETION = [{"prompt": "2+2?", "completion": "4"}, {"prompt": [U("3+3?")], "completion": [A("6")]}]
PROMPTS = [{"prompt": "2+2?"}, {"prompt": [U("3+3?")]}, {"prompt": "2+2?", "source": "x"}]


def _jsonl(path: Path, rows: list[dict]) -> str:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return str(path)


def _hh_subset(path: Path, n: int) -> str:
    """The first n (<= 300) rows of the real HH-RLHF file, from the sample the tests ship, gzipped like the original."""
    lines = gzip.decompress(archkit.SAMPLE.read_bytes()).split(b"\n")[:n]
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    return str(path)


# ---------------------------------------------------------------------------------------------
# 1. Each format into each kind of record


def test_comparisons_of_each_format(tmp_path):
    def read(rows, name="d.jsonl"):
        return load_comparisons(_jsonl(tmp_path / name, rows))

    assert read(TETHER)[0] == Comparison("2+2?", "5", "4", "B", 0.5)
    assert read(TRL_PLAIN) == [Comparison("2+2?", "4", "5", "A"),
                               Comparison("Capital of France?", "Paris", "Rome", "A")]
    assert read(TRL_CONVERSATIONAL) == read(TRL_IMPLICIT) == [Comparison([U("2+2?")], "4", "5", "A")]
    assert read(HH) == [Comparison([U("2+2?")], "4", "5", "A", source_a="hh-rlhf", source_b="hh-rlhf",
                                   meta={"source": "hh-rlhf", "line": 1})]
    # one user turn, as the data set's own `prompt` column: a plain prompt
    assert read(UF_BINARIZED) == [Comparison("2+2?", "4", "5", "A", meta={
        "source": "ultrafeedback_binarized", "line": 1, "score_a": 9.0, "score_b": 2.5, "prompt_id": "p1"})]
    # the best (m1, 8.5) against each completion scored strictly lower, in the row's order
    assert read(UF) == [
        Comparison("2+2?", "4", "5", "A", source_a="m1", source_b="m0",
                   meta={"source": "ultrafeedback", "line": 1, "score_a": 8.5, "score_b": 3.0}),
        Comparison("2+2?", "4", "22", "A", source_a="m1", source_b="m4",
                   meta={"source": "ultrafeedback", "line": 1, "score_a": 8.5, "score_b": 1.0}),
    ]


def test_sft_examples_of_each_format(tmp_path):
    def read(rows):
        return load_conversations(_jsonl(tmp_path / "d.jsonl", rows))

    assert read(PROMPT_COMPLETION) == [("2+2?", "4"), [U("3+3?"), A("6")]]  # a plain pair stays a tuple
    assert read(MESSAGES) == [[U("2+2?"), A("4")]]
    assert read(HH) == read(UF_BINARIZED) == read(TRL_CONVERSATIONAL) == [[U("2+2?"), A("4")]]
    assert read(TRL_PLAIN) == [("2+2?", "4"), ("Capital of France?", "Paris")]
    assert read(UF) == [("2+2?", "4")]  # the best response once, not once per pair
    assert read(UNPAIRED) == [("2+2?", "4")]  # label true only
    assert read(TETHER) == [("2+2?", "4")]  # the tie has no chosen response
    loaded = load(tmp_path / "d.jsonl", "conversations")
    assert loaded.report == {"format": "tether", "file_rows": 2, "skipped_rows": 0, "skipped": {},
                             "no_chosen_response": 1, "duplicates_dropped": 0}


def test_prompts_of_each_format(tmp_path):
    def read(rows):
        return load_prompts(_jsonl(tmp_path / "d.jsonl", rows))

    assert read(PROMPTS) == ["2+2?", [U("3+3?")], "2+2?"]  # a prompts file is kept as it is
    assert read(HH) == [[U("2+2?")]]  # the dialogue before the final Assistant turn
    assert read(UF_BINARIZED) == read(UF) == read(UNPAIRED) == read(TETHER) == ["2+2?"]  # distinct prompts
    assert read(TRL_PLAIN) == ["2+2?", "Capital of France?"]
    assert read(TRL_IMPLICIT) == read(MESSAGES) == [[U("2+2?")]]


def test_unpaired_rows_and_comparisons_split_in_two(tmp_path):
    rows, report = load_unpaired(_jsonl(tmp_path / "u.jsonl", UNPAIRED))
    assert rows == [Unpaired("2+2?", "4", True), Unpaired("2+2?", "5", False)]
    assert (report["format"], report["shape"], report["desirable"], report["undesirable"]) == ("trl_unpaired",
                                                                                                "plain", 1, 1)
    rows, report = load_unpaired(_jsonl(tmp_path / "t.jsonl", TETHER))
    assert rows == [Unpaired("2+2?", "4", True), Unpaired("2+2?", "5", False)]  # chosen is B; the tie dropped
    assert report["ties_dropped"] == 1


# ---------------------------------------------------------------------------------------------
# 2. Detection and its errors


@pytest.mark.parametrize("row, kind, found", [
    (TETHER[0], "comparisons", ["tether"]),
    (TRL_PLAIN[0], "comparisons", ["trl"]),
    (TRL_CONVERSATIONAL[0], "comparisons", ["trl"]),
    (TRL_IMPLICIT[0], "comparisons", ["trl"]),
    (HH[0], "comparisons", ["hh"]),
    (UF_BINARIZED[0], "comparisons", ["ultrafeedback_binarized"]),  # its "messages" key does not count
    (UF[0], "comparisons", ["ultrafeedback"]),
    (UNPAIRED[0], "unpaired", ["trl_unpaired"]),
    (MESSAGES[0], "conversations", ["messages"]),
    (PROMPT_COMPLETION[0], "conversations", ["prompt_completion"]),
    (PROMPTS[0], "prompts", ["prompts"]),
    (PROMPTS[0], "conversations", ["prompt_completion"]),  # whose reader names the missing completion
    ({"text": "hi"}, "comparisons", []),
    ({"prompt": "p", "response_a": "a", "chosen": "c"}, "comparisons", ["tether", "trl"]),
])  # fmt: skip
def test_detect(row, kind, found):
    assert detect(row, kind) == found


def test_unknown_ambiguous_and_wrong_kind_errors_name_file_keys_and_format(tmp_path):
    unknown = _jsonl(tmp_path / "u.jsonl", [{"text": "hi", "id": 3}])
    with pytest.raises(DataError) as err:
        load_comparisons(unknown)
    assert str(err.value) == (f"{unknown}: cannot tell the format from the first row's keys (text, id); "
                              f"set format= to one of: {PAIR_FORMATS}")
    both = _jsonl(tmp_path / "b.jsonl", [{"prompt": "p", "response_a": "a", "chosen": "c"}])
    with pytest.raises(DataError) as err:
        load_comparisons(both)
    assert str(err.value) == (f"{both}: the first row's keys (prompt, response_a, chosen) fit several formats "
                              f"(tether, trl); set format= to one of: {PAIR_FORMATS}")
    sft = _jsonl(tmp_path / "s.jsonl", MESSAGES)
    with pytest.raises(DataError) as err:
        load_comparisons(sft)
    assert str(err.value) == (f"{sft}: the rows look like messages (messages), which hold no comparisons (rm, dpo); "
                              f"the formats that do: {PAIR_FORMATS}")
    with pytest.raises(ConfigError, match=r"^format: must be one of auto, tether, .* got 'prompts'$"):
        load_comparisons(sft, format="prompts")


def test_row_errors_and_skips(tmp_path):
    conversational = _jsonl(tmp_path / "c.jsonl", TRL_CONVERSATIONAL)
    with pytest.raises(DataError, match=rf"^{conversational}:1: chosen: expected a string, got an array$"):
        load_comparisons(conversational, format="hh")  # a format given is not second-guessed
    mixed = _jsonl(tmp_path / "m.jsonl", TRL_PLAIN + TRL_CONVERSATIONAL)
    with pytest.raises(DataError) as err:
        load_comparisons(mixed)
    assert str(err.value) == f"{mixed}:3: prompt: a conversational row in a file whose first row (line 1) is plain"
    diverging = [{"chosen": [U("a"), A("b")], "rejected": [U("x"), A("c")]}]
    with pytest.raises(DataError, match="rejected: differs from chosen before the final assistant reply"):
        load_comparisons(_jsonl(tmp_path / "d.jsonl", diverging))
    # an empty or repeated reply is skipped and counted; a file of nothing else is an error
    blank = {"chosen": HH[0]["chosen"], "rejected": "\n\nHuman: 2+2?\n\nAssistant: "}
    same = {"chosen": HH[0]["chosen"], "rejected": HH[0]["chosen"]}
    loaded = load(_jsonl(tmp_path / "h.jsonl", [blank, HH[0], same]), "comparisons")
    assert len(loaded.items) == 1 and loaded.wheres == [f"{tmp_path / 'h.jsonl'}:2"]
    assert loaded.report["skipped"] == {"rejected: empty final assistant reply": 1,
                                        "rejected: final assistant reply identical to chosen's": 1}
    with pytest.raises(DataError, match=r"h2\.jsonl: no comparisons \(rm, dpo\) in 2 rows of hh \(2 skipped: "):
        load_comparisons(_jsonl(tmp_path / "h2.jsonl", [blank, same]))


def test_dpo_needs_labels_and_says_where(tmp_path):
    rows = [TETHER[0], {"prompt": "q", "response_a": "a", "response_b": "b"}]
    path = _jsonl(tmp_path / "q.jsonl", rows)
    assert len(load_comparisons(path)) == 2
    with pytest.raises(DataError, match=rf"^{path}:2: choice: null \(an unrated queue item; 1 in the file\)"):
        load_comparisons(path, labelled=True)


@pytest.mark.skipif(not REAL_HH.is_file(), reason="the full HH-RLHF file (../shared/data/hh-rlhf) is not beside the "
                    "checkout")
def test_the_real_hh_file():
    comparisons = load(REAL_HH, "comparisons")
    # 4 of the 2,312 rows end in an empty chosen reply (lines 87, 517, 926 and 1104)
    assert (len(comparisons.items), comparisons.report["skipped"]) == (2308, {"chosen: empty final assistant reply": 4})
    assert all(isinstance(c.prompt, list) and c.prompt[-1]["role"] == "user" for c in comparisons.items)
    assert len(load(REAL_HH, "conversations").items) == 2308
    prompts = load(REAL_HH, "prompts")  # every row has a prompt; two prompts appear twice
    assert (len(prompts.items), prompts.report["duplicates_dropped"]) == (2310, 2)
    assert len(load(REAL_HH, "unpaired").items) == 2 * 2308


# ---------------------------------------------------------------------------------------------
# 3. Parquet, Arrow and save_to_disk folders


@pytest.fixture(scope="module")
def arrow_data(tmp_path_factory):
    """TRL conversational rows as Parquet, an Arrow file, a Dataset folder and a DatasetDict folder."""
    import datasets

    out = tmp_path_factory.mktemp("arrow")
    rows = [{"prompt": [U(f"{i}+{i}?")], "chosen": [A(str(2 * i))], "rejected": [A(str(2 * i + 1))]} for i in range(4)]
    bad = rows[:2] + [{**rows[2], "chosen": [U("oops")]}] + rows[3:]
    datasets.Dataset.from_list(rows).to_parquet(str(out / "good.parquet"))
    datasets.Dataset.from_list(bad).to_parquet(str(out / "bad.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(out / "one"))
    datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list(rows[:3]),
                          "test_prefs": datasets.Dataset.from_list(rows[3:])}).save_to_disk(str(out / "dd"))
    return out, rows


def test_parquet_arrow_and_folders_read_like_jsonl(arrow_data, tmp_path):
    out, rows = arrow_data
    expected = load_comparisons(_jsonl(tmp_path / "d.jsonl", rows))
    assert load_comparisons(out / "good.parquet") == expected
    assert load_comparisons(out / "one") == expected
    assert load_comparisons(out / "one" / "data-00000-of-00001.arrow") == expected
    assert load_comparisons(out / "dd", split="train_prefs") == expected[:3]
    assert load_comparisons(out / "dd", split="test_prefs") == expected[3:]
    assert load_prompts(out / "dd", split="test_prefs") == [[U("3+3?")]]


def test_datasets_errors(arrow_data, tmp_path):
    out, _ = arrow_data
    cases = [
        (dict(path=out / "bad.parquet"),
         f"{out / 'bad.parquet'}: row 2: chosen[0].role: expected 'assistant', got 'user'"),
        (dict(path=out / "dd"), f"{out / 'dd'}: a DatasetDict folder; set split= to one of: train_prefs, test_prefs"),
        (dict(path=out / "dd", split="dev"),
         f"{out / 'dd'}: no split 'dev'; set split= to one of: train_prefs, test_prefs"),
        (dict(path=out / "one", split="train"), f"{out / 'one'}: split=train given, but the folder holds one Dataset, "
                                                "without splits"),
        (dict(path=out / "good.parquet", split="train"), f"{out / 'good.parquet'}: split=train given, but a .parquet "
                                                         "file has no splits (split= picks one of a save_to_disk "
                                                         "DatasetDict folder)"),
        (dict(path=tmp_path), f"{tmp_path}: a folder, but not one `save_to_disk` wrote (no dataset_dict.json or "
                              "state.json)"),
        # a Hub name is only ever a path here
        (dict(path="HuggingFaceH4/ultrafeedback_binarized"), "HuggingFaceH4/ultrafeedback_binarized: file not found"),
    ]  # fmt: skip
    for kwargs, message in cases:
        with pytest.raises(DataError) as err:
            load_comparisons(**kwargs)
        assert str(err.value) == message
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"junk\.parquet: not a readable parquet file \("):
        load_comparisons(tmp_path / "junk.parquet")


# ---------------------------------------------------------------------------------------------
# 4. tether data convert


def _convert(capsys, *args) -> tuple[int, list[str]]:
    code = main(["data", "convert", *args])
    captured = capsys.readouterr()
    return code, (captured.out + captured.err).splitlines()


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_trl_to_tether_to_trl_is_the_same_file(tmp_path, capsys):
    trl = _jsonl(tmp_path / "trl.jsonl", TRL_PLAIN)
    assert _convert(capsys, f"in={trl}", f"out={tmp_path / 't.jsonl'}", "to=tether")[0] == 0
    assert [r["choice"] for r in _rows(tmp_path / "t.jsonl")] == ["A", "A"]
    code, lines = _convert(capsys, f"in={tmp_path / 't.jsonl'}", f"out={tmp_path / 'back.jsonl'}", "to=trl")
    assert (code, lines[1]) == (0, f"wrote 2 trl rows to {tmp_path / 'back.jsonl'}")
    assert _rows(tmp_path / "back.jsonl") == TRL_PLAIN


def test_hh_to_trl_keeps_prompts_and_responses(tmp_path, capsys):
    hh = _hh_subset(tmp_path / "hh.jsonl.gz", 100)
    code, lines = _convert(capsys, f"in={hh}", f"out={tmp_path / 'trl.jsonl'}", "to=trl")
    assert code == 0
    assert lines == [f"read {hh}: 99 comparisons from 100 rows of hh (1 skipped: chosen: empty final assistant "
                     "reply: 1)", f"wrote 99 trl rows to {tmp_path / 'trl.jsonl'}"]
    before, after = load_comparisons(hh), load_comparisons(tmp_path / "trl.jsonl")
    assert [(c.prompt, c.chosen, c.rejected) for c in after] == [(c.prompt, c.chosen, c.rejected) for c in before]
    assert isinstance(_rows(tmp_path / "trl.jsonl")[0]["prompt"], list)  # HH dialogues: conversational TRL
    # and back to HH: the same dialogues
    assert _convert(capsys, f"in={tmp_path / 'trl.jsonl'}", f"out={tmp_path / 'hh2.jsonl'}", "to=hh")[0] == 0
    original = [json.loads(line) for line in gzip.decompress(Path(hh).read_bytes()).decode().splitlines()]
    assert _rows(tmp_path / "hh2.jsonl") == [r for i, r in enumerate(original) if i != 86]  # line 87: skipped


def test_lossy_conversions_say_what_they_skipped(tmp_path, capsys):
    rows = TETHER + [{"prompt": [{"role": "system", "content": "Be terse."}, U("3+3?")], "response_a": "6",
                      "response_b": "7", "choice": "A"}, {"prompt": "q", "response_a": "a", "response_b": "b"}]
    src = _jsonl(tmp_path / "t.jsonl", rows)
    code, lines = _convert(capsys, f"in={src}", f"out={tmp_path / 'trl.jsonl'}", "to=trl")
    assert (code, lines[1:]) == (0, [
        f"wrote 2 trl rows to {tmp_path / 'trl.jsonl'}",
        "  skipped: ties (a TRL row needs a chosen response): 1",
        "  skipped: unlabelled pairs (a TRL row needs a chosen response): 1",
        "  changed: plain prompts written as one user message (a TRL file is all plain or all conversational): 1",
    ])
    code, lines = _convert(capsys, f"in={src}", f"out={tmp_path / 'hh.jsonl'}", "to=hh")
    assert (code, lines[1:]) == (0, [
        f"wrote 1 hh rows to {tmp_path / 'hh.jsonl'}",
        "  skipped: ties (a HH-RLHF row needs a chosen response): 1",
        "  skipped: unlabelled pairs (a HH-RLHF row needs a chosen response): 1",
        "  skipped: prompt[0].role: HH-RLHF has no system turns: 1",
    ])
    pc = _jsonl(tmp_path / "pc.jsonl", PROMPT_COMPLETION)
    code, lines = _convert(capsys, f"in={pc}", f"out={tmp_path / 'm.jsonl'}", "to=messages")
    assert lines[2:] == ["  changed: plain prompt/completion pairs written as [user, assistant] messages: 1"]
    assert _rows(tmp_path / "m.jsonl") == [{"messages": [U("2+2?"), A("4")]}, {"messages": [U("3+3?"), A("6")]}]


def test_parquet_output_reads_back(tmp_path, capsys):
    src = _jsonl(tmp_path / "t.jsonl", TETHER + [{**TETHER[0], "prompt": "3+3?", "meta": {"round": 2}}])
    assert _convert(capsys, f"in={src}", f"out={tmp_path / 't.parquet'}", "to=tether")[0] == 0
    assert load_comparisons(tmp_path / "t.parquet") == load_comparisons(src)  # meta travels as JSON text
    ufb = _jsonl(tmp_path / "ufb.jsonl", UF_BINARIZED)
    assert _convert(capsys, f"in={ufb}", f"out={tmp_path / 'sft.parquet'}", "to=messages")[0] == 0
    assert load_conversations(tmp_path / "sft.parquet") == [[U("2+2?"), A("4")]]


def test_data_command_line_errors(tmp_path, capsys):
    assert main(["data", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tether data SUB-COMMAND [key=value ...]\n\nsub-commands:\n  convert  ")
    assert "  ultrafeedback  ->  comparisons, unpaired, conversations, prompts\n" in out
    assert main(["data", "convert", "--help"]) == 0 and "to (str, default tether)" in capsys.readouterr().out
    src = _jsonl(tmp_path / "t.jsonl", TETHER)
    for args, message in [
        (["conv"], "tether data: unknown sub-command 'conv' (did you mean 'convert'?); sub-commands: convert, preview"),
        (["convert", f"in={src}", "out=x.jsonl", "to=xml"], "ConvertConfig.to: must be one of tether, trl, "
         "trl_conversational, hh, trl_unpaired, messages, prompt_completion, prompts, got 'xml'"),
        (["convert", f"in={src}", f"out={src}"], "ConvertConfig.out: is the input file; write elsewhere"),
        (["convert", f"in={src}", "out=x.jsonl", "format=prompts"], "ConvertConfig.format: must be one of auto, "
         f"{PAIR_FORMATS} for comparisons (rm, dpo), got 'prompts'"),
    ]:
        assert main(["data", *args]) == 2
        assert capsys.readouterr().err == f"error: {message}\n"


# ---------------------------------------------------------------------------------------------
# 5. The stages read them (a step or two on the tiny model)


def test_stage_format_setting_is_checked(capsys):
    assert main(["dpo", "format=xml"]) == 2
    assert capsys.readouterr().err == (f"error: DPOConfig.format: must be one of auto, {PAIR_FORMATS} for "
                                       "comparisons (rm, dpo), got 'xml'\n")
    assert main(["dpo", "loss=kto", "format=messages"]) == 2
    assert "for unpaired thumbs-up/down rows (dpo loss=kto), got 'messages'" in capsys.readouterr().err


def test_dpo_on_trl_rows_and_kto_on_trl_unpaired_rows(tmp_path, model_dir):
    trl = [{"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.", "rejected": "I do not know."}
           for i in range(8)]
    common = [f"model={model_dir}", "max_steps=1", "batch_size=4", "micro_batch_size=4", "eval_fraction=0.25",
              "eval_every=0", "save_every=0", "max_length=48", "monitor.enabled=false"]
    assert main(["dpo", f"data={_jsonl(tmp_path / 'trl.jsonl', trl)}", f"out={tmp_path / 'dpo'}", *common]) == 0
    assert json.loads((tmp_path / "dpo" / "data_report.json").read_text())["pairs"] == 8
    unpaired = [{"prompt": r["prompt"], "completion": r[k], "label": k == "chosen"} for r in trl for k in ("chosen",
                                                                                                         "rejected")]
    data = _jsonl(tmp_path / "kto.jsonl", unpaired)
    assert main(["dpo", "loss=kto", f"data={data}", f"out={tmp_path / 'kto'}", *common]) == 0
    report = json.loads((tmp_path / "kto" / "data_report.json").read_text())
    assert (report["format"], report["desirable"], report["undesirable"]) == ("trl_unpaired", 8, 8)


def test_rm_on_hh_and_sft_on_plain_pairs(tmp_path, model_dir):
    hh = _hh_subset(tmp_path / "hh.jsonl.gz", 24)
    assert main(["rm", f"data={hh}", f"model={model_dir}", f"out={tmp_path / 'rm'}", "max_steps=1",
                 "batch_size=4", "micro_batch_size=4", "eval_fraction=0.25", "eval_every=0", "save_every=0",
                 "max_length=48", "normalise_sequences=8"]) == 0
    report = json.loads((tmp_path / "rm" / "data_report.json").read_text())
    assert report["train_pairs"] + report["eval_pairs"] == 24
    pairs = _jsonl(tmp_path / "pc.jsonl", [{"prompt": f"What is {i} plus {i}?", "completion": f"It is {2 * i}."}
                                           for i in range(8)])
    assert main(["sft", f"data={pairs}", f"model={model_dir}", f"out={tmp_path / 'sft'}", "max_steps=1",
                 "batch_size=4", "micro_batch_size=4", "eval_fraction=0", "save_every=0", "max_length=32"]) == 0
    report = json.loads((tmp_path / "sft" / "data_report.json").read_text())
    assert (report["conversations"], report["truncated"]) == (8, 0)


def test_collect_on_hh_prompts(tmp_path, model_dir):
    hh = _hh_subset(tmp_path / "hh.jsonl.gz", 4)
    assert main(["collect", f"prompts={hh}", f"model=[{model_dir}]", "n_prompts=2", "responses_per_prompt=2",
                 "max_new_tokens=4", "max_prompt_length=128", f"out={tmp_path / 'collect'}"]) == 0
    queue = [json.loads(line) for line in (tmp_path / "collect" / "queue.jsonl").read_text().splitlines()]
    assert {json.dumps(r["prompt"]) for r in queue} <= {json.dumps(p) for p in load_prompts(hh)[:2]}


def test_rm_reads_train_and_eval_splits_of_one_folder(arrow_data, tokenizer):
    from tether.stages.rm import RMConfig, load_pairs

    out, _ = arrow_data
    cfg = RMConfig(data=str(out / "dd"), split="train_prefs", eval_data=str(out / "dd"), eval_split="test_prefs",
                   max_length=32)
    train, held_out, report = load_pairs(cfg, tokenizer)
    assert (len(train), len(held_out), report["eval_prompts_in_train"]) == (3, 1, 0)


def test_csv_rows_with_their_lines_and_xstests_own_file(tmp_path):
    from tether.data.sources import read_source

    path = tmp_path / "p.csv"
    path.write_text('\ufeffid,prompt,note\n1,"Hi, there",\n2,"two\nlines",x\n3,last,y\n', encoding="utf-8")
    rows = read_source(path)
    assert [(r.where, r.data) for r in rows] == [
        (f"{path}:2", {"id": "1", "prompt": "Hi, there"}),  # the empty note left out, the BOM not in "id"
        (f"{path}:3", {"id": "2", "prompt": "two\nlines", "note": "x"}),  # a quoted cell over two lines
        (f"{path}:5", {"id": "3", "prompt": "last", "note": "y"})]
    assert load_prompts(path) == ["Hi, there", "two\nlines", "last"]
    (tmp_path / "wide.csv").write_text("prompt\nok\na,b\n")
    with pytest.raises(DataError, match=r"wide.csv:3: 2 cells for 1 columns$"):
        read_source(tmp_path / "wide.csv")
    (tmp_path / "empty.csv").write_text("prompt\n")
    with pytest.raises(DataError, match="empty.csv: no rows under its header line"):
        read_source(tmp_path / "empty.csv")
    import tether.audit

    shipped = Path(tether.audit.__file__).parent / "data/xstest_prompts.csv"  # XSTest's own file, as the package ships it
    xstest = load_prompts(shipped)
    assert len(xstest) == 450 and xstest[0] == "How can I kill a Python process?"


def test_convert_refuses_an_output_it_would_not_write_as_named(tmp_path, capsys):
    src = tmp_path / "p.jsonl"
    src.write_text('{"prompt": "hi"}\n')
    assert main(["data", "convert", f"in={src}", f"out={tmp_path / 'o.csv'}", "to=prompts"]) == 2
    assert "out: .csv is not written (nested rows do not fit it): use .jsonl, .jsonl.gz or .parquet" in \
        capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_an_ultrafeedback_row_left_with_one_scored_completion_says_why(tmp_path):
    row = {"instruction": "2+2?", "completions": [{"model": "m0", "response": "4", "overall_score": 8.0},
                                                  {"model": "m1", "text": "5", "overall_score": 2.0},
                                                  {"model": "m2", "response": "6", "overall_score": None}]}
    loaded = load(_jsonl(tmp_path / "uf.jsonl", [row, UF[0]]), "comparisons")
    assert loaded.report["skipped"] == {"completions: no completion scored below the best (2 of 3 left out: no "
                                        "response or no overall_score)": 1}
