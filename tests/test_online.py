"""tether.stages.online (PPO, GRPO, RLOO) and tether.rewards_source: smoke runs of each algorithm, exact
micro-batch accumulation, resume equality, gold kept out of training, the EOS penalty, config errors.

Tiny runs on the "test" preset and the tiny world: 2-3 steps, a few short responses each.
"""
import copy
import dataclasses
import json
import math
import sys
import types
import typing

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tether.config import load_config
from tether.errors import ConfigError
from tether.optim import adamw
from tether.rewards_source import REWARD_SOURCES, make_reward_source
from tether.rollout import logprobs_of, sample
from tether.stages import online
from tether.stages.online import ALGORITHMS, FIXED_METRICS
from tether.stages.online.config import ALGORITHM_NAMES, OnlineConfig
from tether.stages.ppo import GRPOConfig, PPOConfig, RLOOConfig, run
from tether.world import World

REWARDS = "tether_test_online_rewards"  # a module registered in sys.modules, for reward_fn="module:function"
CONFIGS = {"ppo": PPOConfig, "grpo": GRPOConfig, "rloo": RLOOConfig}


def letters(prompts, responses):
    """Rewards the letter "e": 0.25 per occurrence."""
    return [0.25 * r.count("e") for r in responses]


@pytest.fixture(autouse=True)
def reward_module(monkeypatch):
    module = types.ModuleType(REWARDS)
    module.letters = letters
    monkeypatch.setitem(sys.modules, REWARDS, module)


def make_cfg(algorithm, out, world_dir, model_dir, **kw):
    cls = CONFIGS[algorithm]
    settings = dict(model=str(model_dir), prompts=str(world_dir / "prompts.jsonl"), reward="callable",
                    reward_fn=f"{REWARDS}:letters", world=str(world_dir), max_new_tokens=6, minibatch_size=4,
                    micro_batch_size=2, ppo_epochs=2, max_steps=2, lr=3e-3, eval_every=0, eval_prompts=0,
                    sample_every=1, save_every=0, out=str(out))
    settings["rollout_batch"] = 4 if algorithm == "ppo" else 2  # N = 4 (ppo) or 2 prompts x 4 samples
    settings.update(kw)
    return cls(**settings)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def weights_changed(model_dir, out) -> bool:
    before, after = load_file(str(model_dir / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    return any(not torch.equal(before[k], after[k]) for k in before)


def test_the_settings_name_exactly_the_algorithms():
    # config.py cannot import the algorithms (they read the config): its names and the table must agree.
    hinted = typing.get_args(typing.get_type_hints(OnlineConfig)["algorithm"])
    assert ALGORITHM_NAMES == hinted == tuple(ALGORITHMS) == ("ppo", "grpo", "rloo")
    assert {name for name, algo in ALGORITHMS.items() if algo.critic} == {"ppo"}


# -- smoke: every algorithm, with a callable reward and with gold -------------------------------------------
@pytest.mark.parametrize("reward", ["callable", "gold"])
@pytest.mark.parametrize("algorithm", ["ppo", "grpo", "rloo"])
def test_each_algorithm_trains_and_logs_every_fixed_metric(algorithm, reward, tmp_path, world_dir, model_dir):
    # gold: evaluation at start and end; responses long enough for gold's brevity term to tell them apart
    extra = {"eval_prompts": 5, "max_new_tokens": 96} if reward == "gold" else {}
    cfg = make_cfg(algorithm, tmp_path, world_dir, model_dir, reward=reward, **extra)
    final = run(cfg)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    steps = [r for r in rows if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2]
    for row in steps:
        assert set(FIXED_METRICS) <= set(row)
        assert all(v is None or math.isfinite(v) for v in row.values()), row
        has_critic = algorithm == "ppo"
        for name in ("value_loss", "vf_clipfrac"):
            assert (row[name] is not None) == has_critic, name
        assert row["explained_variance"] is None or has_critic  # None also when the returns do not vary
        assert row["gold"] is not None and row["kl_coef"] == cfg.kl_coef and row["score_normalised"] is None
    if reward == "gold":  # gold trains: the score is the gold reward of the same samples
        assert [r["score"] for r in steps] == pytest.approx([r["gold"] for r in steps])
        assert rows[0]["step"] == 0 and "eval/gold" in rows[0] and "eval/gold" in rows[-1]
        # each evaluation's per-prompt gold (eval_samples 1: the responses' own), whose mean is eval/gold
        per_prompt = read_jsonl(tmp_path / online.EVAL_GOLD_FILE)
        assert [(r["step"], r["samples"], len(r["gold"])) for r in per_prompt] == [(0, 1, 5), (2, 1, 5)]
        for r, row in zip(per_prompt, (rows[0], rows[-1])):
            assert sum(r["gold"]) / 5 == pytest.approx(row["eval/gold"], abs=1e-12)
    assert weights_changed(model_dir, tmp_path) and (final / "config.json").exists()
    assert (tmp_path / online.VALUE_FILE).exists() == (algorithm == "ppo")
    samples = read_jsonl(tmp_path / "samples.jsonl")
    assert {s["step"] for s in samples} == {1, 2} and all("kl/k1" in s and "gold" in s for s in samples)


def test_reward_model_source_and_separate_value_model(tmp_path, world_dir, model_dir, rm_dir):
    cfg = make_cfg("ppo", tmp_path, world_dir, model_dir, reward="rm", reward_model=str(rm_dir),
                   value_model="separate", max_steps=1)
    run(cfg)
    (row,) = read_jsonl(tmp_path / "metrics.jsonl")
    # normalised = 2 raw + 0.5, the reward model's normalisation
    assert row["score_normalised"] == pytest.approx(2 * row["score"] + 0.5, abs=1e-5)
    assert all(v is None or math.isfinite(v) for v in row.values())
    value = load_file(str(tmp_path / online.VALUE_FILE))
    assert "head.weight" in value and any(k.startswith("backbone.") for k in value)


def test_separate_value_model_starts_at_the_normalised_reward(world_dir, model_dir, rm_dir, tokenizer, tmp_path):
    """The critic's head is the reward model's, rescaled: at the last token its value is the normalised score."""
    cfg = make_cfg("ppo", tmp_path, world_dir, model_dir, reward="rm", reward_model=str(rm_dir),
                   value_model="separate")
    critic = online.VALUE_MODELS["separate"](None, tokenizer, cfg)
    rm = make_reward_source("rm", reward_model=str(rm_dir))
    from tether.reward import encode_pair

    ids, _ = encode_pair(tokenizer, "Hi", "Hello there")
    x = torch.tensor([ids])
    with torch.no_grad():
        values = critic(None, x, torch.ones_like(x), torch.arange(x.size(1))[None])  # (1, T)
    assert float(values[0, -1]) == pytest.approx(float(rm(["Hi"], ["Hello there"])[0]), abs=1e-5)


# -- the policy pass ------------------------------------------------------------------------------------------
def test_policy_forward_log_probs_equal_logprobs_of(world_dir, model_dir, tokenizer, tmp_path):
    cfg = make_cfg("ppo", tmp_path, world_dir, model_dir, temperature=0.7)
    s = online.setup(cfg)
    rollout = sample(s.policy, s.encoded[:4], max_new_tokens=5, temperature=0.7, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id, generator=torch.Generator().manual_seed(0))
    exp = online.make_experience(s.policy, s.ref, s.critic, rollout, torch.zeros(4), cfg)
    want = logprobs_of(s.policy, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                       rollout.response_mask, 0.7)
    torch.testing.assert_close(exp.logprobs, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(exp.ref_logprobs, want, atol=1e-5, rtol=0)  # no update yet: π = π_ref
    assert torch.equal(exp.values, torch.zeros_like(exp.values))  # the value head starts at zero


@pytest.mark.parametrize("reuse", [True, False])
def test_old_log_probs_from_the_sampler_equal_a_policy_pass(reuse, world_dir, model_dir, tokenizer, monkeypatch, tmp_path):
    cfg = make_cfg("grpo", tmp_path, world_dir, model_dir, temperature=0.7, reuse_rollout_logprobs=reuse)
    s = online.setup(cfg)
    rollout = sample(s.policy, s.encoded[:4], max_new_tokens=5, temperature=0.7, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id, generator=torch.Generator().manual_seed(0))
    want = logprobs_of(s.policy, rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids,
                       rollout.response_mask, 0.7)
    if reuse:  # no second policy pass: the sampler's KV-cached log-probs are the old ones
        monkeypatch.setattr(online, "policy_forward", lambda *a, **k: pytest.fail("policy pass with reuse"))
    exp = online.make_experience(s.policy, s.ref, s.critic, rollout, torch.zeros(4), cfg)
    torch.testing.assert_close(exp.logprobs, want, atol=1e-5, rtol=0)
    assert (exp.logprobs[rollout.response_mask == 0] == 0).all()  # 0 where masked, as a policy pass gives


def test_separate_critic_with_reused_log_probs_gives_the_policy_pass_values(world_dir, model_dir, rm_dir, tokenizer, tmp_path):
    def experience(reuse: bool):
        cfg = make_cfg("ppo", tmp_path, world_dir, model_dir, reward="rm", reward_model=str(rm_dir),
                       value_model="separate", temperature=0.7, reuse_rollout_logprobs=reuse)
        s = online.setup(cfg)
        rollout = sample(s.policy, s.encoded[:4], max_new_tokens=5, temperature=0.7,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         generator=torch.Generator().manual_seed(0))
        return online.make_experience(s.policy, s.ref, s.critic, rollout, torch.zeros(4), cfg)

    reused, recomputed = experience(True), experience(False)
    # the critic alone (no policy pass) gives the values of the joint pass, read at the same positions
    torch.testing.assert_close(reused.values, recomputed.values, atol=1e-6, rtol=0)
    torch.testing.assert_close(reused.logprobs, recomputed.logprobs, atol=1e-5, rtol=0)


# -- exact gradient accumulation --------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_micro_batches_give_the_same_update(algorithm, world_dir, model_dir, tokenizer, tmp_path):
    cfg = make_cfg(algorithm, tmp_path, world_dir, model_dir, minibatch_size=4, micro_batch_size=4, ppo_epochs=2,
                   entropy_coef=0.01, lr=1e-3)
    s = online.setup(cfg)
    rollout = sample(s.policy, [s.encoded[i] for i in range(cfg.batch_size)], max_new_tokens=6, temperature=1.0,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                     generator=torch.Generator().manual_seed(1))
    scores = torch.arange(cfg.batch_size, dtype=torch.float32)  # (N,)
    exp = online.make_experience(s.policy, s.ref, s.critic, rollout, scores, cfg)
    exp.advantages, exp.returns, _ = ALGORITHMS[algorithm].advantages(exp, cfg, 0.05)
    results = []
    for micro in (2, 4):
        policy, critic = copy.deepcopy(s.policy), copy.deepcopy(s.critic)
        modules = nn.ModuleDict({"policy": policy, **({"critic": critic} if critic is not None else {})})
        optimizer = adamw(modules, cfg.lr, 0.0, (0.9, 0.999))
        stats = online.update(policy, critic, optimizer, exp, dataclasses.replace(cfg, micro_batch_size=micro),
                              0.05, cfg.lr, torch.Generator().manual_seed(0))
        results.append((stats, torch.cat([p.detach().reshape(-1) for p in modules.parameters()])))
    (a, params_a), (b, params_b) = results
    assert set(a) == set(b)
    for name in a:
        assert a[name] == pytest.approx(b[name], abs=1e-5), name
    assert not torch.equal(params_a, torch.cat([p.detach().reshape(-1) for p in s.policy.parameters()] + (
        [p.detach().reshape(-1) for p in s.critic.parameters()] if s.critic is not None else [])))
    torch.testing.assert_close(params_a, params_b, atol=1e-5, rtol=0)


# -- resume -----------------------------------------------------------------------------------------------------
def test_resumed_run_equals_an_uninterrupted_one(tmp_path, world_dir, model_dir, monkeypatch):
    kw = dict(max_steps=3, save_every=1, kl_controller="adaptive", kl_target=0.01, kl_horizon=8, eval_every=1,
              eval_prompts=2)
    run(make_cfg("ppo", tmp_path / "a", world_dir, model_dir, **kw))

    real_save = online.save_checkpoint

    def save_then_die(run_dir, step, *args, **kwargs):
        real_save(run_dir, step, *args, **kwargs)
        if step == 2:
            raise RuntimeError("killed")

    monkeypatch.setattr(online, "save_checkpoint", save_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        run(make_cfg("ppo", tmp_path / "b", world_dir, model_dir, **kw))
    monkeypatch.setattr(online, "save_checkpoint", real_save)
    run(make_cfg("ppo", tmp_path / "b", world_dir, model_dir, resume=True, **kw))

    def lines(folder, name):
        return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in read_jsonl(folder / name)]

    a, b = lines(tmp_path / "a", "metrics.jsonl"), lines(tmp_path / "b", "metrics.jsonl")
    assert a == b and [r["step"] for r in b] == [0, 1, 2, 3]  # 0: the baseline evaluation
    assert len({r["kl_coef"] for r in a if r["step"]}) == 3  # the adaptive controller moved β every step
    assert lines(tmp_path / "a", "samples.jsonl") == lines(tmp_path / "b", "samples.jsonl")
    # the per-prompt evaluations past the checkpoint are dropped and rewritten, as metrics.jsonl's are
    per_prompt = lines(tmp_path / "b", online.EVAL_GOLD_FILE)
    assert per_prompt == lines(tmp_path / "a", online.EVAL_GOLD_FILE) and [r["step"] for r in per_prompt] == [0, 1, 2, 3]
    wa, wb = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# -- gold stays out of training ------------------------------------------------------------------------------------
@pytest.mark.parametrize("reward", ["callable", "rm"])
def test_gold_is_only_logged_never_trained_on(reward, tmp_path, world_dir, model_dir, rm_dir, monkeypatch):
    judged, sourced, trained = [], [], []
    real_judge, real_source, real_experience = World.judge, online.make_reward_source, online.make_experience

    def judge(self, prompt, response):  # gold = 100: unmistakable if it ever reached the update
        judged.append(prompt)
        return dataclasses.replace(real_judge(self, prompt, response), components={"fake": 100.0})

    def recording_source(*args, **kwargs):
        source = real_source(*args, **kwargs)
        return lambda prompts, responses: sourced.append(source(prompts, responses)) or sourced[-1]

    def recording_experience(policy, ref, critic, rollout, scores, cfg):
        trained.append(scores.clone())
        return real_experience(policy, ref, critic, rollout, scores, cfg)

    monkeypatch.setattr(World, "judge", judge)
    monkeypatch.setattr(online, "make_reward_source", recording_source)
    monkeypatch.setattr(online, "make_experience", recording_experience)
    cfg = make_cfg("rloo", tmp_path, world_dir, model_dir, reward=reward, reward_model=str(rm_dir), max_steps=1)
    run(cfg)
    (row,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert len(judged) == cfg.batch_size and row["gold"] == pytest.approx(100.0)  # judged once each, for the log
    assert len(sourced) == len(trained) == 1
    torch.testing.assert_close(trained[0], sourced[0])  # the update trains on the source's scores
    assert float(trained[0].abs().max()) < 50


# -- the EOS penalty ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("setting, trained", [
    ({"missing_eos_penalty": 1.5}, lambda score: score - 1.5),  # TRL's meaning: subtracted
    ({"missing_eos_score": -3.0}, lambda score: -3.0),  # Huang et al.: given instead
])
def test_a_response_without_eos_loses_the_penalty_or_gets_the_fixed_score(tmp_path, world_dir, model_dir, setting,
                                                                          trained):
    cfg = make_cfg("ppo", tmp_path, world_dir, model_dir, max_new_tokens=3, max_steps=1, n_samples=4, **setting)
    run(cfg)
    samples = read_jsonl(tmp_path / "samples.jsonl")
    assert any(not s["eos"] for s in samples)  # an untrained model rarely ends within 3 tokens
    for s in samples:
        assert s["reward"] == pytest.approx(s["score"] if s["eos"] else trained(s["score"]))
        assert s["score"] == pytest.approx(letters(None, [s["response"]])[0])


# -- prompts and config ------------------------------------------------------------------------------------------------
def test_prompt_stream_is_a_seeded_shuffle_that_wraps_epochs():
    first = online.prompt_batch(5, 0, 3, seed=0) + online.prompt_batch(5, 3, 3, seed=0)
    assert sorted(first[:5]) == [0, 1, 2, 3, 4]  # epoch 0 visits every prompt once
    assert online.prompt_batch(5, 3, 3, seed=0) == first[3:]  # a pure function of the cursor
    assert online.prompt_batch(5, 0, 12, seed=0)[:6] == first


@pytest.mark.parametrize("cls, override, message", [
    (GRPOConfig, "group_size=1", "GRPOConfig.group_size: must be >= 2 for grpo"),
    (PPOConfig, "minibatch_size=5", "PPOConfig.minibatch_size: must divide rollout_batch x group_size (32)"),
    (PPOConfig, "reward=callable", "PPOConfig.reward_fn: must be 'module:function' when reward=callable"),
    (RLOOConfig, "reward=gold", "RLOOConfig.world: is required when reward=gold"),
    (GRPOConfig, "missing_eos_penalty=-1", "GRPOConfig.missing_eos_penalty: is subtracted from the score"),
    (PPOConfig, ["missing_eos_penalty=1", "missing_eos_score=-1"], "PPOConfig.missing_eos_score: set either"),
])
def test_config_errors_name_the_field(cls, override, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        load_config(cls, overrides=override if isinstance(override, list) else [override])


def test_reward_sources():
    assert set(REWARD_SOURCES) == {"rm", "gold", "callable"}
    score = make_reward_source("callable", reward_fn=f"{REWARDS}:letters")
    torch.testing.assert_close(score(["p", "q"], ["eee", "x"]), torch.tensor([0.75, 0.0]))
    with pytest.raises(ConfigError, match="reward_fn: cannot import module"):
        make_reward_source("callable", reward_fn="no_such_module_xyz:f")
    with pytest.raises(Exception, match="returned 1 scores for 2 responses"):
        make_reward_source("callable", reward_fn=lambda p, r: [1.0])(["a", "b"], ["c", "d"])


def test_prompt_means_average_each_prompts_samples():
    from tether.stages.online.evaluation import prompt_means

    # k = 2: (1 + 3) / 2 = 2; (None, 2): the one known value, 2; (None, None): no value
    assert prompt_means([1.0, 3.0, None, 2.0, None, None], 2) == [2.0, 2.0, None]
    assert prompt_means([0.5, -1.0], 1) == [0.5, -1.0]


# -- evaluation at temperature: common random numbers, training RNG untouched ------------------------------
def test_sampled_evaluation_repeats_its_draw_and_leaves_the_training_rng_alone(tmp_path, world_dir, model_dir):
    from tether.chat import chat_format
    from tether.models import load_policy, load_tokenizer
    from tether.world.build import load_world

    cfg = make_cfg("ppo", tmp_path, world_dir, model_dir, eval_temperature=1.0, eval_samples=3, max_new_tokens=8)
    policy, world = load_policy(str(model_dir)), load_world(world_dir)
    tok = chat_format(load_tokenizer(str(model_dir)))
    source = make_reward_source("callable", reward_fn=lambda prompts, responses: [float(len(r)) for r in responses])
    prompts = online.eval_prompt_texts(world, 4)
    torch.manual_seed(123)
    first = online.evaluate(policy, tok, source, world, prompts, cfg)
    after_first = torch.rand(1)
    torch.manual_seed(123)
    second = online.evaluate(policy, tok, source, world, prompts, cfg)
    assert first == second  # the same draw at every evaluation: steps differ by the policy only
    assert torch.equal(torch.rand(1), after_first)  # the global RNG stream did not move
    metrics, per_prompt, responses = first  # a mean over the 3 samples of each of the 4 prompts, averaging to eval/gold
    assert len(per_prompt) == 4 and sum(per_prompt) / 4 == pytest.approx(metrics["eval/gold"], abs=1e-12)
    # eval/gold/<category>: the mean over that category's prompts (each has its 3 samples), the world's categories
    by_category = {}
    for prompt, gold in zip(prompts, per_prompt):
        by_category.setdefault(world.parse(prompt).category, []).append(gold)
    assert len(by_category) >= 2 and {k for k in metrics if k.startswith("eval/gold/")} == {
        f"eval/gold/{c}" for c in by_category}
    for c, golds in by_category.items():
        assert metrics[f"eval/gold/{c}"] == pytest.approx(sum(golds) / len(golds), abs=1e-12)
    # one response per row of repeat_prompts: each prompt's 3 samples in a row (the monitor's eval_<rate> pairs)
    assert len(responses) == 12 and online.repeat_prompts(prompts[:2], 3) == [prompts[0]] * 3 + [prompts[1]] * 3
    # each response row has its own noise: 2 rows a batch instead of 4 draws the same responses, so a row's draw
    # does not hang on how long the batches before it ran (one shared generator would shift it)
    assert online.evaluate(policy, tok, source, world, prompts, dataclasses.replace(cfg, rollout_batch=2)) == first
    # eval/kl on the evaluation's samples: 0 against the policy itself (the sampler's log-probs are a forward
    # pass's), above 0 against a reference with other weights; none without a reference
    assert "eval/kl" not in first[0]
    assert online.evaluate(policy, tok, source, world, prompts, cfg, ref=policy)[0]["eval/kl"] == pytest.approx(
        0.0, abs=1e-5)
    other = copy.deepcopy(policy)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    kl = online.evaluate(policy, tok, source, world, prompts, cfg, ref=other)[0]
    assert kl["eval/kl"] > 0.1
    # all 12 rows in one batch (eval_batch_size; finished rows leave it), the reference's log-probs still by the
    # rollouts' rows: the same responses and KL
    one_batch = online.evaluate(policy, tok, source, world, prompts, dataclasses.replace(cfg, eval_batch_size=12),
                                ref=other)[0]
    assert one_batch.keys() == kl.keys() and one_batch["eval/gold"] == kl["eval/gold"]
    assert one_batch["eval/kl"] == pytest.approx(kl["eval/kl"], abs=1e-5)
    greedy = online.evaluate(policy, tok, source, world, prompts, dataclasses.replace(cfg, eval_temperature=0.0,
                                                                                       eval_samples=1))
    assert greedy != first
    with pytest.raises(ConfigError, match="eval_samples"):
        dataclasses.replace(cfg, eval_samples=0).validate()
    with pytest.raises(ConfigError, match="eval_batch_size"):
        dataclasses.replace(cfg, eval_batch_size=-1).validate()
