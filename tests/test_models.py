"""tether.models: presets, safetensors-only save/load that plain transformers reads, and the FLOPs formula."""
import json
import os

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
)

from tether.errors import ConfigError, TetherError
from tether.models import (
    PRESETS,
    build_model,
    count_parameters,
    load_policy,
    load_tokenizer,
    model_flops_per_token,
    save_pretrained,
)
from tether.chat import chat_format
from tether.tokenizer import train_tokenizer


class Vocab2048:
    """Just what build_model reads from a tokenizer, with the 2048-token vocabulary the presets are sized for."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __len__(self):
        return 2048


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["The capital of France is Paris.", "What is 2 plus 2? It is 4."] * 10, vocab_size=400)


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    model = build_model("test", tok, seed=0)
    path = tmp_path_factory.mktemp("policy")
    save_pretrained(model, tok, str(path))
    return model, path


# Hand count, tied embeddings, V = 2048 (norms are one weight vector each, no biases):
#   test:  embed 2048*32 = 65,536; per layer q,k,v,o 4*32*32 = 4,096 + mlp 3*32*64 = 6,144 + 2 norms 64
#          = 10,304; 2 layers 20,608; final norm 32            -> 65,536 + 20,608 + 32      = 86,176
#   demo:  embed 2048*160 = 327,680; per layer 4*160^2 = 102,400 + 3*160*448 = 215,040 + 320
#          = 317,760; 4 layers 1,271,040; final norm 160        -> 327,680 + 1,271,040 + 160 = 1,598,880
#   small: embed 2048*256 = 524,288; per layer 4*256^2 = 262,144 + 3*256*1024 = 786,432 + 512
#          = 1,049,088; 4 layers 4,196,352; final norm 256      -> 4,720,896
@pytest.mark.parametrize("preset,n", [("test", 86_176), ("demo", 1_598_880), ("small", 4_720_896)])
def test_preset_parameter_counts(preset, n):
    model = build_model(preset, Vocab2048())
    assert count_parameters(model) == n
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert model.dtype == torch.float32


def test_test_preset_is_tiny(tok):
    model = build_model("test", tok)
    assert count_parameters(model) < 1_000_000
    assert count_parameters(model) == 32 * len(tok) + 20_640  # embed V*32 + layers 20,608 + final norm 32
    cfg = model.config
    assert (cfg.vocab_size, cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (len(tok), 0, 1, 2)


def test_unknown_preset_names_allowed():
    with pytest.raises(ConfigError, match="test, demo, small"):
        build_model("huge", Vocab2048())


def test_seeded_init_and_rng_untouched(tok):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = build_model("test", tok, seed=7), build_model("test", tok, seed=7), build_model("test", tok, seed=8)
    assert torch.equal(torch.rand(3), before)  # building a model did not advance the caller's RNG
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_save_loads_with_plain_transformers(tok, saved):
    model, path = saved
    files = os.listdir(path)
    assert "model.safetensors" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth"))]  # no pickle written
    plain = AutoModelForCausalLM.from_pretrained(path)
    ids = torch.tensor([chat_format(tok).prompt_ids([{"role": "user", "content": "Capital of France?"}])])
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain(ids).logits)  # (1, T, V), bit for bit
    plain_tok = AutoTokenizer.from_pretrained(path)
    assert plain_tok("Paris")["input_ids"] == tok("Paris")["input_ids"]
    assert plain_tok.chat_template == tok.chat_template and plain_tok.padding_side == "left"


def test_load_policy_never_unpickles(saved, monkeypatch):
    model, path = saved

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load called: a pickle checkpoint was read")

    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = load_policy(str(path))
    for (name, p), q in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(p, q), name
    assert load_tokenizer(str(path)).convert_tokens_to_ids("<|assistant|>") == 5


def test_load_errors(saved, tmp_path):
    _, path = saved
    with pytest.raises(TetherError, match="folder not found"):
        load_policy(str(tmp_path / "missing"))
    with pytest.raises(TetherError, match="no safetensors weights"):
        load_policy(str(tmp_path))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_bytes((path / "config.json").read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(TetherError, match="pickle checkpoints are refused"):
        load_policy(str(pickled))
    with pytest.raises(TetherError, match="tokenizer"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(TetherError, match="folder not found"):
        load_tokenizer(str(tmp_path / "missing"))


def test_flops_hand_worked():
    # V = 100, test preset: N = 100*32 + 20,608 (layers) + 32 (final norm) = 23,840
    #   6N            = 143,040
    #   12 * L * H * T = 12 * 2 * 32 * 128 = 98,304
    #   total         = 241,344
    model = LlamaForCausalLM(LlamaConfig(vocab_size=100, **PRESETS["test"]))
    assert count_parameters(model) == 23_840
    assert model_flops_per_token(model, seq_len=128) == 241_344.0
    # Untied: the extra input table (100*32 = 3,200) is a lookup, not a matmul, so the FLOPs do not change.
    untied = LlamaForCausalLM(LlamaConfig(vocab_size=100, **{**PRESETS["test"], "tie_word_embeddings": False}))
    assert count_parameters(untied) == 27_040
    assert model_flops_per_token(untied, seq_len=128) == 241_344.0
    # The attention term grows with context: doubling T adds 98,304 more.
    assert model_flops_per_token(model, seq_len=256) == 241_344.0 + 98_304


def test_a_reward_model_folder_is_refused_where_a_policy_is_meant(rm_dir, tmp_path):
    # tether rm's folder: a LlamaForSequenceClassification with reward_config.json; as a causal LM it would get a
    # random LM head and generate noise (serve, audit, collect took it so)
    with pytest.raises(ConfigError, match=rf"^model: {rm_dir} is a reward model \(LlamaForSequenceClassification\), "
                                          "not a policy"):
        load_policy(str(rm_dir))
    other = tmp_path / "classifier"  # any sequence classifier, without tether's file
    other.mkdir()
    config = json.loads((rm_dir / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(config))
    (other / "model.safetensors").write_bytes((rm_dir / "model.safetensors").read_bytes())
    with pytest.raises(ConfigError, match="is a reward model"):
        load_policy(str(other))
