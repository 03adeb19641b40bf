"""Reward-model ensembles (Coste et al. 2023): the conservative rewards by hand, `tether rm ensemble=k` on a tiny
model, the ensemble reward source and its wiring from the online config, and the monitor's ensemble_disagreement
detector on synthetic histories."""
from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest
import torch
from test_rm import _cfg, backbone_dir, synthetic_comparisons, tok  # noqa: F401  (fixtures)

import tether.stages.rm as rm
from tether.config import load_config
from tether.data.preferences import write_comparisons
from tether.ensemble import BOOTSTRAPS, EnsembleSource, bootstrap_by_prompt, bootstrap_by_rater, member_dirs
from tether.errors import ConfigError, DataError, TetherError
from tether.math.ensemble import (
    ENSEMBLE_REWARDS,
    member_mean,
    member_std,
    member_variance,
    uncertainty_weighted,
    worst_case,
)
from tether.monitor import MonitorConfig
from tether.monitor.detectors import DETECTORS, History, check, ensemble_disagreement
from tether.rewards_source import RewardModelSource, make_reward_source
from tether.stages.online.config import OnlineConfig

# k = 3 members (rows), N = 2 responses (columns)
SCORES = torch.tensor([[1.0, 0.0],
                       [3.0, -2.0],
                       [2.0, 2.0]])


# ---------------------------------------------------------------------------------------------
# 1. The math, by hand


def test_mean_variance_and_std_by_hand():
    # column 0: (1 + 3 + 2) / 3 = 2, variance ((1-2)² + (3-2)² + (2-2)²) / 3 = 2/3
    # column 1: (0 - 2 + 2) / 3 = 0, variance (0 + 4 + 4) / 3 = 8/3
    torch.testing.assert_close(member_mean(SCORES), torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(member_variance(SCORES), torch.tensor([2 / 3, 8 / 3]))
    torch.testing.assert_close(member_std(SCORES), torch.tensor([(2 / 3) ** 0.5, (8 / 3) ** 0.5]))


def test_worst_case_is_the_lowest_member():
    torch.testing.assert_close(worst_case(SCORES), torch.tensor([1.0, -2.0]))


def test_uncertainty_weighted_by_hand():
    # λ = 0.5: column 0: 2 - 0.5 * 2/3 = 5/3; column 1: 0 - 0.5 * 8/3 = -4/3
    torch.testing.assert_close(uncertainty_weighted(SCORES, 0.5), torch.tensor([5 / 3, -4 / 3]))
    # λ = 0 is the mean; members that agree are not penalised at all
    torch.testing.assert_close(uncertainty_weighted(SCORES, 0.0), member_mean(SCORES))
    agree = torch.tensor([[0.7, -1.0], [0.7, -1.0]])
    torch.testing.assert_close(uncertainty_weighted(agree, 3.0), torch.tensor([0.7, -1.0]))


def test_the_variants_by_name():
    assert set(ENSEMBLE_REWARDS) == {"single", "mean", "min", "uwo"}
    torch.testing.assert_close(ENSEMBLE_REWARDS["single"](SCORES, 0.5), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(ENSEMBLE_REWARDS["min"](SCORES, 0.5), torch.tensor([1.0, -2.0]))
    torch.testing.assert_close(ENSEMBLE_REWARDS["uwo"](SCORES, 0.5), torch.tensor([5 / 3, -4 / 3]))
    # the conservative rewards never exceed the mean
    assert (worst_case(SCORES) <= member_mean(SCORES)).all()
    assert (uncertainty_weighted(SCORES, 0.5) <= member_mean(SCORES)).all()


def test_bootstrap_keeps_prompt_groups_whole_and_is_seeded():
    class P:
        def __init__(self, key, i):
            self.prompt_key, self.i = key, i

    pairs = [P(k, i) for k in "abcde" for i in range(3)]
    a, b = bootstrap_by_prompt(pairs, 7), bootstrap_by_prompt(pairs, 7)
    assert [(p.prompt_key, p.i) for p in a] == [(p.prompt_key, p.i) for p in b]  # a pure function of the seed
    assert len(a) == 15  # 5 groups of 3 drawn
    for k in {p.prompt_key for p in a}:  # every drawn group whole: its 3 pairs, as many times as it was drawn
        got = sorted(p.i for p in a if p.prompt_key == k)
        assert got == sorted(list(range(3)) * (len(got) // 3)) and len(got) % 3 == 0
    assert len({p.prompt_key for p in a}) < 5 or len({p.prompt_key for p in bootstrap_by_prompt(pairs, 8)}) < 5


class _Rated:
    def __init__(self, rater, i, key="p"):
        self.rater, self.i, self.prompt_key = rater, i, key


def test_rater_bootstrap_draws_whole_raters_and_is_seeded():
    # raters a, b, c labelled 1, 2 and 3 pairs: each draw brings all of its rater's pairs
    pairs = [_Rated(r, i) for r, n in (("a", 1), ("b", 2), ("c", 3)) for i in range(n)]
    sizes = {"a": 1, "b": 2, "c": 3}
    seen = set()
    for seed in range(20):
        out = bootstrap_by_rater(pairs, seed)
        assert [(p.rater, p.i) for p in out] == [(p.rater, p.i) for p in bootstrap_by_rater(pairs, seed)]
        counts = {r: sum(p.rater == r for p in out) for r in sizes}
        assert all(counts[r] % sizes[r] == 0 for r in sizes)  # whole raters, each as many times as drawn
        assert sum(counts[r] // sizes[r] for r in sizes) == 3  # as many draws as raters
        seen.add(tuple(counts[r] // sizes[r] for r in sizes))
    assert len(seen) > 3 and (1, 1, 1) in seen and any(0 in x for x in seen)  # resamples differ; some drop a rater


def test_rater_bootstrap_refuses_unknown_or_single_raters():
    with pytest.raises(DataError, match="ensemble_unit=rater: 1 of 3 training comparisons have no `rater`"):
        bootstrap_by_rater([_Rated("a", 0), _Rated(None, 1), _Rated("b", 2)], 0)
    with pytest.raises(DataError, match=r"one rater \(a\).*ensemble_unit=prompt"):
        bootstrap_by_rater([_Rated("a", 0), _Rated("a", 1)], 0)
    assert set(BOOTSTRAPS) == {"prompt", "rater"}
    with pytest.raises(ConfigError, match="ensemble_unit"):
        rm.RMConfig(ensemble_unit="annotator").validate()


# ---------------------------------------------------------------------------------------------
# 2. `tether rm ensemble=3` on a tiny model


@pytest.fixture(scope="module")
def ensemble_run(backbone_dir, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("ens")
    data = root / "prefs.jsonl"
    write_comparisons(data, synthetic_comparisons())
    rm.run(dataclasses.replace(_cfg(data, backbone_dir, root / "ens", ensemble=3), max_steps=12, save_every=0))
    rm.run(dataclasses.replace(_cfg(data, backbone_dir, root / "one"), max_steps=12, save_every=0))
    return root


def test_ensemble_rm_writes_its_members_and_lists_them(ensemble_run):
    model = ensemble_run / "ens" / "model"
    config = json.loads((model / "reward_config.json").read_text())
    assert config["members"] == ["members/member-1", "members/member-2"]
    assert member_dirs(model) == [model, model / "members/member-1", model / "members/member-2"]
    for i in (1, 2):  # each member's logs in its own run folder, a full training
        rows = [json.loads(x) for x in (ensemble_run / f"ens/members/member-{i}/metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == list(range(1, 13))
    # member 0 is the plain reward model: the same weights as ensemble=1
    plain = json.loads((ensemble_run / "one/model/reward_config.json").read_text())
    assert "members" not in plain and member_dirs(ensemble_run / "one/model") == [ensemble_run / "one/model"]
    a = rm.RewardModel.from_pretrained(model).score(["Tell me about rivers."], ["the old stone bridge."])
    b = rm.RewardModel.from_pretrained(ensemble_run / "one/model").score(["Tell me about rivers."],
                                                                          ["the old stone bridge."])
    torch.testing.assert_close(a, b)


def test_ensemble_source_scores_with_every_member(ensemble_run):
    prompts = ["Tell me about rivers."] * 4
    responses = ["the old splendid bridge.", "the old stone bridge.", "green hill road.", "splendid quiet city."]
    source = EnsembleSource(str(ensemble_run / "ens/model"), "min")
    scores = source.member_scores(prompts, responses)  # (3, 4)
    assert scores.shape == (3, 4)
    assert (scores[0] - scores[1]).abs().max() > 1e-4  # the members differ (seed and bootstrap)
    out = source(prompts, responses)
    torch.testing.assert_close(out, scores.min(0).values)
    torch.testing.assert_close(source.last_std, scores.var(0, correction=0).sqrt())
    single = EnsembleSource(str(ensemble_run / "ens/model"), "single")
    torch.testing.assert_close(single(prompts, responses), scores[0])
    # A caller that reads no disagreement (tether bon) loads member 0 alone, with the same scores.
    alone = make_reward_source("rm", reward_model=str(ensemble_run / "ens/model"), members=False)
    assert isinstance(alone, RewardModelSource)
    torch.testing.assert_close(alone(prompts, responses), scores[0], rtol=1e-5, atol=1e-5)


def test_conservative_reward_is_wired_from_the_online_config(ensemble_run, tmp_path):
    path = tmp_path / "ppo.yaml"
    path.write_text(f"reward_model: {ensemble_run / 'ens/model'}\nreward_ensemble: uwo\nuwo_lambda: 2.0\n")
    cfg = load_config(OnlineConfig, path)
    source = make_reward_source(cfg.reward, reward_model=cfg.reward_model, reward_ensemble=cfg.reward_ensemble,
                                uwo_lambda=cfg.uwo_lambda)
    assert isinstance(source, EnsembleSource) and (source.aggregate, source.lam, source.k) == ("uwo", 2.0, 3)
    prompts, responses = ["Tell me about lakes."] * 2, ["splendid lake.", "the quiet lake."]
    scores = source.member_scores(prompts, responses)
    torch.testing.assert_close(source(prompts, responses), scores.mean(0) - 2.0 * scores.var(0, correction=0))
    # one reward model: single is the plain source, a conservative reward is refused by name
    one = str(ensemble_run / "one/model")
    assert isinstance(make_reward_source("rm", reward_model=one), RewardModelSource)
    with pytest.raises(ConfigError, match="reward_ensemble: 'min' needs an ensemble"):
        make_reward_source("rm", reward_model=one, reward_ensemble="min")
    with pytest.raises(ConfigError, match="reward_ensemble"):
        load_config(OnlineConfig, path, ["reward_ensemble=max"])
    with pytest.raises(ConfigError, match="uwo_lambda"):
        load_config(OnlineConfig, path, ["uwo_lambda=-1"])


def test_a_missing_member_is_named(ensemble_run, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(ensemble_run / "ens/model", copy)
    shutil.rmtree(copy / "members/member-2")
    with pytest.raises(TetherError, match="member-2 is missing"):
        member_dirs(copy)
    # the folder itself: missing, or not a reward model (a policy folder), named as such
    with pytest.raises(TetherError, match=r"reward model: \S*nowhere does not exist \(train one"):
        member_dirs(tmp_path / "nowhere")
    (tmp_path / "policy").mkdir()
    with pytest.raises(TetherError, match=r"policy has no reward_config.json; is it a reward model\?"):
        member_dirs(tmp_path / "policy")


def test_rater_ensemble_trains_members_on_rater_resamples(backbone_dir, tmp_path, monkeypatch):  # noqa: F811
    rated = [dataclasses.replace(c, rater=f"r{i % 3}") for i, c in enumerate(synthetic_comparisons())]
    data = tmp_path / "prefs.jsonl"
    write_comparisons(data, rated)
    calls = []

    def spy(pairs, seed):
        out = bootstrap_by_rater(pairs, seed)
        calls.append(([p.rater for p in pairs], seed, out))
        return out

    monkeypatch.setitem(BOOTSTRAPS, "rater", spy)
    cfg = dataclasses.replace(_cfg(data, backbone_dir, tmp_path / "ens", ensemble=2, ensemble_unit="rater"),
                              max_steps=2, save_every=0, eval_fraction=0.0)
    rm.run(cfg)
    assert len(calls) == 1  # member 1 only; member 0 trains on every comparison
    raters, seed, out = calls[0]
    assert sorted(raters) == sorted(c.rater for c in rated if c.choice is not None)  # each pair carries its rater
    assert seed == rm.ensemble.member_paths(cfg.out, 1, cfg.seed)[2]
    assert member_dirs(tmp_path / "ens/model")[1] == tmp_path / "ens/model/members/member-1"
    # comparisons without rater ids: one line naming the data file and the setting
    plain = tmp_path / "plain.jsonl"
    write_comparisons(plain, synthetic_comparisons())
    monkeypatch.setitem(BOOTSTRAPS, "rater", bootstrap_by_rater)
    with pytest.raises(DataError, match=f"{plain}: ensemble_unit=rater: 56 of 56 training"):
        rm.run(dataclasses.replace(cfg, data=str(plain), out=str(tmp_path / "plain"), eval_fraction=0.0))


def test_rm_config_refuses_an_empty_ensemble(tmp_path):
    with pytest.raises(ConfigError, match="ensemble"):
        rm.RMConfig(ensemble=0).validate()


# ---------------------------------------------------------------------------------------------
# 3. The monitor's detector


def history_of(values: list[float]) -> History:
    h = History()
    for step, v in enumerate(values, 1):
        h.append(step, {"monitor/ensemble_disagreement": v})
    return h


def first_firing(values: list[float], cfg: MonitorConfig) -> int | None:
    for n in range(1, len(values) + 1):
        if ensemble_disagreement(history_of(values[:n]), cfg):
            return n
    return None


def test_detector_is_silent_on_a_flat_noisy_history():
    rng = random.Random(0)
    flat = [0.30 + rng.gauss(0, 0.03) for _ in range(60)]
    assert first_firing(flat, MonitorConfig()) is None


def test_detector_fires_when_disagreement_rises_beyond_noise():
    rng = random.Random(0)
    values = [0.30 + rng.gauss(0, 0.02) for _ in range(10)] + [0.30 + 0.03 * i for i in range(1, 30)]
    cfg = MonitorConfig()  # window 5, baseline 3, rise 0.5: fires once the window mean passes 0.45
    step = first_firing(values, cfg)
    assert step is not None and 14 <= step <= 20, step
    alert = ensemble_disagreement(history_of(values[:step]), cfg)
    assert alert.name == "ensemble_disagreement" and alert.value >= 1.5 and alert.threshold == 1.5
    assert "ensemble" in check(history_of(values[:step]), cfg)[0].name
    assert DETECTORS["ensemble_disagreement"] is ensemble_disagreement


def test_detector_needs_the_rise_to_beat_the_noise():
    # baseline (0.2 + 0.6 + 0.2) / 3 = 1/3, current (0.3 + 0.9 + 0.3 + 0.9 + 0.3) / 5 = 0.54: 1.62x, a rise of 0.207.
    # Successive differences 0.4, 0.4, 0.1, 0.6, 0.6, 0.6, 0.6: σ² = 1.77 / (2 * 7) = 0.1264, σ = 0.356, and 2 standard
    # errors of the difference are 2 * 0.356 * sqrt(1/3 + 1/5) = 0.519 > 0.207: noise, no alert.
    values = [0.2, 0.6, 0.2, 0.3, 0.9, 0.3, 0.9, 0.3]
    assert ensemble_disagreement(history_of(values), MonitorConfig()) is None
    alert = ensemble_disagreement(history_of(values), MonitorConfig(noise_z=0.0))
    assert alert is not None and alert.value == pytest.approx(0.54 * 3)


def test_detector_is_silent_without_an_ensemble():
    h = History()
    for step in range(1, 20):
        h.append(step, {"monitor/ensemble_disagreement": None, "monitor/kl": 1.0})
    assert ensemble_disagreement(h, MonitorConfig()) is None
    assert math.isclose(MonitorConfig().ensemble_rise, 0.5)


# ---------------------------------------------------------------------------------------------
# 4. Online RL with an ensemble: the conservative reward trains, the disagreement is logged and monitored


@pytest.fixture(scope="module")
def tiny_ensemble(model_dir, tmp_path_factory):
    """Three untrained reward models on the test-preset backbone (heads of seeds 0, 1, 2) as an ensemble folder."""
    from tether.ensemble import member_model_dir, write_members
    from tether.reward import RewardModel

    out = tmp_path_factory.mktemp("ensemble")
    for i in range(3):
        torch.manual_seed(i)
        RewardModel.from_backbone(str(model_dir)).save_pretrained(member_model_dir(out, i))
    write_members(out / "model", 3)
    return out / "model"


def test_ppo_trains_on_the_worst_case_and_monitors_the_disagreement(tiny_ensemble, world_dir, model_dir, tmp_path,
                                                                    monkeypatch):
    from tether.stages import online
    from tether.stages.ppo import PPOConfig, run

    trained = []
    real = online.make_experience

    def recording(policy, ref, critic, rollout, scores, cfg):
        trained.append(scores.clone())
        return real(policy, ref, critic, rollout, scores, cfg)

    monkeypatch.setattr(online, "make_experience", recording)
    members = []
    real_call = EnsembleSource.__call__

    def spy(self, prompts, responses):
        out = real_call(self, prompts, responses)
        members.append(self.last_scores.clone())
        return out

    monkeypatch.setattr(EnsembleSource, "__call__", spy)
    cfg = PPOConfig(model=str(model_dir), prompts=str(world_dir / "prompts.jsonl"), reward="rm",
                    reward_model=str(tiny_ensemble), reward_ensemble="min", world=str(world_dir), max_new_tokens=6,
                    rollout_batch=4, minibatch_size=4, micro_batch_size=2, ppo_epochs=1, max_steps=2, lr=3e-3,
                    eval_every=0, eval_prompts=2, sample_every=0, save_every=0, out=str(tmp_path))
    run(cfg)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[0]["eval/ensemble_std"] > 0  # the held-out evaluation's disagreement
    steps = [r for r in rows if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2]
    # calls: evaluation at 0, step 1, step 2, evaluation at 2 (the last step)
    for row, scores, member in zip(steps, trained, (members[1], members[2])):
        torch.testing.assert_close(scores, member.min(0).values)  # the worst case is what trains
        assert row["ensemble/std"] == pytest.approx(float(member.var(0, correction=0).sqrt().mean()), abs=1e-6)
        assert row["monitor/ensemble_disagreement"] == pytest.approx(row["ensemble/std"])
