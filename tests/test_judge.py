"""`tether judge`: both-order judging and its arithmetic, vote parsing, the local judge's probability reading (a
position-neutral forward by construction, and real tiny models against a plain forward pass), the endpoint judge
against a real `tether serve` on loopback, the report, and soft labels into `tether rm`. The simulated judge's
biases are measured in tests/test_judge_sim.py."""
from __future__ import annotations

import json
import math
import random
import re

import archkit
import pytest
import torch
from servekit import live_server, serve_app

from tether.chat import chat_format
from tether.cli import main
from tether.data.preferences import Comparison, read_comparisons, write_comparisons
from tether.endpoint import CACHE_FILE, EndpointClient
from tether.errors import DataError, TetherError
from tether.judge.constitution import load_constitution
from tether.judge.local import LocalJudge, answer_token_ids, first_wins_from_logits
from tether.judge.pairwise import (
    choice_of,
    combine_orders,
    inconsistent,
    judge_pairs,
    parse_vote,
    pick_principles,
    vote_probability,
)
from tether.judge.remote import EndpointJudge, first_wins_from_top_logprobs
from tether.judge.report import judge_report

SHORT = """\
version: t1
pairwise_template: "{conversation}\\n{question}\\nA: {response_a}\\nB: {response_b}\\nAnswer with A or B."
principles:
  - {id: better, critique: c, revision: r, question: 'Which reply is better?'}
  - {id: kinder, critique: c, revision: r, question: 'Which reply is kinder?'}
"""


@pytest.fixture(scope="module")
def short(tmp_path_factory):
    """A two-principle constitution with a short template (the archkit models have 256 positions)."""
    path = tmp_path_factory.mktemp("constitution") / "short.yaml"
    path.write_text(SHORT)
    return path


PAIRS = [Comparison("Name a fruit.", "Apple.", "A red apple from the tree."),
         Comparison("Name a colour.", "Blue.", "Green is nice."),
         Comparison("Say hi.", "Hello there, friend!", "Hi.")]


# ---------------------------------------------------------------------------------------------- the arithmetic


def test_combining_the_two_orders_by_hand():
    # P_ab(first) = 0.9 (a first, a wins), P_ba(first) = 0.3 (b first, b loses): p_a = (0.9 + 0.7) / 2 = 0.8
    assert combine_orders(0.9, 0.3) == pytest.approx(0.8)
    assert not inconsistent(0.9, 0.3)
    # a judge that always says "first" with 0.8: the pull cancels to 1/2, and the orders disagree
    assert combine_orders(0.8, 0.8) == pytest.approx(0.5) and inconsistent(0.8, 0.8)
    assert inconsistent(0.2, 0.2)  # always "second"
    assert inconsistent(0.5, 0.3) and not inconsistent(0.5, 0.5)  # a tie differs from a pick; two ties agree
    assert [choice_of(p, 0.05) for p in (0.56, 0.55, 0.5, 0.45, 0.44)] == ["A", "tie", "tie", "tie", "B"]
    assert [choice_of(p, 0.0) for p in (0.51, 0.5, 0.49)] == ["A", "tie", "B"]


def test_principles_are_sampled_per_pair_with_a_seed_or_all_ensembled():
    c = load_constitution()
    ids = [f"pair-{i}" for i in range(300)]
    drawn = [pick_principles(c, i, "sample", 0)[0].id for i in ids]
    assert drawn == [pick_principles(c, i, "sample", 0)[0].id for i in reversed(ids)][::-1]  # order-free
    assert set(drawn) == {p.id for p in c.principles}  # every principle gets pairs
    assert drawn != [pick_principles(c, i, "sample", 1)[0].id for i in ids]  # the seed matters
    assert pick_principles(c, "x", "ensemble", 0) == c.principles


class Fake:
    """P(first) = sigmoid(len(first) - len(second) in tens of characters + pull): position-neutral at pull 0."""

    name = "fake"

    def __init__(self, pull: float = 0.0):
        self.pull, self.asked = pull, []

    def first_wins(self, items):
        self.asked += items
        return [1 / (1 + math.exp(-((len(i.first) - len(i.second)) / 10 + self.pull))) for i in items]

    def stats(self):
        return {}


def test_both_orders_under_each_principle_and_the_mirror(short):
    c = load_constitution(short)
    fake = Fake()
    verdicts = judge_pairs(fake, PAIRS, c, "ensemble")
    # 3 pairs x 2 principles x 2 orders; the prompt shows the first response as A
    assert len(fake.asked) == 12 and [i.swapped for i in fake.asked[:4]] == [False, True, False, True]
    assert fake.asked[1].text == ("User: Name a fruit.\nWhich reply is better?\nA: A red apple from the tree.\n"
                                  "B: Apple.\nAnswer with A or B.")
    assert verdicts[0].principles == ("better", "kinder")
    # pair 0: len 6 vs 26 -> d = -2: P_ab = sigmoid(-2), P_ba = sigmoid(2), p_a = sigmoid(-2) = 0.119203
    assert verdicts[0].p_a == pytest.approx(1 / (1 + math.exp(2)))
    assert not any(v.inconsistent for v in verdicts)
    swapped = [Comparison(p.prompt, p.response_b, p.response_a) for p in PAIRS]
    for v, w in zip(verdicts, judge_pairs(Fake(), swapped, c, "ensemble")):
        assert w.p_a == pytest.approx(1 - v.p_a)  # swapping A and B mirrors P(A)
    # a pull of +1 toward the first position: pair 0 gives P_ab = sigmoid(-1), P_ba = sigmoid(3);
    # p_a = (sigmoid(-1) + sigmoid(-3)) / 2 = (0.268941 + 0.047426) / 2 = 0.158184, consistent (both pick b)
    pulled = judge_pairs(Fake(pull=1.0), PAIRS, c, "sample")
    assert pulled[0].p_a == pytest.approx(0.158184, abs=1e-6) and not pulled[0].inconsistent
    # pair 2: 20 vs 3 characters, d = 1.7: P_ab = sigmoid(2.7), P_ba = sigmoid(-0.7) -> consistent;
    # with a pull of 2: P_ba = sigmoid(0.3) > 1/2 picks b while ab picks a -> inconsistent
    assert not pulled[2].inconsistent and judge_pairs(Fake(pull=2.0), PAIRS, c)[2].inconsistent


@pytest.mark.parametrize("text, vote", [
    ("A", "A"), ("B.", "B"), ("(A)", "A"), ("[B]", "B"), ("**A**", "A"), ("A is better.", "A"),
    ("B: it is shorter", "B"), ("B\n\nA is wrong because", "B"), ("Response A", "A"), ("Assistant B wins", "B"),
    ("The answer is B", "B"), ("Answer: A", "A"), ("I choose (b)", "B"), ("I think A.", "A"),
    ("Response B is better than Response A", "B"), ("A better answer is B", "B"),
    ("A or B", None), ("Neither", None), ("Both are fine", None), ("", None), ("I cannot decide.", None),
    ("a", None), ("Apples are red.", None),
])
def test_parse_vote(text, vote):
    assert parse_vote(text) == vote


def test_vote_probability():
    assert vote_probability(["A", "B", "A", None, "A"]) == 0.75  # 3 of the 4 parsed
    assert vote_probability([None, None]) is None and vote_probability(["B"]) == 0.0


# ---------------------------------------------------------------------------------------------- the local judge


def test_first_wins_from_logits_by_hand():
    # vocabulary of 4; "A" = tokens 0 and 1, "B" = token 2. softmax of (ln 2, ln 1, ln 1, ln 4) = (2, 1, 1, 4) / 8
    logits = torch.log(torch.tensor([[2.0, 1.0, 1.0, 4.0]]))
    p, mass = first_wins_from_logits(logits, [0, 1], [2])
    assert p.item() == pytest.approx(3 / 4) and mass.item() == pytest.approx(4 / 8)


@pytest.mark.parametrize("shape", archkit.TOKENIZERS)
def test_answer_tokens_read_the_letters_alone(shape, real_root):
    tok = archkit.tokenizer(shape, real_root)
    fmt = chat_format(tok)
    ids = answer_token_ids(fmt)
    for letter in "AB":
        assert ids[letter] and all(tok.decode([i]).strip() == letter for i in ids[letter])
        reply = fmt.encode("Which?", letter)  # the token a reply "A" starts with is among them
        assert reply.input_ids[reply.prompt_length] in ids[letter]
    assert not set(ids["A"]) & set(ids["B"])


def test_answer_tokens_of_a_tokenizer_without_the_letters(real_root, monkeypatch):
    fmt = chat_format(archkit.tokenizer("base", real_root), source="m")
    monkeypatch.setattr(fmt.tokenizer, "decode", lambda ids: "x")  # no token reads as a letter
    with pytest.raises(TetherError, match="the tokenizer of m has no token that reads 'A' alone"):
        answer_token_ids(fmt)


def _texts_of(tok, row: list[int]) -> tuple[str, str]:
    text = tok.decode(row)
    return re.search(r"\nA: (.*)\nB: (.*)\nAnswer with A or B", text, re.S).groups()


def test_swapping_the_responses_mirrors_p_a_for_a_position_neutral_model(short, real_root, monkeypatch):
    """The forward is replaced by one that reads the two responses out of the prompt and gives "A" the logit
    len(first) / 10 and "B" len(second) / 10 (every other token -1e9): position-neutral by construction, so
    p_a(a, b) = sigmoid((len a - len b) / 10) and swapping A and B gives exactly 1 - p_a; a pull of +1 on "A" is
    then cancelled by the two orders only in part, as worked out by hand."""
    tok = archkit.tokenizer("chatml", real_root)
    judge = LocalJudge(archkit.build_model("qwen2", tok), tok, "fake", batch_size=2)
    a_id, b_id = judge.answers["A"][0], judge.answers["B"][0]
    pull = {"value": 0.0}

    def forward(rows):
        logits = torch.full((len(rows), len(tok)), -1e9)
        for r, row in enumerate(rows):
            first, second = _texts_of(tok, row)
            logits[r, a_id], logits[r, b_id] = len(first) / 10 + pull["value"], len(second) / 10
        return logits

    monkeypatch.setattr(judge, "next_token_logits", forward)
    c = load_constitution(short)
    verdicts = judge_pairs(judge, PAIRS, c)
    for pair, v in zip(PAIRS, verdicts):
        d = (len(pair.response_a) - len(pair.response_b)) / 10
        assert v.p_a == pytest.approx(1 / (1 + math.exp(-d)), abs=1e-6) and not v.inconsistent
    swapped = judge_pairs(judge, [Comparison(p.prompt, p.response_b, p.response_a) for p in PAIRS], c)
    assert [w.p_a for w in swapped] == pytest.approx([1 - v.p_a for v in verdicts], abs=1e-6)
    pull["value"] = 1.0  # pair 0: d = -2 -> p_a = (sigmoid(-1) + sigmoid(-3)) / 2 = 0.158184
    assert judge_pairs(judge, PAIRS[:1], c)[0].p_a == pytest.approx(0.158184, abs=1e-6)
    assert judge.stats()["answer_mass_mean"] == pytest.approx(1.0)


@pytest.mark.parametrize("arch, shape", [("qwen2", "chatml"), ("gpt2", "base"), ("gemma2", "gemma")])
def test_the_local_judge_reads_a_plain_forward_pass_and_batches_exactly(arch, shape, short, real_root):
    """P(first) equals P("A") / (P("A") + P("B")) from a plain HF forward of the formatted prompt alone, whatever the
    batch (right padding never moves a real token)."""
    tok = archkit.tokenizer(shape, real_root)
    model = archkit.build_model(arch, tok)
    c = load_constitution(short)
    one = LocalJudge(model, tok, "m", batch_size=1)
    items = []
    judge_pairs(type("Spy", (), {"name": "s", "first_wins": lambda self, xs: items.extend(xs) or [0.5] * len(xs),
                                 "stats": dict})(), PAIRS, c)
    p_one = one.first_wins(items)
    p_batched = LocalJudge(model, tok, "m", batch_size=4).first_wins(items)
    assert p_batched == pytest.approx(p_one, abs=1e-5)
    ids = one.answers
    for item, p in zip(items, p_one):
        prompt = one.fmt.prompt_ids(item.text)
        with torch.no_grad():
            probs = torch.softmax(model(torch.tensor([prompt])).logits[0, -1], -1)
        pa, pb = probs[ids["A"]].sum(), probs[ids["B"]].sum()
        assert p == pytest.approx(float(pa / (pa + pb)), abs=1e-5)
    if shape != "base":  # the chat template's generation prompt is where the answer is read
        assert one.fmt.render(items[0].text, generation=True).endswith(
            {"chatml": "<|im_start|>assistant\n", "gemma": "<start_of_turn>model\n"}[shape])


def test_a_judge_prompt_longer_than_the_model_is_cut_to_its_positions_and_counted(short, real_root):
    tok = archkit.tokenizer("chatml", real_root)
    judge = LocalJudge(archkit.build_model("qwen2", tok), tok, "m")  # 256 positions, max_prompt_length unset
    long = [Comparison("Tell me everything. " * 120, "Sure.", "No.")]  # a judge prompt of well over 256 tokens
    (verdict,) = judge_pairs(judge, long, load_constitution(short))
    assert 0 <= verdict.p_a <= 1 and judge.stats()["truncated_prompts"] == 2  # both orders, each cut


def test_the_stage_with_a_model_folder(short, real_root, tmp_path):
    folder = archkit.save_model("qwen2", "chatml", real_root)
    queue = tmp_path / "queue.jsonl"
    write_comparisons(queue, PAIRS)
    assert main(["judge", f"model={folder}", f"queue={queue}", f"constitution={short}", "principles=ensemble",
                 f"out={tmp_path / 'j'}"]) == 0
    labels = read_comparisons(tmp_path / "j/comparisons.jsonl")
    assert [c.id for c in labels] == [c.id for c in PAIRS]
    assert {c.rater for c in labels} == {"judge:qwen2-chatml"} and {c.guideline_version for c in labels} == {"t1"}
    for c in labels:
        assert c.meta["principles"] == ["better", "kinder"]
        assert c.meta["p_a"] == pytest.approx(combine_orders(c.meta["orders"]["ab"], c.meta["orders"]["ba"]), abs=2e-6)
        assert c.choice == choice_of(c.meta["p_a"], 0.05)
    report = json.loads((tmp_path / "j/judge_report.json").read_text())
    assert report["n"] == 3 and report["backend"]["kind"] == "local" and 0 < report["backend"]["answer_mass_mean"] < 1
    assert report["constitution"]["version"] == "t1" and "gold" not in report


# ---------------------------------------------------------------------------------------------- the endpoint judge


def test_the_endpoint_judge_falls_back_to_votes_against_tether_serve(short, real_root, tmp_path):
    """tether serve refuses logprobs with a 400: the judge says so and samples k votes per pair and order, each
    cached; a rerun sends no vote again (only the one logprobs probe)."""
    folder = archkit.save_model("qwen2", "chatml", real_root)
    queue = tmp_path / "queue.jsonl"
    write_comparisons(queue, PAIRS[:2])
    settings = [f"endpoint={tmp_path}", f"queue={queue}", f"constitution={short}", "votes=3", "vote_max_tokens=4",
                f"out={tmp_path / 'j'}", "endpoint_concurrency=2"]
    with live_server(folder, default_max_tokens=4) as live:
        settings[0] = f"endpoint={live.url}"
        before = live.engine.stats["requests"]
        assert main(["judge", *settings]) == 0
        sent = live.engine.stats["requests"] - before
        assert main(["judge", *settings]) == 0
        again = live.engine.stats["requests"] - before - sent
    assert sent == 2 * 2 * 3  # pairs x orders x votes (the refused probe never reaches the engine)
    assert again == 0
    assert len((tmp_path / "j" / CACHE_FILE).read_text().splitlines()) == 12
    report = json.loads((tmp_path / "j/judge_report.json").read_text())
    backend = report["backend"]
    assert backend["mode"] == "votes" and backend["logprobs_refused"].startswith("400: ")
    assert "logprobs" in backend["logprobs_refused"] and backend["votes"] == 12
    for c in read_comparisons(tmp_path / "j/comparisons.jsonl"):
        assert c.rater == "judge:" + folder.name and c.guideline_version == "t1"
        for p in c.meta["orders"].values():  # each order: a share of at most 3 parsed votes, or 1/2 without any
            assert any(p == pytest.approx(k / n) for n in (1, 2, 3) for k in range(n + 1))


def test_top_logprobs_by_hand():
    top = [{"token": "A", "logprob": math.log(0.6)}, {"token": " B", "logprob": math.log(0.2)},
           {"token": "B", "logprob": math.log(0.1)}, {"token": "Because", "logprob": math.log(0.05)}]
    p, mass = first_wins_from_top_logprobs(top)
    assert p == pytest.approx(0.6 / 0.9) and mass == pytest.approx(0.9)
    assert first_wins_from_top_logprobs([{"token": "Sure", "logprob": 0.0}]) == (None, 0.0)


def test_the_endpoint_judge_reads_logprobs_when_offered(short):
    """A stand-in OpenAI server that lists top_logprobs: P("A") = 0.6 when the prompt's A is the shorter response,
    else 0.2 (and "B" the rest of 0.8)."""
    from fastapi import FastAPI

    app, bodies = FastAPI(), []

    @app.post("/v1/chat/completions")
    def chat(body: dict):
        bodies.append(body)
        first, second = re.search(r"\nA: (.*)\nB: (.*)\n", body["messages"][0]["content"]).groups()
        p = 0.6 if len(first) < len(second) else 0.2
        top = [{"token": "A", "logprob": math.log(p)}, {"token": "B", "logprob": math.log(0.8 - p)}]
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "A"}, "finish_reason": "length",
                             "logprobs": {"content": [{"token": "A", "logprob": math.log(p), "top_logprobs": top}]}}]}

    with serve_app(app) as url:
        judge = EndpointJudge(EndpointClient(url + "/v1", "m"), mode="auto")
        verdicts = judge_pairs(judge, PAIRS[:1], load_constitution(short))
    # ab: A = "Apple." (shorter): P = 0.6 / 0.8 = 0.75; ba: A is the longer: P = 0.2 / 0.8 = 0.25 -> p_a = 0.75
    assert verdicts[0].p_a == pytest.approx(0.75) and not verdicts[0].inconsistent
    assert judge.stats()["mode"] == "logprobs" and len(bodies) == 3  # the probe, then the two orders
    assert all(b["logprobs"] is True and b["max_tokens"] == 1 and b["temperature"] == 0 for b in bodies)


# ---------------------------------------------------------------------------------------------- report, config


def _label(prompt, a, b, choice, p_a, ab, ba, inconsistent_):
    return Comparison(prompt, a, b, choice, meta={"p_a": p_a, "orders": {"ab": ab, "ba": ba},
                                                   "inconsistent": inconsistent_})


def test_judge_report_by_hand():
    labels = [_label("q1", "a", "b", "A", 0.9, 0.9, 0.1, False),
              _label("q2", "c", "d", "B", 0.3, 0.6, 0.8, True),
              _label("q3", "e", "f", "tie", 0.5, 0.5, 0.5, False)]
    gold = {labels[0].id: 1.0, labels[1].id: 0.5, labels[2].id: -2.0}
    # people: pair 1 rated B, B, A (majority B) in the judge's orientation; pair 2 rated once, the row flipped (A -> B)
    people = [Comparison("q1", "a", "b", "B", rater="r1"), Comparison("q1", "a", "b", "B", rater="r2"),
              Comparison("q1", "b", "a", "B", rater="r3"),  # flipped: A in the judge's orientation
              Comparison("q2", "d", "c", "A", rater="r1")]
    r = judge_report(labels, gold, people)
    assert r["n"] == 3 and r["labels"] == {"A": 1, "B": 1, "tie": 1}
    assert r["inconsistency_rate"] == pytest.approx(1 / 3)
    assert r["first_position_rate"] == pytest.approx(3 / 6)  # 0.9, 0.6, 0.8 of 0.9 0.1 0.6 0.8 0.5 0.5 exceed 1/2
    assert r["mean_confidence"] == pytest.approx((0.9 + 0.7 + 0.5) / 3)
    g = r["gold"]
    # gold: A, A, B; judge: A (hit), B (miss), tie (1/2) -> 1.5 / 3; soft: 0.9, 0.3, 0.5 -> 1.7 / 3
    assert g["pairs"] == 3 and g["agreement"] == pytest.approx(0.5) and g["soft_agreement"] == pytest.approx(1.7 / 3)
    assert g["calibration_gap"] == pytest.approx((0.9 + 0.7 + 0.5) / 3 - 0.5) and g["judge_ties"] == 1
    ref = r["reference"]
    # majorities: pair 1 B (judge A: miss), pair 2 B (one rating, flipped; judge B: hit) -> 1 / 2
    assert ref["pairs_rated"] == 2 and ref["ratings"] == 4 and ref["majority_agreement"] == pytest.approx(0.5)
    # leave-one-out on pair 1: r1 and r2 each see majority {B, A} split -> skipped; r3 sees B, B -> B; judge A: 0
    assert ref["judge_as_rater"] == 0.0 and ref["raters_majority_agreement"] == 0.0


def test_the_judges_doubtful_figures_are_said_on_the_console():
    from tether.stages.judge import judge_warnings

    voted = judge_warnings({"no_answer": 3, "unparsed_votes": 18, "votes": 18})
    assert voted == ["3 judge call(s) gave no parsable answer (18 of 18 votes unparsed); their pairs are written as "
                     "ties (p_a 0.5): check the judge model and its prompt"]
    local = judge_warnings({"answer_mass_mean": 0.006, "truncated_prompts": 68, "no_answer": 0})
    assert local[0].startswith("the judge put 0.6% of its next-token probability on the answer tokens")
    assert local[1].startswith("68 judge prompt(s) were cut to fit the model")
    assert judge_warnings({"answer_mass_mean": 0.9, "truncated_prompts": 0, "no_answer": 0}) == []


def test_config_errors_name_the_setting(tmp_path):
    assert main(["judge", "simulated=true", "world=", f"out={tmp_path}"]) == 2
    assert main(["judge", "simulated=true", "model=x", "world=w", f"out={tmp_path}"]) == 2
    assert main(["judge", f"out={tmp_path}"]) == 2  # no judge at all
    assert main(["judge", "model=x", "tie_margin=0.5", f"out={tmp_path}"]) == 2


def test_config_error_messages(capsys, tmp_path):
    main(["judge", "simulated=true", f"out={tmp_path}"])
    assert capsys.readouterr().err.strip() == "error: JudgeConfig.world: the simulated judge needs the world folder: " \
                                              "world=DIR"
    for settings in ([], ["simulated=true", "world=w", "model=m"], ["model=m", "endpoint=http://x"]):
        main(["judge", *settings, f"out={tmp_path}"])
        assert capsys.readouterr().err.strip() == "error: JudgeConfig.model: give one judge: model=FOLDER, " \
                                                  "endpoint=URL, or simulated=true world=DIR"


# ---------------------------------------------------------------------------------------------- soft labels into rm


def test_the_soft_bradley_terry_loss_by_hand():
    from tether.math.losses import bradley_terry_loss

    # d = ln 3: sigmoid(d) = 3/4, sigmoid(-d) = 1/4; p = 0.7:
    # loss = -(0.7 ln 0.75 + 0.3 ln 0.25) = 0.7 * 0.287682 + 0.3 * 1.386294 = 0.201378 + 0.415888 = 0.617266
    loss = bradley_terry_loss(torch.tensor([math.log(3.0)]), torch.tensor([0.0]), torch.tensor([0.7]))
    assert loss.item() == pytest.approx(0.617266, abs=1e-6)


def test_soft_labels_are_the_rm_targets_and_train_with_the_hand_worked_loss(tokenizer):
    from tether.models import build_model
    from tether.optim import adamw
    from tether.reward import RewardModel
    from tether.rm_batch import collate_pairs, pair_rewards
    from tether.stages.rm import RMConfig, encode_comparisons, train_step

    rows = [Comparison("What is the capital of Velia?", "Velton.", "I don't know.", "A", meta={"p_a": 0.7}),
            Comparison("Tell me how to crush garlic.", "Press it.", "No.", "B", meta={"p_a": 0.2})]
    hard, _ = encode_comparisons(tokenizer, rows, RMConfig(max_length=64))
    soft, _ = encode_comparisons(tokenizer, rows, RMConfig(max_length=64, soft_labels=True))
    assert [p.target for p in hard] == [1.0, 0.0] and [p.target for p in soft] == [0.7, 0.2]
    torch.manual_seed(0)
    model = RewardModel(build_model("test", tokenizer, seed=0), tokenizer, max_length=64)
    with torch.no_grad():
        r_a, r_b, _ = pair_rewards(model, collate_pairs(soft, model.pad_id))
    d = (r_a - r_b).double()
    # the loss of each pair: -(p ln sigmoid(d) + (1 - p) ln sigmoid(-d)), mean over the two
    expected = float(-(torch.tensor([0.7, 0.2], dtype=torch.float64) * torch.nn.functional.logsigmoid(d)
                       + torch.tensor([0.3, 0.8], dtype=torch.float64) * torch.nn.functional.logsigmoid(-d)).mean())
    out = train_step(model, adamw(model, 1e-3, 0.0, (0.9, 0.99)), soft, RMConfig(batch_size=2, micro_batch_size=2),
                     lr=1e-3)
    assert out["loss"] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(DataError, match=r"meta\.p_a: missing"):
        encode_comparisons(tokenizer, [Comparison("Q?", "a", "b", "A")], RMConfig(soft_labels=True))
    with pytest.raises(DataError, match=r"meta\.p_a: 1\.5 is not a probability"):
        encode_comparisons(tokenizer, [Comparison("Q?", "a", "b", "A", meta={"p_a": 1.5})], RMConfig(soft_labels=True))


def test_tether_rm_trains_on_a_judges_soft_labels(world_dir, model_dir, tmp_path):
    from tether.world.build import load_world
    from tether.world.styles import BAD_CONTENT, GOOD_CONTENT, content

    world, rng = load_world(world_dir), random.Random(0)
    queue = []
    for i in range(12):
        q = world.query(["fact", "harmful", "benign"][i % 3], "sft", rng)
        queue.append(Comparison(q.text, content(q, GOOD_CONTENT[q.category], rng, world.knowledge),
                                content(q, BAD_CONTENT[q.category], rng, world.knowledge)))
    write_comparisons(tmp_path / "queue.jsonl", queue)
    assert main(["judge", "simulated=true", f"world={world_dir}", f"queue={tmp_path / 'queue.jsonl'}",
                 f"out={tmp_path / 'judge'}"]) == 0
    assert main(["rm", f"data={tmp_path / 'judge/comparisons.jsonl'}", f"model={model_dir}", "soft_labels=true",
                 "max_steps=2", "batch_size=4", "micro_batch_size=4", "eval_fraction=0.25", "log_every=1",
                 f"out={tmp_path / 'rm'}"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "rm/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
