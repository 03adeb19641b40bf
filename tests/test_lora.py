"""tether.lora: LoRA through peft on every training stage, the reference as the base with adapters disabled,
merge-and-save to a plain HF folder, checkpoints that resume step for step, and gradient checkpointing.

Tolerances: merged and adapter logits agree to atol 1e-5 in float32 (a merge rounds W + (α/r) B A once; the
adapter path adds (α/r) B A x in another order). The base behind disabled adapters is exact (torch.equal).
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

import tether.training as training
import tether.stages.rm as rm
from tether import distributed
from tether.chat import chat_format
from tether.checkpoint import latest_checkpoint
from tether.config import load_config
from tether.data.formats import load_comparisons
from tether.errors import ConfigError, TetherError
from tether.lora import (
    ADAPTER_CONFIG,
    ADAPTER_FOLDER,
    ADAPTER_WEIGHTS,
    OUTSIDE_FILE,
    AdaptersDisabled,
    LoraOptions,
    apply_lora,
    base_state_dict,
    frozen_reference,
    parameter_counts,
)
from tether.models import build_model, load_policy, load_tokenizer, save_pretrained
from tether.reward import RewardModel
from tether.rollout import logprobs_of, sample
from tether.stages.dpo import DPOConfig
from tether.stages.dpo.pairs import reference_key
from tether.stages.dpo.sequences import CACHE
from tether.stages.lm import train_lm
from tether.training import Example, TrainConfig
from tether.stages.pretrain import PretrainConfig
from tether.stages.sft import SFTConfig

LORA = LoraOptions(r=4, alpha=8.0)
MERGE_ATOL = 1e-5


def _randomise_adapters(model, seed: int = 0) -> None:
    """B is zero at the start (the adapted model equals its base); give it values as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _ids(tokenizer, n: int = 3, length: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, len(tokenizer), (n, length), generator=g)  # (B, T)


def _plain(state: dict) -> dict:
    """A LoRA-injected model's state under plain names, without A and B (what its frozen base holds)."""
    return {k.replace(".base_layer.", "."): v for k, v in state.items() if "lora_" not in k}


def _comparisons(n: int = 24) -> list[dict]:
    """n labelled comparisons over 8 prompts (3 each); the good answer is A on even rows, B on odd ones."""
    rows = []
    for i in range(n):
        good, bad = f"The capital of land {i % 8} is Osk {i % 8}.", "I do not know." + " Sorry." * (i % 3)
        a, b = (good, bad) if i % 2 == 0 else (bad, good)
        rows.append({"prompt": f"What is the capital of land {i % 8}?", "response_a": a, "response_b": b,
                     "choice": "A" if i % 2 == 0 else "B"})
    return rows


@pytest.fixture(scope="module")
def prefs(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("lora_data") / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _comparisons()))
    return str(path)


@pytest.fixture(scope="module")
def sft_examples(world_dir, tokenizer):
    from tether.data.sft_data import read_conversations
    from tether.chat import chat_format

    conversations = read_conversations(world_dir / "sft.jsonl")
    encoded = chat_format(tokenizer).encode_many([(c, None) for c in conversations])
    return [Example(c.input_ids, c.loss_mask) for c in encoded]


def _assert_plain_merged_folder(folder, model_dir, body: bool = False) -> dict:
    """`folder` is a plain HF folder (the base's tensor names, no adapter at its root) with weights that moved, and
    its adapter sits in folder/adapter; returns the merged weights. body: a reward model, the sequence classifier
    of the causal LM (its `model.` body and `score`, without lm_head)."""
    merged, base = load_file(str(folder / "model.safetensors")), load_file(str(model_dir / "model.safetensors"))
    if body:
        base = {k: v for k, v in base.items() if k.startswith("model.")}
        assert "score.weight" in merged
    assert merged.keys() - ({"score.weight"} if body else set()) == base.keys()  # no lora_A/B, no base_layer
    assert not (folder / ADAPTER_CONFIG).exists()  # else transformers would load it as an adapter
    assert (folder / ADAPTER_FOLDER / ADAPTER_WEIGHTS).is_file()
    assert any(not torch.equal(merged[k], base[k]) for k in base)
    return merged


# ---------------------------------------------------------------------------------------------
# 1. Config


def test_lora_options_are_set_by_nested_overrides_and_validated():
    cfg = load_config(SFTConfig, overrides=["lora.r=8", "lora.alpha=32", "lora.target_modules=q_proj,v_proj",
                                            "gradient_checkpointing=true"])
    assert cfg.lora == LoraOptions(r=8, alpha=32.0, target_modules=["q_proj", "v_proj"])
    assert cfg.gradient_checkpointing and not load_config(SFTConfig).lora.enabled
    for override, message in [("lora.r=-1", "SFTConfig.lora.r: must be >= 0"),
                              ("lora.dropout=1", "SFTConfig.lora.dropout"),
                              ("lora.target_modules=all-linear,q_proj", "SFTConfig.lora.target_modules"),
                              ("lora.rank=4", "unknown field 'rank'")]:
        with pytest.raises(ConfigError, match=message):
            load_config(SFTConfig, overrides=[override])
    with pytest.raises(ConfigError, match="PretrainConfig.lora.r: LoRA adapts a trained model"):
        load_config(PretrainConfig, overrides=["lora.r=4"])


# ---------------------------------------------------------------------------------------------
# 2. Adapters, the base behind them, merging


def test_only_adapters_train_and_their_init_is_seeded(new_model, tokenizer):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    model = apply_lora(new_model(), LORA, seed=7)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG stream is untouched
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # "test" preset, r=4, all-linear: per layer q, k, v, o (32 -> 32): 4 x 4 x (32 + 32) = 1024, gate and up
    # (32 -> 64) and down (64 -> 32): 3 x 4 x (32 + 64) = 1152; 2 layers: 2 x 2176 = 4352.
    assert parameter_counts(model)[0] == 4352
    again = apply_lora(new_model(), LORA, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    ids = _ids(tokenizer)
    with torch.no_grad():  # B = 0 at the start: the adapted model is its base
        assert torch.equal(model(input_ids=ids).logits, new_model()(input_ids=ids).logits)


def test_disabled_adapters_give_exactly_the_base_model(new_model, tokenizer):
    base, model = new_model(), apply_lora(new_model(), LORA)
    _randomise_adapters(model)
    ref = frozen_reference(model)
    assert isinstance(ref, AdaptersDisabled) and not list(ref.parameters())  # a view, no second copy
    ids = _ids(tokenizer)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-3)
        assert torch.equal(ref(input_ids=ids).logits, base(input_ids=ids).logits)
        response = ids[:, -4:]
        assert torch.equal(logprobs_of(ref, ids[:, :-4], mask[:, :-4], response, mask[:, -4:], 1.0),
                           logprobs_of(base, ids[:, :-4], mask[:, :-4], response, mask[:, -4:], 1.0))
        assert not torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-3)  # re-enabled
    # The reference's weights under plain names: DPO's cache key equals that of the plain model.
    state, plain = ref.state_dict(), base.state_dict()
    assert state.keys() == plain.keys() and all(torch.equal(state[k], plain[k]) for k in plain)
    assert reference_key(ref, []) == reference_key(base, [])
    ref.eval()
    ref.requires_grad_(False)  # leaves the policy alone
    assert model.training and any(p.requires_grad for p in model.parameters())


def test_merged_folder_loads_without_peft_and_equals_the_adapter_model(new_model, tokenizer, model_dir, tmp_path):
    from peft import PeftModel

    model = apply_lora(new_model(), LORA).eval()
    _randomise_adapters(model)
    save_pretrained(model, tokenizer, str(tmp_path / "merged"))
    _assert_plain_merged_folder(tmp_path / "merged", model_dir)
    merged = load_policy(str(tmp_path / "merged")).eval()
    assert type(merged).__name__ == "LlamaForCausalLM"
    ids = _ids(tokenizer)
    with torch.no_grad():
        expected = model(input_ids=ids).logits  # (B, T, V)
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=MERGE_ATOL, rtol=0)
        # The adapter folder on the base reproduces the same model.
        reloaded = PeftModel.from_pretrained(load_policy(str(model_dir)), str(tmp_path / "merged" / ADAPTER_FOLDER))
        torch.testing.assert_close(reloaded.eval()(input_ids=ids).logits, expected, atol=MERGE_ATOL, rtol=0)
    # Greedy decoding with the KV cache picks the same tokens.
    prompts = [[1, 5, 9, 12], [1, 7]]
    kw = dict(max_new_tokens=6, temperature=0.0, eos_token_id=tokenizer.eos_token_id,
              pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(sample(model, prompts, **kw).response_ids, sample(merged, prompts, **kw).response_ids)
    assert any(".lora_" in n for n, _ in model.named_parameters())  # the training model kept its adapters


# ---------------------------------------------------------------------------------------------
# 3. Gradient checkpointing (tether.distributed.checkpoint_layers) on an adapted model


def _saved_bytes_and_grads(model, ids) -> tuple[int, list[torch.Tensor]]:
    """Bytes autograd keeps from the forward pass for the backward (what checkpointing saves), and the gradients."""
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    model.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids).logits.float().pow(2).mean()
    loss.backward()
    return sum(saved), [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradient_checkpointing_keeps_fewer_activations_and_the_same_gradients(mode, new_model, tokenizer):
    """Eval mode too: DPO, KTO and online RL run the policy in eval mode (no dropout). In the stages' order:
    LoRA first, then `distributed.prepare` wraps the decoder layers."""
    ids = _ids(tokenizer, n=4, length=32)
    models = []
    for checkpointing in (False, True):
        model = apply_lora(new_model(), LORA)
        if checkpointing:
            distributed.checkpoint_layers(model)
        _randomise_adapters(model)
        models.append(model.train(mode == "train"))
    saved, grads = _saved_bytes_and_grads(models[0], ids)
    saved_gc, grads_gc = _saved_bytes_and_grads(models[1], ids)
    assert saved_gc < saved / 2, (saved, saved_gc)  # the layers' insides are recomputed, not kept
    for g, g_gc in zip(grads, grads_gc):
        torch.testing.assert_close(g_gc, g, atol=1e-6, rtol=0)
    attention = models[1].get_base_model().model.layers[0].self_attn
    assert attention.training == (mode == "train")  # dropout's mode is the model's
    adapter, adapter_gc = (get_peft_model_state_dict(m) for m in models)  # what an adapter checkpoint holds
    assert adapter.keys() == adapter_gc.keys() and len(adapter) == sum(".lora_" in n for n, _ in
                                                                        models[0].named_parameters())


# ---------------------------------------------------------------------------------------------
# 4. SFT: smoke, base frozen, resume after a kill


def _sft_cfg(out, **kw) -> TrainConfig:
    return TrainConfig(out=str(out), max_steps=6, save_every=3, log_every=1, eval_every=2, eval_fraction=0.1,
                       batch_size=8, micro_batch_size=4, warmup_steps=2, lr=1e-2, seed=5, lora=LORA, **kw)


def killed_after_first_checkpoint(module, run) -> None:
    """Call run() with module.save_checkpoint raising Killed right after it writes its first checkpoint."""
    real_save = module.save_checkpoint

    def save_then_die(*args, **kw):
        real_save(*args, **kw)
        raise Killed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "save_checkpoint", save_then_die)
        with pytest.raises(Killed):
            run()


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def sft_runs(sft_examples, tokenizer, tmp_path_factory):
    """Run A straight through; run B, with gradient checkpointing, killed right after its step-3 checkpoint, then
    resumed in a fresh model."""
    root = tmp_path_factory.mktemp("lora_sft")
    model_a = build_model("test", tokenizer, seed=0)
    initial = {k: v.clone() for k, v in model_a.state_dict().items()}
    train_lm(_sft_cfg(root / "a"), model_a, tokenizer, sft_examples, "sft")
    killed_after_first_checkpoint(training, lambda: train_lm(_sft_cfg(root / "b", gradient_checkpointing=True),
                                                       build_model("test", tokenizer, seed=0), tokenizer,
                                                       sft_examples, "sft"))
    train_lm(_sft_cfg(root / "b", resume=True, gradient_checkpointing=True), build_model("test", tokenizer, seed=0),
             tokenizer, sft_examples, "sft")
    return dict(a=root / "a", b=root / "b", model_a=model_a, initial=initial)


def test_sft_trains_the_adapters_only_and_saves_a_plain_merged_folder(sft_runs, model_dir):
    state = sft_runs["model_a"].state_dict()  # peft adapted the passed model in place
    base = _plain(state)
    assert base.keys() == sft_runs["initial"].keys()
    assert all(torch.equal(base[k], sft_runs["initial"][k]) for k in base)  # the base never moved
    assert any(state[k].abs().max() > 0 for k in state if ".lora_B." in k)  # the adapters did (B started at 0)
    _assert_plain_merged_folder(sft_runs["a"] / "model", model_dir)
    rows = [json.loads(line) for line in (sft_runs["a"] / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 6 and all(r["loss"] == r["loss"] for r in rows)


def test_sft_checkpoint_holds_the_adapter_and_resume_is_exact(sft_runs):
    ckpt = latest_checkpoint(sft_runs["b"])
    files = {p.name for p in ckpt.iterdir()}
    assert {ADAPTER_WEIGHTS, ADAPTER_CONFIG, "trainer_state.pt"} <= files and "model.safetensors" not in files

    def rows(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in lines]

    a, b = rows(sft_runs["a"]), rows(sft_runs["b"])
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for row_a, row_b in zip(a, b):
        assert row_b == pytest.approx(row_a, abs=1e-6)
    final_a, final_b = (load_file(str(sft_runs[r] / "model" / "model.safetensors")) for r in "ab")
    for key in final_a:
        torch.testing.assert_close(final_b[key], final_a[key], atol=1e-6, rtol=0)


def test_resume_refuses_a_checkpoint_with_other_lora_settings(sft_runs, sft_examples, tokenizer, tmp_path):
    shutil.copytree(sft_runs["b"] / "checkpoints", tmp_path / "checkpoints")
    cfg = _sft_cfg(tmp_path, resume=True)
    cfg.lora = LoraOptions(r=8)
    with pytest.raises(TetherError, match="r=4, this run 8"):
        train_lm(cfg, build_model("test", tokenizer, seed=0), tokenizer, sft_examples, "sft")
    cfg.lora = LoraOptions(r=0)  # no LoRA at all: told why, not a missing model.safetensors
    with pytest.raises(TetherError, match="LoRA adapters only"):
        train_lm(cfg, build_model("test", tokenizer, seed=0), tokenizer, sft_examples, "sft")


# ---------------------------------------------------------------------------------------------
# 5. Reward model: adapters on the backbone, the head trained fully, resume, the RM loader


def _rm_cfg(data, backbone, out, **kw) -> rm.RMConfig:
    return rm.RMConfig(data=str(data), model=str(backbone), out=str(out), max_steps=8, batch_size=6,
                       micro_batch_size=3, lr=1e-2, warmup_steps=1, eval_every=4, save_every=4, log_every=1,
                       eval_fraction=0.25, max_length=64, seed=0, lora=LORA, **kw)


@pytest.fixture(scope="module")
def rm_runs(prefs, model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_rm")
    rm.run(_rm_cfg(prefs, model_dir, root / "a"))
    killed_after_first_checkpoint(training, lambda: rm.run(_rm_cfg(prefs, model_dir, root / "b")))
    rm.run(_rm_cfg(prefs, model_dir, root / "b", resume=True))
    return dict(a=root / "a", b=root / "b")


def test_rm_with_lora_saves_a_loadable_reward_model(rm_runs, model_dir):
    final = rm_runs["a"] / "model"
    _assert_plain_merged_folder(final, model_dir, body=True)
    model = RewardModel.from_pretrained(final)  # the existing loader, no peft
    head = load_file(str(final / "model.safetensors"))["score.weight"]
    torch.manual_seed(0)
    fresh = RewardModel.from_backbone(str(model_dir))  # the run's head init (seed 0)
    assert not torch.equal(head, fresh.head.weight)  # the head trained
    torch.testing.assert_close(model.head.weight, head, atol=0, rtol=0)
    config = json.loads((final / "config.json").read_text())  # the merged classifier, as plain transformers reads it
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["reward_normalisation"] == {"gain": float(model.gain), "bias": float(model.bias)} != {"gain": 1.0,
                                                                                                       "bias": 0.0}
    scores = model.score(["What is the capital of land 1?"] * 2, ["The capital of land 1 is Osk 1.", "I do not know."])
    assert torch.isfinite(scores).all()
    ckpt = latest_checkpoint(rm_runs["b"])
    files = {p.name for p in ckpt.iterdir()}
    assert {ADAPTER_WEIGHTS, OUTSIDE_FILE} <= files and "model.safetensors" not in files
    assert load_file(str(ckpt / OUTSIDE_FILE)).keys() == {"gain", "bias"}  # the normalisation
    assert [k for k in load_file(str(ckpt / ADAPTER_WEIGHTS)) if "score" in k]  # the head, peft's modules_to_save


def test_rm_resume_with_lora_is_exact(rm_runs):
    def rows(run):
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    a, b = rows(rm_runs["a"]), rows(rm_runs["b"])
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 9))
    for row_a, row_b in zip(a, b):
        assert row_b == pytest.approx(row_a, abs=1e-6)
    wa, wb = (load_file(str(rm_runs[r] / "model" / "model.safetensors")) for r in "ab")  # body and score
    assert "score.weight" in wa and all(torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0) for k in wa)
    norm_a, norm_b = (json.loads((rm_runs[r] / "model" / "reward_config.json").read_text())["normalisation"]
                      for r in "ab")
    assert norm_b == pytest.approx(norm_a, abs=1e-6)


def test_seqcls_reward_model_keeps_its_own_head_trainable(tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from tether.models import PRESETS

    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, num_labels=1,
                         **PRESETS["test"])
    model = apply_lora(RewardModel(LlamaForSequenceClassification(config), tokenizer, kind="seqcls"), LORA)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".score." in n for n in trainable) and any(".lora_A." in n for n in trainable)
    assert all(".lora_" in n or ".score." in n for n in trainable)


# ---------------------------------------------------------------------------------------------
# 6. DPO and KTO: the reference is the base with adapters disabled


def _dpo_cfg(tmp_path, data, model_dir, **kw) -> DPOConfig:
    base = dict(data=str(data), model=str(model_dir), out=str(tmp_path / "run"), batch_size=4, micro_batch_size=2,
                max_steps=3, eval_fraction=0.25, eval_every=3, log_every=1, save_every=0, warmup_steps=1, lr=1e-2,
                max_length=64, kl_eval_prompts=2, kl_eval_max_new_tokens=6, lora=LORA)
    return DPOConfig(**{**base, **kw})


@pytest.mark.parametrize("loss", ["sigmoid", "kto"])
def test_dpo_and_kto_with_lora(loss, tmp_path, prefs, model_dir, monkeypatch):
    import tether.stages.dpo as dpo

    references = []
    real_loop = dpo.train_preferences

    def recording_loop(cfg, variant, run_dir, model, fmt, train, held_out, kl_ref):
        references.append(kl_ref)
        return real_loop(cfg, variant, run_dir, model, fmt, train, held_out, kl_ref)

    monkeypatch.setattr(dpo, "train_preferences", recording_loop)
    final = dpo.run(_dpo_cfg(tmp_path, prefs, model_dir, loss=loss, gradient_checkpointing=loss == "kto"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and "eval_kl/k3" in rows[-1]
    assert all(v == v for r in rows for v in r.values() if isinstance(v, float))
    _assert_plain_merged_folder(final, model_dir)
    # π_ref is a view of the trained policy with its adapters off, and that is still exactly the initial model.
    (ref,) = references
    assert isinstance(ref, AdaptersDisabled)
    initial = load_policy(str(model_dir))
    assert all(torch.equal(v, initial.state_dict()[k]) for k, v in base_state_dict(ref.adapted).items())
    if loss == "sigmoid":  # the cached log-probs are keyed by the plain base: a full fine-tune's cache is reused
        from safetensors import safe_open

        cfg = _dpo_cfg(tmp_path, prefs, model_dir)
        fmt = chat_format(load_tokenizer(str(model_dir)))
        pairs = dpo.pairs.load(cfg, fmt, load_comparisons(prefs, labelled=True))[0]
        with safe_open(str(tmp_path / "run" / CACHE), "pt") as f:
            assert f.metadata()["key"] == reference_key(initial, pairs)


# ---------------------------------------------------------------------------------------------
# 7. Online RL: PPO (value head), GRPO


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_online_rl_with_lora(algorithm, tmp_path, world_dir, model_dir, monkeypatch):
    import sys
    import types

    from tether.stages import online
    from tether.stages.ppo import GRPOConfig, PPOConfig, run

    module = types.ModuleType("tether_test_lora_rewards")
    module.letters = lambda prompts, responses: [0.25 * r.count("e") for r in responses]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    sessions = []
    real_setup = online.setup
    monkeypatch.setattr(online, "setup", lambda cfg: sessions.append(real_setup(cfg)) or sessions[-1])
    cls = PPOConfig if algorithm == "ppo" else GRPOConfig
    cfg = cls(model=str(model_dir), prompts=str(world_dir / "prompts.jsonl"), reward="callable",
              reward_fn=f"{module.__name__}:letters", max_new_tokens=6, minibatch_size=4, micro_batch_size=2,
              ppo_epochs=2, max_steps=2, lr=1e-2, eval_every=0, eval_prompts=0, sample_every=0, save_every=0,
              rollout_batch=4 if algorithm == "ppo" else 2, out=str(tmp_path), lora=LORA,
              gradient_checkpointing=algorithm == "grpo")  # with sampling under inference mode
    final = run(cfg)
    _assert_plain_merged_folder(final, model_dir)
    (s,) = sessions
    assert isinstance(s.ref, AdaptersDisabled) and s.ref.adapted is s.policy
    names = {id(p): n for n, p in s.policy.named_parameters()}
    names.update({id(p): f"critic.{n}" for n, p in (s.critic.named_parameters() if s.critic is not None else [])})
    trained = [names[id(p)] for group in s.optimizer.param_groups for p in group["params"]]
    assert all(".lora_" in n or n.startswith("critic.") for n in trained)  # the value head trains fully
    assert any(n.startswith("critic.") for n in trained) == (algorithm == "ppo")
    initial = load_policy(str(model_dir))
    assert all(torch.equal(v, initial.state_dict()[k]) for k, v in base_state_dict(s.policy).items())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[-1]["kl/k1"] is not None
