"""`tether bon` end to end on the tiny world and a test-preset model, with gold and with a reward model."""
from __future__ import annotations

import json
import math

import pytest
import torch

from tether.math.best_of_n import bon_estimates, bon_kl
from tether.cli import main
from tether.data.sft_data import read_conversations
from tether.stages.bon import bon_curve, curve_fits


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bon_with_gold(tmp_path, world_dir, model_dir):
    out = tmp_path / "bon"
    assert main(["bon", f"model={model_dir}", f"world={world_dir}", "reward=gold", "n=4", "n_prompts=5",
                 "max_new_tokens=6", "batch_size=8", f"out={out}"]) == 0
    result = json.loads((out / "bon.json").read_text())
    samples = _rows(out / "samples.jsonl")
    assert result["n_samples"] == 4 and result["prompts"] == len(samples) == 5
    assert [p["n"] for p in result["curve"]] == [1, 2, 3, 4]
    assert [p["kl"] for p in result["curve"]] == pytest.approx([bon_kl(n) for n in range(1, 5)])
    # picked by gold: the proxy is gold, and each prompt's best-of-n is the order-statistics mean over prompts
    gold = torch.tensor([s["gold"] for s in samples], dtype=torch.float64)
    assert torch.equal(gold, torch.tensor([s["proxy"] for s in samples], dtype=torch.float64))
    expected = bon_estimates(gold, gold).mean(0).tolist()
    assert [p["gold"] for p in result["curve"]] == pytest.approx(expected)
    assert [p["proxy"] for p in result["curve"]] == pytest.approx(expected)
    assert result["curve"][0]["gold"] == pytest.approx(gold.mean().item())  # n = 1: the policy itself
    assert result["curve"][-1]["gold"] == pytest.approx(gold.max(1).values.mean().item())  # n = N: each row's best
    # best.jsonl is SFT data: each world prompt with its highest-gold response (the first of a tie)
    kept = read_conversations(out / "best.jsonl")
    best = {s["prompt"]: s["responses"][max(range(4), key=lambda i: (s["gold"][i], -i))] for s in samples}
    assert kept == [(p, r) for p, r in best.items() if r]


def test_bon_with_a_reward_model(tmp_path, world_dir, model_dir, rm_dir):
    from tether.rewards_source import RewardModelSource

    out = tmp_path / "bon"
    assert main(["bon", f"model={model_dir}", f"world={world_dir}", "reward=rm", f"reward_model={rm_dir}", "n=3",
                 "n_prompts=4", "max_new_tokens=6", f"out={out}", "seed=3"]) == 0
    result, samples = json.loads((out / "bon.json").read_text()), _rows(out / "samples.jsonl")
    # the proxy is the reward model's raw (Bradley-Terry) score of each sample, as PPO's eval/score
    source = RewardModelSource(str(rm_dir))
    prompts = [s["prompt"] for s in samples for _ in s["responses"]]
    raw = source.raw(source(prompts, [r for s in samples for r in s["responses"]]))
    assert raw.tolist() == pytest.approx([x for s in samples for x in s["proxy"]], abs=1e-5)
    proxy = torch.tensor([s["proxy"] for s in samples], dtype=torch.float64)
    gold = torch.tensor([s["gold"] for s in samples], dtype=torch.float64)
    assert [p["gold"] for p in result["curve"]] == pytest.approx(bon_estimates(proxy, gold).mean(0).tolist())
    assert [p["proxy"] for p in result["curve"]] == pytest.approx(bon_estimates(proxy, proxy).mean(0).tolist())
    assert all(b["proxy"] >= a["proxy"] - 1e-9 for a, b in zip(result["curve"], result["curve"][1:]))
    # the standard error over the 4 prompts of the per-prompt estimates
    per_prompt = bon_estimates(proxy, gold)[:, 1]
    assert result["curve"][1]["gold_se"] == pytest.approx(per_prompt.std().item() / 2)
    kept = dict(read_conversations(out / "best.jsonl"))
    for s in samples:
        top = s["responses"][max(range(3), key=lambda i: (s["proxy"][i], -i))]
        assert kept.get(s["prompt"]) == (top or None)


def test_bon_is_seeded(tmp_path, world_dir, model_dir):
    args = ["bon", f"model={model_dir}", f"world={world_dir}", "reward=gold", "n=2", "n_prompts=2",
            "max_new_tokens=5"]
    for name in ("a", "b"):
        assert main([*args, f"out={tmp_path / name}"]) == 0
    assert (tmp_path / "a/samples.jsonl").read_text() == (tmp_path / "b/samples.jsonl").read_text()


def test_bon_settings_errors(tmp_path, world_dir, model_dir, capsys):
    assert main(["bon", f"model={model_dir}", f"out={tmp_path}"]) == 2  # no world by default: prompts are needed
    assert "prompts: give prompts=FILE, or world=FOLDER" in capsys.readouterr().err
    assert main(["bon", f"model={model_dir}", f"world={world_dir}", "reward=callable", f"out={tmp_path}"]) == 2
    assert "reward_fn" in capsys.readouterr().err
    assert main(["bon", f"model={model_dir}", f"world={world_dir}", "temperature=0", f"out={tmp_path}"]) == 2


def _synthetic_curve(alpha: float, beta: float, n_max: int, start: float = -0.5) -> list[dict]:
    """gold(n) = start + d(α - βd), d = sqrt(KL_bon(n)): the Gao et al. best-of-n form, exactly."""
    out = []
    for n in range(1, n_max + 1):
        d = math.sqrt(bon_kl(n))
        out.append({"n": n, "kl": bon_kl(n), "sqrt_kl": d, "proxy": start + 2 * d, "gold": start + d * (alpha - beta * d)})
    return out


def test_curve_fits_recover_the_bon_form():
    fits = curve_fits(_synthetic_curve(0.8, 0.3, 32))
    assert fits["gold"]["alpha"] == pytest.approx(0.8) and fits["gold"]["beta"] == pytest.approx(0.3)
    assert fits["gold"]["d_peak"] == pytest.approx(0.8 / 0.6)  # α / 2β
    assert fits["gold"]["rmse"] == pytest.approx(0.0, abs=1e-12)
    assert fits["proxy"]["alpha"] == pytest.approx(2.0) and fits["proxy"]["beta"] == pytest.approx(0.0, abs=1e-12)


def test_bon_curve_from_scores():
    # 2 prompts x 3 samples; prompt 0 as in tests/test_best_of_n: gold 2, 7/3, 2 for n = 1, 2, 3
    proxy = torch.tensor([[0.1, 0.5, 0.3], [1.0, 2.0, 3.0]], dtype=torch.float64)
    gold = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    curve = bon_curve(proxy, gold)
    # prompt 1: n=1 mean 1; n=2 -> (0 + 3 + 3)/3 = 2; n=3 -> 3
    assert [p["gold"] for p in curve] == pytest.approx([1.5, 13 / 6, 2.5])
    assert curve[0]["gold_se"] == pytest.approx(0.5)  # sd of (2, 1) is 1/sqrt(2), over sqrt(2) prompts
    # paired by prompt: gold(2) - gold(1) is (1/3, 1), sd (2/3)/sqrt(2), se 1/3; gold(1) - gold(3) is (0, -2), se 1
    assert curve[1]["gain_se"] == pytest.approx(1 / 3) and curve[0]["gain_se"] == 0.0
    assert curve[0]["drop_se"] == pytest.approx(1.0) and curve[2]["drop_se"] == 0.0
    assert [p["sqrt_kl"] for p in curve] == pytest.approx([0.0, math.sqrt(math.log(2) - 0.5),
                                                           math.sqrt(math.log(3) - 2 / 3)])


def test_rejection_sampling_round(tmp_path, world_dir, model_dir):
    """The documented RAFT round: bon on training prompts -> sft on best.jsonl -> bon again from the new policy."""
    first, tuned, second = tmp_path / "raft1", tmp_path / "raft1/sft", tmp_path / "raft2"
    common = [f"world={world_dir}", "reward=gold", "n=3", "n_prompts=6", "max_new_tokens=6",
              f"prompts={world_dir}/prompts.jsonl"]
    assert main(["bon", f"model={model_dir}", *common, f"out={first}"]) == 0
    assert main(["sft", f"model={model_dir}", f"data={first}/best.jsonl", f"out={tuned}", "max_steps=2",
                 "batch_size=4", "micro_batch_size=4", "warmup_steps=1", "eval_every=0", "save_every=0"]) == 0
    assert main(["bon", f"model={tuned}/model", *common, f"out={second}"]) == 0
    assert json.loads((second / "bon.json").read_text())["model"] == f"{tuned}/model"


def test_bon_without_a_world_has_no_gold(tmp_path, world_dir, model_dir, rm_dir):
    out = tmp_path / "bon"
    assert main(["bon", f"model={model_dir}", f"prompts={world_dir}/prompts.jsonl", "n_prompts=3", "n=2",
                 f"reward_model={rm_dir}", "max_new_tokens=5", f"out={out}"]) == 0
    result = json.loads((out / "bon.json").read_text())
    assert result["prompts"] == 3 and all("gold" not in p for p in result["curve"])
    assert set(result["fit"]) <= {"proxy"} and all("gold" not in json.loads(x) for x in
                                                    (out / "samples.jsonl").read_text().splitlines())
