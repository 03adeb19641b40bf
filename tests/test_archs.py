"""Real architectures (tests/archkit.py: llama, gpt2, qwen2, gemma2, gemma3, phi3, opt, gpt_neox, mistral) through
three pieces of tether that depend on a model's layout:

1. gradient checkpointing (`distributed.checkpoint_layers`): loss and every gradient equal those without it;
2. position limits (`models.check_positions`): a length past the model's positions is a one-line ConfigError in
   every stage, at the limit where the model would really fail;
3. LoRA targets (`lora.check_targets`): the default (all-linear) adapts, trains and merges into a folder plain
   transformers loads; a wrong `lora.target_modules` is a one-line ConfigError listing the model's linear layers.

Tolerances: checkpointed and plain gradients agree to atol 1e-6 in float32 (the recompute runs the same kernels
in the same order, under the same replayed RNG; the bound only allows for a reduction order), merged logits to
atol 1e-5 (a merge rounds W + (α/r) B A once).
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from transformers.modeling_layers import GradientCheckpointingLayer

import archkit
from tether import distributed
from tether.chat import chat_format
from tether.cli import main
from tether.data.corpus import read_prompts
from tether.errors import ConfigError
from tether.generation import generate
from tether.lora import LoraOptions, adapt, linear_names, merged_copy
from tether.models import check_positions, position_limit, save_pretrained
from tether.reward import RewardModel
from tether.training import TrainConfig
from tether.stages.sft import SFTConfig
from tether.stages.sft import run as run_sft

ARCHS = list(archkit.ARCHITECTURES)
GRAD_ATOL = 1e-6
MERGE_ATOL = 1e-5


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return tmp_path_factory.mktemp("archkit")


@pytest.fixture(scope="module")
def base_tokenizer(kit):
    return archkit.tokenizer("base", kit)


@pytest.fixture(scope="module")
def gpt2_dir(tokenizer, tmp_path_factory):
    """A GPT-2 (n_positions=256) with tether's own tokenizer (the stages' chat encoding), saved as a model folder."""
    out = tmp_path_factory.mktemp("gpt2")
    save_pretrained(archkit.build_model("gpt2", tokenizer), tokenizer, str(out))
    return out


def _right_padded(lengths=(12, 9, 5), vocab: int = 500, pad: int = 0) -> dict[str, torch.Tensor]:
    """A right-padded batch (B=3, T=12) with labels -100 on the padding."""
    g = torch.Generator().manual_seed(1)
    ids = torch.full((len(lengths), max(lengths)), pad)  # (B, T)
    mask = torch.zeros_like(ids)  # (B, T)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(3, vocab, (n,), generator=g)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def _last_error(capsys) -> str:
    err = capsys.readouterr().err
    return err.replace("\r", "\n").strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------------
# 1. Gradient checkpointing


def _loss_grads_recomputes(model, batch) -> tuple[torch.Tensor, dict, int]:
    """(loss, {name: grad}, calls of the decoder layers' sub-modules made during backward: the recomputes)."""
    calls = []
    hooks = [child.register_forward_pre_hook(lambda *_: calls.append(1))
             for layer in model.modules() if isinstance(layer, GradientCheckpointingLayer)
             for child in layer.children()]
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same dropout masks in both runs; the recompute replays them (preserve_rng_state)
    loss = model(**batch).loss  # the model's own cache (use_cache from its config) is on, as in the stages
    in_forward = len(calls)
    loss.backward()
    for hook in hooks:
        hook.remove()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return loss.detach(), grads, len(calls) - in_forward


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("arch", ARCHS)
def test_checkpointing_gives_the_loss_and_gradients_of_the_plain_model(arch, mode, base_tokenizer):
    """Eval mode too: DPO, KTO and online RL train their policy in eval mode (no dropout). GPT-2 hands its blocks
    the cache positionally; before the fix the recompute appended the keys a second time (shape error in
    backward)."""
    plain = archkit.build_model(arch, base_tokenizer).train(mode == "train")
    checkpointed = copy.deepcopy(plain)
    distributed.checkpoint_layers(checkpointed)
    batch = _right_padded(vocab=len(base_tokenizer))
    loss, grads, recomputed_plain = _loss_grads_recomputes(plain, batch)
    loss_gc, grads_gc, recomputed = _loss_grads_recomputes(checkpointed, batch)
    assert recomputed_plain == 0 and recomputed > 0  # the layers really ran again in backward
    torch.testing.assert_close(loss_gc, loss, atol=GRAD_ATOL, rtol=0)
    assert grads_gc.keys() == grads.keys()
    for name, g in grads.items():
        assert g is not None, name
        torch.testing.assert_close(grads_gc[name], g, atol=GRAD_ATOL, rtol=0, msg=name)


def test_transformers_own_checkpointing_skips_eval_mode(base_tokenizer):
    """Why tether keeps its own wrapper: transformers checkpoints only in training mode, and DPO, KTO and online
    RL train in eval mode. (Should this start failing, transformers' own may do.)"""
    model = archkit.build_model("gpt2", base_tokenizer)
    if hasattr(model, "activation_checkpointing_enable"):  # its name since transformers 5.x
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    *_, recomputed = _loss_grads_recomputes(model.eval(), _right_padded(vocab=len(base_tokenizer)))
    assert recomputed == 0


def test_sft_stage_with_gradient_checkpointing_on_gpt2(gpt2_dir, world_dir, tmp_path):
    """Two SFT steps through the stage's run function: the same losses and final weights as without it."""
    def sft(out, checkpointing):
        run_sft(SFTConfig(data=str(world_dir / "sft.jsonl"), model=str(gpt2_dir), out=str(tmp_path / out),
                          max_steps=2, batch_size=4, micro_batch_size=2, warmup_steps=1, eval_fraction=0.1,
                          log_every=1, save_every=0, gradient_checkpointing=checkpointing))
        rows = [json.loads(line) for line in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows] + [rows[-1]["eval_loss"]], load_file(str(tmp_path / out / "model" /
                                                                                   "model.safetensors"))

    losses, weights = sft("plain", False)
    losses_gc, weights_gc = sft("checkpointed", True)
    assert len(losses_gc) == 3 and losses_gc == pytest.approx(losses, abs=GRAD_ATOL)
    before = load_file(str(gpt2_dir / "model.safetensors"))
    assert any(not torch.equal(weights_gc[k], before[k]) for k in before)  # it trained
    for name, w in weights.items():
        torch.testing.assert_close(weights_gc[name], w, atol=GRAD_ATOL, rtol=0, msg=name)


# ---------------------------------------------------------------------------------------------
# 2. Positions


def _config(arch: str):
    name, kwargs = archkit.ARCHITECTURES[arch]
    return getattr(transformers, name)(vocab_size=100, **kwargs)


@pytest.mark.parametrize("arch", ARCHS)
def test_position_limit_of_each_architecture(arch):
    assert position_limit(_config(arch)) == (256, "n_positions" if arch == "gpt2" else "max_position_embeddings")


def test_position_limit_of_other_layouts():
    small = dict(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    # RoBERTa's positions start after the padding index (1): 514 entries hold 512 tokens.
    assert position_limit(transformers.RobertaConfig(**small, max_position_embeddings=514)) == (
        512, "max_position_embeddings")
    assert position_limit(transformers.XLMRobertaConfig(**small, max_position_embeddings=66)) == (
        64, "max_position_embeddings")
    assert position_limit(transformers.BertConfig(**small)) == (512, "max_position_embeddings")
    assert position_limit(transformers.BloomConfig()) is None  # ALiBi: no position table, no limit
    assert position_limit(torch.nn.Linear(2, 2)) is None  # no config (a value head)


@pytest.mark.parametrize("arch,config", [("gpt2", None), ("opt", None),
                                         ("roberta", dict(max_position_embeddings=66)),
                                         ("bert", dict(max_position_embeddings=64))])
def test_position_limit_is_where_a_learned_table_really_ends(arch, config, base_tokenizer):
    """At the limit a forward runs; one token more fails inside the model (IndexError, or a shape error)."""
    if config is None:
        model = archkit.build_model(arch, base_tokenizer)
    else:
        cls = transformers.RobertaConfig if arch == "roberta" else transformers.BertConfig
        model = transformers.AutoModel.from_config(cls(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                                       num_attention_heads=2, intermediate_size=64, **config))
    limit, _ = position_limit(model)
    with torch.no_grad():
        model.eval()(input_ids=torch.full((1, limit), 5))
        with pytest.raises((IndexError, RuntimeError)):
            model(input_ids=torch.full((1, limit + 1), 5))


def test_check_positions_messages():
    config = _config("llama")
    config.name_or_path = "runs/x"
    check_positions(config, 256, "max_length")  # exactly the limit fits
    with pytest.raises(ConfigError) as err:
        check_positions(config, 512, "max_length")
    assert str(err.value) == ("max_length: 512 is more than the 256 positions of model runs/x "
                              "(max_position_embeddings); use max_length<=256")
    check_positions(config, 56, "max_new_tokens", prompt=200)
    with pytest.raises(ConfigError) as err:
        check_positions(config, 57, "max_new_tokens", prompt=200)
    assert str(err.value) == ("max_new_tokens: 57 after the longest prompt (200 tokens) is more than the 256 "
                              "positions of model runs/x (max_position_embeddings); use max_new_tokens<=56 or "
                              "max_prompt_length<=199")
    with pytest.raises(ConfigError, match=r"\(300 tokens\) .*; use max_prompt_length<=255$"):
        check_positions(config, 1, "max_new_tokens", prompt=300)
    check_positions(transformers.BloomConfig(), 10**6, "max_length")  # no limit


def test_check_positions_reads_through_reward_models_and_peft(base_tokenizer):
    encoder = transformers.AutoModel.from_config(transformers.RobertaConfig(
        vocab_size=len(base_tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=66))
    reward_model = RewardModel(encoder, base_tokenizer, pool="cls")
    check_positions(reward_model, 64, "max_length")
    with pytest.raises(ConfigError, match=r"^max_length: 65 is more than the 64 positions of the model "):
        check_positions(reward_model, 65, "max_length")
    adapted = adapt(archkit.build_model("opt", base_tokenizer), TrainConfig(lora=LoraOptions(r=2)))
    with pytest.raises(ConfigError, match=r"^max_length: 257 is more than the 256 positions"):
        check_positions(adapted, 257, "max_length")


def _prefs(tmp_path) -> str:
    path = tmp_path / "prefs.jsonl"
    rows = [{"prompt": f"What is the capital of land {i}?", "response_a": f"Osk {i}.", "response_b": "No idea.",
             "choice": "A"} for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("stage", ["sft", "pretrain", "dpo", "kto", "rm"])
def test_max_length_past_the_positions_stops_the_stage(stage, gpt2_dir, world_dir, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "run"
    data = {"sft": [f"data={world_dir}/sft.jsonl", f"model={gpt2_dir}"],
            "pretrain": [f"corpus={world_dir}/corpus.jsonl", f"tokenizer={tokenizer_dir}", f"init={gpt2_dir}"],
            "dpo": [f"data={_prefs(tmp_path)}", f"model={gpt2_dir}"],
            "kto": ["dpo", "loss=kto", f"data={_prefs(tmp_path)}", f"model={gpt2_dir}"],
            "rm": [f"data={_prefs(tmp_path)}", f"model={gpt2_dir}"]}[stage]
    argv = data if stage == "kto" else [stage, *data]
    assert main([*argv, "max_length=257", f"out={out}", "max_steps=1", "batch_size=4", "micro_batch_size=2"]) == 2
    assert _last_error(capsys) == (f"error: max_length: 257 is more than the 256 positions of model {gpt2_dir} "
                                   f"(n_positions); use max_length<=256")
    assert not (out / "model").exists()


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_prompt_and_new_tokens_past_the_positions_stop_online_rl(algorithm, gpt2_dir, world_dir, tokenizer,
                                                                 tmp_path, capsys):
    longest = max(map(len, chat_format(tokenizer).prompts_ids(read_prompts(str(world_dir / "prompts.jsonl")))))
    new = 257 - longest  # one token past the limit
    assert main([algorithm, f"model={gpt2_dir}", f"prompts={world_dir}/prompts.jsonl", "reward=gold",
                 f"world={world_dir}", f"max_new_tokens={new}", f"out={tmp_path / 'run'}", "max_steps=1"]) == 2
    assert _last_error(capsys) == (
        f"error: max_new_tokens: {new} after the longest prompt ({longest} tokens) is more than the 256 positions of "
        f"model {gpt2_dir} (n_positions); use max_new_tokens<={new - 1} or max_prompt_length<={256 - new}")


def test_generate_checks_the_longest_prompt_once(gpt2_dir, tokenizer):
    """collect, evaluate, redteam and the DPO/monitor samples go through `generate`."""
    model = AutoModelForCausalLM.from_pretrained(gpt2_dir)
    prompts = ["Hi", "What is the capital of land 3? " * 4]
    longest = max(len(ids) for ids in chat_format(tokenizer).prompts_ids(prompts))
    assert len(generate(model, chat_format(tokenizer), prompts, 256 - longest, 0.0, 2, 0)) == 2  # fits exactly: it runs
    with pytest.raises(ConfigError, match=rf"^max_new_tokens: {257 - longest} after the longest prompt "
                                          rf"\({longest} tokens\)"):
        generate(model, chat_format(tokenizer), prompts, 257 - longest, 0.0, 2, 0)


def test_evaluate_stage_stops_on_new_tokens_past_the_positions(gpt2_dir, world_dir, tmp_path, capsys):
    assert main(["evaluate", f"model={gpt2_dir}", f"world={world_dir}", f"out={tmp_path / 'eval'}",
                 "max_new_tokens=300"]) == 2
    assert _last_error(capsys).startswith("error: max_new_tokens: 300 after the longest prompt (")


# ---------------------------------------------------------------------------------------------
# 3. LoRA targets

ADAPTED = {  # what all-linear adapts: every linear layer (GPT-2: transformers' Conv1D) but the output head
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["o_proj", "qkv_proj", "gate_up_proj", "down_proj"],
    "opt": ["k_proj", "v_proj", "q_proj", "out_proj", "fc1", "fc2"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


@pytest.mark.parametrize("arch", ARCHS)
def test_default_lora_trains_and_merges_into_a_plain_folder(arch, base_tokenizer, tmp_path):
    cfg = TrainConfig(lora=LoraOptions(r=4, alpha=8.0))
    assert cfg.lora.target_modules == ["all-linear"]  # the default
    model = archkit.build_model(arch, base_tokenizer)
    assert linear_names(model) == ADAPTED[arch] + ["lm_head"]
    model = adapt(model, cfg)
    adapted = list(dict.fromkeys(n.split(".")[-2] for n, _ in model.named_modules() if n.endswith(".lora_A")))
    assert adapted == ADAPTED[arch]
    # One SFT step: gradients reach the adapters only (B starts at 0, so only B's are non-zero), then an update.
    batch = _right_padded(vocab=len(base_tokenizer))
    model.train()
    model(**batch).loss.backward()
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    assert all(p.grad.abs().sum() > 0 for n, p in trained.items() if ".lora_B." in n)
    torch.optim.SGD(trained.values(), lr=1.0).step()
    # Merged in memory, saved through models.save_pretrained, loaded by plain transformers: the same logits.
    model.eval()
    save_pretrained(model, base_tokenizer, str(tmp_path / "merged"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert type(loaded).__name__ == type(model.get_base_model()).__name__
    with torch.no_grad():
        merged = merged_copy(model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        adapter = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        reloaded = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(reloaded, merged, atol=MERGE_ATOL, rtol=0)
    torch.testing.assert_close(merged, adapter, atol=MERGE_ATOL, rtol=0)
    base = archkit.build_model(arch, base_tokenizer).eval()
    with torch.no_grad():
        assert not torch.allclose(base(input_ids=batch["input_ids"]).logits,
                                  loaded(input_ids=batch["input_ids"]).logits, atol=1e-3)  # the update is in it


@pytest.mark.parametrize("arch,targets,message", [
    ("gpt2", ["q_proj", "v_proj"], "q_proj, v_proj match no linear layer of GPT2LMHeadModel; its linear layers: "
                                   "c_attn, c_proj, c_fc, lm_head"),
    ("llama", ["q_proj", "qkv"], "qkv matches no linear layer of LlamaForCausalLM; its linear layers: q_proj, "
                                 "k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head"),
    ("gpt_neox", ["attention"], "attention matches no linear layer of GPTNeoXForCausalLM; its linear layers: "
                                "query_key_value, dense, dense_h_to_4h, dense_4h_to_h, lm_head"),
])
def test_wrong_lora_targets_name_the_model_linear_layers(arch, targets, message, base_tokenizer):
    cfg = TrainConfig(lora=LoraOptions(r=4, target_modules=targets))
    with pytest.raises(ConfigError) as err:
        adapt(archkit.build_model(arch, base_tokenizer), cfg)
    assert str(err.value) == f"lora.target_modules: {message} (or all-linear: every linear layer but the output head)"


def test_lora_targets_by_suffix_still_work(base_tokenizer):
    cfg = TrainConfig(lora=LoraOptions(r=4, target_modules=["c_attn", "h.1.mlp.c_fc"]))
    model = adapt(archkit.build_model("gpt2", base_tokenizer), cfg)
    adapted = sorted(n.removesuffix(".lora_A") for n, _ in model.named_modules() if n.endswith(".lora_A"))
    assert adapted == ["base_model.model.transformer.h.0.attn.c_attn", "base_model.model.transformer.h.1.attn.c_attn",
                       "base_model.model.transformer.h.1.mlp.c_fc"]


def test_wrong_lora_targets_through_the_cli(gpt2_dir, world_dir, tmp_path, capsys):
    assert main(["sft", f"data={world_dir}/sft.jsonl", f"model={gpt2_dir}", f"out={tmp_path / 'run'}", "lora.r=4",
                 "lora.target_modules=q_proj,v_proj", "max_steps=1"]) == 2
    assert _last_error(capsys) == (f"error: lora.target_modules: q_proj, v_proj match no linear layer of "
                                   f"GPT2LMHeadModel ({gpt2_dir}); its linear layers: c_attn, c_proj, c_fc, lm_head "
                                   f"(or all-linear: every linear layer but the output head)")
