"""`tether cai`: the supervised stage of Constitutional AI on real-architecture chat models, against `tether serve` on
loopback, with a scripted responder whose gold before and after revision is worked out by hand, and its CLI."""
from __future__ import annotations

import json
import random

import archkit
import pytest
from servekit import live_server

from tether.cli import main
from tether.data.formats import load_conversations
from tether.endpoint import CACHE_FILE, Reply
from tether.judge.constitution import load_constitution
from tether.stages import cai
from tether.world.build import load_world
from tether.world.styles import GOOD_CONTENT, content

SHORT = """version: c1
principles:
  - {id: better, critique: Critique it., revision: Rewrite it., question: 'Which reply is better?'}
  - {id: kinder, critique: Be kinder., revision: Kinder please., question: 'Which reply is kinder?'}
"""
PROMPTS = [{"prompt": "Name a fruit."}, {"prompt": [{"role": "user", "content": "Say hi."}]},
           {"prompt": "Name a colour."}]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cai")
    (root / "short.yaml").write_text(SHORT)
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return root


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "cai.jsonl").read_text().splitlines()]


def _check_rows(rows: list[dict], rounds: int, constitution) -> None:
    """Well-formed provenance: the prompt then the last non-empty reply of the chain, every round recorded."""
    for i, row in enumerate(rows):
        p = row["cai"]
        assert p["prompt_index"] == i and len(p["rounds"]) == rounds
        assert row["messages"][:-1] == [{"role": "user", "content": ["Name a fruit.", "Say hi.", "Name a colour."][i]}]
        chain = [p["original"], *(r["revision"] for r in p["rounds"])]
        assert row["messages"][-1] == {"role": "assistant", "content": next(t for t in reversed(chain) if t)}
        assert [r["principle"] for r in p["rounds"]] == [
            cai.principle_for(constitution, 0, i, r).id for r in range(1, rounds + 1)]
        assert set(p["rounds"][0]) == {"principle", "critique", "revision"}
        assert p["constitution"] == {"name": "", "version": "c1", "sha256": constitution.sha256}


@pytest.mark.parametrize("arch, shape, extra", [("qwen2", "chatml", []), ("llama", "llama3", []),
                                               ("gpt2", "base", ["chat_template=hh"])])  # no template of its own
def test_a_real_chat_model_critiques_and_revises_and_sft_reads_the_rows(arch, shape, extra, files, real_root,
                                                                         tmp_path):
    folder = archkit.save_model(arch, shape, real_root)
    out = tmp_path / "cai"
    args = ["cai", f"model={folder}", f"prompts={files / 'prompts.jsonl'}", f"constitution={files / 'short.yaml'}",
            "rounds=2", "max_new_tokens=6", f"out={out}", *extra]
    assert main(args) == 0
    rows = _rows(out)
    assert len(rows) == 3
    _check_rows(rows, 2, load_constitution(files / "short.yaml"))
    assert all(r["cai"]["responder"] == str(folder) for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompts"] == summary["written"] == 3 and sum(summary["principles"].values()) == 6
    assert "gold" not in summary and not (out / "gold.jsonl").exists()
    # the rows are SFT data as written: `tether sft` reads them, the provenance ignored
    assert load_conversations(out / "cai.jsonl") == [r["messages"] for r in rows]
    # a rerun reads every reply from the cache: the same rows, no model loaded
    cached = (out / cai.LOCAL_CACHE).read_text()
    assert len(cached.splitlines()) == 3 * (1 + 2 * 2)  # responses, then critiques and revisions per round
    from tether.responders import LocalResponder

    def no_load(self):
        raise AssertionError("the model was loaded although every reply is cached")

    import unittest.mock as mock

    with mock.patch.object(LocalResponder, "_load", no_load):
        assert main(args) == 0
    assert _rows(out) == rows and (out / cai.LOCAL_CACHE).read_text() == cached


def test_sft_trains_on_the_rows(files, real_root, tmp_path):
    folder = archkit.save_model("qwen2", "chatml", real_root)
    out = tmp_path / "cai"
    assert main(["cai", f"model={folder}", f"prompts={files / 'prompts.jsonl'}", f"constitution={files / 'short.yaml'}",
                 "max_new_tokens=4", f"out={out}"]) == 0
    assert main(["sft", f"data={out / 'cai.jsonl'}", f"model={folder}", "max_steps=1", "batch_size=3",
                 "micro_batch_size=3", "eval_fraction=0", f"out={tmp_path / 'sft'}"]) == 0
    report = json.loads((tmp_path / "sft/data_report.json").read_text())
    assert report["conversations"] == 3


def test_against_tether_serve_on_loopback(files, real_root, tmp_path):
    folder = archkit.save_model("qwen2", "chatml", real_root)
    out = tmp_path / "cai"
    with live_server(folder, default_max_tokens=4) as live:
        args = ["cai", f"endpoint={live.url}", f"prompts={files / 'prompts.jsonl'}",
                f"constitution={files / 'short.yaml'}", "rounds=2", "max_new_tokens=4", "endpoint_concurrency=2",
                f"out={out}"]
        before = live.engine.stats["requests"]
        assert main(args) == 0
        sent = live.engine.stats["requests"] - before
        assert main(args) == 0
        again = live.engine.stats["requests"] - before - sent
    assert sent == 3 * (1 + 2 * 2) and again == 0  # every reply cached: the rerun asks nothing
    assert len((out / CACHE_FILE).read_text().splitlines()) == sent
    rows = _rows(out)
    _check_rows(rows, 2, load_constitution(files / "short.yaml"))
    assert rows[0]["cai"]["responder"] == f"{live.url} ({folder.name})"


class Scripted:
    """A responder that answers a world prompt with the good answer behind a flattering opener, critiques with the
    flattery, and revises to the plain answer; "" to every revision request of `silent_rounds`."""

    def __init__(self, world, silent: bool = False):
        self.world, self.silent, self.asked = world, silent, []

    def replies(self, prompts, *, max_new_tokens, temperature, seed, top_p=1.0, cache=None, label=""):
        self.asked.append((label, temperature, len(prompts)))
        out = []
        for messages in prompts:
            q = self.world.parse(messages[0]["content"])
            good = content(q, GOOD_CONTENT[q.category], random.Random(0), self.world.knowledge, variant=0)
            if len(messages) == 1:
                text = f"What a great question! {good}"
            elif len(messages) == 3:
                text = "It flatters the user."
            else:
                text = "" if self.silent else good
            out.append(Reply(text, 3, True))
        return out


@pytest.mark.parametrize("silent", [False, True])
def test_gold_before_and_after_revision_by_hand(world_dir, tmp_path, monkeypatch, silent):
    """Flattery costs 0.5 (tether.world.gold: "What a great question!" is 4 words, inside the 6-word brevity slack),
    so every original scores 1 - 0.5 = 0.5 and every revision 1.0; an empty revision keeps the original."""
    world = load_world(world_dir)
    responder = Scripted(world, silent)
    monkeypatch.setattr(cai, "build_responder", lambda cfg: (responder, "scripted", tmp_path / "unused.jsonl"))
    out = tmp_path / "cai"
    assert main(["cai", "model=scripted", f"world={world_dir}", "n_prompts=20", "rounds=2", f"out={out}"]) == 0
    assert responder.asked == [("cai: responses", 1.0, 20), ("cai round 1/2: critiques", 0.0, 20),
                               ("cai round 1/2: revisions", 0.0, 20), ("cai round 2/2: critiques", 0.0, 20),
                               ("cai round 2/2: revisions", 0.0, 20)]
    summary = json.loads((out / "summary.json").read_text())
    gold = summary["gold"]
    after = 0.5 if silent else 1.0
    assert [gold[k]["gold"] for k in ("original", "round_1", "round_2")] == pytest.approx([0.5, after, after])
    assert gold["original"]["n"] == 20 and gold["original"]["flattering"] == 1.0
    assert gold["round_2"]["flattering"] == (1.0 if silent else 0.0)
    assert summary["changed"] == (0.0 if silent else 1.0) and summary["empty_revisions"] == (40 if silent else 0)
    assert summary["constitution"]["name"] == "tether-world"  # world= and no constitution: the world's own
    per_prompt = [json.loads(line) for line in (out / "gold.jsonl").read_text().splitlines()]
    assert [p["gold"] for p in per_prompt] == [[0.5, after, after]] * 20
    rows = _rows(out)
    assert all("gold" not in json.dumps(r["cai"]) for r in rows)  # gold never enters the training data
    prompts = [json.loads(line)["prompt"] for line in (world_dir / "prompts.jsonl").read_text().splitlines()][:20]
    assert [r["messages"][0]["content"] for r in rows] == prompts


def test_principles_are_drawn_per_prompt_and_round_whatever_the_order():
    c = load_constitution()  # the default: six principles
    draws = [[cai.principle_for(c, 0, i, r).id for r in (1, 2, 3)] for i in range(40)]
    assert draws == [[cai.principle_for(c, 0, i, r).id for r in (1, 2, 3)] for i in reversed(range(40))][::-1]
    assert len({d for row in draws for d in row}) == len(c.principles)  # 120 draws reach every principle
    assert draws != [[cai.principle_for(c, 1, i, r).id for r in (1, 2, 3)] for i in range(40)]


@pytest.mark.parametrize("argv, message", [
    (["cai", "prompts=p.jsonl"], "CaiConfig.endpoint: give exactly one of model= and endpoint="),
    (["cai", "model=m"], "CaiConfig.prompts: give prompts=FILE, or world=DIR for the world's"),
    (["cai", "model=m", "world=w", "rounds=0"], "CaiConfig.rounds: must be >= 1"),
    (["cai", "endpoint=http://x/v1", "world=w", "chat_template=chatml"], "CaiConfig.endpoint: the server formats"),
    (["cai", "model=m", "prompts=nope.jsonl"], "nope.jsonl: file not found"),
    (["cai", "model=m", "world=nowhere"], "nowhere: not a world folder (no world.yaml)"),
    (["cai", "model=nowhere", "prompts=PROMPTS"], "model: nowhere is not a folder"),
])
def test_the_cli_names_the_setting_to_change(capsys, argv, message, files):
    argv = [a.replace("PROMPTS", str(files / "prompts.jsonl")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}"), err
    assert "Traceback" not in err


def test_help_lists_the_stage_and_its_settings(capsys):
    assert main(["--help"]) == 0
    assert "  cai " in capsys.readouterr().out
    assert main(["cai", "--help"]) == 0
    text = capsys.readouterr().out
    for setting in ("rounds", "constitution", "revision_temperature", "endpoint", "api_key_env", "world"):
        assert f"{setting}" in text


def test_the_prompt_count_has_collect_and_bons_name(tmp_path):
    from tether.config import load_config
    from tether.errors import ConfigError
    from tether.stages.cai import CaiConfig

    base = ["model=m", f"prompts={tmp_path / 'p.jsonl'}"]
    assert load_config(CaiConfig, overrides=[*base, "n_prompts=8"]).n_prompts == 8
    with pytest.raises(ConfigError, match="CaiConfig.n: renamed to 'n_prompts'"):
        load_config(CaiConfig, overrides=[*base, "n=8"])
